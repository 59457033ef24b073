"""A learning-rate sweep trained in one compiled program (`tljax.train.step.make_sweep_step`), each rate into
its own run folder, written as `python -m tljax.train` writes a run there.

The rates of one config share everything but the learning rate: the model, the frozen parameters, the data
order, every batch and every dropout key, as separate runs with the same seed do. So one program trains them
all, reading the frozen weights and each batch once: rate i's update is the update at the first rate times
rate_i / rate_0 (every learning rate of the config scales alike, `training.new_learning_rate` too, and AdamW's
update is the learning rate times a term that does not depend on it). Each rate keeps its own optimiser state,
evaluations, early stopping, checkpoints (`latest`, `best`), log, curves, export and summary, through the
training loop's own helpers, so its folder is what its own run writes and resumes. A rate that stops early is
finished (tested, exported) at that step while the others go on; its rows of the program keep computing,
unread, so that the program keeps its shape.

It covers the single-stage loop: one process, data parallelism only (batches split over the devices, every
parameter on each: no `fsdp` axis, no sharding rules), no gradient accumulation, no gradual unfreezing, and
rates that all start afresh or all resume from the same step. `sweep_together` returns False where that does
not hold; the caller then trains each rate in its own process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from tljax import faults
from tljax.errors import InputError
from tljax.train.checkpoints import Checkpoints
from tljax.train.config import RunConfig
from tljax.train.distributed import share
from tljax.train.loop import (PLACEMENT, TrainingStopped, _bound, _curve_metric, _finish, _forward_fn, _log,
                              _record_evaluation, _save, _truncate_log, build_engine, config_changes, write_config)
from tljax.train.run import Prepared, prepare
from tljax.train.rundir import RunLock
from tljax.train.sharding import make_mesh, shard_local_rows
from tljax.train.step import make_sweep_step, stack_variants, variant


def unsupported(config: RunConfig) -> str | None:
    """Why the rates of `config` cannot train in one program here (None: they can)."""
    tc = config.training
    if jax.process_count() > 1:
        return "a multi-process run"
    if tc.gradient_accumulation_steps != 1:
        return "gradient accumulation"
    if tc.sharding:
        return "sharding rules"
    if make_mesh(tc.mesh).shape.get("fsdp", 1) > 1:  # the sweep step shards batches only, as data parallelism does
        return "parameters sharded over devices (fsdp)"
    return None


@dataclasses.dataclass
class _Rate:
    """One rate's run: its prepared config, folder, checkpoints, state (as the loop keeps it) and log."""

    prepared: Prepared
    run_dir: Path
    checkpoints: Checkpoints
    state: dict
    log: object  # the open metrics.jsonl
    active: bool = True


def sweep_together(configs: Sequence[RunConfig], say: Callable[[str], None] = print) -> bool:
    """Trains the runs `configs` (one config at several learning rates, each with its own `output_dir`) in one
    program, each resumed from its checkpoint where it has one. False (nothing written) where they cannot
    train together: see the module docstring."""
    if unsupported(configs[0]) is not None:
        return False
    base = configs[0].training
    rates = [c.training.learning_rate / base.learning_rate for c in configs]
    with contextlib.ExitStack() as stack:
        locks = [stack.enter_context(RunLock(Path(c.output_dir), resume=True)) for c in configs]
        checkpoints = [Checkpoints(Path(c.output_dir) / "checkpoints") for c in configs]
        for saved in checkpoints:
            stack.callback(saved.close)
        found = [saved.newest("latest") if lock.resume else None for saved, lock in zip(checkpoints, locks)]
        if len({f[0] if f else None for f in found}) > 1:  # stopped at different steps: each resumes alone
            return False
        prepared = prepare(configs[0])  # every input checked (the model, data and methods are the rates' own)
        return _train(prepared, configs, rates, checkpoints, found, say, stack)


def _train(prepared: Prepared, configs, scales, checkpoints, found, say, stack: contextlib.ExitStack) -> bool:
    """Trains the rates (see `sweep_together`); False before anything is written where the run has stages."""
    tc = prepared.config.training
    objective = prepared.objective
    mesh = make_mesh(tc.mesh)
    devices = mesh.devices.size
    eval_batch = tc.per_device_eval_batch_size * devices
    resumed = found[0] is not None
    global_batch = found[0][1]["global_batch"] if resumed else tc.per_device_train_batch_size * devices
    if global_batch != tc.per_device_train_batch_size * devices:  # resumed on other devices: accumulation
        return False
    iterator = objective.train_batches(global_batch, tc.seed, found[0][1]["position"] if resumed else None,
                                       share=share())
    total_steps = tc.max_steps or max(1, math.ceil(tc.num_train_epochs * iterator.batches_per_epoch))
    engine = build_engine(prepared, total_steps, mesh)
    if engine.stages is not None:  # gradual unfreezing: a mask per stage, which the sweep step does not take
        return False
    graphdef, frozen = engine.graphdef, engine.frozen
    forward = _forward_fn(graphdef, objective, mesh)
    dropout_key = jax.jit(lambda count: jax.random.fold_in(jax.random.key(tc.seed), count),
                          out_shardings=NamedSharding(mesh, PartitionSpec()))

    runs, trainables, opt_states = [], [], []
    for config, saved, at in zip(configs, checkpoints, found):
        mine = dataclasses.replace(prepared, config=config)
        run_dir = Path(config.output_dir)
        state = {"step": 0, "best": None, "best_step": None, "bad_evaluations": 0, "train": [], "validation": [],
                 "config": config.to_dict(), "global_batch": global_batch}
        trainable, opt_state = engine.trainable, engine.opt_state
        if at is not None:
            changed = config_changes(at[1].get("config", {}), config, ignored=PLACEMENT)
            if changed:
                raise InputError(f"{run_dir}: its checkpoint's config differs in {', '.join(changed)}; remove the "
                                 "folder to train it again")
            trainable, opt_state, state = saved.restore("latest", trainable, opt_state, at)
            _truncate_log(run_dir / "metrics.jsonl", state["step"])
            if state["best_step"] == state["step"] and saved.saved_step("best") != state["step"]:
                _save(saved, "best", state["step"], trainable, opt_state, state)
        else:
            write_config(mine, run_dir)
        runs.append(_Rate(mine, run_dir, saved, state, stack.enter_context((run_dir / "metrics.jsonl").open("a"))))
        trainables.append(trainable)
        opt_states.append(opt_state)
    if not resumed and objective.evaluate_before:  # the starting point, the same for every rate
        before = {split: objective.evaluate(_bound(forward, engine.trainable, frozen, mesh), split, eval_batch)
                  for split in ("validation", "test")}
        for run in runs:
            run.state["before"] = before
            run.state["validation"].append((0, before["validation"]["loss"],
                                            before["validation"][_curve_metric(tc, objective.metrics)]))
            _log(run.log, {"step": 0, "split": "validation", **before["validation"]})

    stack_of = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)  # noqa: E731
    trainables = stack_of(trainables) if resumed else stack_variants(engine.trainable, len(runs))
    opt_states = stack_of(opt_states) if resumed else stack_variants(engine.opt_state, len(runs))
    sweep_step = make_sweep_step(graphdef, objective.loss, engine.tx)
    scales = jnp.asarray(scales, jnp.float32)
    stop = {"signal": None}
    previous = {s: signal.signal(s, lambda number, _: stop.update(signal=number))
                for s in (signal.SIGINT, signal.SIGTERM)}
    stack.callback(lambda: [signal.signal(number, handler) for number, handler in previous.items()])
    step = runs[0].state["step"]
    say(f"  training {prepared.config.model} at learning rates "
        f"{', '.join(f'{c.training.learning_rate:.2g}' for c in configs)} in one program, from step {step} of "
        f"{total_steps}")

    def finish(index: int) -> None:
        run = runs[index]
        run.active = False
        _finish(run.prepared, run.run_dir, graphdef, frozen, variant(trainables, index), variant(opt_states, index),
                run.checkpoints, run.state, mesh, forward, eval_batch)

    while step < total_steps and any(run.active for run in runs):
        started = time.perf_counter()
        batch = shard_local_rows(next(iterator), mesh)
        trainables, opt_states, metrics = sweep_step(trainables, frozen, opt_states, batch, dropout_key(step), scales)
        faults.point("step")
        step += 1
        metrics = jax.device_get(metrics)
        active = [i for i, run in enumerate(runs) if run.active]
        evaluating = step % tc.eval_steps == 0 or step == total_steps
        for i in active:
            _record(runs[i], step, {k: v[i] for k, v in metrics.items()}, tc.logging_steps, global_batch)
            state = runs[i].state
            state["step"] = step
            # the program's time, shared by the rates it trained (their times add up to the sweep's)
            share_of_step = (time.perf_counter() - started) / len(active)
            state["training_seconds"] = state.get("training_seconds", 0.0) + share_of_step
        if not evaluating:
            if stop["signal"] is not None:
                _interrupted(runs, active, step, trainables, opt_states, iterator)
            continue
        for i in active:
            run, state = runs[i], runs[i].state
            trainable = variant(trainables, i)
            result = objective.evaluate(_bound(forward, trainable, frozen, mesh), "validation", eval_batch)
            _log(run.log, {"step": step, "split": "validation", **result})
            improved = _record_evaluation(state, step, result, tc, objective.metrics)
            state["position"] = iterator.position()
            _save(run.checkpoints, "latest", step, trainable, variant(opt_states, i), state)
            if improved:
                _save(run.checkpoints, "best", step, trainable, variant(opt_states, i), state)
            patience = tc.early_stopping_patience
            if patience is not None and state["bad_evaluations"] >= patience:
                say(f"  {run.run_dir.name}: early stopping at step {step}")
                finish(i)
        if stop["signal"] is not None:
            _interrupted(runs, [i for i in active if runs[i].active], step, trainables, opt_states, iterator)
    for i, run in enumerate(runs):
        if run.active:
            finish(i)
    return True


def _record(run: _Rate, step: int, metrics: dict, logging_steps: int, global_batch: int) -> None:
    """A rate's step, as the loop records it: the non-finite check, the curve, the log."""
    loss = float(metrics["loss"])
    if not math.isfinite(loss) or not bool(metrics["parameters_finite"]):
        raise TrainingStopped(f"{run.run_dir}: the loss became {loss} at step {step} at learning rate "
                              f"{run.prepared.config.training.learning_rate:.2g}; try lower learning rates")
    run.state["train"].append((step, loss))
    if step % logging_steps == 0:
        _log(run.log, {"step": step, "split": "train", "loss": loss,
                       **{k: float(v) for k, v in metrics.items() if k not in ("loss", "parameters_finite")}})


def _interrupted(runs, active, step, trainables, opt_states, iterator) -> None:
    for i in active:
        run = runs[i]
        if run.checkpoints.saved_step("latest") != step:
            run.state["position"] = iterator.position()
            _save(run.checkpoints, "latest", step, variant(trainables, i), variant(opt_states, i), run.state)
    raise TrainingStopped(f"interrupted at step {step}; checkpoints saved; run the suite again to continue")


__all__ = ["sweep_together", "unsupported"]
