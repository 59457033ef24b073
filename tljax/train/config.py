"""Typed run configs, filled from YAML files and `--set section.key=value` overrides.

An unknown key is an error listing the valid ones; values are converted to the field's type.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tljax.data.chat import resolve_template
from tljax.data.dataset import DataError
from tljax.errors import InputError
from tljax.tagging import SCHEMES as TAG_SCHEMES
from tljax.train.sharding import check_mesh, parse_rules


class ConfigKeyError(InputError):
    """A config key that does not exist, a value of the wrong type, or a setting out of its range."""


PROMPT_FORMS = ("plain", "chat")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "rotten-tomatoes"  # a packaged corpus, a CSV / JSONL file, hf:NAME or tfds:DIR
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None  # the declared label set (user files); values outside it are errors
    validation: float = 0.1  # fraction of examples (by group) held out for evaluation during training
    test: float = 0.1  # fraction held out for the final test
    max_length: int = 128  # longer inputs are truncated (and counted)
    max_train_examples: int | None = None  # a smaller budget: the first N training examples of the split
    max_eval_examples: int | None = None
    text_prefix: str = ""  # e.g. "query: " for e5 models
    # token classification: the tags' scheme in the file (auto: detected; iob1, iob2, bioes), the overlap of the
    # windows a longer text is read in (tokens), and whether a word's later sub-tokens carry its tag too
    tag_scheme: str = "auto"
    stride: int = 32
    label_all_subtokens: bool = False
    # question answering: the answer's longest span (tokens), how many best starts and ends of each window are
    # paired into candidate spans, and (with unanswerable questions) by how much the null score must beat the
    # best span's for "no answer" (Hugging Face's run_qa names; stride is its doc_stride)
    max_answer_length: int = 30
    n_best_size: int = 20
    null_score_diff_threshold: float | str = 0.0  # or "auto": chosen on the validation split (best F1)
    # seq2seq: the column of the output text, its longest length in tokens (longer targets are cut; generation
    # stops there), and the prompt's form: plain (text_prefix + input + separator, the target after it) or chat
    # (text_prefix + input as the user's message in the tokenizer's chat template, the target as the reply)
    target_column: str = "target"
    max_target_length: int = 64
    prompt_form: str = "plain"
    separator: str = "\n"

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise ConfigKeyError(f"data.max_length must be at least 8 tokens, got {self.max_length}")
        if self.tag_scheme not in TAG_SCHEMES:
            raise ConfigKeyError(f"data.tag_scheme {self.tag_scheme!r} is unknown; valid: {', '.join(TAG_SCHEMES)}")
        if isinstance(self.null_score_diff_threshold, str) and self.null_score_diff_threshold != "auto":
            raise ConfigKeyError(f"data.null_score_diff_threshold must be a number or auto (chosen on the validation "
                                 f"split), got {self.null_score_diff_threshold!r}")
        for name in ("max_answer_length", "n_best_size"):
            if getattr(self, name) < 1:
                raise ConfigKeyError(f"data.{name} must be at least 1, got {getattr(self, name)}")
        if self.stride < 0:
            raise ConfigKeyError(f"data.stride must be >= 0 tokens, got {self.stride}")
        if self.prompt_form not in PROMPT_FORMS:
            raise ConfigKeyError(f"data.prompt_form {self.prompt_form!r} is unknown; valid: {', '.join(PROMPT_FORMS)}")
        if self.max_target_length < 1:
            raise ConfigKeyError(f"data.max_target_length must be at least 1 token, got {self.max_target_length}")
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigKeyError(f"data.{name} must be at least 1 (or null for all), got {value}")


SCHEDULES = ("linear", "cosine", "constant")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Hugging Face `TrainingArguments` names where one exists."""

    learning_rate: float = 5e-5
    new_learning_rate: float | None = None  # the head and the method's own parameters; None: learning_rate
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    lr_scheduler_type: str = "linear"
    max_grad_norm: float | None = 1.0
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 1.0
    max_steps: int | None = None  # overrides num_train_epochs
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    eval_steps: int = 100  # evaluate (and checkpoint) every N optimiser steps, and at the end
    logging_steps: int = 10
    metric_for_best_model: str = "accuracy"  # accuracy | f1 | precision | recall | mcc | loss; seq2seq: chrf | ...
    early_stopping_patience: int | None = 3  # evaluations without improvement before stopping
    # seq2seq: the target distribution mixed with a uniform one, (1 - e) * one-hot + e / vocabulary (Hugging Face's
    # label_smoothing_factor); 0: plain cross-entropy
    label_smoothing: float = 0.0
    seed: int = 42
    dtype: str = "float32"  # float32 | bfloat16 (compute; parameters stay float32)
    # multi-task: P(task) proportional to (its training examples) ** (1 / T); 1: by size, large: uniform
    task_sampling_temperature: float = 2.0
    # the device mesh: {data: N, fsdp: M}, N x M devices; -1 (one axis): what the others leave. fsdp > 1 shards
    # parameters and optimiser state over M devices (tljax.train.sharding)
    mesh: dict[str, int] = dataclasses.field(default_factory=lambda: {"data": -1, "fsdp": 1})
    # which parameters are sharded over the fsdp axis: [[pattern, shard | replicate], ...]; null: all are
    sharding: list[list[str]] | None = None

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ConfigKeyError(f"training.learning_rate must be > 0, got {self.learning_rate}")
        if self.new_learning_rate is not None and self.new_learning_rate <= 0:
            raise ConfigKeyError(f"training.new_learning_rate must be > 0 (or null), got {self.new_learning_rate}")
        if self.lr_scheduler_type not in SCHEDULES:
            raise ConfigKeyError(f"training.lr_scheduler_type {self.lr_scheduler_type!r} is unknown; valid: "
                                 f"{', '.join(SCHEDULES)}")
        if self.dtype not in DTYPES:
            raise ConfigKeyError(f"training.dtype {self.dtype!r} is unknown; valid: {', '.join(DTYPES)}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ConfigKeyError(f"training.warmup_ratio must be between 0 and 1, got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ConfigKeyError(f"training.weight_decay must be >= 0, got {self.weight_decay}")
        if self.num_train_epochs <= 0:
            raise ConfigKeyError(f"training.num_train_epochs must be > 0, got {self.num_train_epochs}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigKeyError(f"training.max_grad_norm must be > 0 (or null: no clipping), got {self.max_grad_norm}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigKeyError("training.early_stopping_patience must be at least 1 (or null: never stop early), "
                                 f"got {self.early_stopping_patience}")
        metrics = ("accuracy", "f1", "precision", "recall", "mcc", "loss", "perplexity", "exact", "chrf", "bleu",
                   "rouge1", "rouge2", "rougeL")
        if self.metric_for_best_model not in metrics:
            raise ConfigKeyError(f"training.metric_for_best_model {self.metric_for_best_model!r} is unknown; "
                                 f"valid: {', '.join(metrics)}")
        for name in ("eval_steps", "logging_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigKeyError(f"training.{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigKeyError(f"training.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.task_sampling_temperature <= 0:
            raise ConfigKeyError(f"training.task_sampling_temperature must be > 0, got {self.task_sampling_temperature}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigKeyError(f"training.max_steps must be at least 1, got {self.max_steps}")
        check_mesh(self.mesh)  # the forms; the devices are asked when the run starts
        parse_rules(self.sharding)


@dataclasses.dataclass(frozen=True)
class DistillationConfig:
    """Knowledge distillation: the run's model (the student) learns from a trained teacher's predictions."""

    teacher: str  # a tljax run directory (or its export/) or a Hugging Face sequence-classification directory
    temperature: float = 2.0  # softens both distributions; the distillation term is scaled by T ** 2
    alpha: float = 0.5  # loss = (1 - alpha) * cross-entropy on the labels + alpha * T^2 * KL(teacher || student)
    hidden_weight: float = 0.0  # > 0 adds hidden-state matching (mean squared error through learned projections)
    layer_map: list[list[int]] | None = None  # [[student layer, teacher layer], ...] (1-based); None: evenly spaced
    student_layers: list[int] | None = None  # build the student from these layers of `model` (0-based), e.g. [0, 2, 4]

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigKeyError(f"distillation.temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ConfigKeyError(f"distillation.alpha must be between 0 and 1, got {self.alpha}")
        if self.hidden_weight < 0:
            raise ConfigKeyError(f"distillation.hidden_weight must be >= 0, got {self.hidden_weight}")
        whole = lambda x: isinstance(x, int) and not isinstance(x, bool)  # noqa: E731
        if self.student_layers is not None and (not self.student_layers or not all(map(whole, self.student_layers))):
            raise ConfigKeyError(f"distillation.student_layers {self.student_layers!r} must be a non-empty list of "
                                 "layer indices, e.g. [0, 2, 4]")
        if self.layer_map is not None and (not self.layer_map or not all(
                isinstance(p, list) and len(p) == 2 and all(map(whole, p)) for p in self.layer_map)):
            raise ConfigKeyError(f"distillation.layer_map {self.layer_map!r} must be a non-empty list of "
                                 "[student layer, teacher layer] pairs of integers, e.g. [[1, 2], [2, 4], [3, 6]]")


@dataclasses.dataclass(frozen=True)
class ChatConfig:
    """Chat tuning of a decoder: each labelled text asked with `instruction` through the tokenizer's chat
    template (or the one `template` names), the label's verbaliser as the reply (the loss is on the reply only)."""

    instruction: str  # with {text}, e.g. "Is this review positive or negative?\n\nReview: {text}"
    verbalisers: dict[str, str]  # label name -> the reply, e.g. {negative: negative, positive: positive}
    # the turn format a base decoder (whose tokenizer has no chat template) is taught: a name (gemma: Gemma's
    # <start_of_turn> turns) or a Jinja template; the run's export carries it, so it is asked in that form later
    template: str | None = None

    def __post_init__(self) -> None:
        if "{text}" not in self.instruction:
            raise ConfigKeyError("chat.instruction must contain {text} (where each example's text goes)")
        if self.template is not None:
            try:
                resolve_template(str(self.template))
            except DataError as error:
                raise ConfigKeyError(f"chat.template: {error}") from None
        words = [str(v).strip().lower() for v in self.verbalisers.values()]
        if any(not w for w in words) or len(set(words)) != len(words):
            raise ConfigKeyError(f"chat.verbalisers {self.verbalisers} must give every label its own, non-empty "
                                 "reply")


POOLING = ("pooler", "mean")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: str = "minilm-l6"
    # sequence-classification, token-classification, or continued pre-training on unlabelled text: masked-lm
    # (encoders), causal-lm (decoders); the registered tasks: tljax.train.tasks
    task: str = "sequence-classification"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    method: dict[str, Any] | list[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: {"name": "lora", "rank": 8, "alpha": 16, "dropout": 0.1})
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    output_dir: str = "runs/default"
    distillation: DistillationConfig | None = None
    # multi-task learning: [{name: sentiment, source: rotten-tomatoes}, ...] (data.* fields per task; the
    # `data` section gives the shared max_length and split fractions). None: the single task of `data`.
    tasks: list[dict[str, Any]] | None = None
    # extra labelled sets the final model is evaluated on (cross-lingual / zero-shot transfer):
    # {name: source} or {name: {source: ..., split: all | test, max_examples: N, text_column: ..., label_column: ...}}
    evaluation: dict[str, Any] = dataclasses.field(default_factory=dict)
    # with task: causal-lm, labelled data taught as chat replies (chat tuning) instead of continued pre-training
    chat: ChatConfig | None = None
    # what an encoder classifier's linear layer reads: pooler (BERT's tanh pooler of [CLS], trained with the
    # head) or mean (the masked mean of the last hidden states, no pooler: how sentence encoders were trained)
    pooling: str = "pooler"
    # token classification: a CRF layer over the tags (transition scores, Viterbi decoding, the sequence's
    # negative log-likelihood as the loss)
    crf: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in POOLING:
            raise ConfigKeyError(f"pooling {self.pooling!r} is unknown; valid: {', '.join(POOLING)}")
        if self.pooling != "pooler" and self.task != "sequence-classification":
            raise ConfigKeyError(f"pooling: {self.pooling} is for sequence classification; with task: {self.task} "
                                 "leave pooling unset")
        self.check_methods()

    def methods(self) -> list[dict[str, Any]]:
        """The method specs as a list (a single method may be written as one mapping)."""
        return list(self.method) if isinstance(self.method, list) else [dict(self.method)]

    def check_methods(self) -> None:
        specs = self.method if isinstance(self.method, list) else [self.method]
        for spec in specs:
            if not isinstance(spec, dict) or not spec.get("name"):
                raise ConfigKeyError(f"method {spec!r} needs a name, e.g. method: {{name: lora, rank: 8}}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """`value` converted to the type `annotation` names (YAML and the command line give strings)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in options:
                return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigKeyError:
                continue
        raise ConfigKeyError(f"{key}={value!r} is not a valid {annotation}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigKeyError(f"{key}={value!r} is not a boolean (true / false)")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigKeyError(f"{key}={value!r} is not a number")
        try:
            number = annotation(value) if annotation is float else int(str(value), 10)
        except (TypeError, ValueError):
            raise ConfigKeyError(f"{key}={value!r} is not {'an integer' if annotation is int else 'a number'}") from None
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigKeyError(f"{key}={value!r} is not a string")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = _yaml(value, key)
        if not isinstance(value, list):
            raise ConfigKeyError(f"{key}={value!r} is not a list")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigKeyError(f"{key}={value!r} is not a mapping")
        return value
    return value


def _yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or " ".join(str(error).split())
        context = getattr(error, "context", None)
        raise ConfigKeyError(f"{where}{line}: not valid YAML ({problem}{f' {context}' if context else ''}); "
                             "check the indentation and the quoting there") from None


def from_dict(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    """Builds dataclass `cls` from a (nested) mapping; unknown keys raise `ConfigKeyError`."""
    if not isinstance(raw, dict):
        raise ConfigKeyError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        valid = ", ".join(prefix + name for name in fields)
        raise ConfigKeyError(f"unknown config key {', '.join(prefix + k for k in unknown)}; valid: {valid}")
    required = [name for name, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and name not in raw]
    if required:
        raise ConfigKeyError(f"{prefix.rstrip('.') or 'the config'} needs {', '.join(prefix + k for k in required)}")
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        optional = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(optional) == 1 \
                and dataclasses.is_dataclass(optional[0]):  # an optional section, e.g. distillation
            values[name] = None if value is None else from_dict(optional[0], value, f"{prefix}{name}.")
        elif dataclasses.is_dataclass(hint):
            values[name] = from_dict(hint, value, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, hint, prefix + name)
    return cls(**values)


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Applies one `section.key=value` to a nested config mapping, in place (the value is YAML)."""
    if "=" not in assignment:
        raise ConfigKeyError(f"--set {assignment!r}: expected key=value, e.g. training.learning_rate=1e-3")
    key, text = assignment.split("=", 1)
    set_value(raw, key, _yaml(text, f"--set {key}") if text else "", f"--set {key}")


def set_value(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Sets the dotted `key` (e.g. training.learning_rate) of a nested config mapping to `value`, in place;
    `where` names the setting in an error (`--set training.x`, a keyword argument)."""
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None else child
            if not isinstance(child, dict):
                raise ConfigKeyError(f"{where}: {part} is not a section")
            node[part] = child
        node = child
    node[parts[-1]] = value


# The embedded default run (`python -m tljax.train` with no --config): configs/lora.yaml without comments.
DEFAULT_RUN = {
    "model": "minilm-l6",
    "data": {"source": "rotten-tomatoes", "max_length": 64},
    "method": {"name": "lora", "rank": 8, "alpha": 16, "dropout": 0.1, "targets": ["query", "value"]},
    "training": {"learning_rate": 3e-3, "num_train_epochs": 1, "per_device_train_batch_size": 32,
                 "warmup_ratio": 0.06, "weight_decay": 0.01, "eval_steps": 50, "metric_for_best_model": "accuracy",
                 "early_stopping_patience": 3, "seed": 42},
    "output_dir": "runs/lora",
}


def load_config(path: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = (),
                settings: Mapping[str, Any] | None = None) -> RunConfig:
    """The run config: the dataclass defaults, then the YAML file (or a mapping of the same sections; without
    either, the embedded default run), then the `--set` overrides, then `settings` ({dotted key: value}, the
    values as Python gives them: how `tljax.fine_tune` sets what its arguments name)."""
    raw = dataclasses.asdict(RunConfig())
    if path is None:
        loaded = copy.deepcopy(DEFAULT_RUN)  # overrides edit `raw` in place: the embedded run must not change
    elif isinstance(path, Mapping):
        loaded = copy.deepcopy(dict(path))  # (the caller's mapping is not changed either)
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigKeyError(f"config file {path} does not exist")
        loaded = _yaml(path.read_text(), str(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigKeyError(f"{path} must hold a mapping of config sections")
    if "method" in loaded:  # a file's method replaces the default one whole
        raw["method"] = loaded.pop("method")
    _merge(raw, loaded)
    for assignment in overrides:
        apply_override(raw, assignment)
    for key, value in (settings or {}).items():
        set_value(raw, key, copy.deepcopy(value), key)
    return from_dict(RunConfig, raw)


def _merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "method":
            _merge(base[key], value)
        else:
            base[key] = value
