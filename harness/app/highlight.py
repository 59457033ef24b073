"""What a variant found, shown in its text: entities marked in their type's colour (type and score on hover), an
answer marked in its passage (its score above and on hover)."""

from __future__ import annotations

import hashlib
import html
from collections.abc import Sequence
from typing import Any

from harness.app.texts import text

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


ANSWER_COLOUR = "#fde68a"


def answer_html(passage: str, span: dict[str, Any], language: str = "en") -> str:
    """`passage` as HTML with the answer ({text, start, end, score, score_name}) in a `<mark>`, "answer ·
    probability 0.87" as its hover title, and a line above saying the answer and its score. An answer whose
    words are not in the passage (start -1) is said but not marked; no answer (empty text) says that the passage
    does not answer the question (as this variant reads it)."""
    words, start, end = str(span.get("text") or ""), int(span.get("start", -1)), int(span.get("end", -1))
    score, score_name = span.get("score"), span.get("score_name")
    scored = f" · {text('score_' + score_name, language)} {score:.2f}" if words and score is not None and \
        score_name else ""
    located = words and 0 <= start < end <= len(passage)
    if not words:
        head = f"<b>{html.escape(text('no_answer', language))}</b>: {html.escape(text('passage_silent', language))}"
    else:
        head = (f"<b>{html.escape(text('answer', language))}</b>: <span class=\"answer-text\">{html.escape(words)}"
                f"</span>{html.escape(scored)}")
        if not located:  # a decoder's words that are not in the passage as written
            head += f" · {html.escape(text('answer_elsewhere', language))}"
    if located:
        title = f"{text('answer', language).lower()}{scored}"
        body = (f"{html.escape(passage[:start])}<mark class=\"answer\" title=\"{html.escape(title)}\" "
                f"style=\"background:{ANSWER_COLOUR};color:#111;padding:0 0.2em;border-radius:0.25em;"
                f"font-weight:600\">{html.escape(passage[start:end])}</mark>{html.escape(passage[end:])}")
    else:
        body = html.escape(passage)
    return (f'<div class="answer-head" style="margin-bottom:0.4em">{head}</div>'
            f'<div class="passage" style="line-height:1.7;white-space:pre-wrap">{body}</div>')
