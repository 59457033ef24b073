"""Evaluation sets written for tljax and shipped inside the package (their README.md says how they were made).

- `reviews-pt`: 440 short Brazilian Portuguese reviews (films, books, apps, products, restaurants, services),
  220 positive / 220 negative, hand-written and hand-labelled, with style tags (negation, irony, mixed, ...).
- `reviews-pt-parallel` / `reviews-en-parallel`: the 128 of them that have an English translation, in
  Portuguese and in English, in the same order: the same items compared across languages.
- `counterfactual-en` / `counterfactual-pt`: 240 pairs of reviews per language that differ only in a person's
  gender, name or origin (`counterfactual.yaml`), for the bias probe; ids `<dimension>-<template>-<pair>/a|b`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from functools import cache
from importlib import resources

import yaml

from tljax.data.dataset import DataError, TextDataset

_SENTIMENT = ("negative", "positive")
LICENCE = "CC BY 4.0, written for tljax (tljax/data/bundled/README.md)"


@dataclasses.dataclass(frozen=True)
class BundledCorpus:
    name: str
    description: str
    language: str


BUNDLED_CORPORA = {c.name: c for c in [
    BundledCorpus("reviews-pt", "Brazilian Portuguese reviews of films, books, apps, products, restaurants and "
                  "services, positive / negative, hand-written for tljax (evaluation set)", "pt-BR"),
    BundledCorpus("reviews-pt-parallel", "the 128 reviews-pt items that have an English translation (Portuguese)",
                  "pt-BR"),
    BundledCorpus("reviews-en-parallel", "the English translations of reviews-pt-parallel, item for item", "en"),
    BundledCorpus("counterfactual-en", "240 pairs of English reviews that differ only in a person's gender, name "
                  "or origin (bias probe; evaluation only)", "en"),
    BundledCorpus("counterfactual-pt", "240 pairs of Brazilian Portuguese reviews that differ only in a person's "
                  "gender, name or origin (bias probe; evaluation only)", "pt-BR"),
]}
_CHOICE = re.compile(r"\{([^{}/]+)/([^{}/]+)\}")  # {masculine/feminine}


def _fill(template: str, person: str) -> str:
    """The template with `person` ("words|m" or "words|f") and the words of that person's gender."""
    words, gender = person.rsplit("|", 1)
    text = _CHOICE.sub(lambda m: m.group(1) if gender == "m" else m.group(2), template)
    return text.replace("{Person}", words[0].upper() + words[1:]).replace("{person}", words)


def counterfactual_rows(language: str) -> list[tuple[str, str, str]]:
    """(id, text, label) of every sentence of the probe in `language` ("en" or "pt"); the two sentences of a
    pair have ids ending in /a and /b."""
    spec = yaml.safe_load(resources.files(__package__).joinpath("counterfactual.yaml").read_text(encoding="utf-8"))
    spec = spec[language]
    templates = [(label, t) for label in ("positive", "negative") for t in spec["templates"][label]]
    rows = []
    for dimension, pairs in spec["pairs"].items():
        for p, pair in enumerate(pairs):
            for t, (label, template) in enumerate(templates):
                for side, person in zip("ab", pair):
                    rows.append((f"{dimension}-t{t:02d}-p{p}/{side}", _fill(template, person), label))
    return rows


@cache
def records(name: str) -> tuple[dict, ...]:
    """The rows of a bundled JSON Lines file (`reviews-pt` or `reviews-pt-en`)."""
    text = resources.files(__package__).joinpath(f"{name}.jsonl").read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def load_bundled(name: str) -> TextDataset:
    """A bundled evaluation set as a `TextDataset` (labels: negative, positive; one group per review)."""
    if name not in BUNDLED_CORPORA:
        raise DataError(f"unknown bundled corpus {name!r}; known: {', '.join(BUNDLED_CORPORA)}")
    reviews = records("reviews-pt")
    if name.startswith("counterfactual-"):
        rows = counterfactual_rows(name.split("-")[1])
    elif name == "reviews-pt":
        rows = [(r["id"], r["text"], r["label"]) for r in reviews]
    else:
        label = {r["id"]: r["label"] for r in reviews}
        portuguese = {r["id"]: r["text"] for r in reviews}
        english = records("reviews-pt-en")
        rows = [(r["id"], r["text"] if name == "reviews-en-parallel" else portuguese[r["id"]], label[r["id"]])
                for r in english]
    ids, texts, labels = zip(*rows)
    return TextDataset(name, texts, tuple(_SENTIMENT.index(x) for x in labels), _SENTIMENT, groups=ids,
                       language=BUNDLED_CORPORA[name].language)
