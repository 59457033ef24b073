"""Learning curves (train vs validation loss and metric) as a figure, saved as a PNG with its points, and a
plain-language diagnosis."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np


def smooth(values: list[float], window: int = 10) -> np.ndarray:
    """Trailing moving average over `window` points (fewer at the start)."""
    values = np.asarray(values, np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    first = np.maximum(index - window + 1, 0)
    return (cumulative[index + 1] - cumulative[first]) / (index + 1 - first)


def diagnose(train: list[tuple[int, float]], validation: list[tuple[int, float, float]], metric: str,
             chance: float | None) -> str:
    """Reads the curves as a person would: diverging, over-fitting, under-fitting, still improving or a good fit,
    and what to try.

    `train`: (step, loss); `validation`: (step, loss, metric); `chance`: the metric of always guessing the majority class (None: no such baseline, as for language modelling).
    """
    if not validation or not train:
        return "Too few evaluations to judge the fit: evaluate more often (training.eval_steps)."
    losses = [loss for _, loss, _ in validation]
    scores = [score for _, _, score in validation]
    best = int(np.argmin(losses))
    train_start = float(np.mean([loss for _, loss in train[: max(1, len(train) // 10)]]))
    train_end = float(np.mean([loss for _, loss in train[-max(1, len(train) // 10):]]))
    lines = [f"Train loss went from {train_start:.3f} to {train_end:.3f}; validation loss was lowest "
             f"({losses[best]:.3f}) at step {validation[best][0]} and ended at {losses[-1]:.3f}; "
             f"validation {metric} ended at {scores[-1]:.3f}"
             + (f" (majority class: {chance:.3f})." if chance is not None else ".")]
    rising = len(losses) >= 3 and best < len(losses) - 1 and losses[-1] > 1.1 * losses[best]
    # a fresh model's loss is the first step's; a run whose (smoothed) train loss climbed well above it and that
    # did not end clearly below it, or scores no better than guessing, took steps too large to learn from: its
    # validation loss may rise too, but that is not over-fitting (what it would have learnt, it never did)
    first = train[0][1]
    peak = float(np.max(smooth([loss for _, loss in train])))
    unlearnt = train_end > 0.9 * first or (chance is not None and scores[-1] < chance + 0.05)
    if peak > 1.2 * first and unlearnt:
        lines.append(f"Diverging: the train loss climbed above a fresh model's ({first:.3f}, to {peak:.3f} "
                     "smoothed) and the model did not learn: the steps are too large. Lower the learning rate "
                     "(3 to 10 times) or warm up for longer.")
    elif rising and train_end < losses[best]:
        lines.append("Over-fitting: the validation loss rose after its minimum while the train loss kept "
                     "falling. The best checkpoint (kept) is from before it; try fewer epochs, more dropout or "
                     "weight decay, fewer trainable parameters, or more data.")
    elif train_end > 0.9 * train_start or (chance is not None and scores[-1] < chance + 0.05):
        lines.append("Under-fitting: the model barely improved. Try a higher learning rate, more steps, or a "
                     "method that trains more parameters (e.g. a higher LoRA rank or full fine-tuning).")
    elif len(losses) >= 2 and losses[-1] < losses[-2] - 0.01 * abs(losses[-2]):
        lines.append("Still improving at the end: the validation loss was falling at the last evaluation; "
                     "more steps would likely help.")
    else:
        lines.append("A good fit: the validation loss settled without rising while the train loss fell.")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Curves:
    """A run's learning curves: `train` (step, loss) at every step, `validation` (step, loss, metric) at every
    evaluation, the validation `metric`'s name and the figure's title."""

    train: list[tuple[int, float]]
    validation: list[tuple[int, float, float]]
    metric: str
    title: str


POINTS_FILE = "curves.json"  # beside curves.png: the points, for a finished run's figure to be drawn again


def figure(curves: Curves):
    """The curves as a matplotlib Figure: loss (train, smoothed, and validation) on the left, the validation
    metric on the right."""
    # a Figure of its own, not pyplot's global state: safe from any thread (the app trains in one), and half
    # the import and drawing time of pyplot (a second of every run's end)
    from matplotlib.figure import Figure

    drawn = Figure(figsize=(11, 4))
    left, right = drawn.subplots(1, 2)
    if curves.train:
        steps, losses = zip(*curves.train)
        left.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8)
        left.plot(steps, smooth(list(losses)), color="tab:blue", label="train (smoothed)")
    if curves.validation:
        steps, losses, scores = zip(*curves.validation)
        left.plot(steps, losses, "o-", color="tab:orange", label="validation")
        right.plot(steps, scores, "o-", color="tab:green")
    left.set(xlabel="step", ylabel="loss", title="loss")
    left.legend()
    right.set(xlabel="step", ylabel=curves.metric, title=f"validation {curves.metric}")
    drawn.suptitle(curves.title)
    drawn.tight_layout()
    return drawn


def save(curves: Curves, run_dir: Path) -> None:
    """Writes the figure (curves.png) and its points (curves.json) into `run_dir`."""
    figure(curves).savefig(run_dir / "curves.png", dpi=110)
    (run_dir / POINTS_FILE).write_text(json.dumps(dataclasses.asdict(curves)) + "\n")


def load(run_dir: Path) -> Curves | None:
    """The curves a finished run saved (None for a run that finished before they were saved)."""
    path = Path(run_dir) / POINTS_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return Curves([tuple(p) for p in raw["train"]], [tuple(p) for p in raw["validation"]], raw["metric"], raw["title"])
