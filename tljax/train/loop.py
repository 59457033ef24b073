"""The training loop, top to bottom: where the effects live.

Data iteration, the compiled steps, evaluation on a schedule, early stopping, checkpoints (latest and
best), resume, interruption (SIGTERM / Ctrl-C save and exit), NaN detection, progress, metrics as JSON
lines, learning curves and the final test evaluation and export.

An optimiser step reads one global batch: `per_device_train_batch_size` x devices x
`gradient_accumulation_steps` rows, drawn at once (its size fixes the data order, the number of steps and
the learning-rate schedule) and split into micro-batches of `per_device_train_batch_size` x devices rows,
one compiled step each. The checkpoint keeps the global batch: a run resumed on another number of devices
reads the same batches and accumulates as many micro-batches as its devices need.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from tljax import faults
from tljax.methods.base import layout
from tljax.progress import progress_bar
from tljax.runs import FINAL_STEP
from tljax.train import curves
from tljax.train.checkpoints import CheckpointError, Checkpoints, CheckpointWriteError
from tljax.train.config import ConfigKeyError, RunConfig, TrainingConfig
from tljax.train.distributed import any_process, is_main, share
from tljax.train.optim import OptimizerConfig, build_optimizer, reset_stage
from tljax.train.run import Prepared
from tljax.train.rundir import RunDirectoryError
from tljax.train.sharding import StepShardings, gather, make_mesh, parse_rules, place, shard_batch, shard_local_rows
from tljax.train.stages import training_stages
from tljax.train.step import make_train_step, split


class TrainingStopped(RuntimeError):
    """The run stopped before its end (interrupted, or a non-finite loss); its checkpoint is kept.
    `resumable`: a checkpoint of the step it stopped at was saved, for the run to continue from."""

    def __init__(self, message: str, *, resumable: bool = False):
        super().__init__(message)
        self.resumable = resumable


def _forward_fn(graphdef, objective, mesh):
    """forward(trainable, frozen, batch) -> the objective's evaluation outputs, compiled; the outputs whole
    on every device (so that every process can read them)."""

    def forward(trainable, frozen, batch):
        return objective.outputs(nnx.merge(graphdef, trainable, frozen), batch)

    return jax.jit(forward, out_shardings=NamedSharding(mesh, PartitionSpec()))


def _bound(forward, trainable, frozen, mesh):
    """batch -> outputs with the parameters fixed (the form objectives evaluate with)."""
    return lambda batch: jax.device_get(forward(trainable, frozen, shard_batch(batch, mesh)))


@dataclasses.dataclass
class Engine:
    """What a run trains with: the (trainable, frozen) split, the optimiser and its state, the compiled step,
    the stages of gradual unfreezing (None for a single stage), and where each lives on the mesh."""

    graphdef: nnx.GraphDef
    trainable: nnx.State
    frozen: nnx.State
    tx: Any
    opt_state: Any
    train_step: Any
    stages: Any
    shardings: StepShardings


def build_engine(prepared: Prepared, total_steps: int, mesh, accumulation: int | None = None) -> Engine:
    """The split, optimiser and compiled step of `prepared`'s run over `total_steps`, placed on `mesh` by the
    run's sharding rules (the optimiser state created where it lives: no device holds all of it), summing
    `accumulation` micro-batches' gradients per optimiser step (default: the config's)."""
    tc = prepared.config.training
    accumulation = accumulation or tc.gradient_accumulation_steps
    adaptation = prepared.objective.adaptation
    optimizer = OptimizerConfig(
        learning_rate=tc.learning_rate, new_learning_rate=tc.new_learning_rate, weight_decay=tc.weight_decay,
        warmup_steps=round(tc.warmup_ratio * total_steps), lr_scheduler_type=tc.lr_scheduler_type,
        max_grad_norm=tc.max_grad_norm, gradient_accumulation_steps=accumulation,
        no_decay=layout(adaptation.model).no_decay)
    # split once, with every leaf that trains at some stage; a stage's mask holds the others still
    graphdef, trainable, frozen = split(adaptation.model, adaptation.trainable(FINAL_STEP))
    stages = training_stages(adaptation, trainable)
    tx = build_optimizer(optimizer, total_steps, adaptation.new_parameter_rules(),
                         stages.stage_of if stages else None)
    shardings = StepShardings.of(mesh, trainable, frozen, jax.eval_shape(tx.init, trainable), parse_rules(tc.sharding))
    trainable, frozen = place(trainable, shardings.trainable), place(frozen, shardings.frozen)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(trainable)
    step = make_train_step(graphdef, prepared.objective.loss, tx, shardings, masked=stages is not None)
    return Engine(graphdef, trainable, frozen, tx, opt_state, step, stages, shardings)


def accumulation_steps(global_batch: int, per_device: int, devices: int) -> int:
    """How many micro-batches of `per_device` x `devices` rows make one optimiser step's `global_batch`
    rows; a device count whose micro-batch does not divide the global batch is refused, naming those that do."""
    micro = per_device * devices
    if global_batch % micro:
        most = global_batch // per_device  # devices x accumulation
        fits = [n for n in range(1, most + 1) if most % n == 0]
        raise CheckpointError(
            f"--resume: the run's global batch is {global_batch} rows ({per_device} per device), which {devices} "
            f"devices ({micro} rows a micro-batch) do not divide; resume on {_or(fits)} devices, which accumulate "
            f"{_or([most // n for n in fits])} micro-batches a step")
    return global_batch // micro


def _or(numbers: list[int]) -> str:
    words = [str(n) for n in numbers]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def micro_batch(batch: dict[str, np.ndarray], index: int, count: int) -> dict[str, np.ndarray]:
    """Micro-batch `index` of `count` of this process's rows of a global batch ({name: [rows, ...]}): every
    `count`-th row from row `index`. Taken so from each process's block of rows, micro-batch `index` is the
    same rows of the global batch however many processes share it."""
    if count == 1:
        return batch
    return {name: np.ascontiguousarray(array[index::count]) for name, array in batch.items()}


def train(prepared: Prepared, run_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """Trains, evaluates, checkpoints and exports; returns the summary (also written to summary.json)."""
    tc = prepared.config.training
    objective = prepared.objective
    mesh = make_mesh(tc.mesh)
    devices = mesh.devices.size
    eval_batch = tc.per_device_eval_batch_size * devices
    checkpoints = Checkpoints(run_dir / "checkpoints")
    found = checkpoints.newest("latest") if resume else None
    if resume:
        if found is None:
            raise RunDirectoryError(f"--resume: {run_dir} has no checkpoint to continue from")
        saved = found[1]
        changed = config_changes(saved.get("config", {}), prepared.config, ignored=PLACEMENT)
        if changed:
            raise ConfigKeyError(f"--resume: the config differs from the interrupted run's in {', '.join(changed)}; "
                                 "resume with the same config (or start a new run)")
        global_batch = saved["global_batch"]  # kept: the data order, step count and schedule follow from it
    else:
        global_batch = tc.per_device_train_batch_size * devices * tc.gradient_accumulation_steps
    accumulation = accumulation_steps(global_batch, tc.per_device_train_batch_size, devices)
    position = found[1]["position"] if found else None
    iterator = objective.train_batches(global_batch, tc.seed, position, share=share())  # this process's rows
    total_steps = tc.max_steps or max(1, math.ceil(tc.num_train_epochs * iterator.batches_per_epoch))
    engine = build_engine(prepared, total_steps, mesh, accumulation)
    graphdef, trainable, frozen, opt_state = engine.graphdef, engine.trainable, engine.frozen, engine.opt_state
    train_step, stages = engine.train_step, engine.stages
    forward = _forward_fn(graphdef, objective, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    # the dropout key of a (step, micro-batch) count, made where the step reads it
    dropout_key = jax.jit(lambda count: jax.random.fold_in(jax.random.key(tc.seed), count), out_shardings=replicated)
    masks = [place(m, engine.shardings.trainable) for m in stages.masks] if stages else None
    main = is_main()  # the process that writes logs, curves, exports (every process trains and checkpoints)

    state = {"step": 0, "best": None, "best_step": None, "bad_evaluations": 0, "train": [], "validation": [],
             "config": prepared.config.to_dict(), "global_batch": global_batch}
    if resume:
        # placed as this run's mesh and rules place them
        trainable, opt_state, state = checkpoints.restore("latest", trainable, opt_state, found)
        if main:
            _truncate_log(run_dir / "metrics.jsonl", state["step"])
            print(f"resuming from the checkpoint of step {state['step']} (of {total_steps})", file=sys.stderr)
            if accumulation != tc.gradient_accumulation_steps:  # another device count than the config's
                print(f"on {devices} devices: each step's global batch of {global_batch} rows as {accumulation} "
                      f"accumulated micro-batches of {global_batch // accumulation}", file=sys.stderr)
        if state["best_step"] == state["step"] and checkpoints.saved_step("best") != state["step"]:
            _save(checkpoints, "best", state["step"], trainable, opt_state, state)  # the run stopped before it
    elif objective.evaluate_before:  # the starting point (e.g. the held-out loss before continued pre-training)
        state["before"] = {split: objective.evaluate(_bound(forward, trainable, frozen, mesh), split, eval_batch)
                           for split in ("validation", "test")}
        state["validation"].append((0, state["before"]["validation"]["loss"],
                                    state["before"]["validation"][_curve_metric(tc, objective.metrics)]))
        if main:
            with (run_dir / "metrics.jsonl").open("a") as handle:
                _log(handle, {"step": 0, "split": "validation", **state["before"]["validation"]})

    # SIGINT (Ctrl-C; a notebook's interrupt button, in the kernel running tljax.fine_tune) and SIGTERM stop the
    # run after its step, with a checkpoint. Only the main thread may set handlers (and only it receives signals):
    # a run in another thread is stopped by its own process's end
    stop = {"signal": None}
    handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous = {s: signal.signal(s, lambda number, _: stop.update(signal=number)) for s in handled}
    log_file = (run_dir / "metrics.jsonl").open("a") if main else contextlib.nullcontext()
    progress = progress_bar(total=total_steps, initial=state["step"], desc="training", unit="step",
                            dynamic_ncols=True, disable=not main)
    stage = stages.stage(max(state["step"] - 1, 0)) if stages else 0  # the stage of the last step taken
    started, seen = time.perf_counter(), 0

    def record(taken: int, metrics: dict[str, Any]) -> None:
        """Step `taken`'s metrics, read from the device: the non-finite check, the curve, progress, the log."""
        nonlocal seen
        loss = float(metrics["loss"])
        if not math.isfinite(loss) or not bool(metrics["parameters_finite"]):
            what = f"the loss became {loss}" if not math.isfinite(loss) else "the parameters became non-finite"
            last = checkpoints.saved_step("latest")
            kept = f"the last good checkpoint (step {last}) is kept" if last is not None else "no checkpoint yet"
            raise TrainingStopped(f"{what} at step {taken}; stopped ({kept}); try a lower learning rate.")
        seen += global_batch
        state["train"].append((taken, loss))
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", ex_per_s=f"{seen / (time.perf_counter() - started):.0f}")
        if taken % tc.logging_steps == 0 and main:  # every scalar the loss reports (e.g. distillation's parts)
            _log(log_file, {"step": taken, "split": "train", "loss": loss,
                            **{k: float(v) for k, v in metrics.items() if k not in ("loss", "parameters_finite")}})

    # A step's metrics are read after the next step is dispatched, so that reading them (which waits for the
    # device) never leaves the device idle while the host prepares a batch. Before anything reads the
    # parameters (evaluation, checkpoints, the end) the pending step is recorded, so a non-finite step
    # is never saved.
    pending = None
    try:
        while state["step"] < total_steps:
            step, step_started = state["step"], time.perf_counter()
            if stages and stages.stage(step) != stage:  # newly unfrozen leaves start with a fresh Adam state
                stage = stages.stage(step)
                opt_state = place(reset_stage(opt_state, stage), engine.shardings.opt_state)
            micro_metrics, rows = [], next(iterator)
            for micro in range(accumulation):
                key = dropout_key(step * accumulation + micro)
                batch = shard_local_rows(micro_batch(rows, micro, accumulation), mesh)
                args = (trainable, frozen, opt_state, batch, key) + ((masks[stage],) if stages else ())
                trainable, opt_state, metrics = train_step(*args)
                faults.point("step")
                micro_metrics.append(metrics)
            if pending is not None:
                record(*pending)
            # the optimiser step's loss: the mean over its micro-batches
            pending = (step + 1, _mean_metrics(micro_metrics))
            state["step"] = step = step + 1
            finished = step == total_steps
            evaluating = step % tc.eval_steps == 0 or finished
            if evaluating:  # the parameters are read next: the pending step's metrics first
                record(*pending)
                pending = None
            state["training_seconds"] = state.get("training_seconds", 0.0) + time.perf_counter() - step_started
            if evaluating:
                result = objective.evaluate(_bound(forward, trainable, frozen, mesh), "validation", eval_batch)
                if main:
                    _log(log_file, {"step": step, "split": "validation", **result})
                improved = _record_evaluation(state, step, result, tc, objective.metrics)
                state["position"] = iterator.position()
                _save(checkpoints, "latest", step, trainable, opt_state, state)
                if improved:
                    _save(checkpoints, "best", step, trainable, opt_state, state)
                patience = tc.early_stopping_patience
                if patience is not None and state["bad_evaluations"] >= patience:
                    if main:
                        progress.write(f"early stopping at step {step}: no better validation "
                                       f"{tc.metric_for_best_model} for {patience} evaluations")
                    break
            # every process stops at the same step: in a multi-process run a signal (which may reach only
            # some processes) is looked at every logging_steps steps, when all compare theirs
            if (stop["signal"] is not None and jax.process_count() == 1) or (
                    jax.process_count() > 1 and (evaluating or step % tc.logging_steps == 0)
                    and any_process(stop["signal"] is not None)):
                if pending is not None:
                    record(*pending)
                if checkpoints.saved_step("latest") != step:  # not already saved by this step's evaluation
                    state["position"] = iterator.position()
                    _save(checkpoints, "latest", step, trainable, opt_state, state)
                raise TrainingStopped(f"interrupted at step {step}; checkpoint saved", resumable=True)
    finally:
        progress.close()
        if main:
            log_file.close()
        for number, handler in previous.items():
            signal.signal(number, handler)

    return _finish(prepared, run_dir, graphdef, frozen, trainable, opt_state, checkpoints, state, mesh, forward,
                   eval_batch)


def _save(checkpoints: Checkpoints, which: str, step: int, trainable, opt_state, state: dict[str, Any]) -> None:
    try:
        checkpoints.save(which, step, trainable, opt_state, state)
    except CheckpointWriteError as error:  # e.g. a full disk: the run stops, the last checkpoint kept
        raise TrainingStopped(str(error)) from error


def _finish(prepared, run_dir, graphdef, frozen, trainable, opt_state, checkpoints, state, mesh, forward,
            eval_batch) -> dict[str, Any]:
    """Test evaluation of the best checkpoint, curves, diagnosis, export, the objective's report, summary."""
    tc = prepared.config.training
    objective = prepared.objective
    best = checkpoints.restore("best", trainable, opt_state)
    checkpoints.close()
    if best is not None:
        trainable = best[0]  # placed like `trainable`
    main = is_main()
    bound = _bound(forward, trainable, frozen, mesh)
    test = objective.evaluate(bound, "test", eval_batch)
    metric = _curve_metric(tc, objective.metrics)
    chance = objective.chance() if metric == "accuracy" else None  # e.g. always guessing the majority class
    diagnosis = curves.diagnose([tuple(x) for x in state["train"]], [tuple(x) for x in state["validation"]],
                                metric, chance)
    model = nnx.merge(graphdef, gather(trainable, mesh), gather(frozen, mesh))
    written = []
    if main:
        with (run_dir / "metrics.jsonl").open("a") as log_file:
            _log(log_file, {"step": state["best_step"], "split": "test", **test})
        (run_dir / "diagnosis.txt").write_text(diagnosis + "\n")
        curves.save(curves.Curves([tuple(x) for x in state["train"]], [tuple(x) for x in state["validation"]], metric,
                                  f"{prepared.config.model} / {objective.title()}"), run_dir)
        for leftover in run_dir.glob(".export.*"):  # what an export killed midway left (never read)
            shutil.rmtree(leftover, ignore_errors=True)
        written = prepared.export(nnx.clone(model), run_dir / "export")  # exports change the model (merges)
    report = objective.report(bound, eval_batch, model, test)
    count, total = objective.count(FINAL_STEP)
    summary = {"test": test, "best_step": state["best_step"], "steps": state["step"],
               "training_seconds": round(state.get("training_seconds", 0.0), 1),
               "trainable_parameters": count, "total_parameters": total, "export": written, "diagnosis": diagnosis,
               **({"before": state["before"]} if "before" in state else {}), **report}
    if main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# the settings a resumed run may change: where it lives and how it is placed on devices
PLACEMENT = ("output_dir", "training.mesh", "training.sharding")


def config_changes(saved: dict, config: RunConfig, *, ignored: tuple[str, ...] = ("output_dir",)) -> list[str]:
    """The dotted keys (e.g. training.learning_rate) whose values differ between a run's saved config (its
    checkpoint's or config.yaml's, completed with today's defaults) and `config`, but for `ignored` ones."""
    return _changed_keys(with_defaults(saved), config.to_dict(), ignored=ignored)


def with_defaults(saved: dict) -> dict:
    """A saved run config completed with today's defaults (a run saved before a setting existed had its
    default)."""
    def fill(base: dict, update: dict) -> dict:
        merged = dict(base)
        for key, value in update.items():
            merged[key] = fill(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
                and key != "method" else value
        return merged

    return fill(dataclasses.asdict(RunConfig()), saved)


def _changed_keys(old: dict, new: dict, prefix: str = "", ignored: tuple[str, ...] = ("output_dir",)) -> list[str]:
    """The dotted keys whose values differ between two config dicts, but for `ignored` ones (where a run
    lives: a resumed run may move to another mesh)."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if prefix + key in ignored:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and key != "method":
            keys += _changed_keys(a, b, f"{prefix}{key}.", ignored)
        elif a != b:
            keys.append(prefix + key)
    return keys


def _mean_metrics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The micro-batches' metrics averaged (on the device); `parameters_finite` is the last one's."""
    if len(parts) == 1:
        return parts[0]
    mean = {k: jnp.mean(jnp.stack([p[k] for p in parts])) for k in parts[0] if k != "parameters_finite"}
    return {**mean, "parameters_finite": parts[-1]["parameters_finite"]}


def _record_evaluation(state: dict, step: int, result: dict, tc: TrainingConfig, metrics: tuple[str, ...]) -> bool:
    """Records a validation `result` of `step` in the run's state: the curve point, the best score and the
    evaluations since it improved (`metric_for_best_model`; lower is better for loss and perplexity). Whether it
    improved."""
    score = result[tc.metric_for_best_model]
    state["validation"].append((step, result["loss"], result[_curve_metric(tc, metrics)]))
    higher_is_better = tc.metric_for_best_model not in ("loss", "perplexity")
    improved = state["best"] is None or (score > state["best"] if higher_is_better else score < state["best"])
    if improved:
        state.update(best=score, best_step=step, bad_evaluations=0)
    else:
        state["bad_evaluations"] += 1
    return improved


def _curve_metric(tc, metrics: tuple[str, ...]) -> str:
    """The score the curves and the diagnosis show beside the loss: the one picking checkpoints, or when that is
    the loss itself, accuracy (an objective's first other metric where it has no accuracy: a reader's F1)."""
    if tc.metric_for_best_model not in ("loss", "perplexity"):
        return tc.metric_for_best_model
    return "accuracy" if "accuracy" in metrics else next(m for m in metrics if m not in ("loss", "perplexity"))


def _log(handle, record: dict[str, Any]) -> None:
    handle.write(json.dumps(record) + "\n")
    handle.flush()


def _truncate_log(path: Path, step: int) -> None:
    """Drops log lines written after the checkpoint a resumed run continues from (and the final test line,
    written again at the end), and a last line a kill cut short."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("split") != "test" and (record.get("step") or 0) <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


def write_config(prepared: Prepared, run_dir: Path) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(prepared.config.to_dict(), sort_keys=False))


__all__ = ["PLACEMENT", "TrainingStopped", "config_changes", "train", "write_config"]
