"""Checkpoints with orbax: the trainable parameters, the optimiser state and the run's position.

Frozen parameters are not saved: they come back from the pre-trained model. Every array is stored under
its path ("trainable/<parameter path>", "opt_state/<optimiser state path>", "/"-joined), and the JSON
metadata (step, data position, seed, global batch, metrics) lists every path with its shape: a run reads
each array by name, and a path missing from the checkpoint or new in the run is named, never filled by
position. The optimiser state is stored without gradient accumulation's wrapper (which holds only zeros
and the step count between optimiser steps, where checkpoints are taken), so that a run may resume with
another number of accumulated micro-batches. Arrays are saved as they are sharded (each process writes its
own shards) and restored onto the shardings of the run that reads them, which may use another mesh.

Nothing half-written is ever read back. Orbax writes a checkpoint into a temporary folder and renames it
when complete; tljax then writes `checksums.json` (the SHA-256 of every file, after syncing them to disk)
into it, last. Only a checkpoint with that file counts as saved; the two newest saved ones are kept, an
older one is deleted only after its successor is saved. On restore every file is checked against its checksum: a damaged checkpoint is named in
one line and the previous good one, if any, is used.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from tljax import faults
from tljax.methods.rules import tree_paths
from tljax.models.checkpoint import CheckpointError

log = logging.getLogger(__name__)

CHECKSUMS = "checksums.json"
KEEP = 2  # the newest saved checkpoint and the one before it, to fall back to if the newest is damaged
ARRAYS = "arrays"  # the metadata's {path: shape} of every stored array; absent in the earlier positional layout


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (e.g. a full disk); the previous one is kept."""


def by_path(tree: Any) -> dict[str, Any]:
    """{"/"-joined path: leaf} of `tree`, the paths of `tree_paths` (the rules' names of parameters, optimiser
    state fields by name)."""
    keyed = dict(zip(jax.tree.leaves(tree_paths(tree)), jax.tree.leaves(tree)))
    if len(keyed) != len(jax.tree.leaves(tree)):  # two leaves under one name could be read into each other's place
        raise ValueError("two leaves of one tree have the same path")
    return keyed


def _portable(opt_state: Any) -> Any:
    """The optimiser state as stored: without gradient accumulation's wrapper (`optax.MultiSteps`), which
    between optimiser steps holds only a zero micro-step count, zero gradient sums and the step count."""
    return opt_state.inner_opt_state if isinstance(opt_state, optax.MultiStepsState) else opt_state


def _stored(trainable: Any, opt_state: Any) -> dict[str, dict[str, Any]]:
    return {"trainable": by_path(trainable), "opt_state": by_path(_portable(opt_state))}


def _shapes(state: dict[str, dict[str, Any]]) -> dict[str, list[int]]:
    return {f"{part}/{path}": list(np.shape(leaf)) for part, tree in state.items() for path, leaf in tree.items()}


def _ordered(paths: set[str]) -> list[str]:
    return sorted(paths, key=lambda p: (not p.startswith("trainable/"), p))  # parameters before their moments


def _listed(paths: set[str], what: str) -> str:
    ordered = _ordered(paths)
    return f"{what}: {', '.join(ordered[:3])}" + (f" and {len(ordered) - 3} more" if len(ordered) > 3 else "")


def mismatch(saved: dict[str, list[int]], wanted: dict[str, list[int]]) -> str | None:
    """What keeps a checkpoint whose arrays are `saved` ({path: shape}) from a run that wants `wanted`: the
    paths missing from it, the paths it has that the run has not, the paths whose shape differs; None if
    every path fits."""
    missing, extra = set(wanted) - set(saved), set(saved) - set(wanted)
    reshaped = _ordered({p for p in set(saved) & set(wanted) if list(saved[p]) != list(wanted[p])})
    parts = ([_listed(missing, "missing from it")] if missing else []) + \
        ([_listed(extra, "in it but not in this run")] if extra else []) + \
        [f"{p} is {tuple(saved[p])} in it, {tuple(wanted[p])} in this run" for p in reshaped[:3]]
    return "; ".join(parts) or None


def saved_steps(directory: Path) -> list[int]:
    """The steps under `directory` (e.g. checkpoints/latest) whose save completed, newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / CHECKSUMS).is_file()),
                  reverse=True)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        os.fsync(handle.fileno())  # on disk before the checksums that vouch for it
    return digest.hexdigest()


def _write_checksums(folder: Path) -> None:
    sums = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(folder)}
    partial = folder / f".{CHECKSUMS}.partial"
    with partial.open("w") as handle:
        json.dump(sums, handle, indent=0)
        handle.flush()
        os.fsync(handle.fileno())
    partial.rename(folder / CHECKSUMS)  # the commit: atomic
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the rename itself on disk
    finally:
        os.close(descriptor)


def damage(folder: Path) -> str | None:
    """What is wrong with the saved checkpoint in `folder` (a file missing, changed or added), or None."""
    try:
        sums = json.loads((folder / CHECKSUMS).read_text())
        if not isinstance(sums, dict):
            raise ValueError
    except FileNotFoundError:
        return "its save did not complete"
    except (OSError, ValueError):
        return f"its {CHECKSUMS} is unreadable"
    present = {str(p.relative_to(folder)) for p in _files(folder)}
    for name, expected in sorted(sums.items()):
        if name not in present:
            return f"{name} is missing"
        size = (folder / name).stat().st_size
        if not isinstance(expected, dict) or size != expected.get("bytes"):
            return f"{name} has {size} bytes, not the {expected.get('bytes')} it was saved with (cut short or grown)" \
                if isinstance(expected, dict) else f"its {CHECKSUMS} is unreadable"
        if _sha256(folder / name) != expected.get("sha256"):
            return f"{name} does not match its checksum (its bytes were changed)"
    extra = sorted(present - set(sums))
    return f"{extra[0]} was added after the save" if extra else None


@contextlib.contextmanager
def _quiet_orbax():
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl.setLevel(level)


def _drop_closed_loop_reports() -> None:
    """When a save fails, tensorstore's writes still in flight report to the event loop orbax has closed,
    during the save and after it, and each report prints a traceback ("Event loop is closed", through
    sys.unraisablehook): over a hundred on a full disk. The run stops with one line that says what happened,
    so these reports (nothing else raises them) are dropped, from the first save on."""
    report = sys.unraisablehook
    if getattr(report, "drops_closed_loop_reports", False):
        return

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
            report(unraisable)

    hook.drops_closed_loop_reports = True
    sys.unraisablehook = hook


def _reason(error: BaseException) -> str:
    """What went wrong in a few words (tensorstore's messages hold every path of the database)."""
    text = " ".join(str(error).split())
    if "No space left on device" in text or getattr(error, "errno", None) == errno.ENOSPC:
        return "No space left on device: the disk is full"
    return text[:300] or type(error).__name__


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class Checkpoints:
    """`latest/` (to resume) and `best/` (the best evaluation so far): the two newest saved checkpoints of
    each (the older one is the fallback if the newer one is found damaged).

    Every process of a multi-process run makes the same calls (orbax writes collectively); process 0
    writes the checksums and removes what is left over."""

    def __init__(self, directory: Path):
        self.directory = Path(directory).resolve()  # orbax needs absolute paths
        options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=False)
        self._managers = {which: ocp.CheckpointManager(self.directory / which, options=options)
                          for which in ("latest", "best")}
        for which in self._managers:
            self._discard_unfinished(which)
        self._saved = {which: next(iter(saved_steps(self.directory / which)), None) for which in self._managers}

    def saved_step(self, which: str) -> int | None:
        """The step of the newest saved checkpoint of `which`, or None."""
        return self._saved[which]

    def _discard_unfinished(self, which: str) -> None:
        """Removes what an interrupted save left (orbax's temporary folders, a step without checksums) and
        every saved step but the newest KEEP."""
        folder = self.directory / which
        if jax.process_index() == 0 and folder.is_dir():
            kept = saved_steps(folder)[:KEEP]
            for path in folder.iterdir():
                if path.is_dir() and not (path.name.isdigit() and int(path.name) in kept):
                    shutil.rmtree(path, ignore_errors=True)
        _barrier(f"tljax-checkpoints-clean-{which}")
        self._managers[which].reload()

    def save(self, which: str, step: int, trainable: Any, opt_state: Any, meta: dict[str, Any]) -> None:
        """Saves a checkpoint of `which` at `step`, then drops the previous one. On an error (a full disk)
        the new one is removed, the previous one kept, and `CheckpointWriteError` says so."""
        manager = self._managers[which]
        state = _stored(trainable, opt_state)
        meta = {**meta, ARRAYS: _shapes(state)}
        if jax.process_index() == 0:  # a damaged checkpoint of this step that a resume passed over
            shutil.rmtree(self.directory / which / str(step), ignore_errors=True)
        _barrier(f"tljax-checkpoint-replace-{which}-{step}")
        manager.reload()
        _drop_closed_loop_reports()
        try:
            with _quiet_orbax():  # its threads log a traceback per failed write; the error below says it once
                manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                           meta=ocp.args.JsonSave(meta)), force=True)
                manager.wait_until_finished()
            faults.point("checkpoint-write")  # written, not yet vouched for
            _barrier(f"tljax-checkpoint-{which}-{step}")
            if jax.process_index() == 0:
                _write_checksums(self.directory / which / str(step))
        except (OSError, ValueError, RuntimeError) as error:  # tensorstore reports a full disk as ValueError
            self._discard_unfinished(which)  # what the failed save wrote
            kept = self._saved["latest"]  # what --resume continues from
            raise CheckpointWriteError(
                f"could not save the {which} checkpoint of step {step} in {self.directory / which} "
                f"({_reason(error)}); "
                + (f"the checkpoint of step {kept} is kept" if kept is not None else "no earlier checkpoint exists")
                + ". Free disk space (or fix the error), then continue with --resume") from error
        self._saved[which] = step
        self._discard_unfinished(which)

    def newest(self, which: str) -> tuple[int, dict[str, Any]] | None:
        """(step, metadata) of the newest good checkpoint of `which` (a damaged one is reported and the one
        before it taken), None if none was saved. A checkpoint of the earlier positional layout is refused."""
        folder = self.directory / which
        steps = saved_steps(folder)
        if not steps:
            return None
        problems = []
        for step in steps:
            problem = damage(folder / str(step))
            if problem is None:
                if problems:
                    log.warning("checkpoint %s/%d is damaged (%s); continuing from step %d instead", folder,
                                steps[0], problems[0], step)
                meta = self._managers[which].restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                meta = meta["meta"]
                if ARRAYS not in meta:
                    raise CheckpointError(
                        f"the checkpoint {folder / str(step)} stores its arrays by position (an earlier tljax "
                        "layout this version does not read, as arrays of one shape could be swapped); start again "
                        "in a new output_dir, or resume it with the tljax version that wrote it")
                return step, meta
            problems.append(problem)
        listed = "; ".join(f"step {s}: {p}" for s, p in zip(steps, problems))
        raise CheckpointError(f"no usable checkpoint in {folder} ({listed}); remove {self.directory} to start the "
                              "run again from the beginning, or start a new run in another output_dir")

    def restore(self, which: str, trainable: Any, opt_state: Any,
                found: tuple[int, dict[str, Any]] | None = None) -> tuple[Any, Any, dict[str, Any]] | None:
        """(trainable, opt_state, meta) of the newest good checkpoint of `which` (or of `found`, what `newest`
        returned), shaped and sharded like the given trees, each array read by its path; None if none was
        saved. A path missing from the checkpoint, or one it has that the run has not, is named."""
        found = found or self.newest(which)
        if found is None:
            return None
        step, meta = found
        template = _stored(_abstract(trainable), _abstract(opt_state))
        problem = mismatch(meta[ARRAYS], _shapes(template))
        if problem:
            raise CheckpointError(f"the checkpoint {self.directory / which / str(step)} does not fit this run's "
                                  f"parameters and optimiser: {problem}; resume with the config and tljax version "
                                  "that wrote it, or start a new run in another output_dir")
        try:
            with _quiet_orbax():
                restored = self._managers[which].restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(template)))["state"]
        except (ValueError, KeyError, TypeError) as error:  # its listing and its arrays disagree
            raise CheckpointError(f"the checkpoint {self.directory / which / str(step)} could not be read "
                                  f"({_reason(error)}); start a new run in another output_dir") from error

        def rebuild(tree, saved):
            paths = by_path(tree)
            return jax.tree.unflatten(jax.tree.structure(tree), [saved[path] for path in paths])

        self._saved[which] = step
        return rebuild(trainable, restored["trainable"]), _refit(opt_state, rebuild(
            _portable(opt_state), restored["opt_state"]), step), {k: v for k, v in meta.items() if k != ARRAYS}

    def close(self) -> None:
        for manager in self._managers.values():
            manager.close()


def _refit(template: Any, inner: Any, step: int) -> Any:
    """`inner` (a stored optimiser state) in the form of `template`, the run's state: wrapped for gradient
    accumulation if the run accumulates, as the wrapper stands after optimiser step `step` (no micro-batch
    counted, no gradient summed), placed like `template`."""
    if not isinstance(template, optax.MultiStepsState):
        return inner
    rest = template._replace(inner_opt_state=())
    start = jax.jit(lambda r: r._replace(mini_step=jnp.zeros_like(r.mini_step),
                                         gradient_step=jnp.full_like(r.gradient_step, step),
                                         acc_grads=jax.tree.map(jnp.zeros_like, r.acc_grads)),
                    out_shardings=jax.tree.map(lambda x: getattr(x, "sharding", None), rest))(rest)
    return start._replace(inner_opt_state=inner)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)
