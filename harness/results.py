"""From prediction records to figures: accuracy, macro-F1 and MCC with bootstrap intervals, a test against
chance, agreement between variants, and the results table (JSON and Markdown).

A prediction that could not be read (a chat reply naming no label, recorded as -1) is its own outcome: wrong
for accuracy, a miss in its gold class's recall, no class's false positive (`tljax.metrics`); the summary says
how many there were. A row over several seeds (few-shot draws) reports every figure over the seeds alike: see
`summarise_seeds` and the table's legend (`LEGEND`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest

from tljax.metrics import NO_ANSWER, SCORES, MetricError, classification_metrics, outcome_counts, scores

RULES = ("acc", "acc_norm", "calibrated")
BOOTSTRAP_ROUNDS = 1000
INTERVAL_METRICS = ("accuracy", "f1", "mcc")  # the figures that get a bootstrap interval


def _outcomes(records: Sequence[dict], rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(gold [N], predicted [N]) under `rule`; an unread prediction stays -1 (no answer)."""
    gold = np.asarray([r["gold"] for r in records], np.int64)
    predicted = np.asarray([r["prediction"][rule] for r in records], np.int64)
    return gold, np.where(predicted < 0, NO_ANSWER, predicted)


def binomial_p_value(successes: int, trials: int, rate: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, rate): the one-sided test that a classifier beats `rate`."""
    if trials == 0:
        return 1.0
    return float(binomtest(successes, trials, rate, alternative="greater").pvalue)


def _aligned(per_seed: Sequence[Sequence[dict]]) -> list[list[dict]]:
    """Every seed's records in the first seed's item order (the bootstrap resamples items, the same for all)."""
    order = [r["id"] for r in per_seed[0]]
    aligned = [list(per_seed[0])]
    for k, records in enumerate(per_seed[1:], 1):
        by_id = {r["id"]: r for r in records}
        if sorted(by_id) != sorted(order):
            raise MetricError(f"seed {k} scored other items than seed 0 ({len(by_id)} vs {len(order)} ids); "
                              "every seed of a row must score the same items")
        aligned.append([by_id[i] for i in order])
    return aligned


def summarise(records: Sequence[dict], num_labels: int, seed: int = 0) -> dict[str, Any]:
    """The summary of one seed's records: `summarise_seeds([records], ...)`."""
    return summarise_seeds([records], num_labels, seed)


def summarise_seeds(per_seed: Sequence[Sequence[dict]], num_labels: int, seed: int = 0) -> dict[str, Any]:
    """The figures of a row from each seed's records (the same items under each seed), per scoring rule.

    With S seeds, every figure is taken over the seeds alike: accuracy, macro precision / recall / F1 and MCC
    are the means over seeds of each seed's value (`<metric>_per_seed`; `<metric>_sd`: their sample standard
    deviation over seeds, None for one seed); `<metric>_ci` is the 95% percentile bootstrap interval of that
    mean (items resampled with replacement, `BOOTSTRAP_ROUNDS` times, the same resample for every seed);
    `p_above_chance` / `p_above_majority` are the largest over seeds of the one-sided binomial p-value of a
    seed's accuracy against chance (1 / labels) and the majority class' share (the level at which every seed
    beats it);
    `unread` is the mean over seeds of the unread predictions (`unread_per_seed`: each seed's count).
    """
    out: dict[str, Any] = {"items": len(per_seed[0]) if per_seed else 0, "seeds": len(per_seed)}
    if not per_seed or not per_seed[0]:
        return out
    per_seed = _aligned(per_seed)
    rules = [r for r in RULES if r in per_seed[0][0]["prediction"]]
    gold_all = np.asarray([r["gold"] for r in per_seed[0]])
    majority = float(np.bincount(gold_all, minlength=num_labels).max() / len(gold_all))
    out["majority"] = majority
    unread = [int(sum(r["prediction"][rules[0]] < 0 for r in records)) for records in per_seed]
    out["unread"] = unread[0] if len(unread) == 1 else float(np.mean(unread))
    out["unread_per_seed"] = unread
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, out["items"], (BOOTSTRAP_ROUNDS, out["items"]))  # [B, N]: one matrix for all
    for rule in rules:
        values, boot, p_chance, p_majority = [], [], [], []
        for records in per_seed:
            gold, predicted = _outcomes(records, rule)
            metrics = classification_metrics(gold, predicted, num_labels)
            values.append([metrics[m] for m in SCORES])
            resampled = scores(outcome_counts(gold, predicted, num_labels, samples))  # each [B]
            boot.append(np.stack([resampled[m] for m in INTERVAL_METRICS], -1))  # [B, 3]
            correct = int((gold == predicted).sum())
            p_chance.append(binomial_p_value(correct, len(gold), 1 / num_labels))
            p_majority.append(binomial_p_value(correct, len(gold), majority))
        values = np.asarray(values)  # [S, len(SCORES)]
        low, high = np.percentile(np.mean(boot, 0), [2.5, 97.5], axis=0)  # of the seed mean: [3] each
        summary: dict[str, Any] = {}
        for j, name in enumerate(SCORES):
            summary[name] = float(values[:, j].mean())
            summary[f"{name}_sd"] = float(values[:, j].std(ddof=1)) if len(per_seed) > 1 else None
            summary[f"{name}_per_seed"] = values[:, j].tolist()
        for j, name in enumerate(INTERVAL_METRICS):
            summary[f"{name}_ci"] = [float(low[j]), float(high[j])]
        summary["p_above_chance"], summary["p_above_majority"] = max(p_chance), max(p_majority)
        out[rule] = summary
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


LEGEND = (
    "acc (95% CI): accuracy under the `acc` rule with its 95% bootstrap interval over items; acc_norm, "
    "calibrated: accuracy under those rules; macro-F1 and MCC under `acc`. p (vs chance): the one-sided binomial "
    "p-value of accuracy against 1 / labels. unread: predictions that named no label (wrong for accuracy, a miss "
    "in the gold class's recall, no class's false positive). A row over several seeds (items shown as N × S) "
    "gives, for every figure, the mean over its S seeds ± their standard deviation (ddof 1); its interval is that "
    "of the seed mean (each resample of items scored under every seed), its p the largest over the seeds, its "
    "unread count and ex/s, GFLOP/ex and peak MB the means over seeds.")


def _figure(summary: dict[str, Any], rule: str, metric: str) -> str:
    """`0.812`, or `0.812 ± 0.010` where the figure is a mean over seeds; empty where the rule is absent."""
    if rule not in summary:
        return ""
    sd = summary[rule].get(f"{metric}_sd")
    return f"{summary[rule][metric]:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results table: one row per (variant, task), accuracy under each rule (`acc` first), F1, MCC, costs,
    each over the row's seeds alike (`summarise_seeds`), and the legend (`LEGEND`) under it."""
    lines = ["| variant | task | lang | items | acc (95% CI) | acc_norm | calibrated | macro-F1 | MCC | "
             "p (vs chance) | unread | trainable params | train s | ex/s | GFLOP/ex | peak MB | MB on disk |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        s, c = row["summary"], row["costs"]
        acc = s.get("acc", {})
        seeds = s.get("seeds", 1)
        items = f"{s['items']} × {seeds}" if seeds > 1 else f"{s['items']}"
        unread = s.get("unread", 0)
        unread = f"{unread:.1f}" if seeds > 1 else f"{unread}"
        ci = acc.get("accuracy_ci", [math.nan, math.nan])
        params = c.get("trainable_parameters")
        lines.append(
            f"| {row['variant']} | {row['task']} | {row['language']} | {items} | "
            f"{_figure(s, 'acc', 'accuracy') or 'nan'} ({ci[0]:.3f}-{ci[1]:.3f}) | "
            f"{_figure(s, 'acc_norm', 'accuracy')} | {_figure(s, 'calibrated', 'accuracy')} | "
            f"{_figure(s, 'acc', 'f1')} | {_figure(s, 'acc', 'mcc')} | "
            f"{acc.get('p_above_chance', math.nan):.2g} | {unread} | "
            f"{'' if params is None else f'{params:,}'} | {c.get('training_seconds') or 0:.0f} | "
            f"{c.get('examples_per_second', math.nan):.1f} | {c.get('flops_per_example', math.nan) / 1e9:.2f} | "
            f"{c.get('memory_mb', math.nan):.0f} | {c.get('size_mb', math.nan):.1f} |")
    notes = [f"- {row['variant']} on {row['task']}: {'; '.join(row['notes'])}" for row in rows if row.get("notes")]
    return "\n".join(lines) + "\n\n" + LEGEND + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")
