"""Multi-task learning: one shared backbone, one classification head per task.

Each training batch comes from one task, drawn with temperature-scaled sampling: P(task) is proportional
to (its training examples) ** (1 / T), so T = 1 samples by size and a large T evens the tasks out (the
rule multilingual and multi-task models use to keep small tasks from being drowned). The heads read the
model's own features (the pooled output of an encoder, the last token's state of a decoder); each task is
evaluated with its own metrics, and the run's metrics are their means over the tasks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tljax.data.batches import BatchIterator, Encoded
from tljax.methods.base import Method, MethodContext, head_pattern
from tljax.methods.rules import PathRules, Rule
from tljax.models.checkpoint import atomic_directory
from tljax.models.layers import Linear, dropout, layer_keys
from tljax.runs import RunInfo, export_run
from tljax.train.config import ConfigKeyError, DataConfig, from_dict
from tljax.train.losses import cross_entropy
from tljax.train.objectives import Objective, classify_batches

Array = jax.Array
# what a task may set itself; the rest (max_length) is shared through the run's `data` section
TASK_KEYS = ("name", "source", "text_column", "label_column", "labels", "validation", "test", "max_train_examples",
             "max_eval_examples", "text_prefix")
NOT_A_CLASS = -1e9  # the logit of a class a task does not have (padding up to the widest head)


def parse_tasks(tasks: list[Any], shared: DataConfig) -> list[tuple[str, DataConfig]]:
    """(name, data config) of each task; the shared `data` section fills what a task leaves out."""
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
        fields = {**dataclasses.asdict(shared), "labels": None, **{k: v for k, v in raw.items() if k != "name"}}
        parsed.append((name, from_dict(DataConfig, fields, f"{where}.")))
    return parsed


@dataclasses.dataclass(frozen=True)
class TaskHeads(Method):
    """Internal method: one linear head per task (`task_heads/<task>/...`), trained with any method; the
    model's own single-task head is unused, so it is frozen."""

    name: ClassVar[str] = "_task_heads"
    tasks: tuple[tuple[str, int], ...] = ()  # (name, number of classes)
    seed: int = 0

    def apply(self, model: nnx.Module, context: MethodContext) -> None:
        own = single_task_head(model)
        rngs = nnx.Rngs(self.seed)
        model.task_heads = nnx.Dict({
            name: Linear(own.in_features, classes, use_bias=own.bias is not None, dtype=own.dtype,
                         param_dtype=own.kernel.dtype, init_std=getattr(model.config, "initializer_range", 0.02), rngs=rngs)
            for name, classes in self.tasks})

    def rules(self, model: nnx.Module, step: int = 0) -> PathRules:
        return PathRules((Rule(head_pattern(model), False, "single-task head (unused: the task heads replace it)"),
                          Rule(r"^task_heads/", True, "task heads")))

    def new_parameters(self) -> tuple[str, ...]:
        return (r"^task_heads/",)


def single_task_head(model: nnx.Module) -> Linear:
    """The model's own head (`classifier` of an encoder, `score` of a decoder)."""
    return getattr(model, head_attribute(model))


def head_attribute(model: nnx.Module) -> str:
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
    """`encoded[split]` is a list of one `Encoded` per task (each with a `task` index per example)."""

    tasks: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, label names)
    temperature: float = 2.0
    task_data: tuple[DataConfig, ...] = ()  # each task's data settings (its text prefix goes into its export)

    def logits(self, model, batch, dropout_key=None) -> Array:
        """Each row's logits from its own task's head, padded to the widest head: [B, max classes]."""
        k_features, k_head = layer_keys(dropout_key, 2)
        features = model.features(batch["input_ids"], batch["attention_mask"], dropout_key=k_features)
        features = dropout(model.pool(features), getattr(model, "dropout_rate", 0.0), k_head)
        width = max(len(labels) for _, labels in self.tasks)
        per_task = [jnp.pad(model.task_heads[name](features).astype(jnp.float32),
                            ((0, 0), (0, width - len(labels))), constant_values=NOT_A_CLASS)
                    for name, labels in self.tasks]
        stacked = jnp.stack(per_task, axis=1)  # [B, tasks, width]
        return jnp.take_along_axis(stacked, batch["task"][:, None, None], axis=1)[:, 0]

    def loss(self, model, batch, dropout_key):
        loss, accuracy = cross_entropy(self.logits(model, batch, dropout_key), batch["labels"], batch["weights"])
        return loss, {"accuracy": accuracy}

    def outputs(self, model, batch):
        return self.logits(model, batch)

    def train_batches(self, batch_size, seed, position=None, share=(0, 1)):
        position = position or {"draw": 0, "tasks": [{"epoch": 0, "index": 0}] * len(self.tasks)}
        iterators = [BatchIterator(encoded, batch_size, self.pad_id, self.max_length, seed=seed + number,
                                   epoch=place["epoch"], index=place["index"], share=share)
                     for number, (encoded, place) in enumerate(zip(self.encoded["train"], position["tasks"]))]
        return MixtureBatches(iterators, self.probabilities(), seed, position["draw"])

    def probabilities(self) -> np.ndarray:
        return sampling_probabilities([len(e) for e in self.encoded["train"]], self.temperature)

    def evaluate(self, forward, split, batch_size):
        per_task = {}
        for (name, labels), encoded in zip(self.tasks, self.encoded[split]):
            per_task[name] = classify_batches(forward, self.evaluation_batches(encoded, batch_size), len(labels))
        means = {metric: float(np.mean([m[metric] for m in per_task.values()]))
                 for metric in ("loss", "accuracy", "precision", "recall", "f1", "mcc")}
        return {**means, "tasks": per_task}

    def chance(self):
        shares = []
        for (_, labels), encoded in zip(self.tasks, self.encoded["validation"]):
            counts = np.bincount(encoded.labels, minlength=len(labels))
            shares.append(counts.max() / counts.sum())
        return float(np.mean(shares))

    def report(self, forward, batch_size, model, test):
        names = [name for name, _ in self.tasks]
        return {"tasks": {name: {"training_examples": len(encoded), "sampling_probability": float(p)}
                          for name, encoded, p in zip(names, self.encoded["train"], self.probabilities())}}

    def title(self) -> str:
        return f"{super().title()}, {len(self.tasks)} tasks"

    def export(self, model, info: RunInfo, directory: Path, *, model_dir: Path, tokenizer) -> list[str]:
        """One ordinary single-task export per task (`export/<task>/`): the shared backbone with that task's
        head in the model's own head slot, so each loads in `tljax.predict` and Hugging Face alone."""
        heads = dict(model.task_heads.items())
        model.task_heads = None
        written = []
        with atomic_directory(directory) as staging:  # every task's export, or none
            for (name, labels), data in zip(self.tasks, self.task_data):
                single = nnx.clone(model)
                setattr(single, head_attribute(single), heads[name])
                single.config = single.config.replace(id2label=dict(enumerate(labels)))
                task_info = dataclasses.replace(info, labels=tuple(labels), text_prefix=data.text_prefix)
                items = export_run(staging / name, single, self.adaptation.methods, task_info, model_dir=model_dir,
                                   tokenizer=tokenizer)
                written += [f"{name}: {item.replace(str(staging), str(directory))}" for item in items]
        return written


def multitask_objective(config, adaptation, tasks: list[tuple[str, tuple[str, ...], dict[str, Encoded]]],
                        task_data: list[DataConfig], pad_id: int, max_length: int) -> MultiTask:
    """The objective over prepared tasks: (name, label names, encoded splits) each, and their data settings;
    `adaptation` holds the `TaskHeads` of the same tasks."""
    encoded = {}
    for split in ("train", "validation", "test"):
        encoded[split] = [dataclasses.replace(parts[split], extras={"task": np.full(len(parts[split]), k, np.int32)})
                          for k, (_, _, parts) in enumerate(tasks)]
    return MultiTask(adaptation, encoded, pad_id, max_length, tasks=tuple((n, tuple(l)) for n, l, _ in tasks),
                     temperature=config.training.task_sampling_temperature, task_data=tuple(task_data))
