"""The harness's pictures (PNG): each row's score (accuracy; entity F1 on entity tasks) against trainable
parameters (the Pareto front marked) and against training time, the task-language matrix as a heat map, and the
agreement between variants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # its own figures, not pyplot's global state: safe from the app's threads
import numpy as np


def _score(row: dict[str, Any]) -> float:
    """The row's headline figure: accuracy, or entity F1 on an entity task."""
    score = row.get("score")
    return float("nan") if score is None else float(score)


def _metric(rows: list[dict[str, Any]]) -> str:
    return " / ".join(sorted({r.get("metric", "accuracy") for r in rows})) or "accuracy"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (fewer parameters, higher accuracy)."""
    front = []
    for i, (cost, value) in enumerate(points):
        if not any((c <= cost and v >= value) and (c < cost or v > value) for c, v in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def accuracy_against(rows: list[dict], cost: str, path: Path, xlabel: str) -> None:
    """One scatter per task: accuracy against a cost (log scale; a variant that trains nothing sits at 1)."""
    tasks = sorted({r["task"] for r in rows})
    fig = Figure(figsize=(6 * len(tasks), 4.5))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["task"] == task]
        points = [(max(float(r["costs"].get(cost) or 0), 1.0), _score(r)) for r in mine]
        for (x, y), row in zip(points, mine):
            ax.scatter(x, y)
            ax.annotate(row["variant"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto_front(points)
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set(title=task, xlabel=xlabel, ylabel=_metric(mine))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def heat_map(matrix: np.ndarray, rows: list[str], columns: list[str], title: str, path: Path) -> None:
    fig = Figure(figsize=(max(5.0, 3.5 + 1.1 * len(columns)), max(3.0, 1.8 + 0.45 * len(rows))))
    ax = fig.subplots()
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for (i, j), value in np.ndenumerate(matrix):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 else "black")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_all(rows: list[dict], agreements: dict[str, float | None], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if rows:
        for cost, name, label in (("trainable_parameters", "accuracy_vs_parameters.png", "trainable parameters"),
                                  ("training_seconds", "accuracy_vs_training_time.png", "training time (s)")):
            accuracy_against(rows, cost, directory / name, label)
            written.append(directory / name)
        variants = sorted({r["variant"] for r in rows})
        tasks = sorted({r["task"] for r in rows})
        matrix = np.full((len(variants), len(tasks)), np.nan)
        for r in rows:
            matrix[variants.index(r["variant"]), tasks.index(r["task"])] = _score(r)
        heat_map(matrix, variants, tasks, f"{_metric(rows)} by task (language)", directory / "language_matrix.png")
        written.append(directory / "language_matrix.png")
    for task in sorted({key.rsplit(" | ", 1)[1] for key in agreements}):
        pairs = {tuple(k.split(" | ")[:2]): v for k, v in agreements.items() if k.endswith(f" | {task}")}
        names = sorted({n for pair in pairs for n in pair})
        matrix = np.eye(len(names))
        for (a, b), value in pairs.items():
            matrix[names.index(a), names.index(b)] = matrix[names.index(b), names.index(a)] = \
                np.nan if value is None else value
        path = directory / f"agreement_{task.replace('/', '-')}.png"
        heat_map(matrix, names, names, f"agreement between variants: {task}", path)
        written.append(path)
    return written
