"""`python -m benchmarks.ner_methods [--steps N] [--output FILE]`: every transfer method on named-entity
recognition at the same budget, on MiniLM-L6 (English) and e5-small (English and Portuguese, trained on each
and scored on both).

Each run is `python -m tljax.train --config configs/ner.yaml` (or `ner_cross_lingual.yaml`) with the method
swapped in, in its own process. MiniLM-L6 tries each method at two learning rates (the method's usual rate
and 3x it) and keeps the one with the better validation entity F1; e5-small then runs each method at
MiniLM's best rate, trained on ner-en and on ner-pt, each scored on the other language's test split too. The
table (markdown, to stdout and `--output`) gives test entity F1, the baseline's, the training seconds and the
trainable parameters of every run; `results.jsonl` beside the runs keeps every summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT
from harness.training import NER_METHODS


def run(out: Path, name: str, config: str, method: str, rate: float, steps: int, *extra: str) -> dict:
    """One training run in its own process; its summary (cached: a finished run is not trained again)."""
    run_dir = out / name
    if not (run_dir / "summary.json").is_file():
        options, _ = NER_METHODS[method]
        spec = json.dumps({"name": method, **options})
        command = [sys.executable, "-m", "tljax.train", "--config", str(ROOT / "configs" / config),
                   "--set", f"method={spec}", "--set", f"training.learning_rate={rate}",
                   "--set", f"training.max_steps={steps}", "--set", f"training.eval_steps={max(steps // 4, 1)}",
                   "--set", "training.early_stopping_patience=null", "--set", f"output_dir={run_dir}", *extra]
        if method == "gradual-unfreezing":
            command += ["--set", "training.new_learning_rate=0.01"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
        summary = json.loads((run_dir / "summary.json").read_text())
        with (out / "results.jsonl").open("a") as handle:
            handle.write(json.dumps({"name": name, "method": method, "rate": rate, **summary}) + "\n")
    return json.loads((run_dir / "summary.json").read_text())


def best_validation_f1(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return max(r["f1"] for r in records if r.get("split") == "validation" and "f1" in r)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ner_methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--runs", type=Path, default=Path("runs/ner-methods"))
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--methods", default=",".join(NER_METHODS))
    parser.add_argument("--scales", default="1,3", help="the learning rates tried on MiniLM, as multiples of each "
                                                        "method's usual one")
    parser.add_argument("--minilm-only", action="store_true", help="skip the e5-small runs (both languages)")
    args = parser.parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    rows = ["| method | rate | MiniLM en | e5 en -> en | e5 en -> pt | e5 pt -> pt | e5 pt -> en | cross-lingual gap "
            "(en -> pt vs pt -> pt) | trainable (MiniLM / e5) | seconds (MiniLM / e5 en) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for method in args.methods.split(","):
        _, rate = NER_METHODS[method]
        minilm = {}
        for scale in map(float, args.scales.split(",")):
            name = f"minilm-{method}-{rate * scale:g}"
            minilm[rate * scale] = (run(args.runs, name, "ner.yaml", method, rate * scale, args.steps),
                                    best_validation_f1(args.runs / name))
        best = max(minilm, key=lambda r: minilm[r][1])
        chosen = minilm[best][0]
        if args.minilm_only:
            rows.append(f"| {method} | {best:g} | {chosen['test']['f1']:.3f} | | | | | | "
                        f"{chosen['trainable_parameters']:,} | {chosen['training_seconds']:.0f} |")
            print(rows[-1], flush=True)
            continue
        english = run(args.runs, f"e5-en-{method}", "ner_cross_lingual.yaml", method, best, args.steps)
        portuguese = run(args.runs, f"e5-pt-{method}", "ner_cross_lingual.yaml", method, best, args.steps,
                         "--set", "data.source=ner-pt", "--set", "evaluation={en: {source: ner-en, split: test}}")
        en_pt, pt_en = english["evaluation"]["pt"]["f1"], portuguese["evaluation"]["en"]["f1"]
        rows.append(f"| {method} | {best:g} | {chosen['test']['f1']:.3f} | {english['test']['f1']:.3f} | "
                    f"{en_pt:.3f} | {portuguese['test']['f1']:.3f} | {pt_en:.3f} | "
                    f"{portuguese['test']['f1'] - en_pt:+.3f} | {chosen['trainable_parameters']:,} / "
                    f"{english['trainable_parameters']:,} | {chosen['training_seconds']:.0f} / "
                    f"{english['training_seconds']:.0f} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows) + f"\n\nThe most-frequent-tag baseline scores {chosen['baseline']['f1']:.3f} entity F1 " \
                               "on the English test split.\n"
    print(table)
    if args.output:
        args.output.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
