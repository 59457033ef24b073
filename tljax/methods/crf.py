"""Internal method: a CRF layer over a token classifier's tag scores (`crf: true` in a run's config).

It adds `model.crf` (`tljax.models.crf.CRF`: transition scores between the model's tags), which trains with
every method as part of the task head. The model's own output stays the per-token tag scores (the CRF's
emissions): a Hugging Face token classifier without the CRF; the transitions are exported beside it.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from flax import nnx

from tljax.methods.base import Method, MethodContext
from tljax.methods.rules import PathRules, Rule
from tljax.models.crf import CRF

CRF_PATTERN = r"^crf/"


@dataclasses.dataclass(frozen=True)
class CRFLayer(Method):
    name: ClassVar[str] = "_crf"
    num_tags: int = 2
    seed: int = 0

    def apply(self, model: nnx.Module, context: MethodContext) -> None:
        model.crf = CRF(self.num_tags, rngs=nnx.Rngs(self.seed))

    def rules(self, model: nnx.Module, step: int = 0) -> PathRules:
        return PathRules((Rule(CRF_PATTERN, True, "CRF transitions (task head)"),))

    def new_parameters(self) -> tuple[str, ...]:
        return (CRF_PATTERN,)
