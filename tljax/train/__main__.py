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
    count, total = prepared.adaptation.count(10**9)
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


def _report(summary: dict, run_dir: Path) -> None:
    test = summary["test"]
    print(f"\ntest: accuracy {test['accuracy']:.4f}  precision {test['precision']:.4f}  recall {test['recall']:.4f}"
          f"  F1 {test['f1']:.4f}  MCC {test['mcc']:.4f}  (best checkpoint: step {summary['best_step']})")
    print(f"\n{summary['diagnosis']}\n")
    print(f"written to {run_dir}/: config.yaml, metrics.jsonl, curves.png, diagnosis.txt, summary.json, checkpoints/")
    for item in summary["export"]:
        print(f"  export: {item}")
    print(f"\nuse it:\n  python -m tljax.predict {run_dir} \"a delightful, moving film\"")
    if (run_dir / "export" / "model").is_dir():
        print(f"  in PyTorch: transformers.AutoModelForSequenceClassification.from_pretrained('{run_dir}/export/model')")
    if (run_dir / "export" / "adapter").is_dir():
        print(f"  in PyTorch: peft.AutoPeftModelForSequenceClassification.from_pretrained('{run_dir}/export/adapter')")


if __name__ == "__main__":
    sys.exit(main())
