"""Classification metrics: accuracy, macro precision / recall / F1, Matthews correlation, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """[true class, predicted class] counts, [C, C]."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return matrix


def classification_metrics(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> dict:
    """Accuracy, macro-averaged precision, recall and F1, MCC (multi-class) and the confusion matrix.

    A class never predicted has precision 0 (and never present, recall 0), as scikit-learn's
    `zero_division=0`; the macro averages run over all `num_classes` classes.
    """
    matrix = confusion_matrix(labels, predictions, num_classes)
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(0).astype(np.float64)
    actual = matrix.sum(1).astype(np.float64)
    precision = np.divide(true_positive, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros(num_classes), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
    total = matrix.sum()
    # Gorodkin's multi-class MCC; equals the binary MCC for two classes
    covariance = true_positive.sum() * total - (predicted * actual).sum()
    spread = np.sqrt((total**2 - (predicted**2).sum()) * (total**2 - (actual**2).sum()))
    return {
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "mcc": float(covariance / spread) if spread > 0 else 0.0,
        "confusion_matrix": matrix.tolist(),
    }
