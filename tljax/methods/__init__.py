"""Transfer methods: each is a model transform plus the rules that say which parameters train.

    adaptation = adapt(model, [LoRA(rank=8), BitFit()])
    graphdef, trainable, frozen = nnx.split(adaptation.model, adaptation.trainable(), ...)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tljax.methods.adapters import Adapters
from tljax.methods.base import Adaptation, Method, MethodContext, adapt
from tljax.methods.finetune import BitFit, FeatureExtraction, FullFineTuning, GradualUnfreezing, PartialFineTuning
from tljax.methods.lora import LoRA, merge, merge_and_unload, unmerge
from tljax.methods.peft import save_peft
from tljax.methods.prefix import PrefixTuning, freeze_prefix
from tljax.methods.prompt import PromptTuning, PTuning, freeze_prompt
from tljax.methods.rules import MethodError, PathRules, Rule, RuleError

# name -> (class, fixed options)
METHODS: dict[str, tuple[type[Method], dict[str, Any]]] = {
    "feature-extraction": (FeatureExtraction, {}),
    "full": (FullFineTuning, {}),
    "partial": (PartialFineTuning, {}),
    "gradual-unfreezing": (GradualUnfreezing, {}),
    "bitfit": (BitFit, {}),
    "lora": (LoRA, {}),
    "houlsby": (Adapters, {"kind": "houlsby"}),
    "pfeiffer": (Adapters, {"kind": "pfeiffer"}),
    "prefix": (PrefixTuning, {}),
    "prompt": (PromptTuning, {}),
    "p-tuning": (PTuning, {}),
}


def make_method(name: str, options: Mapping[str, Any] | None = None) -> Method:
    """A method by name with its options, e.g. make_method("lora", {"rank": 4}); errors list what is valid."""
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    cls, fixed = METHODS[name]
    valid = [f.name for f in dataclasses.fields(cls) if f.name not in fixed]
    options = dict(options or {})
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise MethodError(f"method {name!r} has no option {', '.join(unknown)}; valid: {', '.join(valid) or 'none'}")
    return cls(**fixed, **options)


__all__ = [
    "METHODS", "Adaptation", "Adapters", "BitFit", "FeatureExtraction", "FullFineTuning", "GradualUnfreezing",
    "LoRA", "Method", "MethodContext", "MethodError", "PTuning", "PartialFineTuning", "PathRules", "PrefixTuning", "PromptTuning",
    "Rule", "RuleError", "adapt", "freeze_prefix", "freeze_prompt", "make_method", "merge", "merge_and_unload",
    "save_peft", "unmerge",
]
