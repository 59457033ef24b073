"""Multi-task learning: one shared backbone, one head per task: sequence classification (a label per text), token
classification (a tag per word, e.g. named entities: `task: token-classification` in the task's entry) or
extractive question answering (a span of a passage: `task: question-answering`).

Each training batch comes from one task, drawn with temperature-scaled sampling: P(task) is proportional
to (its training examples) ** (1 / T), so T = 1 samples by size and a large T evens the tasks out (the
rule multilingual and multi-task models use to keep small tasks from being drowned). A sequence task's head
reads the model's own features (the pooled output of an encoder, the last token's state of a decoder), a token
task's head every token's last hidden state, a question-answering task's span head (start and end scores) every
token's last hidden state of the question / context window; each task is evaluated with its own metrics (entity
F1 for a token task, SQuAD exact match and F1 for a question-answering task), and the run's metrics are their
means over the tasks (with a question-answering task: F1 and loss, the metrics every kind has).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tljax.data.answer_windows import AnswerSettings, window_outputs
from tljax.data.batches import BatchIterator, Encoded
from tljax.methods.base import Method, MethodContext, head_pattern, replace_module
from tljax.methods.rules import PathRules, Rule
from tljax.models.checkpoint import atomic_directory
from tljax.models.layers import Linear, dropout, layer_keys
from tljax.data.windows import score_words
from tljax.models import model_class
from tljax.runs import RunInfo, export_run
from tljax.train.config import ConfigKeyError, DataConfig, from_dict
from tljax.train.losses import cross_entropy
from tljax.train.objectives import Objective, classify_batches
from tljax.train.qa import QASplit, qa_metrics, span_loss, tuned_threshold
from tljax.train.tagging import TaggedSplit, tag_metrics

Array = jax.Array
# what a task may set itself; the rest (max_length) is shared through the run's `data` section
TASK_KEYS = ("name", "task", "source", "text_column", "label_column", "labels", "validation", "test",
             "max_train_examples", "max_eval_examples", "text_prefix", "tag_scheme", "stride", "label_all_subtokens",
             "max_answer_length", "n_best_size", "null_score_diff_threshold")
TASK_KINDS = ("sequence-classification", "token-classification", "question-answering")
READS_TOKENS = ("token-classification", "question-answering")  # a head on every token's state, with a bias
SPAN_METRICS = ("f1", "loss")  # what a question-answering task shares with the others
NOT_A_CLASS = -1e9  # the logit of a class a task does not have (padding up to the widest head)


def parse_tasks(tasks: list[Any], shared: DataConfig) -> list[tuple[str, str, DataConfig]]:
    """(name, kind, data config) of each task (kind: sequence-classification, the default,
    token-classification or question-answering); the shared `data` section fills what a task leaves out."""
    if not isinstance(tasks, list) or not tasks:
        raise ConfigKeyError("tasks must be a non-empty list, e.g. [{name: sentiment, source: rotten-tomatoes}, "
                             "{name: subjectivity, source: rotten-tomatoes-subjectivity}]")
    parsed, seen = [], set()
    for number, raw in enumerate(tasks):
        where = f"tasks[{number}]"
        if not isinstance(raw, dict) or not raw.get("name") or not raw.get("source"):
            raise ConfigKeyError(f"{where} must be a mapping with a name and a source, e.g. "
                                 "{name: sentiment, source: rotten-tomatoes}; got " + repr(raw))
        unknown = sorted(set(raw) - set(TASK_KEYS))
        if unknown:
            raise ConfigKeyError(f"{where} has unknown keys {unknown}; valid: {', '.join(TASK_KEYS)}")
        name = str(raw["name"])
        if name in seen:
            raise ConfigKeyError(f"task name {name!r} appears more than once in tasks; give each task its own name")
        if not name.replace("-", "_").isidentifier():
            raise ConfigKeyError(f"{where}: task name {name!r} must be a word (letters, digits, - and _)")
        if hasattr(nnx.Dict, name) or name.startswith("_"):  # the heads live in an nnx.Dict, keyed by name
            raise ConfigKeyError(f"{where}: task name {name!r} is reserved; choose another (e.g. {name}_task)")
        seen.add(name)
        kind = raw.get("task", "sequence-classification")
        if kind not in TASK_KINDS:
            raise ConfigKeyError(f"{where}: task {kind!r} is not one a multi-task run trains; valid: "
                                 f"{', '.join(TASK_KINDS)}")
        fields = {**dataclasses.asdict(shared), "labels": None,
                  **{k: v for k, v in raw.items() if k not in ("name", "task")}}
        parsed.append((name, kind, from_dict(DataConfig, fields, f"{where}.")))
    return parsed


@dataclasses.dataclass(frozen=True)
class TaskHeads(Method):
    """Internal method: one linear head per task (`task_heads/<task>/...`), trained with any method; the
    model's own single-task head is unused, so it is frozen."""

    name: ClassVar[str] = "_task_heads"
    tasks: tuple[tuple[str, int], ...] = ()  # (name, number of classes or tags)
    seed: int = 0
    # the tasks whose heads read every token (tags or spans: their heads have a bias, as a token classifier's and a
    # span model's)
    token_tasks: tuple[str, ...] = ()

    def apply(self, model: nnx.Module, context: MethodContext) -> None:
        own = single_task_head(model)
        rngs = nnx.Rngs(self.seed)
        model.task_heads = nnx.Dict({
            name: Linear(own.in_features, classes, use_bias=own.bias is not None or name in self.token_tasks,
                         dtype=own.dtype, param_dtype=own.kernel.dtype,
                         init_std=getattr(model.config, "initializer_range", 0.02), rngs=rngs)
            for name, classes in self.tasks})

    def rules(self, model: nnx.Module, step: int = 0) -> PathRules:
        return PathRules((Rule(head_pattern(model), False, "single-task head (unused: the task heads replace it)"),
                          Rule(r"^task_heads/", True, "task heads")))

    def new_parameters(self) -> tuple[str, ...]:
        return (r"^task_heads/",)


def single_task_head(model: nnx.Module) -> Linear:
    """The model's own output layer (`classifier` of a BERT, `classifier/out_proj` of a RoBERTa, `score` of a
    decoder)."""
    module = model
    for part in head_attribute(model).split("/"):
        module = getattr(module, part)
    return module


def head_attribute(model: nnx.Module) -> str:
    """The "/"-joined module path of the model's own output layer."""
    return head_pattern(model).strip("^/")


class MixtureBatches:
    """Batches drawn from the tasks' iterators; the task of draw k depends only on (seed, k)."""

    def __init__(self, iterators: list[BatchIterator], probabilities: np.ndarray, seed: int, draw: int = 0):
        self.iterators, self.probabilities, self.seed, self.draw = iterators, probabilities, seed, draw
        self.batches_per_epoch = sum(it.batches_per_epoch for it in iterators)

    def position(self) -> dict[str, Any]:
        return {"draw": self.draw, "tasks": [it.position() for it in self.iterators]}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, 1 << 21, self.draw))
        task = int(rng.choice(len(self.iterators), p=self.probabilities))
        self.draw += 1
        return next(self.iterators[task])


def sampling_probabilities(sizes: list[int], temperature: float) -> np.ndarray:
    """P(task) proportional to size ** (1 / temperature)."""
    weights = np.asarray(sizes, np.float64) ** (1.0 / temperature)
    return weights / weights.sum()


@dataclasses.dataclass
class MultiTask(Objective):
    """`encoded[split]` is a list of one part per task, each an `Encoded` (a sequence task), a `TaggedSplit`
    (a token task) or a `QASplit` (a question-answering task), whose examples carry their task's index (`task`)."""

    tasks: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, label or tag names; a span head's: start, end)
    temperature: float = 2.0
    task_data: tuple[DataConfig, ...] = ()  # each task's data settings (its text prefix goes into its export)
    kinds: tuple[str, ...] = ()  # each task's kind (TASK_KINDS)
    answers: dict[str, AnswerSettings] = dataclasses.field(default_factory=dict)  # per question-answering task

    def __post_init__(self) -> None:
        if "question-answering" in self.kinds:  # a reader has neither accuracy nor precision nor recall
            self.metrics = SPAN_METRICS

    def logits(self, model, batch, dropout_key=None) -> Array:
        """Each row's logits from its own task's head, padded to the widest head: [B, max classes],
        [B, T, max tags] for a batch of a token task (per-token labels [B, T]), or span scores [B, T, 2] for a
        batch of a question-answering task (one with `start_positions` [B])."""
        k_features, k_head = layer_keys(dropout_key, 2)
        # the kind of batch is known when the step is traced: one program per kind
        spans = "start_positions" in batch
        if spans or batch["labels"].ndim == 2:
            features = model.token_features(batch["input_ids"], batch["attention_mask"],
                                            token_type_ids=batch.get("token_type_ids"), dropout_key=k_features)
        else:
            features = model.pool(model.features(batch["input_ids"], batch["attention_mask"],
                                                 dropout_key=k_features))
        if not spans:  # a span head reads the states as they are, as Hugging Face's span models do
            features = dropout(features, getattr(model, "dropout_rate", 0.0), k_head)
        width = max(len(labels) for _, labels in self.tasks)
        padding = ((0, 0),) * (features.ndim - 1)
        per_task = [jnp.pad(model.task_heads[name](features).astype(jnp.float32),
                            (*padding, (0, width - len(labels))), constant_values=NOT_A_CLASS)
                    for name, labels in self.tasks]
        stacked = jnp.stack(per_task, axis=1)  # [B, tasks, (T,) width]
        task = batch["task"].reshape((-1, 1) + (1,) * (stacked.ndim - 2))
        chosen = jnp.take_along_axis(stacked, task, axis=1)[:, 0]
        return chosen[..., :2] if spans else chosen

    def loss(self, model, batch, dropout_key):
        logits, labels = self.logits(model, batch, dropout_key), batch["labels"]
        if "start_positions" in batch:
            return span_loss(logits, batch)
        if labels.ndim == 2:
            weights = (labels != -100).astype(jnp.float32) * batch["weights"][:, None]
            labels = jnp.where(labels == -100, 0, labels)
        else:
            weights = batch["weights"]
        loss, accuracy = cross_entropy(logits, labels, weights)
        return loss, {"accuracy": accuracy}

    def outputs(self, model, batch):
        return self.logits(model, batch)

    def _encoded(self, part) -> Encoded:
        return part.windows.encoded if isinstance(part, (TaggedSplit, QASplit)) else part

    def train_batches(self, batch_size, seed, position=None, share=(0, 1)):
        position = position or {"draw": 0, "tasks": [{"epoch": 0, "index": 0}] * len(self.tasks)}
        iterators = [BatchIterator(self._encoded(part), batch_size, self.pad_id, self.max_length, seed=seed + number,
                                   epoch=place["epoch"], index=place["index"], share=share)
                     for number, (part, place) in enumerate(zip(self.encoded["train"], position["tasks"]))]
        return MixtureBatches(iterators, self.probabilities(), seed, position["draw"])

    def probabilities(self) -> np.ndarray:
        return sampling_probabilities([len(self._encoded(e)) for e in self.encoded["train"]], self.temperature)

    def evaluate(self, forward, split, batch_size):
        per_task = {}
        for (name, labels), part, validation in zip(self.tasks, self.encoded[split], self.encoded["validation"]):
            batches = self.evaluation_batches(self._encoded(part), batch_size)
            if isinstance(part, TaggedSplit):
                per_task[name] = tag_metrics(part, score_words(forward, batches, part.windows), labels)
            elif isinstance(part, QASplit):
                scores = window_outputs(forward, batches, part.windows.encoded)
                if self.answers[name].threshold_source == "validation":  # auto: chosen for this model
                    chosen = scores if split == "validation" else window_outputs(
                        forward, self.evaluation_batches(self._encoded(validation), batch_size),
                        validation.windows.encoded)
                    self.answers[name] = tuned_threshold(validation, chosen, self.answers[name])
                per_task[name] = qa_metrics(part, scores, self.answers[name])
            else:
                per_task[name] = classify_batches(forward, batches, len(labels))
        shared = [m for m in ("loss", "accuracy", "precision", "recall", "f1", "mcc")
                  if all(m in metrics for metrics in per_task.values())]
        return {**{m: float(np.mean([metrics[m] for metrics in per_task.values()])) for m in shared},
                "tasks": per_task}

    def chance(self):
        shares = []
        for (_, labels), part in zip(self.tasks, self.encoded["validation"]):
            if isinstance(part, (TaggedSplit, QASplit)):
                return None  # a tagger's or a reader's baseline is not a class share
            counts = np.bincount(part.labels, minlength=len(labels))
            shares.append(counts.max() / counts.sum())
        return float(np.mean(shares))

    def report(self, forward, batch_size, model, test):
        names = [name for name, _ in self.tasks]
        return {"tasks": {name: {"kind": kind, "training_examples": len(self._encoded(part)),
                                 "sampling_probability": float(p)}
                          for name, kind, part, p in zip(names, self.kinds, self.encoded["train"],
                                                         self.probabilities())}}

    def title(self) -> str:
        return f"{super().title()}, {len(self.tasks)} tasks"

    def export(self, model, info: RunInfo, directory: Path, *, model_dir: Path, tokenizer) -> list[str]:
        """One ordinary single-task export per task (`export/<task>/`): the shared backbone with that task's
        head in the head slot of the task's own model class (a token classifier for a token task, a span model
        for a question-answering task), so each loads in `tljax.predict` and Hugging Face alone."""
        heads = dict(model.task_heads.items())
        model.task_heads = None
        written = []
        with atomic_directory(directory) as staging:  # every task's export, or none
            for (name, labels), kind, data in zip(self.tasks, self.kinds, self.task_data):
                single = nnx.clone(model) if kind == "sequence-classification" else task_model(model, kind)
                replace_module(single, head_attribute(single), heads[name])
                single.config = single.config.replace(id2label=dict(enumerate(labels)))
                answers = dataclasses.asdict(self.answers[name]) if name in self.answers else None
                task_info = dataclasses.replace(info, task=kind, labels=tuple(labels), text_prefix=data.text_prefix,
                                                answers=answers)
                items = export_run(staging / name, single, self.adaptation.methods, task_info, model_dir=model_dir,
                                   tokenizer=tokenizer)
                written += [f"{name}: {item.replace(str(staging), str(directory))}" for item in items]
        return written


def task_model(model: nnx.Module, kind: str) -> nnx.Module:
    """A model of `model`'s family for the task `kind` (token-classification, question-answering) around a copy
    of `model`'s backbone (its pooler dropped): what a token or question-answering task of a multi-task run
    exports as. (Its head slot holds a placeholder for the task's head.)"""
    cls = model_class(model.config.model_type, kind)
    single = nnx.eval_shape(lambda: cls(model.config, rngs=nnx.Rngs(0)))
    body = nnx.clone(getattr(model, type(model).base_model_prefix))  # a decoder's span model names it otherwise
    if getattr(body, "pooler", None) is not None:
        body.pooler = None
    setattr(single, cls.base_model_prefix, body)
    return single


def multitask_objective(config, adaptation, tasks: list[tuple[str, str, tuple[str, ...], dict[str, Any]]],
                        task_data: list[DataConfig], pad_id: int, max_length: int,
                        answers: dict[str, AnswerSettings] | None = None) -> MultiTask:
    """The objective over prepared tasks: (name, kind, label names, encoded splits) each (an `Encoded` per split
    for a sequence task, a `TaggedSplit` for a token task, a `QASplit` for a question-answering task), and their
    data settings; `answers`: how each question-answering task's span scores become answers; `adaptation` holds
    the `TaskHeads` of the same tasks."""
    encoded = {}
    for split in ("train", "validation", "test"):
        encoded[split] = [_with_task(parts[split], k) for k, (_, _, _, parts) in enumerate(tasks)]
    return MultiTask(adaptation, encoded, pad_id, max_length, tasks=tuple((n, tuple(l)) for n, _, l, _ in tasks),
                     temperature=config.training.task_sampling_temperature, task_data=tuple(task_data),
                     kinds=tuple(kind for _, kind, _, _ in tasks), answers=dict(answers or {}))


def _with_task(part, index: int):
    """`part` (an `Encoded`, a `TaggedSplit` or a `QASplit`) whose examples carry the task index `index`."""
    if isinstance(part, (TaggedSplit, QASplit)):
        windows = part.windows
        return dataclasses.replace(part, windows=dataclasses.replace(windows, encoded=_with_task(windows.encoded,
                                                                                                  index)))
    return dataclasses.replace(part, extras={**part.extras, "task": np.full(len(part), index, np.int32)})
