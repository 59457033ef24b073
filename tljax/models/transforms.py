"""Generic operations on any of our models: its backbone, cutting layers out, compiling a call.

These go through the models' own interface (`base_model_prefix`, `num_layers`, `keep_layers`), so that code
outside `tljax.models` never asks which family a model is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
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


def jit_bound(model: nnx.Module, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn(model, *args)` compiled, with the model's state split off once and kept on the device.

    Returns `call(*args)`; the model's parameters are fixed at the time of the call to `jit_bound`."""
    graphdef, state = nnx.split(model)
    state = jax.device_put(state)
    compiled = jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))
    return lambda *args: compiled(state, *args)
