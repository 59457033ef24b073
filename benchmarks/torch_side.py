"""The PyTorch reference of each workload, one per process: `python -m benchmarks.torch_side SPEC_JSON`.

Hugging Face defaults throughout: `transformers` models with their default (SDPA) attention, dropout as the
checkpoint's config says (0.1), `torch.optim.AdamW` with a linear warm-up schedule and gradient clipping at
the run config's values, `peft` for LoRA, prefix and prompt tuning; BitFit as PyTorch users write it
(`requires_grad` on the biases and the head). Each method's options come from the same run config tljax reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.common import (DECODER, children_peak_mb, load_batches, offline_environment, prompt_ids, read_json, report, run_config,
                               spec_from_argv, step_times, threads, timed)

offline_environment()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
torch.set_num_threads(threads())


def _model_dir(name: str):
    from tljax import zoo

    return zoo.resolve(name)


HEAD_MODULES = ("classifier", "pooler")  # PEFT matches a module by its last name
HEAD = ("classifier.", "bert.pooler.")


def classifier(config, num_labels: int = 2) -> tuple[torch.nn.Module, int]:
    """The run config's model and method in PyTorch; (model, trainable parameter count).

    The task head, the classifier and BERT's pooler before it, trains under every method, as it does in tljax
    (PEFT's `modules_to_save`)."""
    import peft

    model_dir = _model_dir(config.model)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels)
    method = dict(config.method)
    name = method.pop("name")
    if name == "full":
        pass
    elif name == "partial":  # as PyTorch users freeze: requires_grad off below the first trained layer
        frozen = tuple(f"bert.encoder.layer.{i}." for i in range(method["freeze_layers"]))
        for path, parameter in model.named_parameters():
            parameter.requires_grad = not (path.startswith(frozen) or
                                           (method.get("freeze_embeddings", True) and path.startswith("bert.embeddings.")))
    elif name == "bitfit":
        for path, parameter in model.named_parameters():
            parameter.requires_grad = path.endswith("bias") or path.startswith(HEAD)
    elif name == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(
            task_type="SEQ_CLS", r=method["rank"], lora_alpha=method["alpha"], lora_dropout=method["dropout"],
            target_modules=list(method["targets"]), modules_to_save=list(HEAD_MODULES)))
    elif name == "prefix":
        model = peft.get_peft_model(model, peft.PrefixTuningConfig(
            task_type="SEQ_CLS", num_virtual_tokens=method["num_virtual_tokens"],
            prefix_projection=method.get("projection_size") is not None,
            encoder_hidden_size=method.get("projection_size") or model.config.hidden_size,
            modules_to_save=list(HEAD_MODULES)))
    elif name == "prompt":
        init = {"text": "TEXT", "random": "RANDOM"}.get(method.get("init", "random"), "RANDOM")
        model = peft.get_peft_model(model, peft.PromptTuningConfig(
            task_type="SEQ_CLS", num_virtual_tokens=method["num_virtual_tokens"], prompt_tuning_init=init,
            prompt_tuning_init_text=method.get("init_text") if init == "TEXT" else None,
            tokenizer_name_or_path=str(model_dir), modules_to_save=list(HEAD_MODULES)))
    else:
        raise SystemExit(f"no PyTorch reference for method {name!r}")
    return model, sum(p.numel() for p in model.parameters() if p.requires_grad)


def _tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.from_numpy(batch["input_ids"]).long(),
            "attention_mask": torch.from_numpy(batch["attention_mask"]).long(),
            "labels": torch.from_numpy(batch["labels"]).long()}


def train_step(model: torch.nn.Module, tc, batches: list[dict[str, torch.Tensor]], device: str = "cpu",
               bfloat16: bool = False) -> tuple[Callable[[int], None], list[float]]:
    """(step(i), losses): one training step on `batches[i]` as Hugging Face's `Trainer` takes it (AdamW over the
    trainable parameters, linear warm-up and decay, clipping at the config's values; bfloat16 by autocast), and
    the list each step's loss is appended to (reading it waits for the device)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=tc.learning_rate, weight_decay=tc.weight_decay)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, round(tc.warmup_ratio * 1000), 1000)
    losses: list[float] = []

    def step(i: int) -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bfloat16):
            loss = model(**batches[i]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, tc.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())

    return step, losses


def train(spec: dict[str, Any]) -> dict[str, Any]:
    config = run_config(spec["method"])
    tc = config.training
    model, count = classifier(config)
    model.train()
    batches = [_tensors(b) for b in load_batches(spec["batches"])]
    step, _ = train_step(model, tc, batches)
    first, per_step = step_times(step, len(batches), spec.get("warmup", 1), spec.get("repeats", 2))
    return {"first_step_s": first, "step_s": per_step, "trainable": count,
            "parameters": sum(p.numel() for p in model.parameters())}


def forward(spec: dict[str, Any]) -> dict[str, Any]:
    model, _ = classifier(run_config("full"))
    model.eval()
    batches = [_tensors(b) for b in load_batches(spec["batches"])]

    @torch.inference_mode()
    def step(i: int) -> None:
        model(input_ids=batches[i]["input_ids"], attention_mask=batches[i]["attention_mask"]).logits.sum().item()

    first, per_step = step_times(step, len(batches), spec.get("warmup", 1), spec.get("repeats", 3))
    return {"first_step_s": first, "step_s": per_step}


def predict(spec: dict[str, Any]) -> dict[str, Any]:
    """A `transformers` text-classification pipeline on the run's exported model, over the test texts."""
    texts = read_json(spec["texts"])
    directory = f"{spec['run']}/export/model"
    classify, load = timed(lambda: transformers.pipeline("text-classification", model=directory, tokenizer=directory,
                                                         device="cpu"))
    kwargs = {"batch_size": 32, "truncation": True, "max_length": run_config("lora").data.max_length}
    labels, first = timed(lambda: classify(texts, **kwargs))
    _, warm = timed(lambda: classify(texts, **kwargs))
    return {"load_s": load, "first_s": first, "seconds": warm, "examples": len(texts),
            "examples_per_s": len(texts) / warm, "positive": sum(x["label"] == "positive" for x in labels)}


def time_to_accuracy(spec: dict[str, Any]) -> dict[str, Any]:
    """The default run as a Hugging Face `Trainer` + PEFT script (`benchmarks.hf_trainer`), in its own process."""
    import subprocess
    import sys
    import time

    from benchmarks.common import ROOT

    command = [sys.executable, "-m", "benchmarks.hf_trainer", "--output-dir", str(spec["output_dir"]),
               *[f"--set={o}" for o in spec.get("overrides", [])]]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"benchmarks.hf_trainer failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = read_json(f"{spec['output_dir']}/summary.json")
    return {"seconds": seconds, "accuracy": summary["test"]["accuracy"], "f1": summary["test"]["f1"],
            "steps": summary["steps"], "training_seconds": summary["training_seconds"],
            "peak_rss_mb": children_peak_mb()}


def _decoder():
    directory = _model_dir(DECODER)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval()
    return model, tokenizer


def generate(spec: dict[str, Any]) -> dict[str, Any]:
    model, tokenizer = _decoder()
    ids = torch.tensor([prompt_ids(tokenizer)])
    new = spec.get("new_tokens", 64)

    @torch.inference_mode()
    def run():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id)
        return out[0, ids.shape[1]:].tolist()

    tokens, first = timed(run)
    times = [timed(run)[1] for _ in range(spec.get("repeats", 3))]
    return {"first_s": first, "seconds": float(np.median(times)), "tokens_per_s": new / float(np.median(times)),
            "tokens": tokens}


def score(spec: dict[str, Any]) -> dict[str, Any]:
    """Every answer's log-likelihood after each prompt with the PyTorch model, batched as lm-evaluation-harness
    batches (sorted by length, padded, one forward per batch of `batch_size` requests)."""
    contexts, answers = read_json(spec["requests"])
    model, tokenizer = _decoder()
    requests = []
    for context in contexts:
        prompt = tokenizer(context, add_special_tokens=False)["input_ids"]
        for answer in answers:
            requests.append((prompt, tokenizer(answer, add_special_tokens=False)["input_ids"]))
    batch_size = spec.get("batch_size", 32)

    @torch.inference_mode()
    def run() -> list[float]:
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
        out = [0.0] * len(requests)
        for start in range(0, len(order), batch_size):
            rows = order[start: start + batch_size]
            width = max(len(requests[i][0]) + len(requests[i][1]) for i in rows)
            ids = torch.full((len(rows), width), tokenizer.pad_token_id or 0)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                sequence = requests[i][0] + requests[i][1]
                ids[r, : len(sequence)], mask[r, : len(sequence)] = torch.tensor(sequence), 1
            logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            for r, i in enumerate(rows):
                prompt, answer = requests[i]
                positions = torch.arange(len(prompt) - 1, len(prompt) + len(answer) - 1)
                out[i] = float(logprobs[r, positions, torch.tensor(answer)].sum())
        return out

    logprob, first = timed(run)
    times = [timed(run)[1] for _ in range(spec.get("repeats", 2))]
    seconds = float(np.median(times))
    return {"first_s": first, "seconds": seconds, "examples_per_s": len(contexts) / seconds, "logprob": logprob}


WORKLOADS = {"train": train, "forward": forward, "predict": predict, "time-to-accuracy": time_to_accuracy,
             "generate": generate, "score": score}

if __name__ == "__main__":
    spec = spec_from_argv()
    report({**WORKLOADS[spec["workload"]](spec), "side": "torch"})
