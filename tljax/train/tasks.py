"""The tasks a run can train, by name, and what every task's preparation shares.

A task is registered once (`register`) with everything that differs between tasks: the optional config
sections it reads, and `prepare(config, model_dir, tokenizer) -> Setup`, which loads and checks its data, builds
the model with its head (`build`), and returns the objective (its batches, loss, metrics, report and export)
and the split report. The model classes of a task are `tljax.models.MODEL_CLASSES[model_type][task]`, its
predictor `tljax.predict.PREDICTORS[task]`. `run.prepare` looks the task up and runs it.

    sequence-classification   one label per text (run.py)
    token-classification      one tag per word: named entities (tagging.py)
    question-answering        the answer as a span of a passage: extractive QA (qa.py)
    masked-lm, causal-lm      continued pre-training on unlabelled text; causal-lm with `chat`: chat tuning
    seq2seq                   input text -> output text on a decoder or an encoder-decoder (seq2seq.py)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tljax.data import split_dataset
from tljax.data.chat import resolve_template
from tljax.errors import InputError
from tljax.methods import Adaptation, Method
from tljax.models.transforms import backbone
from tljax.runs import RunInfo, build_model
from tljax.train.config import ConfigKeyError, DataConfig, RunConfig
from tljax.train.objectives import Objective

# optional config sections -> what their error says they are for
SECTIONS = {"tasks": "multi-task learning", "distillation": "distillation", "evaluation": "extra evaluation sets",
            "chat": "chat tuning", "crf": "a CRF layer over the tags"}


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a task's preparation gives the run: the objective, the export record, the split report."""

    objective: Objective
    info: RunInfo
    report: str


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    summary: str
    prepare: Callable[[RunConfig, Path, Any], Setup]
    sections: frozenset[str] = frozenset()  # the optional config sections (SECTIONS) it reads


TASKS: dict[str, Task] = {}


def register(name: str, summary: str, sections: tuple[str, ...] = ()) -> Callable:
    """Decorator: registers `prepare(config, model_dir, tokenizer) -> Setup` as the task `name`."""

    def decorate(prepare: Callable[[RunConfig, Path, Any], Setup]) -> Callable:
        TASKS[name] = Task(name, summary, prepare, frozenset(sections))
        return prepare

    return decorate


def task_of(config: RunConfig) -> Task:
    """The registered task of `config`, its optional sections checked against what the task reads."""
    if config.task not in TASKS:
        raise ConfigKeyError(f"task {config.task!r} is unknown; valid: {', '.join(TASKS)}")
    task = TASKS[config.task]
    for section, what in SECTIONS.items():
        if getattr(config, section) and section not in task.sections:
            users = [t.name for t in TASKS.values() if section in t.sections]
            raise ConfigKeyError(f"{section} ({what}) is for task: {' / '.join(users)}; this run's task is "
                                 f"{config.task}: remove the {section} section or change the task")
    return task


def run_info(config: RunConfig, label_names: tuple[str, ...] = ()) -> RunInfo:
    """The export record of a run config (max_length is settled once the model is built)."""
    return RunInfo(model=config.model, task=config.task, method=tuple(config.methods()), labels=tuple(label_names),
                   text_prefix=config.data.text_prefix, max_length=config.data.max_length, seed=config.training.seed,
                   dtype=config.training.dtype,
                   student_layers=config.distillation.student_layers if config.distillation else None,
                   chat=chat_record(config), pooling=config.pooling,
                   crf=config.crf)


def chat_record(config: RunConfig) -> dict[str, Any] | None:
    """run.json's `chat` of a chat-tuning run: the instruction, the replies, and a named template as its Jinja text,
    so that the export asks in the form it was taught whatever a later version's names hold."""
    if config.chat is None:
        return None
    record = dataclasses.asdict(config.chat)
    if config.chat.template is not None:
        record["template"] = resolve_template(config.chat.template)
    return record


def text_positions(adaptation: Adaptation, wanted: int) -> int:
    """The longest text the model takes: virtual prompt tokens and prefix keys take positions too. A model with
    relative positions only (T5: no `max_position_embeddings`) takes any length."""
    body = backbone(adaptation.model)
    context = adaptation.model.config.max_text_positions
    if context is None:
        return wanted
    positions = context - body.num_virtual_tokens - body.num_prefix_tokens
    if positions < 8:
        raise InputError(f"the method's {body.num_virtual_tokens + body.num_prefix_tokens} virtual tokens leave "
                         f"{positions} of the model's positions for text; use fewer virtual tokens")
    return min(wanted, positions)


def build(config: RunConfig, model_dir: Path, tokenizer, label_names: tuple[str, ...],
          internal: tuple[Method, ...] = ()) -> tuple[Adaptation, RunInfo]:
    """The adapted model and the run's export record, its max_length settled."""
    info = run_info(config, label_names)
    adaptation = build_model(info, model_dir, tokenizer, internal)
    return adaptation, dataclasses.replace(info, max_length=text_positions(adaptation, config.data.max_length))


def split_budgets(splits: dict, data: DataConfig) -> dict:
    """`splits` cut to the config's example budgets (the first N of each)."""
    limits = {"train": data.max_train_examples, "validation": data.max_eval_examples, "test": data.max_eval_examples}
    for name, limit in limits.items():
        if limit is not None and limit < len(splits[name]):
            splits[name] = splits[name].subset(range(limit))
    return splits


@dataclasses.dataclass(frozen=True)
class EvaluationSpec:
    """One entry of a config's `evaluation` section: {name: source} or {name: {source, split, max_examples, ...}}."""

    name: str
    source: str
    split: str = "all"  # all | test (the held-out part, as a run training on the source would split it)
    max_examples: int | None = None
    options: dict = dataclasses.field(default_factory=dict)  # what the task's reader takes (e.g. text_column)


def evaluation_specs(config: RunConfig, options: tuple[str, ...] = ()) -> list[EvaluationSpec]:
    """The config's extra evaluation sets, checked; `options`: the keys a task's reader takes besides source,
    split and max_examples."""
    keys = ("source", "split", "max_examples", *options)
    specs = []
    for name, spec in config.evaluation.items():
        spec = {"source": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or "source" not in spec or set(spec) - set(keys):
            raise ConfigKeyError(f"evaluation.{name} must be a source name or a mapping with a source (keys: "
                                 f"{', '.join(keys)}); got {spec!r}")
        split, limit = spec.get("split", "all"), spec.get("max_examples")
        if split not in ("all", "test"):
            raise ConfigKeyError(f"evaluation.{name}.split {split!r} is unknown; valid: all, test")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ConfigKeyError(f"evaluation.{name}.max_examples must be a whole number >= 1, got {limit!r}")
        specs.append(EvaluationSpec(name, spec["source"], split, limit, {k: spec[k] for k in options if k in spec}))
    return specs


def evaluation_part(dataset, spec: EvaluationSpec, config: RunConfig):
    """The part of `dataset` (a `TextDataset` or `TaggedDataset`) that `spec` evaluates on: all of it, or the test
    split a run training on it would hold out; then its first `max_examples`."""
    if spec.split == "test":
        dataset = split_dataset(dataset, validation=config.data.validation, test=config.data.test,
                                seed=config.training.seed)["test"]
    if spec.max_examples is not None:
        dataset = dataset.subset(range(min(spec.max_examples, len(dataset))))
    return dataset
