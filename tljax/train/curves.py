"""Learning curves (train vs validation loss and metric) as a PNG, and a plain-language diagnosis."""

from __future__ import annotations

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
    """Reads the curves as a person would: under-fitting, over-fitting, or a good fit, and what to try.

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
    if rising and train_end < losses[best]:
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


def plot(train: list[tuple[int, float]], validation: list[tuple[int, float, float]], metric: str, path: Path,
         title: str) -> None:
    """Writes the curves: loss (train, smoothed, and validation) and the validation metric."""
    # a Figure of its own, not pyplot's global state: safe from any thread (the app trains in one), and half
    # the import and drawing time of pyplot (a second of every run's end)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4))
    left, right = figure.subplots(1, 2)
    if train:
        steps, losses = zip(*train)
        left.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8)
        left.plot(steps, smooth(list(losses)), color="tab:blue", label="train (smoothed)")
    if validation:
        steps, losses, scores = zip(*validation)
        left.plot(steps, losses, "o-", color="tab:orange", label="validation")
        right.plot(steps, scores, "o-", color="tab:green")
    left.set(xlabel="step", ylabel="loss", title="loss")
    left.legend()
    right.set(xlabel="step", ylabel=metric, title=f"validation {metric}")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
