"""Generic operations on any of our models: its backbone, cutting layers out, compiling a call (and what the
compiled call costs, from the compiler's own analyses).

These go through the models' own interface (`base_model_prefix`, `num_layers`, `keep_layers`), so that code
outside `tljax.models` never asks which family a model is.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from tljax.models.config import ConfigError


def backbone(model: nnx.Module) -> nnx.Module:
    """The pre-trained body of a model with a head (`model.bert`, `model.model`), or the model itself."""
    return getattr(model, type(model).base_model_prefix, model)


def select_layers(model: nnx.Module, indices: list[int]) -> None:
    """Keeps only the backbone layers at `indices` (0-based, increasing), in place: a student built from a
    subset of a deeper model's layers (as DistilBERT is initialised from every other BERT layer)."""
    body = backbone(model)
    count = body.num_layers
    if not indices or any(not isinstance(i, int) or not 0 <= i < count for i in indices) \
            or sorted(set(indices)) != list(indices):
        raise ConfigError(f"distillation.student_layers {indices} must be increasing layer indices in 0..{count - 1} (the model "
                          f"has {count} layers), e.g. {list(range(0, count, 2))}")
    body.keep_layers(list(indices))
    model.config = body.config


@dataclasses.dataclass(frozen=True)
class ProgramCost:
    """What one compiled call costs, as the compiler counts it."""

    flops: float  # XLA's cost analysis (a multiply-add counts 2)
    peak_bytes: int  # arguments + outputs + temporaries - aliased buffers (XLA's memory analysis)


def program_cost(jitted: Any, *args: Any, flops_of: Any = None) -> ProgramCost:
    """The cost of `jitted(*args)` (a `jax.jit` function) from its compiled program; compiles if not cached.
    `flops_of`: another `jax.jit` function of the same arguments and arithmetic whose FLOPs are counted instead,
    from its lowered program (not compiled): XLA counts a loop's body once, so a program that scans over layers
    is counted through its unrolled twin."""
    compiled = jitted.lower(*args).compile()
    analysis = (flops_of.lower(*args) if flops_of is not None else compiled).cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis  # older JAX: one per device
    memory = compiled.memory_analysis()
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes) if memory is not None else 0
    return ProgramCost(float((analysis or {}).get("flops", 0.0)), int(peak))


class CallShapes:
    """How often a compiled function was called with each input shape (arrays only), to cost a typical call."""

    def __init__(self):
        self.counts: collections.Counter[tuple[jax.ShapeDtypeStruct, ...]] = collections.Counter()

    def record(self, *arrays: Any) -> None:
        # the array's own dtype: np.asarray on a device array would copy it to the host on every call
        self.counts[tuple(jax.ShapeDtypeStruct(np.shape(a), getattr(a, "dtype", None) or np.asarray(a).dtype)
                          for a in arrays)] += 1

    def typical(self) -> tuple[jax.ShapeDtypeStruct, ...] | None:
        """The median call by size (a shape that was compiled, so costing it is served by the compilation cache)."""
        if not self.counts:
            return None
        ordered = sorted(self.counts, key=lambda call: sum(int(np.prod(a.shape)) for a in call))
        middle, seen = sum(self.counts.values()) // 2, 0
        for call in ordered:
            seen += self.counts[call]
            if seen > middle:
                return call
        return ordered[-1]


def typical_cost(jitted: Any, state: Any, shapes: CallShapes, flops_of: Any = None
                 ) -> tuple[ProgramCost, int] | None:
    """(cost, rows of its batch) of the median recorded call of `jitted(state, *arrays)`; None if none was made.
    `flops_of`: as `program_cost`'s."""
    call = shapes.typical()
    return None if call is None else (program_cost(jitted, state, *call, flops_of=flops_of), call[0].shape[0])


class BoundFunction:
    """`fn(model, *args)` compiled, with the model's state split off once and kept on the device; the model's
    parameters are fixed at construction. Call it as `bound(*arrays)`; `bound.typical_cost()` is the compiled
    cost of its median call so far."""

    def __init__(self, model: nnx.Module, fn: Callable[..., Any]):
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state)
        self._jitted = jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))
        self.shapes = CallShapes()

    def __call__(self, *arrays: Any) -> Any:
        self.shapes.record(*arrays)
        return self._jitted(self._state, *arrays)

    def typical_cost(self) -> tuple[ProgramCost, int] | None:
        return typical_cost(self._jitted, self._state, self.shapes)


def jit_bound(model: nnx.Module, fn: Callable[..., Any]) -> BoundFunction:
    """`fn(model, *args)` compiled with the model bound (see `BoundFunction`)."""
    return BoundFunction(model, fn)
