"""The tasks a run can train, by name, and what every task's preparation shares.

A task is registered once (`register`) with everything that differs between tasks: the optional config
sections it reads, and `prepare(config, model_dir, tokenizer) -> Setup`, which loads and checks its data, builds
the model with its head (`build`), and returns the objective (its batches, loss, metrics, report and export)
and the split report. The model classes of a task are `tljax.models.MODEL_CLASSES[model_type][task]`, its
predictor `tljax.predict.PREDICTORS[task]`. `run.prepare` looks the task up and runs it.

    sequence-classification   one label per text (run.py)
    token-classification      one tag per word: named entities (tagging.py)
    masked-lm, causal-lm      continued pre-training on unlabelled text; causal-lm with `chat`: chat tuning
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
                   chat=dataclasses.asdict(config.chat) if config.chat else None, pooling=config.pooling,
                   crf=config.crf)


def text_positions(adaptation: Adaptation, wanted: int) -> int:
    """The longest text the model takes: virtual prompt tokens and prefix keys take positions too."""
    body = backbone(adaptation.model)
    positions = adaptation.model.config.max_position_embeddings - body.num_virtual_tokens - body.num_prefix_tokens
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
