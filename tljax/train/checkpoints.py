"""Checkpoints with orbax: the trainable parameters, the optimiser state and the run's position.

Frozen parameters are not saved: they come back from the pre-trained model. The trees are stored as
numbered leaves (their structure is rebuilt from the run config), with JSON metadata: step, data
position, seed, metrics. Orbax writes each checkpoint into a temporary directory and renames it when
complete, so an interrupted save never leaves a checkpoint that looks finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from tljax.models.checkpoint import CheckpointError


def _numbered(tree: Any) -> dict[str, Any]:
    return {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


class Checkpoints:
    """`latest/` (to resume) and `best/` (the best evaluation so far), one checkpoint each."""

    def __init__(self, directory: Path):
        self.directory = Path(directory).resolve()  # orbax needs absolute paths
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
        self.latest = ocp.CheckpointManager(self.directory / "latest", options=options)
        self.best = ocp.CheckpointManager(self.directory / "best", options=options)

    def save(self, which: str, step: int, trainable: Any, opt_state: Any, meta: dict[str, Any]) -> None:
        manager = self.latest if which == "latest" else self.best
        state = {"trainable": _numbered(trainable), "opt_state": _numbered(opt_state)}
        meta = {**meta, "leaves": _leaf_counts(trainable, opt_state)}
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)), force=True)
        manager.wait_until_finished()

    def restore(self, which: str, trainable: Any, opt_state: Any) -> tuple[Any, Any, dict[str, Any]] | None:
        """(trainable, opt_state, meta) of the saved checkpoint, shaped like the given trees; None if none."""
        manager = self.latest if which == "latest" else self.best
        step = manager.latest_step()
        if step is None:
            return None
        saved = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        unfit = CheckpointError(f"the checkpoint in {self.directory / which} does not fit this run's parameters and "
                                "optimiser (it was written by another tljax version or another config); start a "
                                "new run in another output_dir")
        if saved.get("leaves", _leaf_counts(trainable, opt_state)) != _leaf_counts(trainable, opt_state):
            raise unfit
        abstract = {"trainable": _numbered(_abstract(trainable)), "opt_state": _numbered(_abstract(opt_state))}
        try:
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                     meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as error:  # a checkpoint from before the leaf counts were saved
            raise unfit from error
        state = restored["state"]

        def rebuild(template, saved):
            leaves = [saved[str(i)] for i in range(len(jax.tree.leaves(template)))]
            return jax.tree.unflatten(jax.tree.structure(template), leaves)

        return rebuild(trainable, state["trainable"]), rebuild(opt_state, state["opt_state"]), restored["meta"]

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _leaf_counts(trainable: Any, opt_state: Any) -> list[int]:
    return [len(jax.tree.leaves(trainable)), len(jax.tree.leaves(opt_state))]


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)
