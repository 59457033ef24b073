"""The bias probe: on a task of counterfactual pairs (items `<dimension>-...-/a` and `/b`, such as
`counterfactual-en` / `counterfactual-pt`), how often a variant's prediction flips within a pair and how much the
probability of the positive label moves, per dimension (gender, name, origin) and overall."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np


def pair_key(item_id: str) -> str:
    """The pair an item belongs to (its id without the /a or /b); any other id is its own key."""
    return item_id[:-2] if item_id.endswith(("/a", "/b")) else item_id


def _delta_summary(deltas: list[float]) -> dict[str, Any]:
    if not deltas:
        return {}
    values = np.asarray(deltas)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    mean = float(values.mean())
    return {"mean_delta": mean, "mean_delta_ci": [mean - half, mean + half],
            "mean_abs_delta": float(np.abs(values).mean())}


def probe(per_seed: Sequence[Sequence[dict]], positive: int, rule: str = "acc") -> dict[str, Any] | None:
    """Per dimension and `all`, over the seeds alike (each seed's records of the same items, as a row's other
    figures): pairs, flip rate (the share of (pair, seed) whose predictions differ within the pair), flips (their
    mean count per seed) and, where the records carry probabilities, the mean change in P(positive) from a to b
    (each pair's change averaged over the seeds) with its 95% interval over the pairs, and the mean absolute
    change. None when the records hold no complete pair."""
    flips: dict[str, list[float]] = defaultdict(list)  # key -> per seed: flipped (1.0 / 0.0)
    deltas: dict[str, list[float]] = defaultdict(list)  # key -> per seed: the change in P(positive)
    for records in per_seed:
        pairs: dict[str, dict[str, dict]] = defaultdict(dict)
        for record in records:
            if record["id"].endswith(("/a", "/b")):
                pairs[pair_key(record["id"])][record["id"][-1]] = record
        for key, sides in pairs.items():
            if len(sides) < 2:
                continue
            a, b = sides["a"], sides["b"]
            flips[key].append(float(a["prediction"][rule] != b["prediction"][rule]))
            if "probabilities" in a and "probabilities" in b:
                deltas[key].append(b["probabilities"][positive] - a["probabilities"][positive])
    if not flips:
        return None
    groups: dict[str, list[tuple[float, float | None]]] = defaultdict(list)
    for key in sorted(flips):
        delta = float(np.mean(deltas[key])) if deltas[key] else None
        for group in (key.split("-")[0], "all"):
            groups[group].append((float(np.mean(flips[key])), delta))
    out = {}
    for group, values in groups.items():
        rate = float(np.mean([f for f, _ in values]))
        out[group] = {"pairs": len(values), "flip_rate": rate, "flips": round(rate * len(values), 2),
                      **_delta_summary([d for _, d in values if d is not None])}
    return out


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The probe's table: one line per (variant, task) that has pairs."""
    probed = [row for row in rows if row.get("bias")]
    if not probed:
        return ""
    dimensions = sorted({d for row in probed for d in row["bias"] if d != "all"})
    lines = ["| variant | task | pairs | flip rate | " + " | ".join(f"flips: {d}" for d in dimensions)
             + " | mean Δ P(positive), b - a (95% CI) | mean abs Δ |",
             "|---|---|---:|---:|" + "---:|" * len(dimensions) + "---|---:|"]
    for row in probed:
        bias, every = row["bias"], row["bias"]["all"]
        delta = (f"{every['mean_delta']:+.4f} ({every['mean_delta_ci'][0]:+.4f} to {every['mean_delta_ci'][1]:+.4f})"
                 if "mean_delta" in every else "")
        lines.append(f"| {row['variant']} | {row['task']} | {every['pairs']} | {every['flip_rate']:.3f} | "
                     + " | ".join(f"{bias[d]['flips']:g} / {bias[d]['pairs']}" if d in bias else "" for d in dimensions)
                     + f" | {delta} | {every.get('mean_abs_delta', math.nan):.4f} |")
    return "\n".join(lines) + "\n"
