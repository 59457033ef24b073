"""`python -m tljax.train [--config configs/X.yaml] [--set section.key=value ...] [--resume]`

With no arguments: the embedded default (LoRA on MiniLM-L6, Rotten Tomatoes sentiment). A config's `task`
chooses what the run predicts: sequence-classification (a label per text), token-classification (a tag per
word: named entities, configs/ner.yaml), question-answering (the answer's span in a passage, configs/qa.yaml),
masked-lm / causal-lm (continued pre-training; causal-lm with `chat`: chat tuning).
Several processes (hosts) train one run together when started with --coordinator / --num-processes /
--process-id, the JAX_* variables, or under SLURM / Open MPI with several tasks (see the README).
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
    group = parser.add_argument_group("several processes (hosts) training one run")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the run (JAX_NUM_PROCESSES)")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1 (JAX_PROCESS_ID)")
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run that JAX detects (e.g. a multi-host Cloud TPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    # the heavy imports (JAX, transformers) after argument parsing, so that --help answers at once
    from tljax.cache import enable_compilation_cache
    from tljax.errors import InputError
    from tljax.train import distributed
    from tljax.train.config import load_config
    from tljax.train.launch import launch
    from tljax.train.loop import TrainingStopped
    from tljax.train.outcome import report

    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id, distributed=args.distributed)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    enable_compilation_cache()  # the first step of a rerun (same shapes) does not compile again
    try:
        config = load_config(args.config, args.overrides)  # every setting checked here
        summary = launch(config, resume=args.resume)  # the same run as tljax.fine_tune's
    except InputError as error:  # the user's input: one line; anything else is a bug and keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingStopped as stopped:
        if distributed.is_main():  # the one that prints (every process reports its own errors)
            print(f"stopped: {stopped}{'. Continue with --resume' if stopped.resumable else ''}", file=sys.stderr)
        return EXIT_STOPPED
    if distributed.is_main():
        print(report(summary, Path(config.output_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
