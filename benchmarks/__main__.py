"""`python -m benchmarks [--quick] [--rounds N] [--only KIND,...] [--output docs/performance.md]`

Runs every workload on both sides, each measurement in its own process, alternated (round 1: tljax first,
round 2: PyTorch first, ...), and writes the report (`docs/performance.md` by default): for each workload
both sides' medians, the ratio tljax / PyTorch (the median of the rounds' ratios, each taken within its
round), peak resident memory and the first step's time (JAX's compilation, with the persistent cache off).

Kinds: train (full, LoRA, BitFit, prefix and prompt tuning, partial fine-tuning at the default run's shapes and at
32 x 128),
forward, time-to-accuracy (the default run end to end against `benchmarks.hf_trainer`), predict (the
trained run's export over the test split against a `transformers` pipeline), generate, score (the decoder),
sweep (a four-point learning-rate sweep of LoRA in one program against four runs). `--quick` is the smoke
run: a few steps of each, one round, to a scratch report (`--output` to choose), nothing asserted.
`--update` rewrites only the rows this run measures (`--only`, `--methods`) and keeps the report's others.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULT_PREFIX, ROOT, TRAIN_METHODS
from benchmarks.report import write_report

KINDS = ("train", "forward", "time-to-accuracy", "predict", "generate", "score", "sweep")
SWEEP_SCALES = (0.3, 1.0, 3.0, 10.0)


def run_worker(side: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in a fresh process; its result line, with the process' wall clock."""
    module = {"jax": "benchmarks.jax_side", "torch": "benchmarks.torch_side"}[side]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", module, json.dumps(spec, default=str)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "TLJAX_COMPILATION_CACHE": "0"})
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{module} {spec['workload']} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return {**json.loads(lines[-1][len(RESULT_PREFIX):]), "process_s": wall}


def plan(work: Path, quick: bool, kinds: set[str], methods: tuple[str, ...]
         ) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    """(row name, spec) of every paired measurement, in two parts: the headline (time to accuracy, predict,
    which classifies with its run, LoRA and full fine-tuning steps, inference, the decoder), then the other
    methods' steps (the sweep is measured between the two)."""
    repeats = 1 if quick else 2
    shapes = {"default shapes": work / "default.npz", "32 x 128": work / "32x128.npz"}
    quick_run = ["training.max_steps=4", "training.eval_steps=2", "data.max_eval_examples=32"] if quick else []

    def train(chosen):
        return [(f"train step, {method}, {shape}", {"workload": "train", "method": method, "batches": batches,
                                                   "repeats": repeats})
                for method in chosen for shape, batches in shapes.items()] if "train" in kinds else []

    rows: list[tuple[str, dict[str, Any]]] = []
    if "time-to-accuracy" in kinds:
        rows.append(("time to accuracy, the default run", {"workload": "time-to-accuracy", "overrides": quick_run}))
    if "predict" in kinds:
        rows.append(("predict, test split", {"workload": "predict", "texts": work / "test-texts.json"}))
    rows += train([m for m in methods if m in ("lora", "full")])
    if "forward" in kinds:
        rows += [(f"inference forward, {shape}", {"workload": "forward", "batches": batches, "repeats": repeats})
                 for shape, batches in shapes.items()]
    if "generate" in kinds:
        rows.append(("generate, greedy, KV cache", {"workload": "generate", "new_tokens": 4 if quick else 64,
                                                    "repeats": repeats}))
    if "score" in kinds:
        rows.append(("score, zero-shot log-likelihoods", {"workload": "score", "requests": work / "scoring.json",
                                                          "repeats": repeats}))
    return rows, train([m for m in methods if m not in ("lora", "full")])


def measure(name: str, spec: dict[str, Any], rounds: int, work: Path) -> dict[str, Any]:
    """Both sides, alternated for `rounds` rounds: {"name", "rounds": [{"jax": ..., "torch": ...}, ...]}."""
    measured = []
    for index in range(rounds):
        results = {}
        for side in (("jax", "torch") if index % 2 == 0 else ("torch", "jax")):
            one = dict(spec)
            if spec["workload"] == "time-to-accuracy":
                one["output_dir"] = work / f"runs/{side}-{index}"
            if spec["workload"] == "predict":
                one["run"] = work / "runs/jax-0"
            results[side] = run_worker(side, one)
            print(f"  {name} [{side}] " + _short(results[side]), flush=True)
        measured.append(results)
    return {"name": name, "workload": spec["workload"], "rounds": measured}


def measure_sweep(work: Path, quick: bool, rounds: int) -> dict[str, Any]:
    """The sweep in one program against one run per scale, one after another, alternated by round."""
    steps = 4 if quick else 30
    base = {"workload": "sweep", "batches": work / "default.npz", "steps": steps, "scales": list(SWEEP_SCALES)}
    measured = []
    for index in range(rounds):
        results = {}
        for mode in (("together", "separate") if index % 2 == 0 else ("separate", "together")):
            if mode == "together":
                results[mode] = run_worker("jax", base)
            else:
                parts = [run_worker("jax", {**base, "scale": scale}) for scale in SWEEP_SCALES]
                results[mode] = {"process_s": sum(p["process_s"] for p in parts),
                                 "peak_rss_mb": max(p["peak_rss_mb"] for p in parts),
                                 "final_loss": [p["final_loss"] for p in parts]}
            print(f"  sweep [{mode}] {results[mode]['process_s']:.1f} s", flush=True)
        measured.append(results)
    return {"name": f"LoRA learning-rate sweep, {len(SWEEP_SCALES)} points x {steps} steps", "workload": "sweep",
            "rounds": measured}


def _short(result: dict[str, Any]) -> str:
    keys = ("step_s", "first_step_s", "seconds", "accuracy", "tokens_per_s", "examples_per_s", "peak_rss_mb")
    return ", ".join(f"{k} {result[k]:.3g}" for k in keys if isinstance(result.get(k), (int, float)))


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    packages = {name: version(name) for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "peft")}
    return {"processor": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(), "packages": packages,
            "load_average": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few steps of each, one round (the smoke run)")
    parser.add_argument("--rounds", type=int, help="rounds of A/B alternation (default 2; 1 with --quick)")
    parser.add_argument("--only", help=f"comma-separated kinds: {', '.join(KINDS)}")
    parser.add_argument("--methods", help=f"comma-separated train methods (default: {', '.join(TRAIN_METHODS)}; "
                                          "lora,full with --quick)")
    parser.add_argument("--update", action="store_true", help="rewrite only the rows measured now, keep the others")
    parser.add_argument("--output", help="the report (default docs/performance.md; a scratch file with --quick)")
    parser.add_argument("--work", help="a folder for the inputs and runs (default: a temporary one)")
    args = parser.parse_args(argv)
    kinds = set(args.only.split(",")) if args.only else set(KINDS)
    if kinds - set(KINDS):
        parser.error(f"unknown kind(s) {', '.join(sorted(kinds - set(KINDS)))}; valid: {', '.join(KINDS)}")
    if "predict" in kinds and "time-to-accuracy" not in kinds:
        parser.error("predict classifies with the run that time-to-accuracy trains: include both")
    methods = tuple(args.methods.split(",")) if args.methods else (("lora", "full") if args.quick else TRAIN_METHODS)
    if set(methods) - set(TRAIN_METHODS):
        parser.error(f"unknown method(s) {', '.join(sorted(set(methods) - set(TRAIN_METHODS)))}; "
                     f"valid: {', '.join(TRAIN_METHODS)}")
    rounds = args.rounds or (1 if args.quick else 2)
    with tempfile.TemporaryDirectory(prefix="tljax-bench-") as scratch:
        work = Path(args.work or scratch)
        output = Path(args.output) if args.output else (work / "performance.md" if args.quick else
                                                        ROOT / "docs" / "performance.md")
        from benchmarks.data import prepare

        widths = prepare(work, 2 if args.quick else 10, 4 if args.quick else 64)
        started = time.perf_counter()
        command = "python -m benchmarks" + (" " + " ".join(sys.argv[1:] if argv is None else argv)).rstrip()
        rows: list[dict[str, Any]] = []
        before = output.read_text() if args.update and output.is_file() else None  # read once: rows are added

        def write() -> None:  # after every row: an interrupted benchmark keeps what it measured
            meta = {"machine": machine(), "commands": [command], "rounds": rounds, "default_widths": widths,
                    "minutes": (time.perf_counter() - started) / 60}
            write_report(output, rows, meta, update_of=before)

        headline, others = plan(work, args.quick, kinds, methods)
        for name, spec in headline + ([("sweep", None)] if "sweep" in kinds else []) + others:
            rows.append(measure_sweep(work, args.quick, rounds) if spec is None else measure(name, spec, rounds, work))
            write()
        print(f"written: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
