"""What every kind of evaluation shares (harness/variants.py, harness/entity_variants.py): its record, the
variant errors, the costs read off a compiled program and a model's files, an encoder's input prefixes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tljax.errors import InputError

# the input prefixes an encoder was trained with (e5: "query: " for what is searched for, "passage: " for the rest)
ENCODER_PREFIXES = {"e5-small": ("query: ", "passage: "), "e5-small-enpt": ("query: ", "passage: ")}


class VariantError(InputError):
    """A variant that is unknown, incomplete, or cannot be used on the task."""


@dataclasses.dataclass
class Evaluation:
    records: list[dict[str, Any]]
    costs: dict[str, Any]
    notes: list[str] = dataclasses.field(default_factory=list)


def compiled_costs(measured) -> dict[str, float]:
    """FLOPs per example and the peak memory (MB, parameters included) of the variant's compiled forward on its
    median batch, from the compiler's cost and memory analyses ({} where nothing was compiled: chat replies)."""
    if measured is None:
        return {}
    cost, rows = measured
    return {"flops_per_example": cost.flops / max(rows, 1), "memory_mb": round(cost.peak_bytes / 2**20, 1)}


def size_mb(path: Path) -> float:
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


def encoder_prefixes(variant) -> tuple[str, str]:
    default = ENCODER_PREFIXES.get(variant.model, ("", ""))
    return (variant.text_prefix if variant.text_prefix is not None else default[0],
            variant.description_prefix if variant.description_prefix is not None else default[1])
