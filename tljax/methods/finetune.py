"""Methods that add no parameters (or only biases): they choose which pre-trained weights train.

Feature extraction, full fine-tuning, partial fine-tuning (freeze the embeddings and the bottom k layers,
or any rule set), gradual unfreezing, and BitFit.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import jax.numpy as jnp
from flax import nnx

from tljax.methods.base import (
    Method,
    MethodContext,
    backbone,
    layout,
    linear_modules,
    num_layers,
    set_dropout,
    task_head_pattern,
)
from tljax.methods.rules import MethodError, PathRules, Rule, RuleError


def _layers_from(model: nnx.Module, first: int, last: int, source: str, trainable: bool) -> list[Rule]:
    return [Rule(layout(model).layer_pattern(i), trainable, source) for i in range(first, last)]


@dataclasses.dataclass(frozen=True)
class FeatureExtraction(Method):
    """The pre-trained backbone is a frozen feature extractor (dropout off); only a new head trains (for an
    encoder classifier, the pooler and the classifier).

    Its features are deterministic, so they can be computed once per example (`tljax.train.features`).
    """

    name: ClassVar[str] = "feature-extraction"

    def apply(self, model: nnx.Module, context: MethodContext) -> None:
        set_dropout(backbone(model), 0.0)


@dataclasses.dataclass(frozen=True)
class FullFineTuning(Method):
    """Every parameter trains."""

    name: ClassVar[str] = "full"
    decides_backbone: ClassVar[bool] = True

    def rules(self, model: nnx.Module, step: int = 0) -> PathRules:
        return PathRules((Rule(".*", True, self.name),))


@dataclasses.dataclass(frozen=True)
class PartialFineTuning(Method):
    """Freezes the embeddings and the bottom `freeze_layers` layers; the rest trains.

    Or, with `path_rules` given (e.g. [["embeddings", "freeze"], ["layer/[0-3]/", "freeze"], [".*", "train"]]),
    exactly what the rules say: first match wins, and every parameter must match one.

    With `cache_frozen` (the default), an encoder classifier whose embeddings and bottom layers are frozen
    computes their output once per example, with dropout off in them (they are a fixed feature extractor
    then), and each step runs only the layers that train: `tljax.train.features.FrozenBottomClassification`.
    `cache_frozen: false` runs the whole model every step, dropout in every layer.
    """

    name: ClassVar[str] = "partial"
    decides_backbone: ClassVar[bool] = True
    freeze_embeddings: bool = True
    freeze_layers: int = 0
    path_rules: Sequence[Sequence[str]] | None = None
    cache_frozen: bool = True

    def rules(self, model: nnx.Module, step: int = 0) -> PathRules:
        if self.path_rules is not None:
            return PathRules.parse(self.path_rules, source="partial path_rules")
        total = num_layers(model)
        if not 0 <= self.freeze_layers <= total:
            raise RuleError(f"freeze_layers={self.freeze_layers}: the model has {total} layers (0 to {total})")
        frozen = [Rule(layout(model).embeddings, False, "partial: embeddings")] if self.freeze_embeddings else []
        frozen += _layers_from(model, 0, self.freeze_layers, f"partial: bottom {self.freeze_layers} layers", False)
        return PathRules((*frozen, Rule(".*", True, "partial: the rest")))


@dataclasses.dataclass(frozen=True)
class GradualUnfreezing(Method):
    """Starts with the head (and `start_layers` top layers) trainable, unfreezing one more layer from the
    top every `every` steps (ULMFiT); embeddings unfreeze last, after all layers.

    A model without a task head (a language model or an encoder-decoder writing text) starts with what sits above
    its layers (the final norms, an untied output layer): its output layer, which trains first as a new head would.
    An encoder-decoder's layer i is block i of both stacks (T5's layout), so its top blocks unfreeze together."""

    name: ClassVar[str] = "gradual-unfreezing"
    decides_backbone: ClassVar[bool] = True
    every: int = 100
    start_layers: int = 0

    def __post_init__(self) -> None:
        if self.every < 1:
            raise MethodError(f"gradual unfreezing: every must be at least 1 step, got {self.every}")

    def unfrozen_layers(self, model: nnx.Module, step: int) -> int:
        return min(num_layers(model) + 1, self.start_layers + step // self.every)

    def stage_starts(self, model: nnx.Module) -> tuple[int, ...]:
        """Step 0, then every `every` steps until the embeddings (the last) unfreeze."""
        return (0, *(k * self.every for k in range(1, num_layers(model) + 2 - self.start_layers)))

    def rules(self, model: nnx.Module, step: int = 0) -> PathRules:
        total = num_layers(model)
        unfrozen = self.unfrozen_layers(model, step)
        source = f"gradual unfreezing: top {min(unfrozen, total)} of {total} layers"
        train = _layers_from(model, total - min(unfrozen, total), total, source, True)
        embeddings = Rule(layout(model).embeddings, unfrozen > total, "gradual unfreezing: embeddings")
        # a decoder's final norm and an encoder's pooler sit above every layer: they unfreeze with the top one, or
        # from the start where they end a model that has no task head to train first
        above = unfrozen > 0 or task_head_pattern(model) is None
        return PathRules((*train, embeddings, Rule(layout(model).above_layers, above, source),
                          Rule(".*", False, source)))


@dataclasses.dataclass(frozen=True)
class BitFit(Method):
    """Only bias terms train (plus the head). Models without biases (Llama, Gemma, T5) get zero-initialised
    biases on the projections of their layers where the family's layout says (`Layout.bitfit_biases`), which leave
    the outputs unchanged; Llama's export as `attention_bias` / `mlp_bias`, Gemma's (attention only: its Hugging
    Face class has no MLP biases) as `attention_bias`, while a Hugging Face T5 has no place for them (its export
    is tljax's own: `PretrainedModel.hf_biases`)."""

    name: ClassVar[str] = "bitfit"

    def apply(self, model: nnx.Module, context: MethodContext) -> None:
        added = False
        facts = layout(model)
        # the layers' projections only: an output layer's and a head's form is fixed by the Hugging Face class
        for path, linear in linear_modules(backbone(model)):
            if linear.bias is None and facts.layer_index(path) is not None and re.search(facts.bitfit_biases, path):
                linear.bias = nnx.data(nnx.Param(jnp.zeros((linear.out_features,), linear.kernel.dtype)))
                added = True
        flags = {flag: True for flag in facts.bitfit_flags if hasattr(model.config, flag)}
        if added and flags:
            _set_config(model, **flags)

    def rules(self, model: nnx.Module, step: int = 0) -> PathRules:
        return PathRules((Rule(r"(?:^|/)bias$", True, self.name),))

    def new_parameters(self) -> tuple[str, ...]:
        return ()


def _set_config(model: nnx.Module, **changes: Any) -> None:
    """Updates the config of `model` and of every submodule that holds the same config."""
    old = model.config
    new = old.replace(**changes)
    for _, module in nnx.iter_modules(model):
        if getattr(module, "config", None) is old:
            module.config = new
