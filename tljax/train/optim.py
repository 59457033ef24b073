"""The optimiser, built over the trainable parameters only.

AdamW whose weight decay skips biases and normalisation scales; linear warm-up then linear, cosine or
constant decay; gradient clipping by global norm; gradient accumulation; and a separate learning rate for
the parameters a method created (the head, the prompt, LoRA, adapters) where a method wants one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from tljax.methods.rules import PathRules, tree_paths



@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optimiser's hyper-parameters, named as in Hugging Face's `TrainingArguments`."""

    learning_rate: float = 5e-5
    # learning rate of the new parameters (head, prompt, LoRA, adapters); None: `learning_rate`
    new_learning_rate: float | None = None
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    warmup_steps: int = 0
    lr_scheduler_type: str = "linear"  # linear | cosine | constant
    max_grad_norm: float | None = 1.0
    gradient_accumulation_steps: int = 1
    # what weight decay leaves alone (a regular expression over parameter paths): biases, and the norms that the
    # model's family names in its layout (`tljax.models.Layout.no_decay`), as Hugging Face's Trainer does
    no_decay: str = r"(?:^|/)bias$"

    def __post_init__(self) -> None:
        if self.lr_scheduler_type not in ("linear", "cosine", "constant"):
            raise ValueError(f"lr_scheduler_type {self.lr_scheduler_type!r} is unknown; valid: linear, cosine, constant")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be at least 1, got {self.gradient_accumulation_steps}")
        if self.learning_rate <= 0 or (self.new_learning_rate is not None and self.new_learning_rate <= 0):
            raise ValueError("learning rates must be positive")


def schedule(config: OptimizerConfig, peak: float, total_steps: int) -> optax.Schedule:
    """Warm-up from 0 to `peak` over `warmup_steps` optimiser updates, then decay to 0 at `total_steps`."""
    warmup = min(config.warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    if config.lr_scheduler_type == "linear":
        decay = optax.linear_schedule(peak, 0.0, decay_steps)
    elif config.lr_scheduler_type == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def build_optimizer(config: OptimizerConfig, total_steps: int, new_parameters: PathRules | None = None,
                    stage_of: Mapping[str, int] | None = None) -> optax.GradientTransformation:
    """The optimiser for a tree of trainable parameters (an `nnx.State`), `total_steps` updates long.

    `new_parameters` marks (as trainable=True) the parameters that take `new_learning_rate`. `stage_of` (path ->
    the stage at which the parameter starts training, for schedules such as gradual unfreezing) gives each stage
    its own Adam state, which `reset_stage` sets back to its start when that stage begins, so a newly unfrozen
    layer takes Adam's first steps (bias correction from step 1) while the learning-rate schedule stays global.
    """

    def adamw(peak: float) -> optax.GradientTransformation:
        return optax.adamw(schedule(config, peak, total_steps), b1=config.adam_beta1, b2=config.adam_beta2,
                           eps=config.adam_epsilon, weight_decay=config.weight_decay,
                           mask=lambda params: _map_paths(params, lambda p: not re.search(config.no_decay, p)))

    separate_new = config.new_learning_rate is not None and new_parameters is not None

    def group(path: str) -> str:
        kind = ("new" if new_parameters.match(path).trainable else "pretrained") if separate_new else ""
        return "/".join(part for part in (f"stage{stage_of[path]}" if stage_of else "", kind) if part)

    if not separate_new and not stage_of:
        update = adamw(config.learning_rate)
    else:
        peaks = {"new": config.new_learning_rate, "pretrained": config.learning_rate, "": config.learning_rate}
        labels = {group(path) for path in stage_of} if stage_of else {"new", "pretrained"}
        update = optax.multi_transform({label: adamw(peaks[label.rpartition("/")[2] if separate_new else ""])
                                        for label in sorted(labels)},
                                       lambda params: _map_paths(params, group))
    chain = [optax.clip_by_global_norm(config.max_grad_norm)] if config.max_grad_norm else []
    tx = optax.chain(*chain, update)
    if config.gradient_accumulation_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.gradient_accumulation_steps)
    return tx


def reset_stage(opt_state: Any, stage: int) -> Any:
    """`opt_state` with the Adam moments and step count of `stage`'s parameter groups back at their start
    (as a fresh optimiser for them would be); the learning-rate schedule's count is kept."""

    def reset(state: Any, inside: bool) -> Any:
        if isinstance(state, optax.MultiTransformState):
            return state._replace(inner_states={
                label: reset(inner, inside or label.split("/")[0] == f"stage{stage}")
                for label, inner in state.inner_states.items()})
        if inside and isinstance(state, optax.ScaleByAdamState):
            return jax.tree.map(jnp.zeros_like, state)
        if isinstance(state, tuple):
            parts = [reset(part, inside) for part in state]
            return type(state)(*parts) if hasattr(state, "_fields") else tuple(parts)
        return state

    return reset(opt_state, False)


def _map_paths(params, fn):
    """A tree like `params` of fn("/"-joined path) per leaf."""
    return jax.tree.map(fn, tree_paths(params))
