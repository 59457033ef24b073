"""Which parameters train: ordered regular-expression rules over "/"-joined parameter paths.

One convention for everything that selects parameters (freezing, weight decay, learning-rate groups):
rules are tried in order, the first whose pattern matches (`re.search`) decides, and every parameter must
be matched by some rule. `report()` says which rule matched each parameter.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Any

import jax
from flax import nnx

from tljax.errors import InputError
from tljax.models.checkpoint import path_str


@dataclasses.dataclass(frozen=True)
class Rule:
    """`pattern` (a regular expression searched in the parameter path) -> train or freeze."""

    pattern: str
    trainable: bool
    source: str = "rules"  # the method or config that contributed the rule, for the report


class MethodError(InputError):
    """A method, a method option or a combination of methods that cannot be used as given."""


class RuleError(MethodError):
    """A rule set that does not decide every parameter, or an invalid pattern."""


@dataclasses.dataclass(frozen=True)
class PathRules:
    """An ordered list of rules; the first match wins."""

    rules: tuple[Rule, ...]

    def __post_init__(self) -> None:
        for rule in self.rules:
            try:
                re.compile(rule.pattern)
            except re.error as error:
                raise RuleError(f"invalid pattern {rule.pattern!r} ({rule.source}): {error}") from None

    @classmethod
    def parse(cls, spec: Sequence[Sequence[Any]] | Sequence[str], source: str = "rules") -> PathRules:
        """From [(pattern, "train" | "freeze"), ...] as a config file gives them."""
        rules = []
        for item in spec:
            pattern, action = item if not isinstance(item, str) else item.split("=", 1)
            if action not in ("train", "freeze"):
                raise RuleError(f"rule {pattern!r}: the action must be 'train' or 'freeze', not {action!r}")
            rules.append(Rule(pattern, action == "train", source))
        return cls(tuple(rules))

    def match(self, path: str) -> Rule | None:
        """The first rule whose pattern occurs in `path`, or None."""
        return next((rule for rule in self.rules if re.search(rule.pattern, path)), None)

    def decide(self, paths: Iterable[str]) -> dict[str, Rule]:
        """The deciding rule of every path; raises `RuleError` naming every unmatched path."""
        decided = {path: self.match(path) for path in paths}
        unmatched = [path for path, rule in decided.items() if rule is None]
        if unmatched:
            listed = "\n  ".join(unmatched[:20]) + (f"\n  ... and {len(unmatched) - 20} more" if len(unmatched) > 20 else "")
            raise RuleError(
                f"{len(unmatched)} parameters match no rule (add a rule for them, e.g. ('.*', 'freeze') last):\n  "
                + listed
            )
        return decided  # type: ignore[return-value]

    def filter(self, model: nnx.Module) -> nnx.filterlib.Filter:
        """The NNX filter selecting the trainable parameters of `model` (checks coverage first)."""
        decided = self.decide(parameter_paths(model))
        trainable = {path for path, rule in decided.items() if rule.trainable}
        return lambda path, value: isinstance(value, nnx.Param) and path_str(path) in trainable

    def report(self, model: nnx.Module) -> list[tuple[str, int, Rule]]:
        """(path, size, deciding rule) for every parameter, in model order."""
        sizes = parameter_sizes(model)
        decided = self.decide(sizes)
        return [(path, size, decided[path]) for path, size in sizes.items()]

    def __add__(self, other: PathRules) -> PathRules:
        return PathRules(self.rules + other.rules)


def parameter_sizes(model: nnx.Module) -> dict[str, int]:
    """"/"-joined path -> number of elements, for every `nnx.Param` of `model`."""
    return {path_str(path): int(variable.get_value().size)
            for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def parameter_paths(model: nnx.Module) -> list[str]:
    return list(parameter_sizes(model))


def tree_paths(tree: Any) -> Any:
    """A pytree like `tree` whose leaves are the "/"-joined paths: a parameter's as the rules name it (an
    `nnx.State`'s keys), an optimiser state's with its fields' names (e.g. "1/0/mu/bert/pooler/dense/kernel")."""

    def name(key) -> str | None:
        if isinstance(key, jax.tree_util.DictKey):
            return str(key.key)
        if isinstance(key, jax.tree_util.SequenceKey):
            return str(key.idx)
        if isinstance(key, jax.tree_util.GetAttrKey):
            return None if key.name == "value" else key.name  # a Variable's value is not part of its path
        return str(getattr(key, "key", key))  # FlattenedIndexKey and the like

    return jax.tree_util.tree_map_with_path(lambda kp, _: "/".join(n for n in map(name, kp) if n), tree)
