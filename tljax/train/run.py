"""Everything a run needs before its first step: model, tokenizer, data, methods, and the objective.

`prepare` does all the checking (config, model name, data source, columns, labels, splits, methods, a
teacher) before anything is written, so that bad input leaves no run directory behind. The model of a run
and its export live in `tljax.runs`; the objectives (what is trained and how it is judged) in
`objectives.py`, `features.py`, `distill.py`, `multitask.py`, `language_modelling.py`, `chat.py` and
`seq2seq.py`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from flax import nnx
from transformers import AutoTokenizer

from tljax import zoo
from tljax.data import DataError, describe_splits, load_source, normalise, split_dataset
from tljax.data.batches import encode
from tljax.methods import Adaptation
from tljax.runs import RunInfo
from tljax.train.chat import chat_objective, use_chat_template
from tljax.train.config import ConfigKeyError, DataConfig, RunConfig
from tljax.train.distill import distillation_objective, hidden_state_matching, load_teacher
from tljax.train.features import (FROZEN_CACHE_LIMIT, FeatureClassification, FrozenBottomClassification, cached_bytes,
                                  frozen_bottom, trains_only_the_head)
from tljax.train.language_modelling import language_modelling_objective, load_texts
from tljax.train.multitask import READS_TOKENS, TaskHeads, multitask_objective, parse_tasks
from tljax.train.objectives import Classification, EvaluationSet, Objective
from tljax.train.sharding import make_mesh, parameter_shardings, parse_rules
from tljax.data.sources import load_tagged
from tljax.data.tagged import describe_tagged_splits
from tljax.train.tag_distill import token_distillation_objective
from tljax.train.tagging import encode_tagged, prepare_token_classification, tagged_splits
from tljax.train.qa import (SPAN_LABELS, answer_settings, describe_qa_splits, encode_qa, prepare_question_answering,
                             qa_splits)
from tljax.train.qa_distill import qa_distillation_objective
from tljax.train.seq2seq import prepare_seq2seq
from tljax.train.tasks import Setup, build, evaluation_part, evaluation_specs, register, split_budgets, task_of

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Prepared:
    config: RunConfig
    model_dir: Path
    tokenizer: Any
    info: RunInfo  # what the export records (labels of the first task, the text's max length, ...)
    split_report: str
    objective: Objective  # what is trained, on which batches, judged how
    pad_id: int

    @property
    def adaptation(self) -> Adaptation:
        return self.objective.adaptation

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.info.labels

    @property
    def max_length(self) -> int:
        return self.info.max_length

    def export(self, model: nnx.Module, directory: Path) -> list[str]:
        """Writes the trained `model` (merged, on the host) as the objective exports it."""
        return self.objective.export(model, self.info, directory, model_dir=self.model_dir, tokenizer=self.tokenizer)


def _split(dataset, data: DataConfig, seed: int):
    """Train / validation / test of `dataset` as `data` asks (fractions, then the example budgets)."""
    return split_budgets(split_dataset(dataset, validation=data.validation, test=data.test, seed=seed), data)


def _load_labelled(data: DataConfig):
    return load_source(data.source, text_column=data.text_column, label_column=data.label_column, labels=data.labels)


def _classification_split(dataset, data: DataConfig, seed: int, where: str):
    """`_split`, refusing a training split of one class: a classifier trained on it learns to always answer
    that class, and its accuracy on validation and test would only measure how rare the other classes are."""
    splits = _split(dataset, data, seed)
    counts = splits["train"].class_counts()
    present = [name for name, count in counts.items() if count]
    if len(present) == 1:
        raise DataError(_one_class_message(where, present[0], counts[present[0]], dataset.class_counts(), data, seed))
    return splits


def _one_class_message(where: str, only: str, count: int, in_data: dict[str, int], data: DataConfig,
                       seed: int) -> str:
    others = {name: n for name, n in in_data.items() if name != only}
    names = ", ".join(map(repr, others))
    if not any(others.values()):
        declared = f"; the declared {names} {'has' if len(others) == 1 else 'have'} none" if others else ""
        return (f"{where}: every example has the label {only!r} ({count} in the training split{declared}); a "
                "classifier needs examples of at least two classes: add examples of the other class(es)")
    elsewhere = ", ".join(f"{n} of {name!r}" for name, n in others.items() if n)
    budget = f", data.max_train_examples={data.max_train_examples}" if data.max_train_examples is not None else ""
    return (f"{where}: the training split holds only the class {only!r} ({count} examples), though the data also "
            f"has {elsewhere}; a classifier needs at least two classes to learn from: add more examples of {names}, "
            f"or split differently (data.validation={data.validation}, data.test={data.test}, training.seed={seed}{budget})")


def prepare(config: RunConfig) -> Prepared:
    """Resolves and checks every input of a run; raises a clear error on the first bad one."""
    task = task_of(config)
    if config.training.label_smoothing and config.task != "seq2seq":
        raise ConfigKeyError(f"training.label_smoothing is for task: seq2seq (the output's tokens); this run's task "
                             f"is {config.task}: leave it at 0")
    model_dir = zoo.resolve(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    setup = task.prepare(config, model_dir, tokenizer)
    setup.objective.check_metric(config.training.metric_for_best_model)
    # the mesh fits the devices and the sharding rules cover every parameter (nothing is placed yet)
    parameter_shardings(nnx.state(setup.objective.adaptation.model, nnx.Param), make_mesh(config.training.mesh),
                        parse_rules(config.training.sharding))
    return Prepared(config, model_dir, tokenizer, setup.info, setup.report, setup.objective, _pad_id(tokenizer))


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@register("sequence-classification", "one label per text", sections=("tasks", "distillation", "evaluation"))
def _prepare_sequence_classification(config: RunConfig, model_dir: Path, tokenizer) -> Setup:
    if config.tasks is not None:
        if config.distillation is not None or config.evaluation:
            raise ConfigKeyError("multi-task runs take neither distillation nor evaluation sets; remove them or "
                                 "the tasks section")
        return _prepare_multitask(config, model_dir, tokenizer)
    data, seed, pad_id = config.data, config.training.seed, _pad_id(tokenizer)
    dataset = _load_labelled(data)
    splits = _classification_split(dataset, data, seed, data.source)
    label_names = tuple(dataset.label_names)
    teacher, internal = None, ()
    if config.distillation is not None:  # the teacher first: its method is part of the student's adaptation
        teacher = load_teacher(config.distillation.teacher, seed)
        matching = hidden_state_matching(config, model_dir, tokenizer, teacher, label_names)
        internal = (matching,) if matching else ()
    adaptation, info = build(config, model_dir, tokenizer, label_names, internal)
    encoded = {name: encode(split.texts, split.labels, tokenizer, info.max_length, data.text_prefix)
               for name, split in splits.items()}
    evaluation_sets = load_evaluation_sets(config, tokenizer, info.max_length, label_names)
    if teacher is not None:
        objective: Objective = distillation_objective(
            config, Classification(adaptation, encoded, pad_id, info.max_length, label_names=label_names,
                                   evaluation_sets=evaluation_sets),
            teacher, {name: split.texts for name, split in splits.items()})
    elif trains_only_the_head(adaptation):  # a frozen backbone's features are computed once
        objective = FeatureClassification(adaptation, encoded, pad_id, info.max_length, label_names=label_names,
                                          evaluation_sets=evaluation_sets)
    elif _cache_frozen_bottom(adaptation, encoded, info.max_length):  # so are frozen bottom layers'
        objective = FrozenBottomClassification(adaptation, encoded, pad_id, info.max_length,
                                               label_names=label_names, evaluation_sets=evaluation_sets,
                                               layers=frozen_bottom(adaptation))
    else:
        objective = Classification(adaptation, encoded, pad_id, info.max_length, label_names=label_names,
                                   evaluation_sets=evaluation_sets)
    return Setup(objective, info, describe_splits(splits))


def _prepare_multitask(config: RunConfig, model_dir: Path, tokenizer) -> Setup:
    data, seed = config.data, config.training.seed
    tasks = parse_tasks(config.tasks, data)
    loaded = [_task_splits(name, kind, task_data, seed) for name, kind, task_data in tasks]  # every task's data
    heads = TaskHeads(tasks=tuple((name, len(labels)) for name, _, labels, _ in loaded), seed=seed,
                      token_tasks=tuple(name for name, kind, _, _ in loaded if kind in READS_TOKENS))
    adaptation, info = build(config, model_dir, tokenizer, loaded[0][2], (heads,))
    prepared_tasks, reports, answers = [], [], {}
    for (name, kind, labels, splits), (_, _, task_data) in zip(loaded, tasks):
        if kind == "token-classification":
            encoded = {split_name: encode_tagged(part, tokenizer, info.max_length, task_data, labels)
                       for split_name, part in splits.items()}
            reports.append(f"task {name} ({task_data.source}, tags):\n{describe_tagged_splits(splits)}")
        elif kind == "question-answering":
            encoded = {split_name: encode_qa(part, tokenizer, info.max_length, task_data.stride, task_data.text_prefix)
                       for split_name, part in splits.items()}
            answers[name] = answer_settings(task_data, splits["train"])
            reports.append(f"task {name} ({task_data.source}, questions):\n"
                           f"{describe_qa_splits(splits, encoded, info.max_length)}")
        else:
            encoded = {split_name: encode(part.texts, part.labels, tokenizer, info.max_length, task_data.text_prefix)
                       for split_name, part in splits.items()}
            reports.append(f"task {name} ({task_data.source}):\n{describe_splits(splits)}")
        prepared_tasks.append((name, kind, labels, encoded))
    objective = multitask_objective(config, adaptation, prepared_tasks, [d for _, _, d in tasks], _pad_id(tokenizer),
                                    info.max_length, answers)
    return Setup(objective, info, "\n".join(reports))


def _task_splits(name: str, kind: str, data: DataConfig, seed: int) -> tuple[str, str, tuple[str, ...], dict]:
    """(name, kind, label names, splits) of one task of a multi-task run, its data loaded and checked (a
    question-answering task's head scores where the answer starts and where it ends)."""
    if kind == "token-classification":
        dataset = load_tagged(data.source, scheme=data.tag_scheme, types=data.labels)
        return name, kind, tuple(dataset.label_names), tagged_splits(dataset, data, seed)
    if kind == "question-answering":
        return name, kind, SPAN_LABELS, qa_splits(data, seed)
    dataset = _load_labelled(data)
    splits = _classification_split(dataset, data, seed, f"task {name} ({data.source})")
    return name, kind, tuple(dataset.label_names), splits


@register("causal-lm", "continued pre-training of a decoder on unlabelled text; with chat: chat tuning on "
          "labelled text", sections=("chat",))
def _prepare_causal_lm(config: RunConfig, model_dir: Path, tokenizer) -> Setup:
    if config.chat is None:
        return _prepare_language_modelling(config, model_dir, tokenizer)
    use_chat_template(tokenizer, config.chat, config.model)  # before the data is read: a refusal comes at once
    data, seed = config.data, config.training.seed
    splits = _classification_split(_load_labelled(data), data, seed, data.source)
    adaptation, info = build(config, model_dir, tokenizer, tuple(splits["train"].label_names))
    objective = chat_objective(config, adaptation, tokenizer, splits, info.max_length)
    return Setup(objective, info, describe_splits(splits))


@register("masked-lm", "continued pre-training of an encoder on unlabelled text (masked tokens)")
def _prepare_language_modelling(config: RunConfig, model_dir: Path, tokenizer) -> Setup:
    data = config.data
    splits = _split(load_texts(data.source, data.text_column, data.label_column), data, config.training.seed)
    adaptation, info = build(config, model_dir, tokenizer, ())
    objective = language_modelling_objective(config, adaptation, tokenizer, splits, info.max_length)
    return Setup(objective, info, describe_splits(splits))


@register("token-classification", "a tag per word: named entities (CoNLL, JSON Lines spans, hf:DIR, ner-pt / "
          "ner-en)", sections=("evaluation", "crf", "distillation"))
def _prepare_token_classification(config: RunConfig, model_dir: Path, tokenizer) -> Setup:
    setup = prepare_token_classification(config, model_dir, tokenizer)
    if config.distillation is None:
        return setup
    return dataclasses.replace(setup, objective=token_distillation_objective(config, setup.objective))


@register("question-answering", "the answer as a span of the passage: extractive QA (SQuAD v1.1 / v2.0 JSON, JSON "
          "Lines / CSV, hf:DIR, qa-pt / qa-en)", sections=("evaluation", "distillation"))
def _prepare_question_answering(config: RunConfig, model_dir: Path, tokenizer) -> Setup:
    setup = prepare_question_answering(config, model_dir, tokenizer)
    if config.distillation is None:
        return setup
    return dataclasses.replace(setup, objective=qa_distillation_objective(config, setup.objective, tokenizer))


@register("seq2seq", "input text -> output text on a decoder or an encoder-decoder (translation, summaries, labels as "
          "words): JSON Lines / CSV, hf:DIR, reviews-en-pt / ner-en-pt / questions-en-pt and back", sections=("tasks",))
def _prepare_seq2seq(config: RunConfig, model_dir: Path, tokenizer) -> Setup:
    return prepare_seq2seq(config, model_dir, tokenizer)


def _cache_frozen_bottom(adaptation: Adaptation, encoded: dict, max_length: int) -> bool:
    """Whether a partial run computes its frozen bottom once per example (it applies, and fits in memory)."""
    if not frozen_bottom(adaptation):
        return False
    size = cached_bytes(adaptation, encoded, max_length)
    if size > FROZEN_CACHE_LIMIT:
        log.warning("partial fine-tuning: the frozen layers' outputs would take %.1f GB (more than %.0f GB); they "
                    "are computed at every step instead", size / 2**30, FROZEN_CACHE_LIMIT / 2**30)
        return False
    return True


def load_evaluation_sets(config: RunConfig, tokenizer, max_length: int,
                         label_names: tuple[str, ...]) -> tuple[EvaluationSet, ...]:
    """The config's extra evaluation sets, encoded like the run's data, labels mapped by name."""
    sets = []
    for spec in evaluation_specs(config, ("text_column", "label_column")):
        dataset = evaluation_part(load_source(spec.source, **spec.options), spec, config)
        if set(dataset.label_names) != set(label_names):
            raise DataError(f"evaluation.{spec.name} ({spec.source}) has labels {list(dataset.label_names)}, but "
                            f"the model is trained for {list(label_names)}; evaluate on a set with the same labels")
        if not len(dataset):
            raise DataError(f"evaluation.{spec.name} ({spec.source}, split {spec.split}) has no examples")
        to_model = [label_names.index(n) for n in dataset.label_names]
        labels = [to_model[label] for label in dataset.labels]
        sets.append(EvaluationSet(spec.name, spec.source, encode(dataset.texts, labels, tokenizer, max_length,
                                                                 config.data.text_prefix), dataset.language))
    return tuple(sets)


def training_texts(config: RunConfig) -> set[str]:
    """The normalised texts a run trained on (every task's training split; a reader's: its passages), to check
    an evaluation set for overlap with them."""
    if config.task in ("masked-lm", "causal-lm") and config.chat is None:
        data = config.data
        return {normalise(t) for t in _split(load_texts(data.source, data.text_column, data.label_column), data,
                                             config.training.seed)["train"].texts}
    if config.task in ("token-classification", "question-answering"):
        return _task_texts(config.task, config.data, config.training.seed)
    tasks = parse_tasks(config.tasks, config.data) if config.tasks else [("", "sequence-classification", config.data)]
    return set().union(*(_task_texts(kind, data, config.training.seed) for _, kind, data in tasks))


def _task_texts(kind: str, data: DataConfig, seed: int) -> set[str]:
    """The normalised texts of one task's training split (a question-answering task's: the passages)."""
    if kind == "token-classification":
        texts = tagged_splits(load_tagged(data.source, scheme=data.tag_scheme), data, seed)["train"].texts
    elif kind == "question-answering":
        texts = qa_splits(data, seed)["train"].contexts
    else:
        texts = _split(_load_labelled(data), data, seed)["train"].texts
    return {normalise(text) for text in texts}
