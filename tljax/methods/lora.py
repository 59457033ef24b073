"""LoRA: a trainable low-rank update `x @ lora_a @ lora_b * alpha / rank` beside each frozen target kernel.

`LoRALinear` keeps the wrapped projection's `kernel` and `bias` at the same place in the parameter tree
and adds `lora_a` [in, rank] and `lora_b` [rank, out] beside them, so a checkpoint of the base model loads
with or without LoRA. `lora_b` starts at zero: at initialisation the model computes exactly what it did.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from tljax.methods.base import Method, MethodContext, layout, linear_modules, replace_module, task_head_pattern
from tljax.methods.rules import MethodError, PathRules, Rule
from tljax.models.layers import Linear, dropout

Array = jax.Array


class LoRALinear(Linear):
    """A projection plus its low-rank update; `merged` folds the update into `kernel` for inference."""

    def __init__(self, base: Linear, rank: int, alpha: float, dropout_rate: float, key: Array):
        self.kernel, self.bias = base.kernel, base.bias
        self.in_features, self.out_features, self.dtype = base.in_features, base.out_features, base.dtype
        bound = 1.0 / math.sqrt(self.in_features)  # PyTorch's kaiming_uniform(a=sqrt(5)), as PEFT does
        dtype = base.kernel.dtype
        self.lora_a = nnx.Param(jax.random.uniform(key, (self.in_features, rank), dtype, -bound, bound))
        self.lora_b = nnx.Param(jnp.zeros((rank, self.out_features), dtype))
        self.scaling = alpha / rank
        self.dropout_rate = dropout_rate
        self.merged = False

    def delta(self) -> Array:
        """The update the adapter adds to `kernel`: [in, out]."""
        return (self.lora_a[...] @ self.lora_b[...]) * self.scaling

    def __call__(self, x: Array, dropout_key: Array | None = None) -> Array:
        y = super().__call__(x)
        if self.merged:
            return y
        h = dropout(x, self.dropout_rate, dropout_key).astype(self.dtype)
        update = (h @ self.lora_a[...].astype(self.dtype)) @ self.lora_b[...].astype(self.dtype)
        return y + update * jnp.asarray(self.scaling, self.dtype)


@dataclasses.dataclass(frozen=True)
class LoRA(Method):
    """Low-rank adapters on the projections named in `targets` (or whose module path matches
    `target_pattern`); default targets: the attention query and value projections."""

    name: ClassVar[str] = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Sequence[str] | None = None
    target_pattern: str | None = None

    def target_paths(self, model: nnx.Module) -> list[str]:
        """Module paths of the projections this LoRA adapts; errors name the valid targets."""
        linears = {p: m for p, m in linear_modules(model) if not _is_head(model, p)}  # the head trains whole
        names = sorted({path.rsplit("/", 1)[-1] for path in linears})
        if self.target_pattern is not None:
            found = [p for p in linears if re.search(self.target_pattern, p)]
            if not found:
                raise MethodError(f"LoRA target_pattern {self.target_pattern!r} matches no projection; "
                                 f"projections are named: {', '.join(names)}")
            return found
        targets = self.targets or layout(model).lora_targets
        unknown = sorted(set(targets) - set(names))
        if unknown or not targets:
            raise MethodError(f"unknown LoRA target modules {unknown or list(targets)}; valid: {', '.join(names)}")
        return [p for p in linears if p.rsplit("/", 1)[-1] in targets]

    def apply(self, model: nnx.Module, context: MethodContext) -> None:
        paths = self.target_paths(model)
        keys = jax.random.split(jax.random.key(context.seed), len(paths))
        linears = dict(linear_modules(model))
        for path, key in zip(paths, keys):
            base = linears[path]
            if isinstance(base, LoRALinear):
                raise MethodError(f"{path} already has a LoRA adapter")
            if not 0 < self.rank <= min(base.in_features, base.out_features):
                raise MethodError(f"LoRA rank {self.rank} is invalid for {path} ({base.in_features} -> "
                                 f"{base.out_features}): it must be between 1 and "
                                 f"{min(base.in_features, base.out_features)}")
            replace_module(model, path, LoRALinear(base, self.rank, self.alpha, self.dropout, key))

    def rules(self, model: nnx.Module, step: int = 0) -> PathRules:
        return PathRules((Rule(r"/lora_[ab]$", True, self.name),))

    def new_parameters(self) -> tuple[str, ...]:
        return (r"/lora_[ab]$",)


def _is_head(model: nnx.Module, path: str) -> bool:
    pattern = task_head_pattern(model)  # the pooler trains whole with the head: no LoRA beside it
    return bool(pattern and re.search(pattern, path + "/"))


def lora_modules(model: nnx.Module) -> list[tuple[str, LoRALinear]]:
    return [(p, m) for p, m in linear_modules(model) if isinstance(m, LoRALinear)]


def merge(model: nnx.Module) -> None:
    """Folds every LoRA update into its kernel (inference runs at the base model's cost). In place."""
    for _, module in lora_modules(model):
        if not module.merged:
            module.kernel.set_value(module.kernel[...] + module.delta().astype(module.kernel.dtype))
            module.merged = True


def unmerge(model: nnx.Module) -> None:
    """Takes every merged LoRA update back out of its kernel. In place."""
    for _, module in lora_modules(model):
        if module.merged:
            module.kernel.set_value(module.kernel[...] - module.delta().astype(module.kernel.dtype))
            module.merged = False


def merge_and_unload(model: nnx.Module) -> None:
    """Merges and replaces each `LoRALinear` by a plain projection: a base-architecture model that
    `save_pretrained` writes as an ordinary Hugging Face directory. In place."""
    merge(model)
    for path, module in lora_modules(model):
        replace_module(model, path, Linear.from_variables(module.kernel, module.bias, module.dtype))
