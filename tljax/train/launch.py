"""One run trained in this process, as `python -m tljax.train` trains it: the command and `tljax.fine_tune` both
call `launch`, so that a run started either way is the same run.

    summary = launch(load_config("configs/lora.yaml"), resume=False, say=print)

Every input is checked before anything is written (`prepare`), the output folder is claimed for the run's
length (`_claim`: one run per folder), the config is recorded, and the loop trains, evaluates and exports.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tljax.runs import FINAL_STEP
from tljax.train import distributed
from tljax.train.config import RunConfig
from tljax.train.loop import train, write_config
from tljax.train.run import prepare
from tljax.train.rundir import RunDirectoryError, RunLock, check_usable


def to_stderr(text: str) -> None:
    print(text, file=sys.stderr)


def launch(config: RunConfig, *, resume: bool = False, say: Callable[[str], None] = to_stderr) -> dict[str, Any]:
    """Trains the run `config` describes into its output_dir and returns its summary (summary.json). `resume`
    continues the run's checkpoint (a folder whose run stopped before its first checkpoint starts again). `say`
    is given the lines the run reports as it starts (the splits, the trainable parameters); only process 0's
    reach it. Raises an `InputError` before anything is written when an input is wrong, and `TrainingStopped`
    when the run stops early (interrupted: its checkpoint saved; a non-finite loss)."""
    say = say if distributed.is_main() else (lambda text: None)  # the one that prints
    run_dir = Path(config.output_dir)
    resuming = check_usable(run_dir, resume=resume)  # refused at once: another run's folder, a finished one
    prepared = prepare(config)  # every input checked before anything is written (the mesh too)
    with _claim(run_dir, resuming) as resuming:
        if resume and not resuming:
            say(f"--resume: {run_dir} has no saved checkpoint (the run stopped before its first one was "
                "complete); starting the run again from the beginning")
        if not resuming and distributed.is_main():  # a resumed run keeps its record (the loop checks the config)
            write_config(prepared, run_dir)
        say(prepared.split_report)
        count, total = prepared.objective.count(FINAL_STEP)
        say(f"{config.model}: training {count:,} of {total:,} parameters ({100 * count / total:.2f}%)")
        return train(prepared, run_dir, resume=resuming)


@contextlib.contextmanager
def _claim(run_dir: Path, resume: bool):
    """Holds the run folder's lock (process 0) for the block; yields whether the run resumes. Every
    process learns process 0's outcome, so that all start, or all stop, together."""
    lock, failure = None, None
    if distributed.is_main():
        try:
            lock = RunLock(run_dir, resume=resume).__enter__()
        except RunDirectoryError as error:
            failure = error
    outcome = distributed.from_main(-1 if failure else int(lock.resume) if lock else 0)  # process 0's counts
    if outcome < 0:
        raise failure or RunDirectoryError(f"process 0 could not claim {run_dir} (its output says why)")
    try:
        yield bool(outcome)
    finally:
        if lock is not None:
            lock.__exit__()
