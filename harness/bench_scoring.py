"""Benchmark: how fast decoder zero-shot scoring runs, our JAX scorer against EleutherAI's lm-evaluation-harness.

    python -m harness.bench_scoring [--items N] [--task sentiment-en] [--batch-size B]

This is a benchmark, not a test: it times things and prints a table. The suite does not run it, and its
numbers depend on the machine and on whatever else the machine is doing.

What it measures. N items of a harness task (`harness.suite.sample`, a fixed sample) are each asked as the
zero-shot chat prompt of `smollm2-135m-instruct` (`harness.variants.decoder_prompts`); every answer of the
task's template (its verbalisers) is scored as the continuation of that prompt, i.e. N x answers
log-likelihood requests. The same requests are scored, in the same run, on the CPU in float32 by

* ours: `harness.scoring.DecoderScorer` on `tljax.load("smollm2-135m-instruct")` (JAX; its own batching:
  each prompt run once, its keys and values cached, every answer scored against that cache), and
* lm-eval: `lm_eval.models.huggingface.HFLM(...).loglikelihood` (PyTorch) on the converted Hugging Face
  directory (`tljax.zoo.resolve`), with `--batch-size` (default 32; it sorts the requests by length),
  through the reference that the tests use (tests/lm_eval_reference.py).

Each side is timed twice, on the same requests: a first pass (ours includes JAX compilation; the persistent
compilation cache is off, so nothing is reused from earlier runs) and a second, warm pass. Model loading is
not timed. PyTorch runs with `torch.set_num_threads(2)`; XLA's CPU client keeps its default thread pool (one
thread per core). Printed: examples/s (items/s) and requests/s (items x answers) per side and pass, the
warm ratio ours / lm-eval, and the largest absolute difference between the two sides' per-request
log-likelihoods. The two must agree within 1e-3; if they do not, the exit status is 1.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # both sides on the CPU
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

MODEL = "smollm2-135m-instruct"
TOLERANCE = 1e-3  # the largest allowed |ours - lm-eval| of a request's log-likelihood
TORCH_THREADS = 2
TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"  # tests/lm_eval_reference.py


def _reference():
    """tests/lm_eval_reference.py: lm-eval's `HFLM` loaded once (`hflm`) and its `loglikelihood` (`loglikelihoods`)."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    try:
        import lm_eval_reference
    except ImportError as error:
        raise SystemExit(f"error: cannot import the lm-eval reference from {TESTS_DIR} ({error}); the benchmark "
                         "needs the repository checkout and lm-eval (pip install lm-eval, see constraints.txt)")
    return lm_eval_reference


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.bench_scoring", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200, help="items of the task to score (default 200)")
    parser.add_argument("--task", default="sentiment-en", help="a harness task (default sentiment-en)")
    parser.add_argument("--batch-size", type=int, default=32, help="lm-eval's batch size (default 32)")
    args = parser.parse_args(argv)
    if args.items < 1 or args.batch_size < 1:
        parser.error("--items and --batch-size must be at least 1")

    import jax
    import torch

    import tljax
    from harness.scoring import DecoderScorer
    from harness.suite import sample
    from harness.tasks import load_task
    from harness.variants import Variant, decoder_prompts
    from tljax import zoo

    jax.config.update("jax_enable_compilation_cache", False)  # the first pass compiles, whatever ran before
    torch.set_num_threads(TORCH_THREADS)
    for name in ("lm_eval", "lm-eval", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars
    ref = _reference()

    # the requests: each item's zero-shot chat prompt, followed by each answer (no delimiter: a chat template)
    task = load_task(args.task)
    items = sample(task.items, args.items)
    answers = list(task.template().verbalisers)
    model, tokenizer = tljax.load(MODEL)
    contexts, _ = decoder_prompts(Variant(kind="zero-shot", model=MODEL), task, items, tokenizer, seed=0)
    ours_requests = [(context, answers) for context in contexts]
    flat_requests = [(context, answer) for context in contexts for answer in answers]  # row-major: [N, L]
    n_items, n_requests = len(items), len(flat_requests)

    # ours: the scorer built (weights on the device) outside the timing; pass 1 compiles
    scorer = DecoderScorer(model, tokenizer)
    ours_times, ours = [], None
    for _ in range(2):
        scores, seconds = _timed(lambda: scorer(ours_requests))
        ours_times.append(seconds)
        ours = scores.logprob.astype(np.float64).reshape(-1)

    # lm-eval: HFLM loaded outside the timing
    model_dir = zoo.resolve(MODEL)
    _, load_seconds = _timed(lambda: ref.hflm(model_dir, args.batch_size))
    theirs_times, theirs = [], None
    for _ in range(2):
        result, seconds = _timed(lambda: ref.loglikelihoods(model_dir, flat_requests, args.batch_size))
        theirs_times.append(seconds)
        theirs = np.asarray([logprob for logprob, _ in result], np.float64)

    difference = float(np.max(np.abs(ours - theirs)))
    same_choice = float(np.mean(ours.reshape(n_items, -1).argmax(1) == theirs.reshape(n_items, -1).argmax(1)))

    print(f"# Decoder zero-shot scoring: {MODEL} on {task.name}, {n_items} items x {len(answers)} answers "
          f"= {n_requests} requests\n")
    print("| scorer | pass | seconds | examples/s | requests/s |")
    print("|---|---|---:|---:|---:|")
    rows = [("ours (JAX, DecoderScorer)", ("1st (with JAX compilation)", "2nd (warm)"), ours_times),
            (f"lm-eval HFLM (PyTorch, batch {args.batch_size})", ("1st", "2nd (warm)"), theirs_times)]
    for label, passes, times in rows:
        for which, seconds in zip(passes, times):
            print(f"| {label} | {which} | {seconds:.2f} | {n_items / seconds:.1f} | {n_requests / seconds:.1f} |")
    print()
    print(f"warm ratio ours / lm-eval (throughput): {theirs_times[1] / ours_times[1]:.2f}x "
          f"({ours_times[1]:.2f} s against {theirs_times[1]:.2f} s); first pass: "
          f"{theirs_times[0] / ours_times[0]:.2f}x")
    status = "ok" if difference <= TOLERANCE else "FAIL"
    print(f"max |log-likelihood ours - lm-eval| over the {n_requests} requests: {difference:.2e} "
          f"(tolerance {TOLERANCE:g}: {status}); same predicted answer (acc) on {same_choice:.1%} of the items")
    print(f"threads: torch.set_num_threads({torch.get_num_threads()}), interop {torch.get_num_interop_threads()}; "
          f"JAX/XLA: default CPU thread pool, XLA_FLAGS={os.environ.get('XLA_FLAGS', '(unset)')!r}; "
          f"model loading not timed (HFLM: {load_seconds:.1f} s)")
    print(f"command: python -m harness.bench_scoring {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip()
          + f" | machine: {platform.machine()}, os.cpu_count()={os.cpu_count()}, {platform.platform()}, "
          f"load average {os.getloadavg()[0]:.1f}, python {platform.python_version()}, jax {jax.__version__} ({jax.devices()[0].platform}), "
          f"torch {torch.__version__}, lm-eval {_version('lm_eval')}, transformers {_version('transformers')}")
    if difference > TOLERANCE:
        print(f"error: the two sides' log-likelihoods differ by {difference:.2e} > {TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package.replace("_", "-"))
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
