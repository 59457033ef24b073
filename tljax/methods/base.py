"""A transfer method = a model transform (new parameters in place) + rules saying which parameters train.

`adapt(model, [method, ...])` applies the methods in order and composes their rules: the parameters each
method trains, then the task head (with an encoder classifier's pooler: `task_head_pattern`), then the rules
of the (single) method that decides the pre-trained weights (full or partial fine-tuning, gradual
unfreezing), else everything else is frozen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from flax import nnx

from tljax.methods.rules import MethodError, PathRules, Rule, parameter_sizes
from tljax.models.base import Layout
from tljax.models.checkpoint import path_str
from tljax.models.layers import Linear
from tljax.models.transforms import backbone

FREEZE_REST = Rule(".*", False, "frozen (no method trains it)")


@dataclasses.dataclass(frozen=True)
class MethodContext:
    """What a transform may need besides the model: a tokenizer (prompt init from words) and a seed."""

    tokenizer: Any = None
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Method:
    """Base of every method's config dataclass."""

    name: ClassVar[str]
    # True for methods that decide the pre-trained weights themselves (their rules end the rule list)
    decides_backbone: ClassVar[bool] = False

    def apply(self, model: nnx.Module, context: MethodContext) -> None:
        """Adds the method's parameters to `model` in place (most methods add none)."""

    def rules(self, model: nnx.Module, step: int = 0) -> PathRules:
        """The rules this method contributes (the parameters it trains, at training step `step`)."""
        return PathRules(())

    def new_parameters(self) -> tuple[str, ...]:
        """Patterns of the parameters this method created (they may get their own learning rate)."""
        return ()

    def stage_starts(self, model: nnx.Module) -> tuple[int, ...]:
        """The training steps at which the rules of this method change (0 alone for a fixed set)."""
        return (0,)


@dataclasses.dataclass
class Adaptation:
    """A model with methods applied, and the rules that say what trains."""

    model: nnx.Module
    methods: tuple[Method, ...]
    train_head: bool = True
    # whether the pooler is part of the task head (False: the methods decide it, as in exports written before)
    train_pooler: bool = True

    def rules(self, step: int = 0) -> PathRules:
        """The composed rules (at `step`, for schedules such as gradual unfreezing)."""
        rules = PathRules(())
        # internal methods (names starting "_": a distillation teacher, multi-task heads) decide their own
        # parameters before any user method's pattern can reach them
        ordered = sorted(self.methods, key=lambda m: not m.name.startswith("_"))
        for method in ordered:
            if not method.decides_backbone:
                rules = rules + method.rules(self.model, step)
        head = self.task_head()
        if head and self.train_head:
            rules = rules + PathRules((Rule(head, True, "task head"),))
        deciders = [m for m in self.methods if m.decides_backbone]
        if deciders:
            return rules + deciders[0].rules(self.model, step)
        return rules + PathRules((FREEZE_REST,))

    def task_head(self) -> str | None:
        """The pattern of the head that trains with every method: the output layer, with an encoder classifier's
        pooler unless `train_pooler` is off."""
        return task_head_pattern(self.model) if self.train_pooler else head_pattern(self.model)

    def stage_starts(self) -> tuple[int, ...]:
        """The steps at which the trainable set changes, 0 first: one stage from each to the next."""
        return tuple(sorted({step for m in self.methods for step in m.stage_starts(self.model)} | {0}))

    def trainable(self, step: int = 0) -> nnx.filterlib.Filter:
        """NNX filter of the trainable parameters (use with `nnx.split(model, trainable, ...)`)."""
        return self.rules(step).filter(self.model)

    def new_parameter_rules(self) -> PathRules:
        """Rules marking the parameters no checkpoint had (head + method parameters): the "new" group."""
        patterns = [p for m in self.methods for p in m.new_parameters()]
        head = self.task_head()
        if head:
            patterns.append(head)
        rules = [Rule(p, True, "new") for p in patterns]
        return PathRules((*rules, Rule(".*", False, "pre-trained")))

    def describe(self, step: int = 0) -> str:
        """Which rule decided which parameters (one line per rule), and the trainable total."""
        report = self.rules(step).report(self.model)
        lines, seen = [], {}
        for path, size, rule in report:
            entry = seen.setdefault(rule, [0, 0, path])
            entry[0] += 1
            entry[1] += size
        for rule, (tensors, size, example) in seen.items():
            action = "train " if rule.trainable else "freeze"
            lines.append(f"{action} {rule.pattern!r:40} {rule.source:45} {tensors:5} tensors {size:>13,}  e.g. {example}")
        trainable, total = self.count(step)
        lines.append(f"trainable: {trainable:,} of {total:,} parameters ({100 * trainable / total:.3f}%)")
        return "\n".join(lines)

    def count(self, step: int = 0) -> tuple[int, int]:
        """(trainable parameters, all parameters), derived from the rules."""
        report = self.rules(step).report(self.model)
        return sum(s for _, s, r in report if r.trainable), sum(s for _, s, _ in report)


def adapt(model: nnx.Module, methods: Sequence[Method], *, context: MethodContext | None = None,
          train_head: bool = True, train_pooler: bool = True) -> Adaptation:
    """Applies `methods` to `model` (in place) and returns the adaptation with its composed rules.

    `train_pooler=False` leaves an encoder classifier's pooler to the methods (frozen unless one trains the
    backbone): how exports written before the pooler joined the task head were trained."""
    deciders = [m.name for m in methods if m.decides_backbone]
    if len(deciders) > 1:
        raise MethodError(f"methods {deciders} each decide which pre-trained weights train; choose one")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise MethodError(f"a method is given twice: {names}")
    for method in methods:
        method.apply(model, context or MethodContext())
    adaptation = Adaptation(model, tuple(methods), train_head, train_pooler)
    adaptation.rules().filter(model)  # every parameter decided, or a clear error now
    return adaptation


def head_pattern(model: nnx.Module) -> str | None:
    """The path pattern of a model's output layer for the task (its labels), or None for models without one."""
    return getattr(type(model), "head_pattern", None)


def task_head_pattern(model: nnx.Module) -> str | None:
    """The path pattern of everything new for each task, which trains with every method: the output layer and,
    for an encoder classifier, the pooler before it (no checkpoint's pooler was trained for the task)."""
    return getattr(type(model), "task_head_pattern", None) or head_pattern(model)


def layout(model: nnx.Module) -> Layout:
    """Where `model`'s family keeps its layers, embeddings, norms and projections (its class states it)."""
    found = getattr(type(model), "layout", None)
    if not isinstance(found, Layout):
        raise MethodError(f"{type(model).__name__} states no parameter layout (a `layout` class attribute, "
                          "tljax.models.Layout), so no method can select its parameters")
    return found


def num_layers(model: nnx.Module) -> int:
    """The backbone's layer count (a distillation teacher attached to the model does not count)."""
    facts = layout(model)
    indices = {i for p in parameter_sizes(backbone(model)) if (i := facts.layer_index(p)) is not None}
    return max(indices) + 1 if indices else 0


def linear_modules(model: nnx.Module) -> Iterator[tuple[str, Linear]]:
    """("/"-joined module path, module) for every projection of the model (LoRA / adapter targets)."""
    for path, module in nnx.iter_modules(model):
        if isinstance(module, Linear):
            yield path_str(path), module


def replace_module(model: nnx.Module, path: str, new: nnx.Module) -> None:
    """Puts `new` at the "/"-joined module `path` of `model`."""
    *parents, last = path.split("/")
    parent = model
    for part in parents:
        parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
    if last.isdigit():
        parent[int(last)] = new
    else:
        setattr(parent, last, new)


def set_dropout(module: nnx.Module, rate: float) -> None:
    """Sets every dropout rate inside `module` (and its submodules) to `rate`."""
    for _, sub in nnx.iter_modules(module):
        if hasattr(sub, "dropout_rate"):
            sub.dropout_rate = rate
