"""The benchmark's report: a markdown table of every workload, the machine and the command.

The generated part is everything above `NOTES_MARKER`; what follows the marker in an existing report (the
written analysis) is kept when the report is regenerated. With `update`, the existing tables' rows that were
not measured again are kept as they were, and the header names every command that measured them.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

NOTES_MARKER = "<!-- notes: everything below this line is kept when the benchmark rewrites the file -->"

# workload -> (the figure compared, lower is better?, its unit)
FIGURES = {"train": ("step_s", True, "s/step"), "forward": ("step_s", True, "s/batch"),
           "time-to-accuracy": ("seconds", True, "s"), "predict": ("seconds", True, "s"),
           "generate": ("seconds", True, "s"), "score": ("seconds", True, "s"), "sweep": ("process_s", True, "s")}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(row: dict[str, Any]) -> dict[str, Any]:
    """Medians of each side, the median of the rounds' ratios (tljax / PyTorch, or one program / separate runs)."""
    figure, _, unit = FIGURES[row["workload"]]
    a, b = ("together", "separate") if row["workload"] == "sweep" else ("jax", "torch")
    rounds = row["rounds"]
    first = [r[a][figure] for r in rounds]
    second = [r[b][figure] for r in rounds]
    out = {"name": row["name"], "unit": unit, "a": _median(first), "b": _median(second),
           "ratio": _median([x / y for x, y in zip(first, second)]),
           "rss_a": _median([r[a]["peak_rss_mb"] for r in rounds]),
           "rss_b": _median([r[b]["peak_rss_mb"] for r in rounds]), "extra": ""}
    if "first_step_s" in rounds[0][a]:
        out["first"] = (_median([r[a]["first_step_s"] for r in rounds]), _median([r[b]["first_step_s"] for r in rounds]))
    last = rounds[-1]
    if row["workload"] == "train":
        out["extra"] = f"trainable {last[a]['trainable']:,} / {last[b]['trainable']:,}"
    elif row["workload"] == "time-to-accuracy":
        accuracies = [(r[a]["accuracy"], r[b]["accuracy"]) for r in rounds]
        out["extra"] = "test accuracy " + "; ".join(f"{x:.4f} / {y:.4f}" for x, y in accuracies)
    elif row["workload"] == "predict":
        out["extra"] = f"{last[a]['examples_per_s']:.0f} / {last[b]['examples_per_s']:.0f} examples/s; " \
                       f"{last[a]['positive']} / {last[b]['positive']} positive"
    elif row["workload"] == "generate":
        same = last[a]["tokens"] == last[b]["tokens"]
        out["extra"] = f"{last[a]['tokens_per_s']:.1f} / {last[b]['tokens_per_s']:.1f} tokens/s; " \
                       f"same tokens: {'yes' if same else 'no'}"
    elif row["workload"] == "score":
        difference = max(abs(x - y) for x, y in zip(last[a]["logprob"], last[b]["logprob"]))
        out["extra"] = f"{last[a]['examples_per_s']:.1f} / {last[b]['examples_per_s']:.1f} items/s; " \
                       f"max log-likelihood difference {difference:.1e}"
    elif row["workload"] == "sweep":
        out["extra"] = "final losses " + ", ".join(f"{x:.3f}" for x in last[a]["final_loss"]) + " / " + \
                       ", ".join(f"{x:.3f}" for x in last[b]["final_loss"])
    return out


TABLE_HEADER = ["| workload | tljax | PyTorch | tljax / PyTorch | peak memory (MB) | first step (s) | |",
                "|---|---:|---:|---:|---:|---:|---|"]
SWEEP_HEADER = ["| workload | one program | separate runs, one after another | one program / separate | "
                "peak memory (MB) | |", "|---|---:|---:|---:|---:|---|"]


def row_line(row: dict[str, Any]) -> str:
    """One measured row as a line of its table."""
    s = summarise(row)
    if row["workload"] == "sweep":
        return (f"| {s['name']} | {s['a']:.1f} s | {s['b']:.1f} s | **{s['ratio']:.2f}** | "
                f"{s['rss_a']:.0f} / {s['rss_b']:.0f} | {s['extra']} |")
    first = f"{s['first'][0]:.1f} / {s['first'][1]:.1f}" if "first" in s else ""
    return (f"| {s['name']} | {s['a']:.3f} {s['unit']} | {s['b']:.3f} {s['unit']} | **{s['ratio']:.2f}** | "
            f"{s['rss_a']:.0f} / {s['rss_b']:.0f} ({s['rss_a'] / s['rss_b']:.2f}x) | {first} | {s['extra']} |")


def _name(line: str) -> str:
    return line.split("|")[1].strip()


def _old_rows(text: str, header: list[str]) -> list[str]:
    """The rows (markdown lines) of the table that starts with `header` in an existing report."""
    if header[0] not in text:
        return []
    return [line for line in text.split(header[0], 1)[1].split("\n\n", 1)[0].splitlines()[2:]
            if line.startswith("| ")]


def _table(header: list[str], kept: list[str], lines: list[str]) -> str:
    """`kept` rows with `lines` replacing their namesakes (the rest appended), under `header`."""
    new = {_name(line): line for line in lines}
    rows = [new.pop(_name(line), line) for line in kept] + list(new.values())
    return "\n".join(header + rows) if rows else ""


def write_report(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any], *, update_of: str | None = None) -> None:
    """Writes (or rewrites the generated part of) the report at `path`; `update_of` is the report as it was
    before this benchmark run, whose rows not measured now are kept."""
    old = path.read_text() if path.is_file() else ""
    commands, minutes = list(meta["commands"]), meta["minutes"]
    kept, kept_sweep = [], []
    if update_of:
        kept, kept_sweep = _old_rows(update_of, TABLE_HEADER), _old_rows(update_of, SWEEP_HEADER)
        found = re.search(r"^Measured by (.*) \((\d+) min\) on", update_of, re.M)
        if found:
            commands = re.findall(r"`([^`]*)`", found.group(1)) + commands
            minutes += int(found.group(2))
    main = _table(TABLE_HEADER, kept, [row_line(r) for r in rows if r["workload"] != "sweep"])
    sweep = _table(SWEEP_HEADER, kept_sweep, [row_line(r) for r in rows if r["workload"] == "sweep"])
    m = meta["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    widths = ", ".join(f"{count} x {width}" for width, count in meta["default_widths"].items())
    generated = f"""# Performance: tljax against PyTorch

Measured by {' then '.join(f"`{c}`" for c in commands)} ({minutes:.0f} min) on {m['cores']} cores ({m['processor']}),
{m['memory_gb']} GB, {m['platform']}, Python {m['python']}; {packages}; load average {m['load_average']:.1f} at the start.

Every figure is the median of {meta['rounds']} round(s); each round runs both sides, each in its own process, one
after the other (the order alternates between rounds), and **tljax / PyTorch** is the median of the rounds' own
ratios (below 1: tljax takes less time). Times are seconds; lower is better. Peak memory is each process' peak
resident set (tljax / PyTorch). First step: the first call's time, JAX compiling without the persistent cache.
The PyTorch side is `transformers` + `peft` as Hugging Face documents them (SDPA attention, dropout 0.1, AdamW
with a linear warm-up schedule, gradient clipping), reading the same run configs (`configs/`) as tljax.
"Default shapes": {sum(meta['default_widths'].values())} batches of 32 spread over the default run's first epoch
as tljax batches it (length buckets: {widths} tokens); "32 x 128": 32 sequences of 128 tokens.

{main}

{sweep}

"""
    notes = old.split(NOTES_MARKER, 1)[1] if NOTES_MARKER in old else "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generated + NOTES_MARKER + notes)
