"""Evaluation sets written for tljax and shipped inside the package (their README.md says how they were made).

- `reviews-pt`: 440 short Brazilian Portuguese reviews (films, books, apps, products, restaurants, services),
  220 positive / 220 negative, hand-written and hand-labelled, with style tags (negation, irony, mixed, ...).
- `reviews-pt-parallel` / `reviews-en-parallel`: the 128 of them that have an English translation, in
  Portuguese and in English, in the same order: the same items compared across languages.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from importlib import resources

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
]}


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
    if name == "reviews-pt":
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
