"""What the app finds on disk: training runs and harness results, read afresh on every refresh.

A run is a folder with the `config.yaml` that `python -m tljax.train` writes first; it is finished once it
has `summary.json` and `export/run.json`. A harness result is a folder with `results.json`
(`python -m harness run SUITE --out FOLDER`), its `predictions/` and `plots/`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from harness.suite import predictions_name
from harness.tasks import TaskError, load_task
from tljax.squad import normalize_answer
from tljax.train.rundir import is_held

METHOD_NAMES = {"feature-extraction": "feature extraction", "full": "full fine-tuning", "partial": "partial",
                "gradual-unfreezing": "gradual unfreezing", "bitfit": "BitFit", "lora": "LoRA",
                "houlsby": "Houlsby adapters", "pfeiffer": "Pfeiffer adapters", "prefix": "prefix tuning",
                "prompt": "prompt tuning", "p-tuning": "P-tuning"}
DEFAULT_MODEL = "minilm-l6"  # the model of a run config that names none (tljax.train's default)
SEARCH_DEPTH = 3  # runs/NAME, harness-results/runs/CONFIG-HASH/lr=RATE


@dataclasses.dataclass(frozen=True)
class RunEntry:
    """One training run as the app lists it."""

    path: Path
    name: str  # relative to the folder it was found in
    model: str  # the base model it adapted
    method: str  # e.g. "LoRA r8", "distilled (6 layers) + LoRA"
    task: str  # sequence-classification | token-classification | question-answering | causal-lm
    labels: tuple[str, ...]
    chat: bool  # a chat-tuned decoder (scored like zero-shot)
    trainable: int | None
    test: dict[str, Any]  # test metrics of a finished run
    status: str  # finished | running | stopped | unavailable
    reason: str = ""  # why it is unavailable, or how it stopped

    @property
    def usable(self) -> bool:
        return self.status == "finished"


def describe_method(config: dict[str, Any]) -> str:
    """A run config's adaptation in a few words: "LoRA r8", "Houlsby adapters", "distilled + full fine-tuning"."""
    specs = config.get("method") or {"name": "lora"}
    specs = specs if isinstance(specs, list) else [specs]
    words = []
    for spec in specs:
        spec = {"name": spec} if isinstance(spec, str) else spec
        name = str(spec.get("name", "?"))
        word = METHOD_NAMES.get(name, name)
        if name == "lora" and spec.get("rank"):
            word += f" r{spec['rank']}"
        words.append(word)
    described = " + ".join(words)
    if config.get("distillation"):
        described = f"distilled + {described}"
    if config.get("task") == "causal-lm" and (config.get("chat") or {}):
        described = f"chat-tuned {described}"
    return described


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_run(path: Path, root: Path | None = None) -> RunEntry:
    """The run in `path` (which may have been deleted since it was listed: then it is unavailable)."""
    path = Path(path)
    name = str(path.relative_to(root)) if root and path.is_relative_to(root) else str(path)
    config = _read_yaml(path / "config.yaml")
    summary = _read_json(path / "summary.json")
    # one export, or one per task (multi-task runs: export/<task>/run.json)
    exported = [path / "export" / "run.json", *sorted((path / "export").glob("*/run.json"))]
    info = next((_read_json(p) for p in exported if p.is_file()), {})
    entry = dict(path=path, name=name, model=str(config.get("model") or info.get("model") or DEFAULT_MODEL),
                 method=describe_method(config), task=str(config.get("task") or info.get("task")
                                                          or "sequence-classification"),
                 labels=tuple(info.get("labels") or ()), chat=bool(info.get("chat")),
                 trainable=summary.get("trainable_parameters"), test=summary.get("test") or {})
    if not path.is_dir():
        return RunEntry(**entry, status="unavailable", reason=f"{path} no longer exists (deleted or moved)")
    if is_held(path):
        return RunEntry(**entry, status="running", reason="training now")
    if summary and info:
        return RunEntry(**entry, status="finished")
    if summary and not info:
        return RunEntry(**entry, status="unavailable", reason="finished, but its export/ folder is missing")
    return RunEntry(**entry, status="stopped", reason="not finished (stopped or failed); continue it with --resume"
                    if (path / "checkpoints").is_dir() else "not finished; it wrote no checkpoint")


def find_runs(folders: Iterable[Path]) -> list[RunEntry]:
    """Every run under `folders` (a folder with config.yaml, up to SEARCH_DEPTH levels down): folder by folder,
    by name within each."""
    found: dict[Path, RunEntry] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        candidates = [folder, *sorted(p for depth in range(1, SEARCH_DEPTH + 1) for p in folder.glob("/".join("*" * depth)))]
        for path in candidates:
            if path.is_dir() and (path / "config.yaml").is_file() and path.resolve() not in found:
                found[path.resolve()] = read_run(path, folder)
    return list(found.values())


def learning_curves(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train records, validation records) of a run's metrics.jsonl, in step order (a run being written
    may end in a half line: it is skipped)."""
    train, validation = [], []
    try:
        lines = (Path(path) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return train, validation
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        (validation if record.get("split") == "validation" else train).append(record) \
            if record.get("split") in ("train", "validation") else None
    return train, validation


@dataclasses.dataclass(frozen=True)
class ResultSet:
    """One harness results folder."""

    path: Path
    name: str  # the suite's name
    rows: list[dict[str, Any]]
    agreement: dict[str, float | None]
    plots: dict[str, Path]  # file stem -> PNG

    def predictions(self, variant: str, task: str, seed: int = 0) -> list[dict[str, Any]]:
        """The records of a variant on a task (empty if the file is missing)."""
        path = self.path / "predictions" / predictions_name(variant, task, seed)
        try:
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, ValueError):
            return []


def find_results(folders: Iterable[Path]) -> list[ResultSet]:
    """Every folder with a results.json under `folders` (the folder itself or one level down)."""
    sets = []
    for folder in folders:
        folder = Path(folder)
        for path in sorted([folder, *folder.glob("*")]) if folder.is_dir() else []:
            raw = _read_json(path / "results.json")
            if raw.get("rows") is None:
                continue
            plots = {p.stem: p for p in sorted((path / "plots").glob("*.png"))}
            sets.append(ResultSet(path, str(raw.get("suite") or path.name), raw["rows"],
                                  raw.get("agreement") or {}, plots))
    return sets


def base_model(row: dict[str, Any]) -> str:
    """The base model a results row's variant adapted."""
    settings = row.get("settings") or {}
    if settings.get("model"):
        return str(settings["model"])
    if (settings.get("overrides") or {}).get("model"):
        return str(settings["overrides"]["model"])
    if settings.get("config"):
        return str(_read_yaml(Path(settings["config"])).get("model") or DEFAULT_MODEL)
    if settings.get("run"):
        return str(_read_yaml(Path(settings["run"]) / "config.yaml").get("model") or "?")
    return "?"


TABLE_COLUMNS = ("suite", "variant", "base", "task", "language", "items", "accuracy", "accuracy 95% CI", "macro-F1",
                 "MCC", "trainable parameters", "training s", "examples/s", "GFLOP/example", "peak MB")


def table_rows(sets: Sequence[ResultSet], task: str | None = None, language: str | None = None,
               base: str | None = None) -> list[list[Any]]:
    """The results table of the classification tasks (TABLE_COLUMNS), `acc` rule, filtered by task, language and
    base model (None: all)."""
    rows = []
    for result, row, model in _rows(sets, "classification", task, language, base):
        summary, costs = row["summary"], row.get("costs") or {}
        acc = summary.get("acc") or {}
        low, high = acc.get("accuracy_ci") or (None, None)
        flops = costs.get("flops_per_example")
        rows.append([result.name, row["variant"], model, row["task"], row.get("language"), summary.get("items"),
                     _round(acc.get("accuracy")), f"{low:.3f}-{high:.3f}" if low is not None else "",
                     _round(acc.get("f1")), _round(acc.get("mcc")), costs.get("trainable_parameters"),
                     _round(costs.get("training_seconds"), 1), costs.get("examples_per_second"),
                     _round(flops / 1e9 if flops else None, 2), costs.get("memory_mb")])
    return rows


def _rows(sets: Sequence[ResultSet], kind: str, task: str | None, language: str | None, base: str | None):
    """(result set, row, base model) of each row of a `kind` of task ("classification", "entities", "answers")
    that the filters keep."""
    for result in sets:
        for row in result.rows:
            model = base_model(row)
            if row.get("task_kind", "classification") != kind or (task and row["task"] != task) or \
                    (language and row.get("language") != language) or (base and model != base):
                continue
            yield result, row, model


ENTITY_COLUMNS = ("suite", "variant", "base", "task", "language", "texts", "entity F1", "entity F1 95% CI",
                  "precision", "recall", "unread replies", "trainable parameters", "training s", "examples/s")


def entity_rows(sets: Sequence[ResultSet], task: str | None = None, language: str | None = None,
                base: str | None = None) -> list[list[Any]]:
    """The results table of the entity tasks (ENTITY_COLUMNS), filtered as `table_rows`."""
    rows = []
    for result, row, model in _rows(sets, "entities", task, language, base):
        summary, costs = row["summary"], row.get("costs") or {}
        entity = summary.get("entity") or {}
        low, high = entity.get("f1_ci") or (None, None)
        rows.append([result.name, row["variant"], model, row["task"], row.get("language"), summary.get("items"),
                     _round(entity.get("f1")), f"{low:.3f}-{high:.3f}" if low is not None else "",
                     _round(entity.get("precision")), _round(entity.get("recall")), summary.get("unread"),
                     costs.get("trainable_parameters"), _round(costs.get("training_seconds"), 1),
                     costs.get("examples_per_second")])
    return rows


ANSWER_COLUMNS = ("suite", "variant", "base", "task", "language", "questions", "F1", "F1 95% CI", "EM",
                  "answerable F1", "no-answer", "unanswered", "trainable parameters", "training s", "examples/s")


def answer_rows(sets: Sequence[ResultSet], task: str | None = None, language: str | None = None,
                base: str | None = None) -> list[list[Any]]:
    """The results table of the answer tasks (ANSWER_COLUMNS: SQuAD F1 with its interval, exact match, F1 on the
    answerable questions, the share of unanswerable ones left unanswered, how many the variant left unanswered),
    filtered as `table_rows`."""
    rows = []
    for result, row, model in _rows(sets, "answers", task, language, base):
        summary, costs = row["summary"], row.get("costs") or {}
        answer = summary.get("answer") or {}
        low, high = answer.get("f1_ci") or (None, None)
        rows.append([result.name, row["variant"], model, row["task"], row.get("language"), summary.get("items"),
                     _round(answer.get("f1")), f"{low:.3f}-{high:.3f}" if low is not None else "",
                     _round(answer.get("exact")), _round(answer.get("has_answer_f1")),
                     _round(answer.get("no_answer_exact")), summary.get("unanswered"),
                     costs.get("trainable_parameters"), _round(costs.get("training_seconds"), 1),
                     costs.get("examples_per_second")])
    return rows


def _round(value: Any, digits: int = 3) -> Any:
    return round(float(value), digits) if isinstance(value, (int, float)) else value


BIAS_COLUMNS = ("suite", "variant", "task", "dimension", "pairs", "flip rate", "mean change in P(positive)",
                "95% CI", "accuracy")


def bias_rows(sets: Sequence[ResultSet]) -> list[list[Any]]:
    """The bias probe's table: per variant, task and dimension (rows of results that carry `bias`)."""
    rows = []
    for result in sets:
        for row in result.rows:
            for dimension, probe in sorted((row.get("bias") or {}).items()):
                low, high = probe.get("mean_delta_ci") or (None, None)
                rows.append([result.name, row["variant"], row["task"], dimension, probe.get("pairs"),
                             _round(probe.get("flip_rate")), _round(probe.get("mean_delta"), 4),
                             f"{low:.4f} to {high:.4f}" if low is not None else "",
                             _round(((row["summary"].get("acc") or {}).get("accuracy")))])
    return rows


def _prediction(record: dict[str, Any]) -> Any:
    """A record's prediction: its label (`acc` rule), on an entity task its set of entities, on an answer task its
    answer after SQuAD's normalisation (answers that score alike are the same answer)."""
    if "prediction" in record:
        return record["prediction"].get("acc")
    if isinstance(record.get("predicted"), str):
        return normalize_answer(record["predicted"])
    return frozenset(tuple(e) for e in record.get("predicted", ()))


def disagreements(result: ResultSet, task: str, variants: Sequence[str], seed: int = 0,
                  limit: int = 50) -> list[dict[str, Any]]:
    """The items of `task` on which the chosen variants' predictions differ: id, text, gold and, per variant,
    its prediction, probabilities and prompt or reply (the first `limit`). On an entity task a prediction is
    the set of entities (labels: None; gold: the gold entities); on an answer task the answer (text: the
    question; gold: the gold answers, none for an unanswerable question)."""
    try:
        loaded = load_task(task)
        labels = list(loaded.labels) if loaded.kind == "classification" else None
    except TaskError:  # a task file that is gone since: the indices are shown as they are
        labels = None
    records = {v: {r["id"]: r for r in result.predictions(v, task, seed)} for v in variants}
    common = [i for i in (records[variants[0]] if variants else {}) if all(i in records[v] for v in variants)]
    found = []
    for item in common:
        predicted = [_prediction(records[v][item]) for v in variants]
        if len(set(predicted)) > 1:
            first = records[variants[0]][item]
            found.append({"id": item, "text": first["text"], "gold": first["gold"], "labels": labels,
                          "answers": {v: records[v][item] for v in variants}})
            if len(found) >= limit:
                break
    return found
