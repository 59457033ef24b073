"""Entities shown in their text: each span marked in its type's colour, its type and score on hover."""

from __future__ import annotations

import hashlib
import html
from collections.abc import Sequence
from typing import Any

# the usual NER types in colours that stay readable with dark text; any other type takes one by its name
TYPE_COLOURS = {"PER": "#fde68a", "ORG": "#bfdbfe", "LOC": "#bbf7d0", "DATE": "#fbcfe8", "MISC": "#ddd6fe"}
OTHER_COLOURS = ("#fed7aa", "#a5f3fc", "#e9d5ff", "#fecaca", "#d9f99d", "#e5e7eb")


def type_colour(label: str) -> str:
    if label in TYPE_COLOURS:
        return TYPE_COLOURS[label]
    return OTHER_COLOURS[int(hashlib.sha256(label.encode()).hexdigest(), 16) % len(OTHER_COLOURS)]


def entity_html(text: str, spans: Sequence[dict[str, Any]]) -> str:
    """`text` as HTML with each entity ({start, end, label, score or None}, not overlapping) in a `<mark>` of its
    type's colour, the type after it in small capitals, and "TYPE · score 0.97" as its hover title; a legend
    of the types present follows."""
    parts, at = [], 0
    for span in sorted(spans, key=lambda s: s["start"]):
        start, end, label = int(span["start"]), int(span["end"]), str(span["label"])
        if start < at or end > len(text) or start >= end:  # a span the text cannot hold: not drawn
            continue
        score = span.get("score")
        title = f"{label} · score {score:.2f}" if score is not None else label
        parts.append(html.escape(text[at:start]))
        parts.append(f'<mark class="entity" data-type="{html.escape(label)}" title="{html.escape(title)}" '
                     f'style="background:{type_colour(label)};color:#111;padding:0 0.2em;border-radius:0.25em">'
                     f'{html.escape(text[start:end])} <small style="font-weight:600;font-size:0.7em">'
                     f'{html.escape(label)}</small></mark>')
        at = end
    parts.append(html.escape(text[at:]))
    types = sorted({str(s["label"]) for s in spans})
    legend = " ".join(f'<span style="background:{type_colour(t)};color:#111;padding:0 0.3em;border-radius:0.25em">'
                      f'{html.escape(t)}</span>' for t in types)
    return (f'<div class="entities" style="line-height:1.9">{"".join(parts)}</div>'
            + (f'<div class="entity-legend" style="margin-top:0.4em;font-size:0.85em">{legend}</div>' if types else ""))
