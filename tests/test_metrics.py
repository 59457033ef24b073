"""tljax.metrics against scikit-learn on random cases (a class never predicted, a class never present, items
with no answer), a hand-computed case, and the vectorised bootstrap against one resample at a time."""

import numpy as np
import pytest
from sklearn import metrics as sk

from tljax.errors import InputError
from tljax.metrics import NO_ANSWER, MetricError, classification_metrics, confusion_matrix, outcome_counts, scores


def reference(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict:
    """scikit-learn's figures; no answer (-1) is a label of its own that is not one of the task's classes, so it
    is wrong for accuracy, a miss in recall and nobody's false positive, and an outcome of its own for MCC."""
    classes = list(range(num_classes))
    averaged = {name: fn(labels, predictions, labels=classes, average="macro", zero_division=0)
                for name, fn in (("precision", sk.precision_score), ("recall", sk.recall_score),
                                 ("f1", sk.f1_score))}
    return {"accuracy": sk.accuracy_score(labels, predictions), **averaged,
            "mcc": sk.matthews_corrcoef(labels, predictions),
            "confusion_matrix": sk.confusion_matrix(labels, predictions, labels=classes).tolist()}


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels and predictions [N] over C classes; the last class is never present, the one before it never
    predicted, and some items (on odd seeds) have no answer."""
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(3, 7))
    n = int(rng.integers(5, 200))
    labels = rng.integers(0, num_classes - 1, n)  # never the last class
    # right about half the time, else any class but the one before last (never predicted)
    guess = rng.choice([c for c in range(num_classes) if c != num_classes - 2], n)
    predictions = np.where(rng.random(n) < 0.5, labels, guess)
    predictions[predictions == num_classes - 2] = 0
    if seed % 2:
        predictions[rng.random(n) < 0.2] = NO_ANSWER
    return labels, predictions, num_classes


@pytest.mark.parametrize("seed", range(12))
def test_metrics_equal_scikit_learn_on_random_cases(seed):
    labels, predictions, num_classes = random_case(seed)
    assert num_classes - 1 not in labels and num_classes - 2 not in predictions  # the two absent classes
    ours, theirs = classification_metrics(labels, predictions, num_classes), reference(labels, predictions, num_classes)
    for name in ("accuracy", "precision", "recall", "f1", "mcc"):
        assert ours[name] == pytest.approx(theirs[name], abs=1e-12), name
    assert ours["confusion_matrix"] == theirs["confusion_matrix"]
    assert ours["unanswered"] == int((predictions == NO_ANSWER).sum())
    assert confusion_matrix(labels, predictions, num_classes).tolist() == theirs["confusion_matrix"]


def test_binary_and_degenerate_cases_equal_scikit_learn():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    ours = classification_metrics(labels, predictions, 2)
    assert ours["mcc"] == pytest.approx(sk.matthews_corrcoef(labels, predictions), abs=1e-12)
    assert ours["f1"] == pytest.approx(sk.f1_score(labels, predictions, average="macro"), abs=1e-12)
    # one class predicted for everything: MCC undefined, 0 as scikit-learn gives it
    constant = np.zeros(50, np.int64)
    assert classification_metrics(labels, constant, 2)["mcc"] == sk.matthews_corrcoef(labels, constant) == 0
    nothing_read = np.full(50, NO_ANSWER)
    assert classification_metrics(labels, nothing_read, 2) == {
        "accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "mcc": 0.0,
        "confusion_matrix": [[0, 0], [0, 0]], "unanswered": 50}


def test_an_unanswered_item_is_a_miss_and_nobodys_false_positive():
    """By hand: gold 0 0 0 1 1 2, predicted 0 - 1 1 - 2 (- : no answer).
    class 0: TP 1 of 1 predicted, 3 present -> P 1, R 1/3, F1 1/2;  class 1: TP 1 of 2 predicted, 2 present
    -> P 1/2, R 1/2, F1 1/2;  class 2: P 1, R 1, F1 1.  MCC (Gorodkin, the unanswered as a 4th outcome):
    s = 6, c = 3, t = (3, 2, 1), p = (1, 2, 1, 2): (cs - sum p t) / sqrt((s^2 - sum p^2)(s^2 - sum t^2))
    = (18 - 8) / sqrt(26 * 22)."""
    result = classification_metrics([0, 0, 0, 1, 1, 2], [0, -1, 1, 1, -1, 2], 3)
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["precision"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert result["recall"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    assert result["f1"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    assert result["mcc"] == pytest.approx(10 / np.sqrt(26 * 22))
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]] and result["unanswered"] == 2


def test_the_vectorised_bootstrap_equals_one_resample_at_a_time():
    labels, predictions, num_classes = random_case(3)
    samples = np.random.default_rng(1).integers(0, len(labels), (40, len(labels)))
    counts = outcome_counts(labels, predictions, num_classes, samples)
    assert counts.shape == (40, num_classes, num_classes + 1) and (counts.sum((1, 2)) == len(labels)).all()
    batched = scores(counts)
    for b, rows in enumerate(samples):
        one = reference(labels[rows], predictions[rows], num_classes)
        for name in ("accuracy", "precision", "recall", "f1", "mcc"):
            assert batched[name][b] == pytest.approx(one[name], abs=1e-12), (b, name)


@pytest.mark.parametrize(("labels", "predictions", "message"), [
    ([0, 2], [0, 1], "labels must be class indices 0 to 1, got 0 to 2"),
    ([0, -1], [0, 1], "labels must be class indices 0 to 1, got -1 to 0"),
    ([0, 1], [0, 2], r"predictions must be class indices 0 to 1 or -1 \(no answer\), got 0 to 2"),
    ([0, 1], [-2, 1], r"predictions must be class indices 0 to 1 or -1 \(no answer\), got -2 to 1"),
    ([0, 1], [0], r"labels \(2,\) and predictions \(1,\) must be two 1-D arrays of the same length"),
])
def test_indices_outside_the_classes_are_refused(labels, predictions, message):
    with pytest.raises(MetricError, match=message) as error:
        classification_metrics(labels, predictions, 2)
    assert isinstance(error.value, InputError)
