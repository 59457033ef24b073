"""One run per output folder: a lock held for the whole run, and the checks that a folder may be used.

The lock is an advisory `flock` on `<run_dir>/.lock`: the operating system drops it when the process ends,
however it ends, so a crashed run never leaves a folder locked. A folder that a run started (it has the
`.lock` file) but left before its first checkpoint holds only that run's config and log: a new run starts
there afresh, replacing them. `data/`, where `tljax.fine_tune` writes the data it was given in memory before
the run starts, does not make a folder hold a run, and no run removes it. A folder with a checkpoint or a
result, or with anything else a run did not write, is never touched.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from tljax.errors import InputError
from tljax.train.checkpoints import saved_steps

LOCK_NAME = ".lock"
# what a run writes before its first checkpoint: a folder holding only these holds no run yet
STARTED_FILES = {"config.yaml", "metrics.jsonl", "checkpoints", LOCK_NAME}
# the data `tljax.fine_tune` was given in memory, written as files before the run starts (its config reads them):
# a folder holding only it holds no run yet either, and a run starting afresh there keeps it
RUN_DATA = "data"


class RunDirectoryError(InputError):
    """An output folder that another run is using, or that does not fit the command (--resume or not)."""


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a checkpoint's save completed (half-written ones do not count)."""
    return bool(saved_steps(Path(run_dir) / "checkpoints" / "latest"))


def holds_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds anything but what a run started there wrote before its first checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    names = {p.name for p in run_dir.iterdir()}
    started = LOCK_NAME in names and not any((run_dir / n).is_symlink() for n in names)
    data = {RUN_DATA} if (run_dir / RUN_DATA).is_dir() and not (run_dir / RUN_DATA).is_symlink() else set()
    return has_checkpoint(run_dir) or bool(names - (STARTED_FILES if started else set()) - data)


def _holder(lock_path: Path) -> str:
    try:
        return f" (process {int(lock_path.read_text().strip())})"
    except (OSError, ValueError):
        return ""


def _busy(run_dir: Path) -> RunDirectoryError:
    return RunDirectoryError(f"another run is using {run_dir}{_holder(Path(run_dir) / LOCK_NAME)}; wait for it to "
                             "finish, or choose another output_dir (--set output_dir=runs/NAME)")


def is_held(run_dir: Path) -> bool:
    """Whether a run holds `run_dir` now (its process is alive and has the lock)."""
    lock_path = Path(run_dir) / LOCK_NAME
    if not lock_path.is_file():
        return False
    with lock_path.open("r") as handle:
        try:  # a shared probe: it fails only while a run holds the folder
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
        except BlockingIOError:
            return True
    return False


def check_usable(run_dir: Path, *, resume: bool) -> bool:
    """Whether the run continues from a checkpoint. Refuses at once a folder that another run holds, that
    holds a run (without --resume), or that has no checkpoint (with --resume), except a folder whose run
    stopped before its first checkpoint was saved: --resume starts that run again from the beginning.
    Nothing is written."""
    if is_held(run_dir):
        raise _busy(Path(run_dir))
    return _check_contents(Path(run_dir), resume=resume)


def started_before_first_checkpoint(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run that stopped (or was killed) before its first checkpoint was saved."""
    return (Path(run_dir) / LOCK_NAME).is_file() and not holds_run(run_dir)


def _check_contents(run_dir: Path, *, resume: bool) -> bool:
    if resume and not has_checkpoint(run_dir):
        if started_before_first_checkpoint(run_dir):
            return False
        raise RunDirectoryError(f"--resume: {run_dir} has no checkpoint to continue from")
    if not resume and holds_run(run_dir):
        raise RunDirectoryError(f"{run_dir} already holds a run: continue it with --resume, or choose another "
                                "output_dir (--set output_dir=runs/NAME)")
    return resume


class RunLock:
    """The claim on a run folder for as long as the run lasts (use as a context manager). `resume` is
    settled on entry: False where --resume found no saved checkpoint (the run starts again)."""

    def __init__(self, run_dir: Path, *, resume: bool):
        self.run_dir, self.resume = Path(run_dir), resume
        self._handle = None

    def __enter__(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = (self.run_dir / LOCK_NAME).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise _busy(self.run_dir) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        try:  # again, now that no other run can start here
            self.resume = _check_contents(self.run_dir, resume=self.resume)
        except BaseException:
            self.__exit__()
            raise
        if not self.resume:  # what a run that stopped before its first checkpoint left
            for name in STARTED_FILES - {LOCK_NAME}:
                path = self.run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
