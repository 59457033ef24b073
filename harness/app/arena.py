"""Blind comparison: two variants drawn at random, named only after the vote; votes as JSON lines; ratings.

Ratings are Bradley-Terry strengths (P(i beats j) = 1 / (1 + 10^((r_j - r_i) / 400)), on the Elo scale
around 1000), fitted by maximum likelihood with a weak prior that keeps a variant without a win finite; a
tie counts half a win to each side, as Chatbot Arena counts it. The 95% interval comes from refitting on
votes resampled with replacement.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

OUTCOMES = ("a", "b", "tie")
SCALE = 400 / np.log(10)  # natural-log strengths -> Elo points
PRIOR = 0.1  # L2 on the strengths (natural-log units): about a tenth of a game of evidence toward equal
BOOTSTRAP_ROUNDS = 100


@dataclasses.dataclass(frozen=True)
class Pair:
    """A blind match: the two variants, in the order shown (the sides were drawn at random)."""

    a: str
    b: str


def draw_pair(names: Sequence[str], rng: random.Random) -> Pair:
    """Two distinct variants at random, in random order."""
    if len(names) < 2:
        raise ValueError(f"a blind comparison needs two variants or more, got {list(names)}")
    a, b = rng.sample(list(names), 2)
    return Pair(a, b)


def record_vote(path: Path, pair: Pair, outcome: str, **context: Any) -> dict[str, Any]:
    """Appends one vote as a JSON line (`outcome`: a, b or tie) and returns it; safe with several writers."""
    if outcome not in OUTCOMES:
        raise ValueError(f"a vote is one of {', '.join(OUTCOMES)}, got {outcome!r}")
    vote = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "a": pair.a, "b": pair.b, "outcome": outcome, **context}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # one whole line per vote, even from concurrent requests
        handle.write(json.dumps(vote, ensure_ascii=False) + "\n")
    return vote


def read_votes(path: Path) -> list[dict[str, Any]]:
    """The votes in `path` (none if it does not exist; a damaged line is skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    votes = []
    for line in lines:
        try:
            vote = json.loads(line)
        except ValueError:
            continue
        if isinstance(vote, dict) and vote.get("outcome") in OUTCOMES and vote.get("a") and vote.get("b"):
            votes.append(vote)
    return votes


def _wins(votes: Sequence[dict[str, Any]], names: list[str], samples: np.ndarray | None = None) -> np.ndarray:
    """wins[i, j]: how often i beat j (a tie: half each), [n, n]; or with `samples` [R, V] (row r: the vote
    indices of resample r), one table per resample, [R, n, n], counted at once."""
    index = {n: i for i, n in enumerate(names)}
    n = len(names)
    a = np.asarray([index[v["a"]] for v in votes], np.int64)
    b = np.asarray([index[v["b"]] for v in votes], np.int64)
    share_a = np.asarray([{"a": 1.0, "tie": 0.5}.get(v["outcome"], 0.0) for v in votes])  # of a win over b
    # each vote adds its share to two cells: [a, b] (a's win) and [b, a] (b's win)
    cells = np.stack([a * n + b, b * n + a])  # [2, V]
    shares = np.stack([share_a, 1.0 - share_a])
    if samples is None:
        return np.bincount(cells.ravel(), shares.ravel(), minlength=n * n).reshape(n, n)
    rounds = len(samples)
    offset = np.arange(rounds)[:, None, None] * (n * n)  # resample r's table starts at r * n * n
    flat = (offset + cells[:, samples].transpose(1, 0, 2)).ravel()
    return np.bincount(flat, shares[:, samples].transpose(1, 0, 2).ravel(), minlength=rounds * n * n).reshape(
        rounds, n, n)


def fit_strengths(wins: np.ndarray, iterations: int = 500) -> np.ndarray:
    """Bradley-Terry log-strengths [..., n] (mean 0) maximising the likelihood of `wins` [..., n, n] minus
    PRIOR * |s|^2 (Newton's method, every table of a batch at once: the objective is concave)."""
    n = wins.shape[-1]
    strengths = np.zeros(wins.shape[:-1])
    games = wins + np.swapaxes(wins, -1, -2)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(strengths[..., None, :] - strengths[..., :, None]))  # p[..., i, j] = P(i beats j)
        gradient = (wins - games * p).sum(-1) - 2 * PRIOR * strengths
        curvature = games * p * (1 - p)
        hessian = curvature - curvature.sum(-1)[..., None] * np.eye(n) - 2 * PRIOR * np.eye(n)
        step = np.linalg.solve(hessian, gradient[..., None])[..., 0]
        strengths -= step
        if np.abs(step).max() < 1e-9:
            break
    return strengths - strengths.mean(-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Rating:
    name: str
    rating: float  # Elo scale, mean 1000
    low: float  # 95% bootstrap interval
    high: float
    votes: int  # matches it was in
    wins: float  # ties count half


def ratings(votes: Sequence[dict[str, Any]], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> list[Rating]:
    """Every voted variant's rating with its interval, best first."""
    names = sorted({v["a"] for v in votes} | {v["b"] for v in votes})
    if not names:
        return []
    wins = _wins(votes, names)
    best = 1000 + SCALE * fit_strengths(wins)
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(votes), (rounds, len(votes)))  # [R, V]: votes drawn with replacement
    refits = 1000 + SCALE * fit_strengths(_wins(votes, names, resamples))  # [R, n]
    low, high = np.percentile(refits, [2.5, 97.5], axis=0)
    played = (wins + wins.T).sum(1)
    table = [Rating(n, float(best[i]), float(low[i]), float(high[i]), int(round(played[i])), float(wins[i].sum()))
             for i, n in enumerate(names)]
    return sorted(table, key=lambda r: -r.rating)
