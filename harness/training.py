"""The `train` variant: a `python -m tljax.train` config trained by the suite, with a learning-rate sweep chosen
on validation, then scored like any finished run.

    # a suite
    training: {training.max_steps: 150, training.per_device_train_batch_size: 32}   # the same budget for all
    variants:
      - {kind: train, config: configs/lora.yaml, lr_scales: [0.3, 1, 3], name: LoRA}

Each scale multiplies every learning rate of the config (`training.learning_rate` and, where set,
`training.new_learning_rate`); each point trains into `<out>/runs/<variant>-<hash>/lr=<rate>/` (the hash is of the
config file and every override, so a changed budget trains afresh); a finished run is reused and an interrupted
one resumed from its checkpoint, so a long sweep can run over several sittings. Two or more unfinished points
train together in one compiled program in this process (`harness.sweep`: the frozen weights and every batch
read once for all of them), each into its own folder as its own run would; where the config needs what that
program does not cover (several devices or processes, gradient accumulation, gradual unfreezing), or the points
stopped at different steps, each trains in its own `python -m tljax.train` process. The point with the best
validation score (the config's `metric_for_best_model`, at its best checkpoint) is the variant's run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from harness.sweep import sweep_together
from tljax.errors import InputError
from tljax.train.config import load_config
from tljax.train.loop import TrainingStopped
from tljax.train.rundir import has_checkpoint


# NER (configs/ner.yaml): each method's options and its usual learning rate (those of configs/<method>.yaml, where
# sentiment tuned them, raised for a 100-step budget); the `ner` suite sweeps them (harness/suites/ner.yaml)
NER_METHODS = {
    "feature-extraction": ({}, 1e-2),
    "full": ({}, 1e-4),
    "partial": ({"freeze_embeddings": True, "freeze_layers": 3}, 2e-4),
    "gradual-unfreezing": ({"every": 25}, 2e-4),
    "bitfit": ({}, 3e-3),
    "lora": ({"rank": 8, "alpha": 16, "dropout": 0.1, "targets": ["query", "key", "value", "dense"]}, 3e-3),
    "houlsby": ({"reduction_factor": 16}, 2e-3),
    "pfeiffer": ({"reduction_factor": 16}, 2e-3),
    "prefix": ({"num_virtual_tokens": 20}, 3e-3),
    "prompt": ({"num_virtual_tokens": 20}, 1e-2),
    "p-tuning": ({"num_virtual_tokens": 20, "encoder": "mlp"}, 1e-2),
}
NER_HEAD_RATE = 1e-2  # gradual unfreezing's new head (`training.new_learning_rate`), as the ner suite gives it

# Question answering (configs/qa.yaml): each method's options at the rate the ner suite's MiniLM-L6 sweep chose for
# it at 100 steps (docs/comparisons.md): a span head scores every token, as a tagger's head does, and 100 steps is
# the Train tab's default budget; LoRA's is configs/qa.yaml's own
QA_METHODS = {
    "feature-extraction": ({}, 1e-1),
    "full": ({}, 3e-4),
    "partial": ({"freeze_embeddings": True, "freeze_layers": 3}, 6e-4),
    "gradual-unfreezing": ({"every": 25}, 2e-3),
    "bitfit": ({}, 9e-3),
    "lora": ({"rank": 8, "alpha": 16, "dropout": 0.1, "targets": ["query", "key", "value", "dense"]}, 3e-3),
    "houlsby": ({"reduction_factor": 16}, 6e-3),
    "pfeiffer": ({"reduction_factor": 16}, 6e-3),
    "prefix": ({"num_virtual_tokens": 20}, 3e-2),
    "prompt": ({"num_virtual_tokens": 20}, 1e-1),
    "p-tuning": ({"num_virtual_tokens": 20, "encoder": "mlp"}, 3e-2),
}
QA_HEAD_RATE = 1e-1  # gradual unfreezing's new head: the sweep's chosen point scaled it with the rest (10x 1e-2)


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    learning_rate: float
    run_dir: Path
    validation: float  # the selection metric at the run's best checkpoint
    training_seconds: float | None


def _yaml_value(value: Any) -> str:
    # `--set` reads YAML: floats keep a dot and a signed exponent (YAML reads "3e-05" as a string)
    return f"{value:.6e}" if isinstance(value, float) else json.dumps(value)


def _overrides(settings: dict[str, Any]) -> list[str]:
    return [f"{key}={_yaml_value(value)}" for key, value in settings.items()]


def sweep_points(config: str, settings: dict[str, Any], lr_scales: tuple[float, ...], runs_dir: Path,
                 ) -> tuple[str, list[tuple[float, list[str], Path]]]:
    """(the selection metric, [(learning rate, `--set` overrides, run folder) per scale]); the config and
    overrides are checked here, before anything trains."""
    path = Path(config)
    if not path.is_file():
        raise InputError(f"train variant: config file {config} does not exist (e.g. configs/lora.yaml)")
    base = load_config(path, _overrides(settings))
    digest = hashlib.sha256(json.dumps([path.read_text(encoding="utf-8"), settings], sort_keys=True).encode())
    points = []
    for scale in lr_scales:  # positive: checked with the variant
        rate = base.training.learning_rate * scale
        overrides = {**settings, "training.learning_rate": rate}
        if base.training.new_learning_rate is not None:
            overrides["training.new_learning_rate"] = base.training.new_learning_rate * scale
        run_dir = runs_dir / f"{path.stem}-{digest.hexdigest()[:8]}" / f"lr={rate:.2g}"
        overrides["output_dir"] = str(run_dir)
        load_config(path, _overrides(overrides))
        points.append((rate, _overrides(overrides), run_dir))
    return base.training.metric_for_best_model, points


def _validation_score(run_dir: Path, metric: str) -> float | None:
    summary_path, metrics_path = run_dir / "summary.json", run_dir / "metrics.jsonl"
    if not summary_path.is_file() or not metrics_path.is_file():
        return None
    best = json.loads(summary_path.read_text())["best_step"]
    for line in metrics_path.read_text().splitlines():
        row = json.loads(line)
        if row.get("split") == "validation" and row.get("step") == best:
            return float(row[metric])
    return None


def _train_together(config: str, planned: list[tuple[float, list[str], Path]], say: Callable[[str], None]) -> bool:
    """Trains the unfinished points in one program where there are two or more and it can; whether it did."""
    unfinished = [(rate, overrides) for rate, overrides, run_dir in planned if not (run_dir / "summary.json").is_file()]
    if len(unfinished) < 2:
        return False
    rates = ", ".join(f"{rate:.2g}" for rate, _ in unfinished)
    try:
        return sweep_together([load_config(Path(config), overrides) for _, overrides in unfinished], say)
    except TrainingStopped as stopped:
        raise InputError(f"training {config} at learning rates {rates} stopped: {stopped}") from None


def train_sweep(config: str, settings: dict[str, Any], lr_scales: tuple[float, ...], runs_dir: Path,
                say: Callable[[str], None] = print, *, together: bool = True) -> tuple[SweepPoint, list[SweepPoint]]:
    """Trains every point not yet finished (`together`: in one program where it can) and returns (the chosen
    point, all points)."""
    metric, planned = sweep_points(config, settings, lr_scales, runs_dir)
    if together:
        _train_together(config, planned, say)
    points = []
    for rate, overrides, run_dir in planned:
        if not (run_dir / "summary.json").is_file():  # not finished: train it, or resume it
            resume = has_checkpoint(run_dir)
            log = run_dir.with_name(run_dir.name + ".log")
            log.parent.mkdir(parents=True, exist_ok=True)
            say(f"  training {config} at learning rate {rate:.2g}{' (resumed)' if resume else ''}: log in {log}")
            command = [sys.executable, "-m", "tljax.train", "--config", config, *(
                part for override in overrides for part in ("--set", override)), *(["--resume"] if resume else [])]
            with log.open("a") as handle:
                finished = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
            if finished.returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                raise InputError(f"training {config} at learning rate {rate:.2g} failed (exit "
                                 f"{finished.returncode}): {tail[0] if tail else ''} (the whole log: {log})")
        summary = json.loads((run_dir / "summary.json").read_text())
        score = _validation_score(run_dir, metric)
        if score is None:
            raise InputError(f"{run_dir} finished without a validation {metric} at its best step; the sweep chooses "
                             "on validation (give the data a validation split)")
        points.append(SweepPoint(rate, run_dir, score, summary.get("training_seconds")))
    lower_is_better = metric in ("loss", "perplexity")
    chosen = (min if lower_is_better else max)(points, key=lambda p: p.validation)
    return chosen, points
