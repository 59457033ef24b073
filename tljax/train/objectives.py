"""What a run optimises and how it is judged; the loop (`loop.py`) is the same for every objective.

An objective holds the adapted model (`adaptation.model` is what the loop splits into trainable and frozen
parameters), the loss of one batch, the training batches, and the evaluation of a split:

- `Classification`: labelled text (single task), also the base of distillation (`distill.py`) and of
  training a head on cached features (`features.py`);
- `MultiTask`: one backbone, a head per task (`multitask.py`);
- `LanguageModelling`: continued pre-training on unlabelled text, masked or causal (`language_modelling.py`).

`loss(model, batch, key)` and `outputs(model, batch)` are pure (the loop compiles them); `evaluate` runs a
compiled `forward(batch) -> outputs` over a split and turns the outputs into metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tljax.data.batches import BatchIterator, Encoded, evaluation_batches
from tljax.methods import Adaptation
from tljax.metrics import classification_metrics
from tljax.runs import RunInfo, export_run
from tljax.train.config import ConfigKeyError
from tljax.train.losses import classification_loss

Array = jax.Array
Batch = dict[str, np.ndarray]
Forward = Callable[[Batch], Any]

CLASSIFICATION_METRICS = ("accuracy", "f1", "precision", "recall", "mcc", "loss")


class TrainBatches(Iterator[Batch]):
    """Endless training batches whose `position()` (a JSON-able dict) is all a checkpoint needs to resume."""

    batches_per_epoch: int

    def position(self) -> dict[str, Any]: ...


class MappedBatches:
    """The batches of a `BatchIterator`, each changed by `fn(batch, drawn_at)`, where `drawn_at` is the
    iterator's (seed, epoch, index) before the batch was drawn: a change that depends only on the position
    (e.g. random masks) is the same again after a resume."""

    def __init__(self, batches: BatchIterator, fn: Callable[[Batch, tuple[int, int, int]], Batch]):
        self.batches, self.fn = batches, fn
        self.batches_per_epoch = batches.batches_per_epoch

    def position(self) -> dict[str, Any]:
        return self.batches.position()

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        drawn_at = (self.batches.seed, self.batches.epoch, self.batches.index)
        if self.batches.share[1] > 1:  # each share draws its own (e.g. other masks for other rows)
            drawn_at += (self.batches.share[0],)
        return self.fn(next(self.batches), drawn_at)


@dataclasses.dataclass
class Objective:
    """The parts common to every objective; subclasses fill in the loss, the batches and the metrics."""

    adaptation: Adaptation
    encoded: dict[str, Any]  # train / validation / test, in the objective's own form
    pad_id: int
    max_length: int

    metrics: tuple[str, ...] = dataclasses.field(default=CLASSIFICATION_METRICS, init=False)
    evaluate_before: bool = dataclasses.field(default=False, init=False)  # also evaluate before the first step
    _padded: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    def evaluation_batches(self, encoded: Encoded, batch_size: int) -> list[Batch]:
        """The padded evaluation batches of one of this objective's encoded sets ([batch_size, <= max_length]
        each), built once: a split is evaluated every `eval_steps` and again at the end."""
        key = (id(encoded), batch_size)  # the encoded sets live as long as the objective
        if key not in self._padded:
            self._padded[key] = evaluation_batches(encoded, batch_size, self.pad_id, self.max_length)
        return self._padded[key]

    def title(self) -> str:
        """A short name for plots: the methods applied."""
        return " + ".join(m.name for m in self.adaptation.methods if not m.name.startswith("_")) or "frozen"

    def count(self, step: int = 0) -> tuple[int, int]:
        """(trainable parameters, parameters of the model being trained)."""
        return self.adaptation.count(step)

    def loss(self, model, batch: dict[str, Array], dropout_key: Array | None) -> tuple[Array, dict[str, Array]]:
        raise NotImplementedError

    def outputs(self, model, batch: dict[str, Array]) -> Any:
        """What evaluation needs from the model for one batch (compiled by the loop)."""
        raise NotImplementedError

    def train_batches(self, batch_size: int, seed: int, position: dict[str, Any] | None = None,
                      share: tuple[int, int] = (0, 1)) -> TrainBatches:
        """Endless batches of `batch_size` rows from `position` on; `share` (i, n): only the i-th of n equal
        blocks of each batch's rows (a process's part of a multi-process run's batches)."""
        raise NotImplementedError

    def evaluate(self, forward: Forward, split: str, batch_size: int) -> dict[str, Any]:
        raise NotImplementedError

    def chance(self) -> float | None:
        """The accuracy of a model that learnt nothing (the majority class' share), for the diagnosis; None
        where there is no such baseline."""
        return None

    def report(self, forward: Forward, batch_size: int, model, test: dict[str, float]) -> dict[str, Any]:
        """Figures beyond the test metrics for the run's summary (e.g. the teacher's, or other languages');
        `forward` evaluates the trained model (`model`, merged, on the host) whose test metrics are `test`."""
        return {}

    def export(self, model, info: RunInfo, directory: Path, *, model_dir: Path, tokenizer) -> list[str]:
        """Writes the trained `model` (merged, on the host; exporting may change it) into `directory`."""
        return export_run(directory, model, self.adaptation.methods, info, model_dir=model_dir, tokenizer=tokenizer)

    def check_metric(self, metric: str) -> None:
        if metric not in self.metrics:
            raise ConfigKeyError(f"training.metric_for_best_model {metric!r} does not apply to this run; "
                             f"valid: {', '.join(self.metrics)}")


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def classify_batches(forward: Forward, batches: list[Batch], num_classes: int) -> dict[str, Any]:
    """Loss and classification metrics of `forward`'s logits over every real (weight 1) row of `batches`."""
    predictions, labels, losses = [], [], []
    for batch in batches:
        logits = np.asarray(forward(batch), np.float64)[:, :num_classes]
        real = batch["weights"] > 0
        log_probs = _log_softmax(logits)
        losses.append(-log_probs[np.arange(len(logits)), batch["labels"]][real])
        predictions.append(logits.argmax(-1)[real])
        labels.append(batch["labels"][real])
    metrics = classification_metrics(np.concatenate(labels), np.concatenate(predictions), num_classes)
    return {"loss": float(np.concatenate(losses).mean()), **metrics}


@dataclasses.dataclass
class EvaluationSet:
    """An extra labelled set the final model is evaluated on (another language, another domain)."""

    name: str
    source: str
    encoded: Encoded
    language: str


@dataclasses.dataclass
class Classification(Objective):
    """Sequence classification of one labelled task."""

    label_names: tuple[str, ...] = ()
    evaluation_sets: tuple[EvaluationSet, ...] = ()

    def loss(self, model, batch, dropout_key):
        return classification_loss(model, batch, dropout_key)

    def outputs(self, model, batch):
        return model(batch["input_ids"], batch["attention_mask"])

    def train_batches(self, batch_size, seed, position=None, share=(0, 1)):
        position = position or {"epoch": 0, "index": 0}
        return BatchIterator(self.encoded["train"], batch_size, self.pad_id, self.max_length, seed=seed,
                             epoch=position["epoch"], index=position["index"], share=share)

    def evaluate(self, forward, split, batch_size):
        return classify_batches(forward, self.evaluation_batches(self.encoded[split], batch_size),
                                len(self.label_names))

    def chance(self):
        counts = np.bincount(self.encoded["validation"].labels, minlength=len(self.label_names))
        return float(counts.max() / counts.sum())

    def report(self, forward, batch_size, model, test):
        """The test metrics on each extra evaluation set (zero-shot: no training example of theirs was seen)."""
        results = {}
        for item in self.evaluation_sets:
            metrics = classify_batches(forward, self.evaluation_batches(item.encoded, batch_size),
                                       len(self.label_names))
            results[item.name] = {"source": item.source, "language": item.language, "examples": len(item.encoded),
                                  **metrics}
        return {"evaluation": results} if results else {}
