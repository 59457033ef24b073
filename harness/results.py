"""From prediction records to figures: accuracy, macro-F1 and MCC with bootstrap intervals, a test against
chance, agreement between variants, and the results table (JSON and Markdown)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tljax.metrics import classification_metrics

RULES = ("acc", "acc_norm", "calibrated")
BOOTSTRAP_ROUNDS = 1000


def _predictions(records: Sequence[dict], rule: str, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """(gold, predicted) arrays; a prediction that could not be read (-1) counts as a wrong label."""
    gold = np.asarray([r["gold"] for r in records], np.int64)
    predicted = np.asarray([r["prediction"][rule] for r in records], np.int64)
    unread = predicted < 0
    predicted[unread] = (gold[unread] + 1) % num_labels
    return gold, predicted


def binomial_p_value(successes: int, trials: int, rate: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, rate): the one-sided test that a classifier beats `rate`."""
    if trials == 0:
        return 1.0
    if rate <= 0:
        return 0.0 if successes > 0 else 1.0
    if rate >= 1:
        return 1.0 if successes <= trials else 0.0
    logs = [math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1) + k * math.log(rate)
            + (trials - k) * math.log1p(-rate) for k in range(successes, trials + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(x - top) for x in logs))


def summarise(records: Sequence[dict], num_labels: int, seed: int = 0) -> dict[str, Any]:
    """Per scoring rule present in the records: accuracy, macro-F1, MCC, their 95% bootstrap intervals, and
    the one-sided binomial p-values of accuracy against chance (1 / labels) and against the majority class'
    share; plus how many predictions could not be read."""
    out: dict[str, Any] = {"items": len(records)}
    if not records:
        return out
    rules = [r for r in RULES if r in records[0]["prediction"]]
    gold_all = np.asarray([r["gold"] for r in records])
    majority = float(np.bincount(gold_all, minlength=num_labels).max() / len(gold_all))
    out["majority"] = majority
    out["unread"] = int(sum(r["prediction"][rules[0]] < 0 for r in records))
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(records), (BOOTSTRAP_ROUNDS, len(records)))
    for rule in rules:
        gold, predicted = _predictions(records, rule, num_labels)
        metrics = classification_metrics(gold, predicted, num_labels)
        boot = np.asarray([[m["accuracy"], m["f1"], m["mcc"]] for m in
                           (classification_metrics(gold[s], predicted[s], num_labels) for s in samples)])
        low, high = np.percentile(boot, [2.5, 97.5], axis=0)
        out[rule] = {
            "accuracy": metrics["accuracy"], "f1": metrics["f1"], "mcc": metrics["mcc"],
            "accuracy_ci": [float(low[0]), float(high[0])], "f1_ci": [float(low[1]), float(high[1])],
            "mcc_ci": [float(low[2]), float(high[2])],
            "p_above_chance": binomial_p_value(int((gold == predicted).sum()), len(gold), 1 / num_labels),
            "p_above_majority": binomial_p_value(int((gold == predicted).sum()), len(gold), majority),
        }
    return out


def p_better(first: Sequence[dict], second: Sequence[dict], rule: str = "acc") -> float:
    """The one-sided exact McNemar test that `first` is right more often than `second` on the items both
    scored: P(X >= b) for X ~ Binomial(b + c, 1/2), where b items only `first` got right and c only `second`."""
    theirs = {r["id"]: r["prediction"][rule] == r["gold"] for r in second}
    mine = [(r["prediction"][rule] == r["gold"], theirs[r["id"]]) for r in first if r["id"] in theirs]
    only_first = sum(a and not b for a, b in mine)
    only_second = sum(b and not a for a, b in mine)
    return binomial_p_value(only_first, only_first + only_second, 0.5)


def agreement(first: Sequence[dict], second: Sequence[dict], rule: str = "acc") -> float | None:
    """The share of the items both variants predicted that they predicted alike."""
    theirs = {r["id"]: r["prediction"].get(rule, r["prediction"].get("acc")) for r in second}
    shared = [(r["prediction"].get(rule, r["prediction"].get("acc")), theirs[r["id"]]) for r in first
              if r["id"] in theirs]
    return float(np.mean([a == b for a, b in shared])) if shared else None


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results table: one row per (variant, task), accuracy under each rule (`acc` first), F1, MCC, costs."""
    lines = ["| variant | task | lang | items | acc (95% CI) | acc_norm | calibrated | macro-F1 | MCC | "
             "p (vs chance) | unread | trainable params | train s | ex/s | GFLOP/ex | peak MB | MB on disk |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        s, c = row["summary"], row["costs"]
        acc = s.get("acc", {})

        def value(rule: str) -> str:
            return f"{s[rule]['accuracy']:.3f}" if rule in s else ""

        spread = f" ± {row['seed_spread']:.3f}" if row.get("seed_spread") is not None else ""
        ci = acc.get("accuracy_ci", [math.nan, math.nan])
        params = c.get("trainable_parameters")
        lines.append(
            f"| {row['variant']} | {row['task']} | {row['language']} | {s['items']} | {acc.get('accuracy', math.nan):.3f}"
            f"{spread} ({ci[0]:.3f}-{ci[1]:.3f}) | {value('acc_norm')} | {value('calibrated')} | "
            f"{acc.get('f1', math.nan):.3f} | {acc.get('mcc', math.nan):.3f} | {acc.get('p_above_chance', math.nan):.2g} | {s.get('unread', 0)} | "
            f"{'' if params is None else f'{params:,}'} | {c.get('training_seconds') or 0:.0f} | "
            f"{c.get('examples_per_second', math.nan):.1f} | {c.get('flops_per_example', math.nan) / 1e9:.2f} | "
            f"{c.get('memory_mb', math.nan):.0f} | {c.get('size_mb', math.nan):.1f} |")
    notes = [f"- {row['variant']} on {row['task']}: {'; '.join(row['notes'])}" for row in rows if row.get("notes")]
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")
