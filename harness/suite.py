"""Suites: tasks x variants (x seeds), run with a cache, written as predictions, a table and plots.

    # harness/suites/ci.yaml
    name: ci
    tasks: [sentiment-en, sentiment-pt]
    variants:
      - {kind: zero-shot, model: smollm2-135m-instruct}
      - {kind: few-shot, model: smollm2-135m-instruct, k: 4, seeds: [0, 1]}
    limit: 200          # optional: N items of each task, a fixed sample (few-shot draws do not depend on it)
    training: {training.max_steps: 150}   # optional: config overrides for every train variant (the same budget)

A variant runs on every task of its suite, or on those its `tasks` lists (e.g. a few-shot k for the answer tasks).

`python -m harness run SUITE` writes into `harness-results/<name>/` (or `--out`):
`predictions/<variant>__<task>__seed<k>.jsonl` (a record per item), `results.json`, `results.md`, `plots/`;
train variants' runs go to `harness-results/runs/` (shared by the suites; with `--out`: `<out>/runs/`).
Each (variant, task, seed, limit) is cached under `cache/` by a hash of its settings, the task file, the
model's files and the harness code, so a rerun computes only what changed and a long suite can be run over
several sittings. Train variants train into `runs/` first (harness/training.py), once for all tasks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from harness import bias, plots
from harness.answers import answer_table, summarise_answers
from harness.entities import entity_table, summarise_entities
from harness.results import agreement, markdown_table, summarise_seeds
from harness.task_parts import read_spec, spec_path
from harness.tasks import TASKS_DIR, Task, load_task
from harness.training import train_sweep
from harness.variants import Models, Variant, VariantError, evaluate, parse_variant

SUITES_DIR = Path(__file__).parent / "suites"
SUITE_KEYS = ("name", "description", "tasks", "variants", "limit", "training")
CODE = [Path(__file__).parent, Path(__file__).parent.parent / "tljax"]  # what the results depend on
NOT_CODE = {"app"}  # harness/app (the comparison app) reads results; it does not make them


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple[str, ...]
    variants: tuple[Variant, ...]
    limit: int | None = None
    description: str = ""
    training: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides for every train variant


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name_or_path: str | Path) -> Suite:
    path, raw = read_spec(name_or_path, SUITES_DIR, "suite")
    if not isinstance(raw, dict):
        raise VariantError(f"{path} must hold a mapping with tasks and variants")
    unknown = sorted(set(raw) - set(SUITE_KEYS))
    if unknown:
        raise VariantError(f"{path}: unknown keys {unknown}; valid: {', '.join(SUITE_KEYS)}")
    for key in ("tasks", "variants"):
        if not raw.get(key):
            raise VariantError(f"{path} needs {key}")
    variants = tuple(parse_variant(v, f"{path}: variants[{i}]") for i, v in enumerate(raw["variants"]))
    tasks = tuple(str(t) for t in raw["tasks"])
    for i, variant in enumerate(variants):
        others = sorted(set(variant.tasks or ()) - set(tasks))
        if others:
            raise VariantError(f"{path}: variants[{i}] names tasks {others} that the suite does not run; its tasks: "
                               f"{', '.join(tasks)}")
    training = raw.get("training") or {}
    if not isinstance(training, dict):
        raise VariantError(f"{path}: training must map config keys to values, e.g. {{training.max_steps: 150}}")
    return Suite(str(raw.get("name", path.stem)), tasks, variants,
                 raw.get("limit"), str(raw.get("description", "")), training)


def sample(items, limit: int | None) -> list:
    """The first `limit` items in a fixed pseudo-random order (by a hash of each id): a limit gives a sample
    of the whole set, not its first rows (which the data may hold grouped, e.g. by film)."""
    ordered = sorted(items, key=lambda item: hashlib.sha256(item.id.encode()).hexdigest())
    return ordered[:limit] if limit else list(items)


def _code_hash() -> str:
    digest = hashlib.sha256()
    for root in CODE:
        for path in sorted(root.rglob("*.py")):
            if not NOT_CODE & set(path.relative_to(root).parts):
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _model_identity(variant: Variant) -> str:
    """What distinguishes the variant's model: the name, and for directories the files' sizes and times."""
    target = variant.run or variant.model
    path = Path(target)
    if not path.exists():
        return str(target)
    files = sorted(p for p in path.rglob("*") if p.is_file() and "checkpoints" not in p.parts)
    return json.dumps([[str(p.relative_to(path)), p.stat().st_size, int(p.stat().st_mtime)] for p in files])


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9.=-]+", "-", text).strip("-")[:80]


def predictions_name(variant: str, task: str, seed: int) -> str:
    """The file under `predictions/` holding a variant's records on a task (its label as the table shows it)."""
    return f"{_slug(variant)}__{_slug(task)}__seed{seed}.jsonl"


def run_suite(suite: Suite, out: Path, limit: int | None = None, say=print,
              runs_dir: Path | None = None) -> list[dict[str, Any]]:
    """Runs every (task, variant, seed) not in the cache; writes predictions, results and plots; returns the rows.
    Train variants train into `runs_dir` (default: `out/runs`), where any suite finds them again."""
    limit = limit if limit is not None else suite.limit
    out = Path(out)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    (out / "cache").mkdir(exist_ok=True)
    tasks: dict[str, Task] = {name: load_task(name) for name in suite.tasks}  # every task checked before running
    task_text = {name: spec_path(name, TASKS_DIR).read_text(encoding="utf-8") for name in suite.tasks}
    code = _code_hash()
    loaded = Models()
    runs_dir = Path(runs_dir) if runs_dir is not None else out / "runs"
    trained = [_trained(variant, suite, runs_dir, say) for variant in suite.variants]  # once for every task
    rows, by_key = [], {}
    for task_name, task in tasks.items():
        items = sample(task.items, limit)
        for variant, (scored, sweep) in zip(suite.variants, trained):
            if variant.tasks is not None and task_name not in variant.tasks:
                continue
            seeds = variant.seeds if variant.kind == "few-shot" else (variant.seeds[0],)
            per_seed = []
            for seed in seeds:
                settings = {k: v for k, v in scored.settings().items() if k != "tasks"}  # which tasks: not a score's
                key = hashlib.sha256(json.dumps([settings, task_text[task_name], limit, seed, code,
                                                 _model_identity(scored)], sort_keys=True).encode()).hexdigest()[:20]
                cached = out / "cache" / f"{key}.json"
                if cached.is_file():
                    evaluation = json.loads(cached.read_text())
                    say(f"{variant.label} on {task_name} (seed {seed}): cached")
                else:
                    say(f"{variant.label} on {task_name} (seed {seed}): {len(items)} items ...")
                    result = evaluate(scored, task, items, seed, loaded)
                    evaluation = {"records": result.records, "costs": {**result.costs, **sweep["costs"]},
                                  "notes": sweep["notes"] + result.notes}
                    cached.write_text(json.dumps(evaluation))
                name = predictions_name(variant.label, task_name, seed)
                (out / "predictions" / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                                for r in evaluation["records"]))
                per_seed.append(evaluation)
            rows.append(_row(variant, task, task_name, seeds, per_seed))
            if task.kind == "classification":  # agreement: how often two variants give a text the same label
                by_key[(variant.label, task_name)] = per_seed[0]["records"]
    _write(out, suite, rows, by_key)
    return rows


def _row(variant: Variant, task, task_name: str, seeds, per_seed: list[dict]) -> dict[str, Any]:
    """A results row: every figure over the seeds alike (means, spreads, the seed mean's interval); `score` is
    the headline figure (accuracy; entity F1 on an entity task; SQuAD F1 on an answer task)."""
    records = [e["records"] for e in per_seed]
    row = {"variant": variant.label, "kind": variant.kind, "task": task_name, "task_kind": task.kind,
           "language": task.language, "settings": variant.settings(), "seeds": list(seeds),
           "costs": mean_costs([e["costs"] for e in per_seed]), "notes": per_seed[0]["notes"]}
    if task.kind == "entities":
        summary = summarise_entities(records, task.labels)
        entity = summary.get("entity", {})
        return {**row, "summary": summary, "metric": "entity F1", "score": entity.get("f1"),
                "seed_scores": entity.get("f1_per_seed", []), "seed_spread": entity.get("f1_sd"), "bias": None}
    if task.kind == "answers":
        summary = summarise_answers(records)
        answer = summary.get("answer", {})
        return {**row, "summary": summary, "metric": "F1", "score": answer.get("f1"),
                "seed_scores": answer.get("f1_per_seed", []), "seed_spread": answer.get("f1_sd"), "bias": None}
    summary = summarise_seeds(records, len(task.labels))
    accuracy = summary.get("acc", {})
    return {**row, "summary": summary, "metric": "accuracy", "score": accuracy.get("accuracy"),
            "seed_scores": accuracy.get("accuracy_per_seed", []), "seed_spread": accuracy.get("accuracy_sd"),
            "bias": bias.probe(records, _positive(task))}


PER_SEED_COSTS = ("examples_per_second", "flops_per_example", "memory_mb")  # what a few-shot draw changes


def mean_costs(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The first seed's costs, with those a seed changes (speed, compute, memory of the prompts drawn) averaged
    over the seeds, as the row's accuracy is."""
    costs = dict(per_seed[0])
    for key in PER_SEED_COSTS:
        values = [c.get(key) for c in per_seed]
        if all(isinstance(v, (int, float)) for v in values):
            costs[key] = float(np.mean(values))
    return costs


def _positive(task: Task) -> int:
    """The label whose probability the bias probe follows: `positive` where the task has one, else the last."""
    return task.labels.index("positive") if "positive" in task.labels else len(task.labels) - 1


def _trained(variant: Variant, suite: Suite, runs_dir: Path, say) -> tuple[Variant, dict[str, Any]]:
    """(the variant to score, what its sweep adds to costs and notes): a train variant becomes the run its
    learning-rate sweep chose; every other variant is scored as it is."""
    if variant.kind != "train":
        return variant, {"costs": {}, "notes": []}
    say(f"{variant.label}: learning rates x {list(variant.lr_scales)}")
    chosen, points = train_sweep(variant.config, {**suite.training, **(variant.overrides or {})},
                                 variant.lr_scales, runs_dir, say)
    sweep = [{"learning_rate": p.learning_rate, "validation": p.validation, "training_seconds": p.training_seconds}
             for p in points]
    costs = {"learning_rate": chosen.learning_rate, "sweep": sweep,
             "sweep_training_seconds": sum(p.training_seconds or 0 for p in points)}
    note = (f"learning rate {chosen.learning_rate:.2g} chosen on validation from "
            + ", ".join(f"{p.learning_rate:.2g} ({p.validation:.3f})" for p in points))
    return dataclasses.replace(variant, kind="run", run=str(chosen.run_dir)), {"costs": costs, "notes": [note]}


def _write(out: Path, suite: Suite, rows: list[dict], by_key: dict) -> None:
    agreements = {}
    for (a, task), first in by_key.items():
        for (b, other_task), second in by_key.items():
            if task == other_task and a < b:
                agreements[f"{a} | {b} | {task}"] = agreement(first, second)
    (out / "results.json").write_text(json.dumps({"suite": suite.name, "rows": rows, "agreement": agreements},
                                                 indent=2, ensure_ascii=False) + "\n")
    labelled = [r for r in rows if r.get("task_kind", "classification") == "classification"]
    found = [r for r in rows if r.get("task_kind") == "entities"]
    answered = [r for r in rows if r.get("task_kind") == "answers"]
    probe = bias.markdown_table(labelled)
    tables = [("", markdown_table, labelled), ("Entities", entity_table, found), ("Answers", answer_table, answered)]
    shown = [(title, table(part)) for title, table, part in tables if part]
    body = "".join((f"\n## {title}\n\n" if n and title else "") + text for n, (title, text) in enumerate(shown))
    (out / "results.md").write_text(f"# {suite.name}\n\n{suite.description}\n\n{body}"
                                    + (f"\n## Bias probe\n\n{probe}" if probe else ""))
    plots.write_all(rows, agreements, out / "plots")
