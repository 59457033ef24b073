"""`python -m tljax.train [--config configs/X.yaml] [--set section.key=value ...] [--resume]`

With no arguments: the embedded default (LoRA on MiniLM-L6, Rotten Tomatoes sentiment).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_BAD_INPUT, EXIT_STOPPED = 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tljax.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a YAML run config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. training.learning_rate=1e-3 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir from its checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    from tljax.train.loop import TrainingStopped, train, write_config

    try:
        config = _load(args)
        run_dir = Path(config.output_dir)
        if run_dir.exists() and not args.resume and any(run_dir.iterdir()):
            raise ValueError(f"{run_dir} already holds a run: continue it with --resume, or choose another "
                             "output_dir (--set output_dir=runs/NAME)")
        if args.resume and not any((run_dir / "checkpoints" / "latest").glob("[0-9]*")):
            raise ValueError(f"--resume: {run_dir} has no checkpoint to continue from")
        from tljax.train.run import prepare

        prepared = prepare(config)  # every input checked before anything is written
    except Exception as error:  # noqa: BLE001 - bad input of any kind: one line, no traceback
        if not _is_input_error(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    run_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume:  # a resumed run keeps its own record (the loop checks the config is the same)
        write_config(prepared, run_dir)
    print(prepared.split_report, file=sys.stderr)
    count, total = prepared.objective.count(10**9)
    print(f"{config.model}: training {count:,} of {total:,} parameters ({100 * count / total:.2f}%)", file=sys.stderr)
    try:
        summary = train(prepared, run_dir, resume=args.resume)
    except TrainingStopped as stopped:
        print(f"stopped: {stopped}", file=sys.stderr)
        return EXIT_STOPPED
    except ValueError as error:  # a resume whose config differs
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _report(summary, run_dir)
    return 0


def _load(args):
    from tljax.train.config import load_config

    return load_config(args.config, args.overrides)


def _is_input_error(error: Exception) -> bool:
    from tljax.data.sources import DataError
    from tljax.models import CheckpointError, ConfigError
    from tljax.train.config import ConfigKeyError
    from tljax.zoo import UnknownModelError

    return isinstance(error, (ConfigKeyError, DataError, UnknownModelError, ConfigError, CheckpointError,
                              FileNotFoundError, ValueError))


def _metrics_line(metrics: dict) -> str:
    return (f"accuracy {metrics['accuracy']:.4f}  precision {metrics['precision']:.4f}  recall {metrics['recall']:.4f}"
            f"  F1 {metrics['f1']:.4f}  MCC {metrics['mcc']:.4f}")


def _report(summary: dict, run_dir: Path) -> None:
    """The run's result in the terms of what it was for (classification, several tasks, language modelling,
    distillation, other languages)."""
    test = summary["test"]
    step = f"(best checkpoint: step {summary['best_step']})"
    if "perplexity" in test:
        before = summary["before"]["test"]
        print(f"\nheld-out test text: loss {before['loss']:.4f} -> {test['loss']:.4f}, perplexity "
              f"{before['perplexity']:.2f} -> {test['perplexity']:.2f}, token accuracy {before['accuracy']:.4f} -> "
              f"{test['accuracy']:.4f} {step}")
    elif "tasks" in test:
        print(f"\ntest, mean over {len(test['tasks'])} tasks: {_metrics_line(test)} {step}")
        for name, metrics in test["tasks"].items():
            print(f"  {name:20} {_metrics_line(metrics)}")
    else:
        print(f"\ntest: {_metrics_line(test)}  {step}")
    if "distillation" in summary:
        d = summary["distillation"]
        teacher, student = d["teacher"], d["student"]
        print(f"distillation: student accuracy {student['accuracy']:.4f} vs teacher {teacher['accuracy']:.4f} "
              f"({100 * d['accuracy_retained']:.1f}% retained); {student['parameters']:,} vs {teacher['parameters']:,} "
              f"parameters; {student['examples_per_second']:.0f} vs {teacher['examples_per_second']:.0f} "
              f"examples/s ({d['speed_up']:.2f}x)")
    for name, metrics in summary.get("evaluation", {}).items():
        print(f"  {name:20} ({metrics['language']}, {metrics['examples']} examples, not trained on): "
              f"{_metrics_line(metrics)}")
    print(f"\n{summary['diagnosis']}\n")
    print(f"written to {run_dir}/: config.yaml, metrics.jsonl, curves.png, diagnosis.txt, summary.json, checkpoints/")
    for item in summary["export"]:
        print(f"  export: {item}")
    if "perplexity" in test:
        if (run_dir / "export" / "model").is_dir():
            print(f"\nfine-tune from it: python -m tljax.train --set model={run_dir}/export/model")
        return
    predictable = run_dir if (run_dir / "export" / "run.json").is_file() else \
        next((p for p in sorted((run_dir / "export").iterdir()) if (p / "run.json").is_file()), run_dir)
    print(f"\nuse it:\n  python -m tljax.predict {predictable} \"a delightful, moving film\"")
    export_dir = predictable / "export" if predictable == run_dir else predictable
    if (export_dir / "model").is_dir():
        print(f"  in PyTorch: transformers.AutoModelForSequenceClassification.from_pretrained('{export_dir}/model')")
    if (export_dir / "adapter").is_dir():
        print(f"  in PyTorch: peft.AutoPeftModelForSequenceClassification.from_pretrained('{export_dir}/adapter')")


if __name__ == "__main__":
    sys.exit(main())
