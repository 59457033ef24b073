"""tljax's side of each workload, one per process: `python -m benchmarks.jax_side SPEC_JSON`.

Everything goes through tljax's public pieces: `run.prepare` and `loop.build_engine` (the very step
`python -m tljax.train` runs), `tljax.predict.Predictor`, `tljax.models.generate`, the harness's scorer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import (DECODER, children_peak_mb, ROOT, load_batches, offline_environment, prompt_ids, read_json, report,
                               run_config, spec_from_argv, step_times, timed)

offline_environment()

import jax  # noqa: E402
import numpy as np  # noqa: E402


def _prepared(method: str, max_length: int | None, overrides: list[str] = ()):
    from tljax.train.run import prepare

    return prepare(run_config(method, ([f"data.max_length={max_length}"] if max_length else []) + list(overrides)))


def train(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds per train step of `spec["method"]` on the prepared batches (dropout on, AdamW, clipping)."""
    from tljax.runs import FINAL_STEP
    from tljax.train.features import FrozenBottomClassification
    from tljax.train.loop import build_engine
    from tljax.train.sharding import data_mesh, shard_batch

    batches = load_batches(spec["batches"])
    prepared = _prepared(spec["method"], max(b["input_ids"].shape[1] for b in batches))
    mesh = data_mesh()
    engine = build_engine(prepared, total_steps=1000, mesh=mesh)
    if isinstance(prepared.objective, FrozenBottomClassification):  # its frozen bottom computed once, not timed
        bottom = jax.jit(lambda ids, mask: prepared.adaptation.model.bert.hidden_before(ids, mask,
                                                                                        prepared.objective.layers))
        batches = [{**b, "hidden": np.asarray(bottom(b["input_ids"], b["attention_mask"]))} for b in batches]
    placed = [shard_batch(b, mesh) for b in batches]
    state = {"trainable": engine.trainable, "opt_state": engine.opt_state}

    def step(i: int) -> None:
        key = jax.random.fold_in(jax.random.key(0), i)
        state["trainable"], state["opt_state"], metrics = engine.train_step(
            state["trainable"], engine.frozen, state["opt_state"], placed[i], key)
        metrics["loss"].block_until_ready()

    first, per_step = step_times(step, len(batches), spec.get("warmup", 1), spec.get("repeats", 2))
    count, total = prepared.objective.count(FINAL_STEP)
    return {"first_step_s": first, "step_s": per_step, "trainable": count, "parameters": total}


def forward(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds per evaluation forward pass (logits) over the prepared batches."""
    from tljax.train.loop import _forward_fn
    from tljax.train.sharding import data_mesh, shard_batch
    from tljax.train.step import split

    batches = load_batches(spec["batches"])
    prepared = _prepared("lora", max(b["input_ids"].shape[1] for b in batches))
    graphdef, trainable, frozen = split(prepared.adaptation.model, ...)
    mesh = data_mesh()
    outputs = _forward_fn(graphdef, prepared.objective, mesh)
    placed = [shard_batch(b, mesh) for b in batches]

    def step(i: int) -> None:
        jax.block_until_ready(outputs(trainable, frozen, placed[i]))

    first, per_step = step_times(step, len(batches), spec.get("warmup", 1), spec.get("repeats", 3))
    return {"first_step_s": first, "step_s": per_step}


def predict(spec: dict[str, Any]) -> dict[str, Any]:
    """`tljax.predict.Predictor` over the test split's texts (a finished run's export); examples/s."""
    from tljax.predict import Predictor

    texts = read_json(spec["texts"])
    predictor, load = timed(lambda: Predictor.load(spec["run"]))
    labels, first = timed(lambda: predictor(texts))
    _, warm = timed(lambda: predictor(texts))
    return {"load_s": load, "first_s": first, "seconds": warm, "examples": len(texts),
            "examples_per_s": len(texts) / warm, "positive": sum(label == "positive" for label, _ in labels)}


def time_to_accuracy(spec: dict[str, Any]) -> dict[str, Any]:
    """`python -m tljax.train` on the default run into `spec["output_dir"]`, wall clock and test metrics."""
    command = [sys.executable, "-m", "tljax.train", "--set", f"output_dir={spec['output_dir']}",
               *[f"--set={o}" for o in spec.get("overrides", [])]]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"python -m tljax.train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = read_json(os.path.join(spec["output_dir"], "summary.json"))
    return {"seconds": seconds, "accuracy": summary["test"]["accuracy"], "f1": summary["test"]["f1"],
            "steps": summary["steps"], "training_seconds": summary["training_seconds"],
            "peak_rss_mb": children_peak_mb()}


def generate(spec: dict[str, Any]) -> dict[str, Any]:
    """Greedy generation with the KV cache: new tokens/s for `spec["new_tokens"]` after a chat prompt."""
    import tljax

    model, tokenizer = tljax.load(DECODER)
    ids = np.asarray([prompt_ids(tokenizer)], np.int32)
    new = spec.get("new_tokens", 64)

    def run():
        return np.asarray(tljax.models.generate(model, ids, max_new_tokens=new, eos_token_ids=()))

    tokens, first = timed(run)
    times = [timed(run)[1] for _ in range(spec.get("repeats", 3))]
    return {"first_s": first, "seconds": float(np.median(times)), "tokens_per_s": new / float(np.median(times)),
            "tokens": tokens[0].tolist()}


def score(spec: dict[str, Any]) -> dict[str, Any]:
    """The harness's zero-shot path: every answer's log-likelihood after each item's chat prompt; items/s."""
    import tljax
    from harness.scoring import DecoderScorer

    contexts, answers = read_json(spec["requests"])
    model, tokenizer = tljax.load(DECODER)
    scorer = DecoderScorer(model, tokenizer)
    requests = [(context, answers) for context in contexts]
    scores, first = timed(lambda: scorer(requests))
    times = [timed(lambda: scorer(requests))[1] for _ in range(spec.get("repeats", 2))]
    seconds = float(np.median(times))
    return {"first_s": first, "seconds": seconds, "examples_per_s": len(contexts) / seconds,
            "logprob": scores.logprob.reshape(-1).tolist()}


def sweep(spec: dict[str, Any]) -> dict[str, Any]:
    """LoRA at the scales `spec["scales"]` of the default run's learning rate, `spec["steps"]` steps over the
    prepared batches: all in one program (`make_sweep_step`), or with `spec["scale"]` one run's own step."""
    import jax.numpy as jnp

    from tljax.train.loop import build_engine
    from tljax.train.sharding import data_mesh, shard_batch
    from tljax.train.step import make_sweep_step, stack_variants

    batches = load_batches(spec["batches"])
    together = "scale" not in spec
    rate = run_config("lora").training.learning_rate * (1.0 if together else spec["scale"])
    prepared = _prepared("lora", None, [f"training.learning_rate={rate:.6e}"])
    mesh = data_mesh()
    engine = build_engine(prepared, total_steps=spec["steps"], mesh=mesh)
    placed = [shard_batch(b, mesh) for b in batches]
    if together:
        scales = jnp.asarray(spec["scales"], jnp.float32)
        sweep_step = make_sweep_step(engine.graphdef, prepared.objective.loss, engine.tx)
        params, opt = stack_variants(engine.trainable, len(scales)), stack_variants(engine.opt_state, len(scales))

        def step(i, params, opt, key):
            return sweep_step(params, engine.frozen, opt, placed[i % len(placed)], key, scales)
    else:
        params, opt = engine.trainable, engine.opt_state

        def step(i, params, opt, key):
            return engine.train_step(params, engine.frozen, opt, placed[i % len(placed)], key)
    for i in range(spec["steps"]):
        params, opt, metrics = step(i, params, opt, jax.random.fold_in(jax.random.key(0), i))
    return {"variants": len(spec["scales"]) if together else 1, "steps": spec["steps"],
            "final_loss": np.asarray(metrics["loss"]).tolist()}


WORKLOADS = {"sweep": sweep, "train": train, "forward": forward, "predict": predict, "time-to-accuracy": time_to_accuracy,
             "generate": generate, "score": score}

if __name__ == "__main__":
    spec = spec_from_argv()
    if not spec.get("compilation_cache", False):
        jax.config.update("jax_enable_compilation_cache", False)  # first-step times are cold compiles
    report({**WORKLOADS[spec["workload"]](spec), "side": "jax"})
