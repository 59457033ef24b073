"""Tasks: labelled items to evaluate on, with what a model is told and asked, per language.

A task is a YAML file (`harness/tasks/*.yaml`, or any path); this module reads a label per text (`kind:
classification`, the default), `kind: entities` makes it an entity task (harness/entities.py), `kind: answers`
a question-answering task (harness/answers.py):

    name: sentiment-en
    data: {source: rotten-tomatoes, split: test}     # any tljax data source; split: all | train | validation | test
    demonstrations: {source: rotten-tomatoes, split: train}   # few-shot examples (default: the data's train split)
    labels: [negative, positive]                      # the data's label names, in order
    templates:
      en:
        instruction: "Is this film review positive or negative? ...\\n\\nReview: {text}"   # the chat question
        plain: "Review: {text}\\nSentiment:"   # the question of a plain prompt (optional; default: the instruction)
        verbalisers: {negative: negative, positive: positive}   # the answer word of each label
        descriptions: {negative: "A negative review.", positive: "A positive review."}   # encoder zero-shot
      pt: {...}

Items carry a stable id (the source's own id where it has one, as the bundled Portuguese sets do, so that a
review and its translation share it), the text, the gold label and the language.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Any

from harness.answers import AnswerTask, parse_answer_task
from harness.entities import EntityTask, parse_entity_task
from harness.task_parts import DataSpec, Item, TaskError, Template, Templated, check_keys, read_spec, task_head
from tljax.data import TextDataset

TASKS_DIR = Path(__file__).parent / "tasks"
# a label per text | the entities of a text (harness/entities.py) | the answer to a question (harness/answers.py)
TASK_KINDS = ("classification", "entities", "answers")
TEMPLATE_KEYS = ("instruction", "verbalisers", "descriptions", "plain")
REQUIRED_TEMPLATE_KEYS = TEMPLATE_KEYS[:3]


@dataclasses.dataclass(frozen=True)
class Task(Templated):
    name: str
    data: DataSpec
    demonstrations: DataSpec
    labels: tuple[str, ...]
    templates: dict[str, Template]  # language ("en", "pt") -> template
    description: str = ""
    prompt_language: str | None = None  # the template used by default; None: the items' own language

    @cached_property
    def items(self) -> tuple[Item, ...]:
        return tuple(_items(self.data.load(), self.labels, self.name))

    kind = "classification"

    @cached_property
    def demonstration_items(self) -> tuple[Item, ...]:
        return tuple(_items(self.demonstrations.load(), self.labels, self.name))


def _items(dataset: TextDataset, labels: tuple[str, ...], task: str) -> list[Item]:
    if set(dataset.label_names) != set(labels):
        raise TaskError(f"task {task}: the data {dataset.name} has labels {list(dataset.label_names)}, the task "
                        f"declares {list(labels)}; make the task's labels the data's")
    to_task = [labels.index(name) for name in dataset.label_names]
    ids = dataset.groups if dataset.groups and len(set(dataset.groups)) == len(dataset) else None
    return [Item(ids[i] if ids else f"{dataset.name}#{i}", text, to_task[label], dataset.language)
            for i, (text, label) in enumerate(zip(dataset.texts, dataset.labels))]


def builtin_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def load_task(name_or_path: str | Path) -> Task | EntityTask | AnswerTask:
    """A built-in task by name (`python -m harness list`) or a task YAML file: a `Task` (a label per text), with
    `kind: entities` an `EntityTask` (harness/entities.py), with `kind: answers` an `AnswerTask`
    (harness/answers.py)."""
    path, raw = read_spec(name_or_path, TASKS_DIR, "task")
    kind = raw.get("kind", "classification") if isinstance(raw, dict) else "classification"
    if kind not in TASK_KINDS:
        raise TaskError(f"{path}: kind {kind!r} is unknown; valid: {', '.join(TASK_KINDS)}")
    if kind == "entities":
        return parse_entity_task(raw, str(path))
    if kind == "answers":
        return parse_answer_task(raw, str(path))
    return parse_task(raw, str(path))


def parse_task(raw: Any, where: str = "task") -> Task:
    """A task from its YAML mapping; every problem is a `TaskError` naming the key."""
    raw, labels, data, demonstrations = task_head(raw, where, 2, "names")
    templates = {}
    if not isinstance(raw["templates"], dict):
        raise TaskError(f"{where}: templates must map languages to templates, e.g. {{en: {{instruction: ...}}}}")
    for language, spec in raw["templates"].items():
        at = f"{where}: templates.{language}"
        spec = check_keys(spec, TEMPLATE_KEYS, at)
        missing = [key for key in REQUIRED_TEMPLATE_KEYS if key not in spec]
        if missing:
            raise TaskError(f"{at} needs {', '.join(missing)}")
        for key in ("instruction", "plain"):
            if key in spec and (not isinstance(spec[key], str) or "{text}" not in spec[key]):
                raise TaskError(f"{at}.{key} must be a string containing {{text}} (where the item's text goes)")
        words = []
        for key in ("verbalisers", "descriptions"):
            given = check_keys(spec[key], labels, f"{at}.{key}")
            if set(given) != set(labels):
                raise TaskError(f"{at}.{key} must name every label ({', '.join(labels)}); missing: "
                                f"{', '.join(sorted(set(labels) - set(given)))}")
            words.append(tuple(str(given[label]) for label in labels))
        verbalisers, descriptions = words
        if any(not v.strip() for v in verbalisers):
            raise TaskError(f"{at}.verbalisers: a verbaliser is empty ({dict(zip(labels, verbalisers))}); give "
                            "each label the word a model should answer")
        if len({v.strip().lower() for v in verbalisers}) != len(verbalisers):
            raise TaskError(f"{at}.verbalisers: two labels have the same verbaliser ({dict(zip(labels, verbalisers))});"
                            " a model's answer must tell the labels apart")
        templates[str(language)] = Template(str(spec["instruction"]), verbalisers, descriptions, spec.get("plain"))
    if not templates:
        raise TaskError(f"{where}: templates needs at least one language (e.g. en)")
    prompt_language = raw.get("prompt_language")
    if prompt_language is not None and prompt_language not in templates:
        raise TaskError(f"{where}: prompt_language {prompt_language!r} has no template; templates: {', '.join(templates)}")
    return Task(str(raw["name"]), data, demonstrations, labels, templates, str(raw.get("description", "")),
                prompt_language)
