"""Checkpoints that nothing can half-write: checksums, the previous one kept as a fallback, a full disk, a
run killed during its first save; arrays read by their paths, never by position."""

import json
import os
import shutil
import subprocess
import sys
from collections import OrderedDict

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from test_train import SUBPROCESS_ENV, run_config
from tljax import faults
from tljax.train.__main__ import main


def trained(run):
    return load_file(run / "export" / "trainable.safetensors")


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    """A run trained straight through (12 steps, checkpoints at 4 and 8 and 12), and the same run killed
    (SIGKILL) at step 10: its checkpoints of steps 4 and 8 on disk."""
    folder = tmp_path_factory.mktemp("checkpoints")
    straight = folder / "straight"
    straight.mkdir()
    assert main(["--config", str(run_config(straight, tiny_model))]) == 0
    killed = folder / "killed"
    killed.mkdir()
    config = run_config(killed, tiny_model)
    done = subprocess.run([sys.executable, "-m", "tljax.train", "--config", str(config)],
                          env={**SUBPROCESS_ENV, faults.ENVIRONMENT: "step=10:kill"}, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr[-2000:]
    assert sorted(p.name for p in (killed / "run" / "checkpoints" / "latest").iterdir()) == ["4", "8"]
    return trained(straight / "run"), killed


def copy_of(killed, tmp_path):
    """The killed run's folder copied (its config's paths point into the original folder's data)."""
    run = tmp_path / "run"
    shutil.copytree(killed / "run", run)
    config = tmp_path / "config.yaml"
    config.write_text((killed / "config.yaml").read_text().replace(str(killed / "run"), str(run)))
    return run, config


def largest_data_file(checkpoint):
    return max((p for p in (checkpoint / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


DAMAGE = {
    "truncated": lambda step: largest_data_file(step).write_bytes(largest_data_file(step).read_bytes()[:-7]),
    "emptied metadata": lambda step: (step / "meta" / "metadata").write_text(""),
    "altered bytes": lambda step: _flip_last_byte(largest_data_file(step)),
    "no checksums": lambda step: (step / "checksums.json").unlink(),  # killed between the write and its commit
}


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_latest_checkpoint_is_named_and_the_previous_one_used(runs, tmp_path, damage, caplog):
    reference, killed = runs
    run, config = copy_of(killed, tmp_path)
    DAMAGE[damage](run / "checkpoints" / "latest" / "8")
    assert main(["--config", str(config), "--resume"]) == 0
    warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]  # a WARNING line on stderr
    if damage == "no checksums":  # not a saved checkpoint at all: passed over in silence
        assert not warnings
    else:
        assert len(warnings) == 1 and "latest/8" in warnings[0] and "continuing from step 4" in warnings[0]
        assert "\n" not in warnings[0]
        assert {"truncated": "cut short", "emptied metadata": "meta/metadata has 0 bytes",
                "altered bytes": "its bytes were changed"}[damage] in warnings[0]
    assert_same(trained(run), reference)  # nothing damaged was read: the same end as the straight run
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == sorted(set(steps))  # every step logged once


def test_every_checkpoint_damaged_is_one_line_that_says_what_to_do(runs, tmp_path, capsys):
    _, killed = runs
    run, config = copy_of(killed, tmp_path)
    for step in ("4", "8"):
        DAMAGE["altered bytes"](run / "checkpoints" / "latest" / step)
    assert main(["--config", str(config), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "error" in line] == err[-1:]  # one line, the last
    assert err[-1].startswith("error: no usable checkpoint") and "step 8:" in err[-1] and "step 4:" in err[-1] \
        and "to start the run again" in err[-1]


def test_a_full_disk_while_saving_keeps_the_last_checkpoint_and_says_so(runs, tiny_model, tmp_path, monkeypatch,
                                                                        capsys):
    reference, _ = runs
    config = run_config(tmp_path, tiny_model)
    monkeypatch.setenv(faults.ENVIRONMENT, "checkpoint-write=3:enospc")  # saves: latest 4, best 4, latest 8
    monkeypatch.setattr(faults, "_passes", {})
    assert main(["--config", str(config)]) == 3
    err = capsys.readouterr().err
    assert "could not save the latest checkpoint of step 8" in err and "No space left on device" in err
    assert "the checkpoint of step 4 is kept" in err and "--resume" in err
    latest = tmp_path / "run" / "checkpoints" / "latest"
    assert sorted(p.name for p in latest.iterdir()) == ["4"]  # the half-written one removed
    monkeypatch.delenv(faults.ENVIRONMENT)
    assert main(["--config", str(config), "--resume"]) == 0
    assert_same(trained(tmp_path / "run"), reference)


def test_a_run_killed_during_its_first_save_starts_again_on_resume(runs, tiny_model, tmp_path, capsys):
    reference, _ = runs
    config = run_config(tmp_path, tiny_model)
    done = subprocess.run([sys.executable, "-m", "tljax.train", "--config", str(config)],
                          env={**SUBPROCESS_ENV, faults.ENVIRONMENT: "checkpoint-write=1:kill"}, capture_output=True,
                          text=True)
    assert done.returncode == -9
    assert main(["--config", str(config), "--resume"]) == 0
    assert "starting the run again from the beginning" in capsys.readouterr().err
    assert_same(trained(tmp_path / "run"), reference)


def test_the_two_newest_checkpoints_are_kept(runs):
    from tljax.train.checkpoints import CHECKSUMS, damage, saved_steps

    _, killed = runs
    latest = killed / "run" / "checkpoints" / "latest"
    assert saved_steps(latest) == [8, 4]
    assert all(damage(latest / str(step)) is None for step in (4, 8))
    assert all((latest / str(step) / CHECKSUMS).is_file() for step in (4, 8))
    assert not [p for p in latest.iterdir() if not p.name.isdigit()]  # no temporary folder left behind
    assert os.access(latest, os.W_OK)


def test_late_reports_to_orbaxs_closed_event_loop_are_dropped_and_nothing_else(monkeypatch):
    """On a real full disk, tensorstore's writes still in flight report to the event loop orbax has closed,
    each an unraisable RuntimeError printed as a traceback (over a hundred); those alone are dropped."""
    import asyncio

    from tljax.train.checkpoints import _drop_closed_loop_reports

    reached = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reached.append(unraisable.exc_value))
    _drop_closed_loop_reports()
    _drop_closed_loop_reports()  # installed once, not stacked
    closed = asyncio.new_event_loop()
    closed.close()

    class Reports:  # an exception raised in __del__ is unraisable, as one raised in tensorstore's callbacks
        def __init__(self, report):
            self.report = report

        def __del__(self):
            self.report()

    Reports(lambda: closed.call_soon_threadsafe(print))
    Reports(lambda: int("x"))
    assert [type(error) for error in reached] == [ValueError]


def lora_pair(query, value, order=("query", "value")):
    """Two LoRA factors of one shape, in a tree whose leaves come in `order` (as a change to the code that
    builds the model could order them)."""
    arrays = {"query": query, "value": value}
    return OrderedDict((name, {"lora_a": np.asarray(arrays[name], np.float32)}) for name in order)


def adam_state(params):
    import optax

    return optax.adam(1e-3).init(params)


def saved_pair(tmp_path):
    from tljax.train.checkpoints import Checkpoints

    checkpoints = Checkpoints(tmp_path / "checkpoints")
    params = lora_pair(np.full((4, 8), 1.0), np.full((4, 8), 2.0))
    adam, *rest = adam_state(params)
    opt_state = (adam._replace(mu=jax.tree.map(lambda x: x + 3, params)), *rest)  # moments of 4 and 5
    checkpoints.save("latest", 4, params, opt_state, {"step": 4})
    return checkpoints


def test_arrays_are_restored_by_their_paths_whatever_order_the_run_lists_them_in(tmp_path):
    checkpoints = saved_pair(tmp_path)
    template = lora_pair(np.zeros((4, 8)), np.zeros((4, 8)), order=("value", "query"))
    params, opt_state, meta = checkpoints.restore("latest", template, adam_state(template))
    assert list(params) == ["value", "query"] and meta["step"] == 4
    assert (params["query"]["lora_a"] == 1).all() and (params["value"]["lora_a"] == 2).all()  # not swapped
    assert (opt_state[0].mu["query"]["lora_a"] == 4).all() and (opt_state[0].mu["value"]["lora_a"] == 5).all()
    checkpoints.close()


NAMED = {  # what each change to the run's tree is refused with
    "renamed": "missing from it: trainable/key/lora_a, opt_state/0/mu/key/lora_a, opt_state/0/nu/key/lora_a; in it "
               "but not in this run: trainable/value/lora_a, opt_state/0/mu/value/lora_a, opt_state/0/nu/value/lora_a",
    "added": "missing from it: trainable/output/lora_a, opt_state/0/mu/output/lora_a, opt_state/0/nu/output/lora_a",
    "removed": "in it but not in this run: trainable/value/lora_a, opt_state/0/mu/value/lora_a, "
               "opt_state/0/nu/value/lora_a",
    "reshaped": "trainable/value/lora_a is (4, 8) in it, (8, 8) in this run",
}


@pytest.mark.parametrize("change", NAMED)
def test_a_checkpoint_whose_paths_differ_from_the_runs_is_refused_naming_them(tmp_path, change):
    from tljax.models import CheckpointError

    checkpoints = saved_pair(tmp_path)
    template = {"renamed": {"query": {"lora_a": np.zeros((4, 8))}, "key": {"lora_a": np.zeros((4, 8))}},
                "added": {**lora_pair(np.zeros((4, 8)), np.zeros((4, 8))), "output": {"lora_a": np.zeros((4, 8))}},
                "removed": {"query": {"lora_a": np.zeros((4, 8))}},
                "reshaped": {"query": {"lora_a": np.zeros((4, 8))}, "value": {"lora_a": np.zeros((8, 8))}}}[change]
    template = jax.tree.map(lambda x: np.asarray(x, np.float32), template)
    with pytest.raises(CheckpointError) as refused:
        checkpoints.restore("latest", template, adam_state(template))
    message = str(refused.value)
    assert "does not fit this run" in message and NAMED[change] in message and "\n" not in message
    assert "latest/4" in message and "another output_dir" in message
    checkpoints.close()


def test_a_checkpoint_of_the_earlier_positional_layout_is_refused_saying_how_to_continue(runs, tmp_path, capsys):
    """The layout tljax wrote before arrays were keyed by path: numbered leaves, their counts in the metadata."""
    import orbax.checkpoint as ocp

    from tljax.models import CheckpointError
    from tljax.train.checkpoints import Checkpoints, _write_checksums

    params = lora_pair(np.ones((4, 8)), np.ones((4, 8)))
    opt_state = adam_state(params)
    numbered = {part: {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(tree))}
                for part, tree in (("trainable", params), ("opt_state", opt_state))}
    directory = (tmp_path / "checkpoints" / "latest").resolve()
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with ocp.CheckpointManager(directory, options=options) as manager:
        manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(numbered), meta=ocp.args.JsonSave(
            {"step": 4, "leaves": [2, 5]})))
        manager.wait_until_finished()
    _write_checksums(directory / "4")
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    with pytest.raises(CheckpointError) as refused:
        checkpoints.restore("latest", params, opt_state)
    message = str(refused.value)
    assert "stores its arrays by position" in message and "\n" not in message
    assert "start again in a new output_dir, or resume it with the tljax version that wrote it" in message
    checkpoints.close()

    # and through the command: one line, before anything is trained
    _, killed = runs
    run, config = copy_of(killed, tmp_path / "copy")
    shutil.rmtree(run / "checkpoints" / "latest")
    shutil.copytree(directory, run / "checkpoints" / "latest")
    assert main(["--config", str(config), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: the checkpoint") and "stores its arrays by position" in err[-1]


def test_gradient_accumulation_state_is_stored_without_its_wrapper(tmp_path):
    """A checkpoint written without accumulation restores into a run that accumulates (its wrapper at an
    optimiser step's end: no micro-batch counted, no gradient summed) and the other way."""
    import optax

    from tljax.train.checkpoints import Checkpoints

    params = lora_pair(np.ones((4, 8)), np.ones((4, 8)))
    inner = optax.adam(1e-3)
    plain = jax.tree.map(lambda x: x + 3, inner.init(params))
    accumulating = optax.MultiSteps(inner, every_k_schedule=2)
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    checkpoints.save("latest", 6, params, plain, {"step": 6})
    template = jax.tree.map(jax.numpy.asarray, accumulating.init(params))
    _, wrapped, _ = checkpoints.restore("latest", params, template)
    assert isinstance(wrapped, optax.MultiStepsState)
    assert int(wrapped.mini_step) == 0 and int(wrapped.gradient_step) == 6
    assert all((np.asarray(g) == 0).all() for g in jax.tree.leaves(wrapped.acc_grads))
    jax.tree.map(np.testing.assert_array_equal, wrapped.inner_opt_state, plain)
    checkpoints.save("latest", 8, params, wrapped, {"step": 8})
    _, unwrapped, _ = checkpoints.restore("latest", params, inner.init(params))
    jax.tree.map(np.testing.assert_array_equal, unwrapped, plain)
    checkpoints.close()
