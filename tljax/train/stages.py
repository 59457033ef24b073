"""Training in stages (gradual unfreezing): which leaves train at which step, computed once per stage.

The loop splits the model once, with every parameter that trains at some stage in `trainable`; a stage's
`mask` (a tree like `trainable` of 1.0 / 0.0) keeps the leaves not yet unfrozen from changing. Each stage's
leaves have their own Adam state (`stage_of` for `build_optimizer`), reset when the stage begins.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from tljax.methods import Adaptation
from tljax.methods.rules import tree_paths


@dataclasses.dataclass(frozen=True)
class Stages:
    starts: tuple[int, ...]  # the step at which each stage begins, 0 first
    masks: tuple[Any, ...]  # per stage: a tree like `trainable`, 1.0 where the leaf trains
    stage_of: dict[str, int]  # "/"-joined path -> the stage at which the leaf starts training

    def stage(self, step: int) -> int:
        """The stage that training step `step` (0-based) belongs to."""
        return bisect.bisect_right(self.starts, step) - 1


def training_stages(adaptation: Adaptation, trainable: Any) -> Stages | None:
    """The stages of `adaptation` over the leaves of `trainable` (its largest trainable set); None when the
    trainable set never changes."""
    starts = adaptation.stage_starts()
    if len(starts) == 1:
        return None
    paths = tree_paths(trainable)
    names = jax.tree.leaves(paths)
    stage_of: dict[str, int] = {}
    masks = []
    for number, step in enumerate(starts):
        decided = adaptation.rules(step).decide(names)
        for name in names:
            if decided[name].trainable:
                stage_of.setdefault(name, number)
        masks.append(jax.tree.map(lambda p: jnp.float32(decided[p].trainable), paths))
    missing = [name for name in names if name not in stage_of]
    if missing:  # the split's trainable set is the union of the stages'
        raise ValueError(f"parameters trainable at no stage: {missing[:5]}")
    return Stages(starts, tuple(masks), stage_of)
