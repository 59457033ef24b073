"""What every kind of evaluation shares (harness/variants.py, harness/entity_variants.py): its record, the
variant errors, the costs read off a compiled program and a model's files, an encoder's input prefixes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tljax.data import normalise
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


def training_overlap(variant, run, texts: Sequence[str], task_name: str, what: str, held_out: str
                     ) -> tuple[int, list[str]]:
    """How many of the items (`texts`: each item's text of the kind the run trained on) a run variant's run trained
    on, and the note that flags them; a `VariantError` naming `held_out` (what to evaluate instead) when there are
    some and the variant does not allow them. `what` names the items ("texts", "questions")."""
    if run.trained_texts is None:
        return 0, []
    overlap = sum(normalise(text) in run.trained_texts for text in texts)
    if overlap and not variant.allow_overlap:
        raise VariantError(f"run {variant.run} trained on {overlap} of the {len(texts)} {what} of {task_name}; evaluate "
                           f"it on {held_out} (e.g. the test split), or set allow_overlap: true to report it flagged")
    return overlap, [f"trained on {overlap} of the {len(texts)} {what}"] if overlap else []


def run_costs(run, overlap: int, measured=None) -> dict[str, Any]:
    """A run variant's costs: its training summary's trainable parameters and seconds, its export's size, the items
    it trained on, and (`measured`: a predictor call's `typical_cost()`) its compiled forward's costs."""
    summary_path = run.directory / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {"trainable_parameters": summary.get("trainable_parameters"),
            "training_seconds": summary.get("training_seconds"), "size_mb": size_mb(run.export), "overlap": overlap,
            **compiled_costs(measured)}


def size_mb(path: Path) -> float:
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


def encoder_prefixes(variant) -> tuple[str, str]:
    default = ENCODER_PREFIXES.get(variant.model, ("", ""))
    return (variant.text_prefix if variant.text_prefix is not None else default[0],
            variant.description_prefix if variant.description_prefix is not None else default[1])
