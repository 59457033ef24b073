"""Classification metrics: accuracy, macro precision / recall / F1, Matthews correlation, confusion matrix.

A prediction may be `NO_ANSWER` (-1: e.g. a chat reply naming no label). It is its own outcome, not a label:
wrong for accuracy, a miss in its gold class's recall, and no class's false positive (so it lowers no class's
precision). The metrics are computed from outcome counts [..., C, C + 1] (the last column: no answer), so a
whole bootstrap (one count table per resample) is computed at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tljax.errors import InputError

NO_ANSWER = -1
SCORES = ("accuracy", "precision", "recall", "f1", "mcc")  # what `scores` returns, in this order


class MetricError(InputError):
    """Labels or predictions that cannot be scored (not class indices of the task, or not of the same items)."""


def _check(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> None:
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise MetricError(f"labels {labels.shape} and predictions {predictions.shape} must be two 1-D arrays of "
                          "the same length")
    if num_classes < 1:
        raise MetricError(f"num_classes must be at least 1, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise MetricError(f"labels must be class indices 0 to {num_classes - 1}, got {labels.min()} to "
                          f"{labels.max()}")
    if predictions.size and (predictions.min() < NO_ANSWER or predictions.max() >= num_classes):
        raise MetricError(f"predictions must be class indices 0 to {num_classes - 1} or {NO_ANSWER} (no answer), "
                          f"got {predictions.min()} to {predictions.max()}")


def outcome_counts(labels: Sequence[int], predictions: Sequence[int], num_classes: int,
                   samples: np.ndarray | None = None) -> np.ndarray:
    """[true class, predicted class or no answer (last column)] counts: [C, C + 1], or [B, C, C + 1] with
    `samples` [B, N] (row b: the item indices of resample b, e.g. a bootstrap's)."""
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    _check(labels, predictions, num_classes)
    width = num_classes + 1
    # no answer -> the last column; then one flat cell index per item
    cell = labels * width + np.where(predictions == NO_ANSWER, num_classes, predictions)
    if samples is None:
        return np.bincount(cell, minlength=num_classes * width).reshape(num_classes, width)
    samples = np.asarray(samples, np.int64)
    rounds = samples.shape[0]
    # one bincount over every resample: resample b's cells are offset by b tables
    flat = (np.arange(rounds)[:, None] * (num_classes * width) + cell[samples]).ravel()
    return np.bincount(flat, minlength=rounds * num_classes * width).reshape(rounds, num_classes, width)


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """[true class, predicted class] counts of the answered items, [C, C]."""
    return outcome_counts(labels, predictions, num_classes)[:, :num_classes]


def scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro precision / recall / F1 and MCC of outcome counts [..., C, C + 1]: arrays [...].

    A class never predicted has precision 0 (and never present, recall 0), as scikit-learn's
    `zero_division=0`; the macro averages run over all C classes. MCC is Gorodkin's multi-class one (the
    binary MCC for two classes) over C + 1 predicted outcomes: no answer is an outcome no item truly has.
    """
    counts = np.asarray(counts, np.float64)
    classes = counts.shape[-2]
    true_positive = np.diagonal(counts[..., :classes], axis1=-2, axis2=-1)  # [..., C]
    predicted = counts.sum(-2)  # [..., C + 1], the last: unanswered
    actual = counts.sum(-1)  # [..., C]: every item of the class, answered or not
    total = actual.sum(-1)
    zeros = np.zeros_like(true_positive)
    precision = np.divide(true_positive, predicted[..., :classes], out=zeros.copy(),
                          where=predicted[..., :classes] > 0)
    recall = np.divide(true_positive, actual, out=zeros.copy(), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=zeros.copy(), where=both > 0)
    correct = true_positive.sum(-1)
    covariance = correct * total - (predicted[..., :classes] * actual).sum(-1)
    spread = np.sqrt((total**2 - (predicted**2).sum(-1)) * (total**2 - (actual**2).sum(-1)))
    return {
        "accuracy": np.divide(correct, total, out=np.zeros_like(total), where=total > 0),
        "precision": precision.mean(-1),
        "recall": recall.mean(-1),
        "f1": f1.mean(-1),
        "mcc": np.divide(covariance, spread, out=np.zeros_like(total), where=spread > 0),
    }


def classification_metrics(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> dict:
    """Accuracy, macro-averaged precision, recall and F1, MCC (multi-class), the confusion matrix [C, C] of
    the answered items, and how many items had no answer (`predictions` -1); see `scores`."""
    counts = outcome_counts(labels, predictions, num_classes)
    return {**{name: float(value) for name, value in scores(counts).items()},
            "confusion_matrix": counts[:, :num_classes].tolist(), "unanswered": int(counts[:, -1].sum())}
