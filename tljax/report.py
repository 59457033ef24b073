"""`python -m tljax.report RUN_DIR ...`: finished runs side by side, as a Markdown table.

One row per run: model, methods, training data, test metrics, then whatever the run measured beyond them:
each extra evaluation set's accuracy (cross-lingual transfer: a matrix of training x evaluation language),
each task's accuracy (multi-task), the teacher comparison (distillation), held-out loss before and after
(continued pre-training). Columns only appear when some run has them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tljax.errors import InputError


def methods_text(config: dict) -> str:
    """The config's methods, e.g. `lora + bitfit`."""
    methods = config["method"] if isinstance(config["method"], list) else [config["method"]]
    return " + ".join(m.get("name", "?") for m in methods)


def row(run_dir: Path) -> dict[str, str]:
    """The cells of one run (column name -> text)."""
    import yaml

    summary = json.loads((run_dir / "summary.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    test = summary["test"]
    data = config.get("data", {})
    trained_on = ", ".join(t["name"] for t in config["tasks"]) if config.get("tasks") else data.get("source", "")
    cells = {"run": run_dir.name, "model": config["model"], "method": methods_text(config), "trained on": trained_on,
             "steps": str(summary["steps"])}
    if "perplexity" in test:
        before = summary["before"]["test"]
        cells["held-out loss"] = f"{before['loss']:.3f} -> {test['loss']:.3f}"
        cells["perplexity"] = f"{before['perplexity']:.1f} -> {test['perplexity']:.1f}"
        return cells
    cells["test accuracy"], cells["test F1"] = f"{test['accuracy']:.3f}", f"{test['f1']:.3f}"
    for name, metrics in test.get("tasks", {}).items():
        cells[f"{name} acc"] = f"{metrics['accuracy']:.3f}"
    for name, metrics in summary.get("evaluation", {}).items():
        cells[name] = f"{metrics['accuracy']:.3f}"
    if "distillation" in summary:
        d = summary["distillation"]
        cells["teacher acc"] = f"{d['teacher']['accuracy']:.3f}"
        cells["retained"] = f"{100 * d['accuracy_retained']:.1f}%"
        cells["params (student / teacher)"] = f"{d['student']['parameters'] / 1e6:.1f}M / " \
                                              f"{d['teacher']['parameters'] / 1e6:.1f}M"
        cells["speed-up"] = f"{d['speed_up']:.2f}x"
    return cells


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table over the union of the rows' columns, in first-seen order."""
    columns: list[str] = []
    for cells in rows:
        columns += [c for c in cells if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells.get(c, "") for c in columns) + " |" for cells in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tljax.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a finished run (one with a summary.json)")
    args = parser.parse_args(argv)

    try:
        missing = [d for d in args.run_dirs if not (Path(d) / "summary.json").is_file()]
        if missing:
            raise InputError(f"not finished runs (no summary.json): {', '.join(missing)}")
        rows = [row(Path(d)) for d in args.run_dirs]
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
