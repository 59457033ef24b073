"""What more than one tab uses: the page's settings, the texts that follow the page's language, the default base
model, the model queue's width and the trainable counts that the Train and Methods tabs both show.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import gradio as gr

from harness.app.texts import text
from tljax import zoo
from tljax.methods.__main__ import trainable_table

MODEL_CONCURRENCY = 2  # model events at once (two CPU cores); the rest wait in the queue
DEFAULT_BASE = "minilm-l6"


@dataclasses.dataclass
class Settings:
    runs: list[Path]  # where finished runs are found (the first: where the Train tab writes)
    results: list[Path]  # where harness results are found
    votes: Path  # the blind comparison's votes (JSON lines)


class Translated:
    """The components whose texts follow the page's language: (component, attribute, text key)."""

    def __init__(self, language: str = "en"):
        self.language = language
        self.items: list[tuple[Any, str, str]] = []

    def __call__(self, component, fmt: str = "{}", **keys: str):
        """Registers `component`'s attributes (label=key, ...) to follow the language, each shown as fmt."""
        for attribute, key in keys.items():
            self.items.append((component, attribute, key, fmt))
        return component

    def t(self, key: str) -> str:
        return text(key, self.language)

    def updates(self, language: str) -> list[Any]:
        return [gr.update(**{attribute: fmt.format(text(key, language))}) for _, attribute, key, fmt in self.items]


@functools.lru_cache(maxsize=16)
def trainable_counts(model: str) -> dict[str, tuple[int, float]]:
    """method -> (trainable parameters, % of the model) on `model` (its config only; computed once per model)."""
    return {name: (count, share) for name, count, share in trainable_table(zoo.resolve(model))}
