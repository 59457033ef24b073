"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020).

A small residual block `y + up(act(down(y)))` on the output of a sub-layer's final projection. Houlsby puts
one after the attention block and one after the feed-forward block (and trains the layer norms); Pfeiffer
only after the feed-forward block. `up` starts at zero, so an adapted model starts as the base model.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

import jax
from flax import nnx

from tljax.methods.base import Method, MethodContext, layout, linear_modules, replace_module
from tljax.methods.rules import MethodError, PathRules, Rule
from tljax.models.layers import ACTIVATIONS, Linear, layer_keys

Array = jax.Array


class Bottleneck(nnx.Module):
    def __init__(self, features: int, size: int, activation: str, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.down = Linear(features, size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.up = Linear(size, features, dtype=dtype, param_dtype=param_dtype, init_std=0.0, rngs=rngs)
        self.activation = activation

    def __call__(self, y: Array) -> Array:
        return y + self.up(ACTIVATIONS[self.activation](self.down(y)))


class AdaptedLinear(Linear):
    """A projection followed by a bottleneck adapter; `kernel` and `bias` stay where they were."""

    def __init__(self, base: Linear, size: int, activation: str, rngs: nnx.Rngs):
        self.kernel, self.bias = base.kernel, base.bias
        self.in_features, self.out_features, self.dtype = base.in_features, base.out_features, base.dtype
        self.adapter = Bottleneck(base.out_features, size, activation, dtype=base.dtype,
                                  param_dtype=base.kernel.dtype, rngs=rngs)

    def __call__(self, x: Array, dropout_key: Array | None = None) -> Array:
        k1, _ = layer_keys(dropout_key, 2)
        return self.adapter(super().__call__(x, k1))


@dataclasses.dataclass(frozen=True)
class Adapters(Method):
    """Bottleneck adapters of size hidden / `reduction_factor`, in the Houlsby or Pfeiffer placement."""

    name: ClassVar[str] = "adapters"
    kind: str = "houlsby"
    reduction_factor: int = 16
    activation: str = "relu"
    train_norms: bool | None = None  # default: True for Houlsby (as in the paper), False for Pfeiffer

    def __post_init__(self) -> None:
        if self.kind not in ("houlsby", "pfeiffer"):
            raise MethodError(f"adapter kind {self.kind!r} is unknown; valid: houlsby, pfeiffer")
        if self.activation not in ACTIVATIONS:
            raise MethodError(f"adapter activation {self.activation!r} is unknown; valid: {', '.join(ACTIVATIONS)}")
        if self.reduction_factor < 1:
            raise MethodError(f"reduction_factor must be at least 1, got {self.reduction_factor}")

    def _patterns(self, model: nnx.Module) -> list[str]:
        """The projections an adapter follows: the feed-forward block's last (and, Houlsby, the attention's)."""
        facts = layout(model)
        return [facts.attention_output, facts.feed_forward_output] if self.kind == "houlsby" \
            else [facts.feed_forward_output]

    def apply(self, model: nnx.Module, context: MethodContext) -> None:
        size = max(1, model.config.hidden_size // self.reduction_factor)
        rngs = nnx.Rngs(context.seed)
        patterns = self._patterns(model)
        for path, linear in list(linear_modules(model)):
            if any(re.search(p, path) for p in patterns):
                replace_module(model, path, AdaptedLinear(linear, size, self.activation, rngs))

    def rules(self, model: nnx.Module, step: int = 0) -> PathRules:
        rules = [Rule(r"/adapter/", True, f"{self.kind} adapters")]
        train_norms = self.kind == "houlsby" if self.train_norms is None else self.train_norms
        if train_norms:
            rules.append(Rule(layout(model).norms, True, f"{self.kind} adapters: layer norms"))
        return PathRules(tuple(rules))

    def new_parameters(self) -> tuple[str, ...]:
        return (r"/adapter/",)

