"""Prefix tuning on MiniLM-L6, tljax beside PyTorch PEFT: `python -m benchmarks.prefix_study [--out DIR]`.

Two questions, one report (DIR/report.md, default runs/prefix-study/):

1. Is tljax's prefix tuning PEFT's? On the methods suite's first batch, from the same initial prefix (the
   re-parameterisation MLP's weights too) and the same head (classifier and pooler), dropout off: the loss and
   every trainable tensor's gradient on both sides, and their largest relative difference.
2. Does it learn, and with which setting? Each setting trains on both sides on the same batches, with the
   same budget as the methods suite (150 steps of 32 Rotten Tomatoes reviews, seed 42, validation on 640
   reviews every 50 steps), from the same initial values, with the same optimiser (AdamW, linear warm-up and
   decay, clipping at 1.0; the prefix and the head at `new_learning_rate`). The best validation accuracy and
   its MCC per side; "collapsed" where the best still answers one label for everything (MCC 0). Also the
   prefix keys' root mean square at the start and the end: what the prefix the attention sees became.

Results are kept in DIR/results.json: a rerun trains only the settings not there yet (`--fresh` redoes all).
`--settings a,b` picks settings by name (`--list` names them), `--steps N` shortens the budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from tljax.metrics import classification_metrics  # noqa: E402
from tljax.methods.prefix import prefix_encoder  # noqa: E402
from tljax.train.config import load_config  # noqa: E402
from tljax.train.loop import build_engine  # noqa: E402
from tljax.train.run import Prepared, prepare  # noqa: E402
from tljax.train.sharding import make_mesh  # noqa: E402

# The methods suite's budget (harness/suites/methods-minilm.yaml).
SUITE = ["training.max_steps=150", "training.per_device_train_batch_size=32", "training.eval_steps=50",
         "training.early_stopping_patience=null", "training.seed=42", "data.max_eval_examples=640"]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One way to train prefix tuning: overrides of configs/prefix.yaml, and what it tests."""

    name: str
    overrides: tuple[str, ...]
    why: str


SETTINGS = (
    Setting("mlp512-lr1e-2", ("method.projection_size=512", "training.new_learning_rate=1e-2"),
            "the former default: MLP re-parameterisation (512), prefix and head at 1e-2"),
    Setting("mlp512-lr3e-3", ("method.projection_size=512", "training.new_learning_rate=3e-3"),
            "the former default at the suite's x 0.3"),
    Setting("mlp512-lr1e-3", ("method.projection_size=512", "training.new_learning_rate=1e-3"),
            "the MLP at a tenth of the former rate"),
    Setting("mlp512-lr3e-4", ("method.projection_size=512", "training.new_learning_rate=3e-4"),
            "the MLP at a thirtieth of the former rate"),
    Setting("table-lr1e-2", ("method.projection_size=null", "training.new_learning_rate=1e-2"),
            "the prefix table trained directly (PEFT's default for encoders) at 1e-2"),
    Setting("table-lr3e-2", ("method.projection_size=null", "training.new_learning_rate=3e-2"),
            "the table at 3e-2"),
    Setting("table-lr3e-3", ("method.projection_size=null", "training.new_learning_rate=3e-3"),
            "the table at 3e-3"),
)


def prepared_run(overrides: list[str] | tuple[str, ...]) -> Prepared:
    """configs/prefix.yaml with the suite's budget and `overrides`, prepared (model adapted, data encoded)."""
    return prepare(load_config("configs/prefix.yaml", [*SUITE, *overrides, "output_dir=/tmp/prefix-study"]))


def flat(state: nnx.State) -> dict[str, np.ndarray]:
    """"/"-joined path -> value of every leaf of `state`."""
    return {"/".join(map(str, path)): np.asarray(v.get_value() if hasattr(v, "get_value") else v)
            for path, v in nnx.to_flat_state(state)}


# ---------------------------------------------------------------------------------------------------- PyTorch

def peft_model(prepared: Prepared):
    """PEFT's prefix tuning of the same checkpoint, with tljax's initial trainable values copied in: the
    prefix encoder (table or embedding + MLP) and the head (classifier, and the pooler where it trains, as
    PEFT's `modules_to_save`)."""
    import peft
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    method = prepared.config.method
    projection = method.get("projection_size")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        prepared.model_dir, num_labels=len(prepared.label_names))
    hidden = model.config.hidden_size
    values = flat(nnx.state(prepared.adaptation.model, prepared.adaptation.trainable()))
    pooler = any(k.startswith("bert/pooler/") for k in values)
    model = peft.get_peft_model(model, peft.PrefixTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=method["num_virtual_tokens"], prefix_projection=projection is not None,
        encoder_hidden_size=projection or hidden, modules_to_save=["classifier"] + (["pooler"] if pooler else [])))
    encoder = model.prompt_encoder["default"]

    def ours(suffix: str) -> torch.Tensor:
        (key,) = [k for k in values if k.endswith(suffix)]
        value = values[key]
        return torch.tensor(value.T.copy() if suffix.endswith("kernel") else value)

    with torch.no_grad():
        encoder.embedding.weight.copy_(ours("prefix/encoder/embedding"))
        if projection is not None:
            for index, name in ((0, "mlp_in"), (2, "mlp_out")):
                encoder.transform[index].weight.copy_(ours(f"prefix/encoder/{name}/kernel"))
                encoder.transform[index].bias.copy_(ours(f"prefix/encoder/{name}/bias"))
        for path, module in torch_heads(model).items():
            module.weight.copy_(ours(f"{path}/kernel"))
            module.bias.copy_(ours(f"{path}/bias"))
    return model


def torch_heads(model) -> dict[str, Any]:
    """tljax head path -> the trained copy PEFT made of that Linear (`modules_to_save`)."""
    base = model.base_model
    heads = {"classifier": base.classifier.modules_to_save["default"]}
    if hasattr(base.bert.pooler, "modules_to_save"):
        heads["bert/pooler/dense"] = base.bert.pooler.modules_to_save["default"].dense
    return heads


def torch_gradients(model) -> dict[str, np.ndarray]:
    """Gradients in tljax's names and layouts (kernels [in, out])."""
    encoder = model.prompt_encoder["default"]
    out = {"prefix/encoder/embedding": encoder.embedding.weight.grad.numpy()}
    if hasattr(encoder, "transform"):
        for index, name in ((0, "mlp_in"), (2, "mlp_out")):
            out[f"prefix/encoder/{name}/kernel"] = encoder.transform[index].weight.grad.numpy().T
            out[f"prefix/encoder/{name}/bias"] = encoder.transform[index].bias.grad.numpy()
    for path, module in torch_heads(model).items():
        out[f"{path}/kernel"] = module.weight.grad.numpy().T
        out[f"{path}/bias"] = module.bias.grad.numpy()
    return out


def torch_batch(batch: dict[str, np.ndarray]):
    import torch

    return {"input_ids": torch.from_numpy(np.asarray(batch["input_ids"])).long(),
            "attention_mask": torch.from_numpy(np.asarray(batch["attention_mask"])).long()}


def torch_prefix_rms(model) -> float:
    import torch

    tokens = model.prompt_tokens["default"][None, : model.active_peft_config.num_virtual_tokens]
    with torch.no_grad():
        return float(model.prompt_encoder["default"](tokens).pow(2).mean().sqrt())


# ---------------------------------------------------------------------------------------------------- parity

def parity(prepared: Prepared) -> dict[str, Any]:
    """First-batch loss and gradients on both sides from the same values, dropout off."""
    import torch

    adaptation = prepared.adaptation
    batch = next(prepared.objective.train_batches(32, prepared.config.training.seed))
    graphdef, trainable, frozen = nnx.split(adaptation.model, adaptation.trainable(), ...)

    def loss_of(params):
        return prepared.objective.loss(nnx.merge(graphdef, params, frozen),
                                       {k: jnp.asarray(v) for k, v in batch.items()}, None)[0]

    loss, grads = jax.value_and_grad(loss_of)(trainable)
    ours = flat(grads)
    model = peft_model(prepared).eval()
    logits = model(**torch_batch(batch)).logits
    theirs_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch["labels"]).long())
    theirs_loss.backward()
    theirs = torch_gradients(model)
    rows = []
    for path, gradient in ours.items():
        (name,) = [n for n in theirs if path.endswith(n)]
        reference = theirs[name]
        rows.append({"tensor": name, "shape": list(gradient.shape), "grad_norm": float(np.linalg.norm(reference)),
                     "relative_difference": float(np.linalg.norm(gradient - reference) / np.linalg.norm(reference))})
    return {"tljax_loss": float(loss), "peft_loss": float(theirs_loss), "gradients": rows}


# ---------------------------------------------------------------------------------------------------- training

def tljax_prefix_rms(model) -> float:
    return float(jnp.sqrt(jnp.mean(jnp.square(prefix_encoder(model).table()))))


def train_tljax(prepared: Prepared) -> dict[str, Any]:
    """tljax's own compiled step (the run loop's optimiser, dropout keys and batches), evaluated every
    eval_steps on the validation split."""
    tc = prepared.config.training
    objective = prepared.objective
    engine = build_engine(prepared, tc.max_steps, make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]))
    trainable, opt_state = engine.trainable, engine.opt_state
    graphdef, frozen = engine.graphdef, engine.frozen
    forward = jax.jit(lambda params, batch: objective.outputs(nnx.merge(graphdef, params, frozen), batch))
    start_rms = tljax_prefix_rms(nnx.merge(graphdef, trainable, frozen))
    batches = objective.train_batches(tc.per_device_train_batch_size, tc.seed)
    history, losses = [], []
    for step in range(1, tc.max_steps + 1):
        key = jax.random.fold_in(jax.random.key(tc.seed), step - 1)  # as the loop derives it
        trainable, opt_state, metrics = engine.train_step(trainable, frozen, opt_state, next(batches), key)
        losses.append(float(metrics["loss"]))
        if step % tc.eval_steps == 0 or step == tc.max_steps:
            result = objective.evaluate(lambda batch: forward(trainable, batch), "validation",
                                        tc.per_device_eval_batch_size)
            history.append({"step": step, "accuracy": result["accuracy"], "mcc": result["mcc"],
                            "train_loss": float(np.mean(losses[-tc.eval_steps:]))})
            print(f"  tljax {history[-1]}", file=sys.stderr, flush=True)
    end_rms = tljax_prefix_rms(nnx.merge(graphdef, trainable, frozen))
    return {"history": history, "prefix_rms": [start_rms, end_rms]}


def train_peft(prepared: Prepared) -> dict[str, Any]:
    """PEFT from the same initial values, on the same batches, with a PyTorch AdamW set as tljax's optimiser."""
    import torch
    import transformers

    tc = prepared.config.training
    objective = prepared.objective
    torch.manual_seed(tc.seed)
    model = peft_model(prepared)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rate = tc.new_learning_rate or tc.learning_rate
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if not n.endswith("bias")], "weight_decay": tc.weight_decay},
         {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0}],
        lr=rate, eps=1e-8)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, round(tc.warmup_ratio * tc.max_steps),
                                                             tc.max_steps)
    start_rms = torch_prefix_rms(model)
    batches = objective.train_batches(tc.per_device_train_batch_size, tc.seed)
    history, losses = [], []
    for step in range(1, tc.max_steps + 1):
        model.train()
        batch = next(batches)
        logits = model(**torch_batch(batch)).logits
        weights = torch.from_numpy(np.asarray(batch["weights"], np.float32))
        loss = (torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch["labels"]).long(), reduction="none")
                * weights).sum() / weights.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], tc.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if step % tc.eval_steps == 0 or step == tc.max_steps:
            model.eval()
            predictions, labels = [], []
            with torch.no_grad():
                for batch in objective.evaluation_batches(objective.encoded["validation"],
                                                          tc.per_device_eval_batch_size):
                    real = batch["weights"] > 0
                    predictions.append(model(**torch_batch(batch)).logits.argmax(-1).numpy()[real])
                    labels.append(batch["labels"][real])
            result = classification_metrics(np.concatenate(labels), np.concatenate(predictions),
                                            len(prepared.label_names))
            history.append({"step": step, "accuracy": result["accuracy"], "mcc": result["mcc"],
                            "train_loss": float(np.mean(losses[-tc.eval_steps:]))})
            print(f"  PEFT {history[-1]}", file=sys.stderr, flush=True)
    return {"history": history, "prefix_rms": [start_rms, torch_prefix_rms(model)]}


def best(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation the suite would keep: the best validation accuracy (the earliest on ties)."""
    return max(history, key=lambda h: (h["accuracy"], -h["step"]))


# ---------------------------------------------------------------------------------------------------- report

def report(results: dict[str, Any], chance: float) -> str:
    lines = ["# Prefix tuning on MiniLM-L6: tljax beside PEFT", "",
             "Written by `python -m benchmarks.prefix_study`. Budget: the methods suite's (150 steps of 32 Rotten "
             "Tomatoes reviews, seed 42, validation on 640 reviews every 50 steps); both sides start from the "
             f"same values and train on the same batches. One label for everything scores {chance:.3f} (MCC 0).",
             ""]
    if "parity" in results:
        p = results["parity"]
        lines += ["## First step, same values, dropout off", "",
                  f"Loss: tljax {p['tljax_loss']:.6f}, PEFT {p['peft_loss']:.6f}.", "",
                  "| tensor | shape | gradient norm (PEFT) | relative difference |", "|---|---|---:|---:|"]
        lines += [f"| {g['tensor']} | {tuple(g['shape'])} | {g['grad_norm']:.3e} | {g['relative_difference']:.1e} |"
                  for g in p["gradients"]]
        lines.append("")
    lines += ["## Training, both sides", "",
              "Best validation accuracy (its MCC, its step; \"collapsed\": one label for everything), the training "
              "loss of the last 50 steps, and the prefix table's root mean square at the start and the end.", "",
              "| setting | what it tests | tljax | PEFT | tljax loss | prefix RMS, tljax | prefix RMS, PEFT |",
              "|---|---|---|---|---:|---|---|"]
    for setting in SETTINGS:
        r = results.get("settings", {}).get(setting.name, {})
        if not r:
            continue

        def cell(side: str) -> str:
            if side not in r:
                return "not run"
            b = best(r[side]["history"])
            flag = " collapsed" if abs(b["mcc"]) < 1e-9 else ""
            return f"{b['accuracy']:.3f} ({b['mcc']:.3f}, {b['step']}){flag}"

        def rms(side: str) -> str:
            return f"{r[side]['prefix_rms'][0]:.2f} -> {r[side]['prefix_rms'][1]:.2f}" if side in r else ""

        loss = f"{r['tljax']['history'][-1]['train_loss']:.3f}" if "tljax" in r else ""
        lines.append(f"| {setting.name} | {setting.why} | {cell('tljax')} | {cell('peft')} | {loss} | "
                     f"{rms('tljax')} | {rms('peft')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/prefix-study", help="where results.json and report.md go")
    parser.add_argument("--settings", default=None, help="comma-separated setting names (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per setting (default: 150)")
    parser.add_argument("--fresh", action="store_true", help="recompute results already in results.json")
    parser.add_argument("--sides", default="tljax,peft", help="which sides train (default: tljax,peft)")
    parser.add_argument("--list", action="store_true", help="list the settings and exit")
    args = parser.parse_args(argv)
    if args.list:
        for setting in SETTINGS:
            print(f"{setting.name:16} {setting.why}")
        return 0
    names = [s.name for s in SETTINGS]
    chosen = names if args.settings is None else args.settings.split(",")
    unknown = [n for n in chosen if n not in names]
    if unknown:
        parser.error(f"unknown setting {', '.join(unknown)}; valid: {', '.join(names)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = {} if args.fresh or not path.is_file() else json.loads(path.read_text())
    extra = [f"training.max_steps={args.steps}"] if args.steps else []
    sides = args.sides.split(",")

    def save() -> None:
        path.write_text(json.dumps(results, indent=1))

    if "parity" not in results:
        prepared = prepared_run(list(SETTINGS[0].overrides))
        results["parity"] = parity(prepared)
        results["chance"] = prepared.objective.chance()
        save()
    for setting in SETTINGS:
        entry = results.setdefault("settings", {}).setdefault(setting.name, {})
        for side, train in (("tljax", train_tljax), ("peft", train_peft)):
            if setting.name not in chosen or side not in sides or side in entry:
                continue
            started = time.perf_counter()
            entry[side] = {**train(prepared_run([*setting.overrides, *extra])),
                           "seconds": time.perf_counter() - started}
            print(f"{setting.name} {side}: best {best(entry[side]['history'])} ({entry[side]['seconds']:.0f} s)",
                  file=sys.stderr, flush=True)
            save()
    (out / "report.md").write_text(report(results, results["chance"]))
    print(f"wrote {out / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
