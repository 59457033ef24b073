"""`harness.evaluate`: one task's evaluation from Python (a notebook), as a pandas DataFrame.

    import harness
    table = harness.evaluate(task="sentiment-en", variants=[
        {"kind": "zero-shot", "model": "smollm2-135m-instruct"},
        {"kind": "few-shot", "model": "minilm-l6", "k": 8},
        run,                                        # a tljax.Run, or a run folder's path
    ], limit=200)

It is a one-task suite (`harness.suite`) run with its cache, predictions, results and plots written as `python -m
harness run` writes them; the DataFrame holds the figures the results table (results.md) shows, as numbers: a row
per variant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.suite import Suite, run_suite
from harness.variants import VariantError, parse_variant
from tljax.errors import InputError
from tljax.progress import quiet_libraries

if TYPE_CHECKING:
    import pandas


def evaluate(task: str | Path, variants: Sequence[dict[str, Any] | Any], limit: int | None = None, *,
             out: str | Path | None = None) -> pandas.DataFrame:
    """Evaluates every variant on `task` (a built-in task name, `python -m harness list`, or a task YAML file) and
    returns the results table as a DataFrame, a row per variant.

    variants: each a suite's variant mapping ({"kind": "zero-shot" | "few-shot" | "chat" | "run" | "train", ...};
        harness/suite.py), or a finished run (a `tljax.Run`, or its folder's path) as a run variant.
    limit: only that many items of the task (a fixed sample; few-shot draws do not depend on it).
    out: where predictions, results.json, results.md and plots are written and cached (default:
        harness-results/evaluate-<task>); a rerun computes only what changed.

    Bad input raises the command's one-line error (a `tljax.errors.InputError`)."""
    try:
        if limit is not None and limit < 1:
            raise InputError(f"limit must be at least 1, got {limit}")
        if isinstance(variants, (str, Path, dict)) or not variants:
            raise VariantError("variants is a list: give one or more variants, e.g. [{'kind': 'zero-shot', "
                               "'model': 'minilm-l6'}]")
        parsed = tuple(parse_variant(_variant(v), f"variants[{i}]") for i, v in enumerate(variants))
        name = Path(str(task)).stem
        suite = Suite(f"evaluate-{name}", (str(task),), parsed)
        folder = Path(out) if out is not None else Path("harness-results") / suite.name
        # train variants' runs: shared by every suite under harness-results/, as the command shares them
        runs = folder / "runs" if out is not None else Path("harness-results") / "runs"
        with quiet_libraries():
            rows = run_suite(suite, folder, limit, say=print, runs_dir=runs)
    except InputError as error:  # the one line, not a traceback from deep inside
        raise error.with_traceback(None) from None
    return results_frame(rows)


def _variant(value: Any) -> Any:
    """A variant mapping as it is; a finished run (a tljax.Run or a path) as a run variant."""
    if isinstance(value, dict):
        return value
    path = getattr(value, "path", value)  # a tljax.Run's folder
    if isinstance(path, (str, Path)):
        return {"kind": "run", "run": str(path)}
    raise VariantError(f"variant {value!r} is neither a variant mapping ({{'kind': ..., ...}}) nor a finished run")


def results_frame(rows: Sequence[dict[str, Any]]) -> pandas.DataFrame:
    """The results table of suite rows (`run_suite`'s) as numbers: variant, kind, task, language, items, seeds,
    the headline `metric` and its `score` with the 95% interval (`score_low`, `score_high`), the task kind's own
    figures (accuracy under each rule, F1, MCC, p against chance, unread; entity precision / recall / macro F1,
    unread, unfound; exact match, answerable F1, no-answer, unanswered), the costs (trainable parameters, training
    seconds, examples per second, GFLOP per example, peak and on-disk MB) and the notes; on a task of counterfactual
    pairs, the bias probe's figures too (pairs, flip_rate, the mean change in P(positive) `mean_delta` with its 95%
    interval and `mean_abs_delta`, and `flip_rate_<dimension>` for gender, name and origin)."""
    import pandas

    return pandas.DataFrame([_row(row) for row in rows])


def _row(row: dict[str, Any]) -> dict[str, Any]:
    summary, costs, kind = row["summary"], row["costs"], row.get("task_kind", "classification")
    figures = summary.get({"entities": "entity", "answers": "answer"}.get(kind, "acc"), {})
    interval = figures.get({"entities": "f1_ci", "answers": "f1_ci"}.get(kind, "accuracy_ci"), [math.nan] * 2)
    out = {"variant": row["variant"], "kind": row["kind"], "task": row["task"], "language": row["language"],
           "items": summary.get("items"), "seeds": summary.get("seeds", 1), "metric": row.get("metric", "accuracy"),
           "score": row.get("score"), "score_low": interval[0], "score_high": interval[1]}
    if kind == "entities":
        out.update(precision=figures.get("precision"), recall=figures.get("recall"), macro_f1=figures.get("macro_f1"),
                   unread=summary.get("unread"), unfound=summary.get("unfound"))
    elif kind == "answers":
        out.update(exact=figures.get("exact"), answerable_f1=figures.get("has_answer_f1"),
                   no_answer=figures.get("no_answer_exact"), unanswered=summary.get("unanswered"))
    else:
        out.update(acc_norm=summary.get("acc_norm", {}).get("accuracy"),
                   calibrated=summary.get("calibrated", {}).get("accuracy"), f1=figures.get("f1"),
                   mcc=figures.get("mcc"), p_above_chance=figures.get("p_above_chance"), unread=summary.get("unread"))
    flops = costs.get("flops_per_example")
    out.update({"trainable_parameters": costs.get("trainable_parameters"),
                "training_seconds": costs.get("training_seconds"),
                "examples_per_second": costs.get("examples_per_second"),
                "gflops_per_example": None if flops is None else flops / 1e9, "peak_mb": costs.get("memory_mb"),
                "size_mb": costs.get("size_mb"), "notes": "; ".join(row.get("notes") or [])})
    if row.get("bias"):  # the bias probe's figures (counterfactual tasks): overall, then per dimension
        every = row["bias"]["all"]
        low, high = every.get("mean_delta_ci", [math.nan] * 2)
        out.update(pairs=every["pairs"], flip_rate=every["flip_rate"], mean_delta=every.get("mean_delta"),
                   mean_delta_low=low, mean_delta_high=high, mean_abs_delta=every.get("mean_abs_delta"))
        out.update({f"flip_rate_{dimension}": figures["flip_rate"] for dimension, figures in sorted(row["bias"].items())
                    if dimension != "all"})
    return out
