"""What both sides share: the workload specs, the prepared batches, timing and the result line.

Imports neither JAX nor PyTorch, so that each side's process holds only its own framework.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
RESULT_PREFIX = "BENCHMARK-RESULT "
TRAIN_METHODS = ("full", "lora", "bitfit", "prefix", "prompt", "partial")
DECODER = "smollm2-135m-instruct"


def offline_environment() -> None:
    """Both sides on the CPU, no hub, no tokenizer threads competing with the measured work."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def threads() -> int:
    """The cores this process may use (PyTorch is given as many threads; XLA uses one per core)."""
    return len(os.sched_getaffinity(0))


def method_config(method: str) -> str | None:
    """The run config a method's workloads read (the default run's for LoRA: `configs/lora.yaml` is it)."""
    return None if method == "lora" else str(CONFIGS / f"{method}.yaml")


def run_config(method: str, overrides: list[str] = ()):
    """The tljax run config of `method`: what both sides train (learning rate, method options, data)."""
    from tljax.train.config import load_config

    return load_config(method_config(method), list(overrides))


def load_batches(path: str | Path) -> list[dict[str, np.ndarray]]:
    """The batches `benchmarks.data` wrote: a list of {input_ids, attention_mask, labels, weights} [B, T]."""
    with np.load(path) as archive:
        count = int(archive["count"])
        return [{key: archive[f"{i}/{key}"] for key in ("input_ids", "attention_mask", "labels", "weights")}
                for i in range(count)]


def peak_rss_mb() -> float:
    """This process' peak resident memory so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_peak_mb() -> float:
    """The peak resident memory of the largest child process this one has waited for (a training run)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def step_times(step: Callable[[int], None], batches: int, warmup: int, repeats: int) -> tuple[float, float]:
    """(first call's seconds, seconds per step): `step(i)` runs batch i; the first call (compilation in JAX)
    is timed alone, then `warmup` passes over every batch (every shape compiled), then `repeats` timed
    passes; per step = the median pass / `batches`."""
    _, first = timed(lambda: step(0))
    for i in range(1, batches):
        step(i)
    for _ in range(warmup - 1):
        for i in range(batches):
            step(i)
    passes = []
    for _ in range(repeats):
        _, seconds = timed(lambda: [step(i) for i in range(batches)])
        passes.append(seconds)
    return first, statistics.median(passes) / batches


def report(result: dict[str, Any]) -> None:
    """The result line the driver reads (last line of stdout); the peak memory is this process' unless the
    workload measured another's (a training process it started)."""
    result = {"peak_rss_mb": round(peak_rss_mb(), 1), **result}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def spec_from_argv() -> dict[str, Any]:
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python -m {sys.argv[0]} SPEC_JSON")
    return json.loads(sys.argv[1])


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def prompt_ids(tokenizer) -> list[int]:
    """The generation prompt both sides continue (the chat template of one question)."""
    messages = [{"role": "user", "content": "Write a short review of a film you liked, and say why."}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
