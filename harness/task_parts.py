"""What every kind of task file is made of (harness/tasks.py, harness/entities.py, harness/answers.py): its
errors, its data specs, the items and templates of classification, the template chooser, and how a spec file is
found and read."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from tljax.data import TextDataset, load_source, split_dataset
from tljax.errors import InputError

SPLITS = ("all", "train", "validation", "test")
TASK_KEYS = ("name", "kind", "description", "data", "demonstrations", "labels", "templates", "prompt_language")
DATA_KEYS = ("source", "split", "text_column", "label_column", "validation", "test", "seed")


class TaskError(InputError):
    """A task file that is missing something, or asks for something that does not exist."""


@dataclasses.dataclass(frozen=True)
class Item:
    id: str
    text: str
    label: int  # index into the task's labels
    language: str  # the data's language ("en", "pt-BR", ...)


@dataclasses.dataclass(frozen=True)
class Template:
    """What a model is told in one language: the question, each label's answer word and description."""

    instruction: str  # with {text}
    verbalisers: tuple[str, ...]  # one per label, in label order
    descriptions: tuple[str, ...]  # one per label
    plain: str | None = None  # with {text}: a plain prompt's question (lm-eval's doc_to_text); None: instruction

    def question(self, text: str) -> str:
        return self.instruction.format(text=text)

    def plain_question(self, text: str) -> str:
        """The question of a plain prompt, which a base model continues with the answer word."""
        return (self.plain if self.plain is not None else self.instruction).format(text=text)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    source: str
    split: str = "all"
    text_column: str = "text"
    label_column: str = "label"
    validation: float = 0.1  # as tljax.train splits a source (the same defaults, so "test" is a run's test)
    test: float = 0.1
    seed: int = 42

    def load(self) -> TextDataset:
        dataset = load_source(self.source, text_column=self.text_column, label_column=self.label_column)
        if self.split == "all":
            return dataset
        return split_dataset(dataset, validation=self.validation, test=self.test, seed=self.seed)[self.split]


class Templated:
    """What every kind of task shares: the language of its items and the template a model is asked in."""

    name: str
    templates: dict[str, Any]
    prompt_language: str | None
    items: tuple[Any, ...]

    @property
    def language(self) -> str:
        """The base language of the items (`pt-BR` -> `pt`)."""
        return self.items[0].language.split("-")[0] if self.items else "und"

    def template(self, language: str | None = None):
        """The template of `language` (default: the task's prompt language, else the items' own language; items
        of an unknown language, such as a CSV's, take the task's first template)."""
        language = (language or self.prompt_language or self.language).split("-")[0]
        if language == "und":
            language = next(iter(self.templates))
        if language not in self.templates:
            raise TaskError(f"task {self.name} has no {language!r} template (it has {', '.join(self.templates)}); "
                            f"add templates.{language} to its YAML file")
        return self.templates[language]


def aligned_seeds(per_seed, what: str = "texts") -> list[list[dict]]:
    """Each seed's records in the first seed's order of ids; refused when a seed scored other items than seed 0."""
    order = [r["id"] for r in per_seed[0]]
    aligned = []
    for k, records in enumerate(per_seed):
        by_id = {r["id"]: r for r in records}
        if sorted(by_id) != sorted(order):
            raise TaskError(f"seed {k} scored other {what} than seed 0; every seed of a row must score the same {what}")
        aligned.append([by_id[i] for i in order])
    return aligned


def figure(figures: dict[str, Any], metric: str) -> str:
    """A row's `metric` from a task kind's figures (its mean ± its standard deviation over seeds, where there are
    several), or "" where the row has none."""
    if metric not in figures:
        return ""
    sd = figures.get(f"{metric}_sd")
    return f"{figures[metric]:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def spec_path(name_or_path: str | Path, directory: Path) -> Path:
    """A built-in name's file in `directory` (a name has no suffix), else the path as given."""
    path = Path(name_or_path)
    return directory / f"{name_or_path}.yaml" if not path.suffix else path


def read_spec(name_or_path: str | Path, directory: Path, kind: str) -> tuple[Path, Any]:
    """(path, parsed YAML) of a built-in `kind` ("task", "suite") by name, or of a YAML file."""
    path = spec_path(name_or_path, directory)
    if not path.is_file():
        if Path(name_or_path).suffix:
            raise TaskError(f"{kind} file {path} does not exist")
        builtin = sorted(p.stem for p in directory.glob("*.yaml"))
        raise TaskError(f"unknown {kind} {name_or_path!r}; built-in {kind}s: {', '.join(builtin)} "
                        f"(or give a {kind} YAML file)")
    try:
        return path, yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise TaskError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None


def check_keys(raw: Any, valid: tuple[str, ...], where: str) -> dict:
    if not isinstance(raw, dict):
        raise TaskError(f"{where} must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise TaskError(f"{where}: unknown keys {unknown}; valid: {', '.join(valid)}")
    return raw


def data_spec(raw: Any, where: str) -> DataSpec:
    """A task's `data` or `demonstrations` entry (a source name, or a mapping of `DATA_KEYS`)."""
    raw = {"source": raw} if isinstance(raw, str) else check_keys(raw, DATA_KEYS, where)
    if "source" not in raw:
        raise TaskError(f"{where} needs a source (a tljax data source, e.g. rotten-tomatoes or a CSV file)")
    spec = DataSpec(**raw)
    if spec.split not in SPLITS:
        raise TaskError(f"{where}.split {spec.split!r} is unknown; valid: {', '.join(SPLITS)}")
    return spec


def task_head(raw: Any, where: str, fewest_labels: int, labels_are: str
              ) -> tuple[dict, tuple[str, ...], DataSpec, DataSpec]:
    """What every kind of task file starts with, checked: (the mapping, its labels, its data, its demonstrations:
    given, or the data's train split). `labels_are` names the labels in the error ("names", "entity types");
    `fewest_labels` 0: the kind has none (answers)."""
    raw = check_keys(raw, TASK_KEYS, where)
    for key in ("name", "data", "templates", *(("labels",) if fewest_labels else ())):
        if key not in raw:
            raise TaskError(f"{where} needs {key}")
    if not fewest_labels and "labels" in raw:
        raise TaskError(f"{where}: a task of this kind has no labels; remove the labels key")
    labels = tuple(str(label) for label in raw.get("labels", ()))
    if fewest_labels and (len(labels) < fewest_labels or len(set(labels)) != len(labels)):
        raise TaskError(f"{where}: labels must be {'two' if fewest_labels == 2 else 'one'} or more distinct "
                        f"{labels_are}, got {list(labels)}")
    data = data_spec(raw["data"], f"{where}: data")
    demonstrations = data_spec(raw["demonstrations"], f"{where}: demonstrations") if "demonstrations" in raw else \
        dataclasses.replace(data, split="train" if data.split != "all" else "all")
    return raw, labels, data, demonstrations
