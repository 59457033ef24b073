"""Exact match and token F1 of extractive answers, by the official SQuAD evaluation (v1.1 and v2.0).

An answer is compared after the official normalisation (lower case, punctuation removed, the English articles
a / an / the removed, whitespace collapsed), against every gold answer of its question, keeping the best.
An unanswerable question's gold is the empty answer: a prediction scores 1 only when it is empty too. Scores
are fractions (the official script prints them x 100). The normalisation is the official one in every
language, so that figures compare with published ones; in Portuguese it leaves the articles (o, a, os, as) in,
which costs a little exact match where a model's span takes or leaves one that the gold does not.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """The F1 of the normalised answers' words; when either is empty, 1 if both are, else 0."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def question_scores(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction against its question's gold answers ("" for none: empty golds or
    only empty strings mean unanswerable), the best over the golds."""
    golds = [g for g in golds if normalize_answer(g)] or [""]
    return max(exact_match(prediction, g) for g in golds), max(token_f1(prediction, g) for g in golds)


def squad_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """`exact` and `f1` over every question (fractions), and for a set with unanswerable questions the same
    over the answerable (`has_answer_*`) and the unanswerable (`no_answer_*`, the share correctly left
    unanswered) with their counts. `predictions[i]`: "" for "no answer"."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    scores = np.asarray([question_scores(p, g) for p, g in zip(predictions, golds)], np.float64).reshape(-1, 2)
    answerable = np.asarray([any(normalize_answer(x) for x in g) for g in golds], bool)
    result = {"exact": float(scores[:, 0].mean()) if len(scores) else 0.0,
              "f1": float(scores[:, 1].mean()) if len(scores) else 0.0, "questions": len(scores)}
    if not answerable.all():
        for name, part in (("has_answer", answerable), ("no_answer", ~answerable)):
            result[f"{name}_exact"] = float(scores[part, 0].mean()) if part.any() else 0.0
            result[f"{name}_f1"] = float(scores[part, 1].mean()) if part.any() else 0.0
            result[f"{name}_questions"] = int(part.sum())
    return result


def f1_difference_interval(first: np.ndarray, second: np.ndarray, *, resamples: int = 2000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float]:
    """The paired bootstrap interval of mean(first) - mean(second), per-question F1s [questions] of two
    systems on the same questions."""
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(first), size=(resamples, len(first)))
    differences = first[draws].mean(1) - second[draws].mean(1)
    tail = (1 - level) / 2
    return float(np.quantile(differences, tail)), float(np.quantile(differences, 1 - tail))
