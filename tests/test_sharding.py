"""The mesh (data x fsdp) on 8 simulated CPU devices: the same training on every layout, parameters and
optimiser state partitioned by path rules, checkpoints restored onto another mesh, a run resumed on fewer
devices with its global batch kept."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from safetensors.numpy import load_file

from conftest import cli_env
from test_train import run_config
from tljax.train.config import load_config

# 1 device, data parallel, FSDP, both: (mesh shape, devices)
LAYOUTS = (({"data": 1, "fsdp": 1}, 1), ({"data": 8, "fsdp": 1}, 8), ({"data": 1, "fsdp": 8}, 8),
           ({"data": 2, "fsdp": 4}, 8))


def engine_on(prepared, shape, devices, steps=5):
    from tljax.train.loop import build_engine
    from tljax.train.sharding import make_mesh

    mesh = make_mesh(shape, jax.devices()[:devices])
    return build_engine(prepared, steps, mesh), mesh


def trajectory(prepared, shape, devices, batches, steps=5):
    """The losses of `steps` steps on `batches` and the final parameters (host copies)."""
    from tljax.train.sharding import shard_batch

    engine, mesh = engine_on(prepared, shape, devices, steps)
    params, opt, losses = engine.trainable, engine.opt_state, []
    for i in range(steps):
        params, opt, metrics = engine.train_step(params, engine.frozen, opt, shard_batch(batches[i], mesh),
                                                 jax.random.key(i))
        losses.append(float(metrics["loss"]))
    return losses, jax.tree.map(np.asarray, params), engine, params, opt


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model):
    """A tiny model's full fine-tuning (every parameter and its AdamW moments on the mesh), dropout on."""
    from tljax.train.run import prepare

    tmp_path = tmp_path_factory.mktemp("sharding")
    prepared = prepare(load_config(run_config(tmp_path, tiny_model, {"name": "full"}, learning_rate=1e-3)))
    iterator = prepared.objective.train_batches(16, 0)
    return prepared, [next(iterator) for _ in range(5)]


def test_data_parallel_fsdp_and_both_train_as_one_device(full_run):
    """Same losses and parameters on every layout. Tolerance: float32 sums whose order the layout changes
    (a batch's loss summed per device, then across; gradients reduce-scattered instead of summed in one
    place) differ in the last bits (~1e-7 relative); five AdamW steps, which divide by sqrt of the second
    moment, carry that to ~1e-6, and 2e-5 leaves room without hiding a real difference (a wrong shard, a
    dropped row or a missed update changes the loss at 1e-3 or more)."""
    prepared, batches = full_run
    reference, reference_params, engine, *_ = trajectory(prepared, *LAYOUTS[0], batches)
    start = jax.tree.map(np.asarray, engine_on(prepared, *LAYOUTS[0])[0].trainable)
    moved = [not np.allclose(a, b, rtol=1e-4) for a, b in zip(jax.tree.leaves(reference_params), jax.tree.leaves(start))]
    assert all(moved)  # every parameter trains (so each layout's update of each is compared)
    for shape, devices in LAYOUTS[1:]:
        losses, params, engine, *_ = trajectory(prepared, shape, devices, batches)
        np.testing.assert_allclose(losses, reference, rtol=2e-5, err_msg=str(shape))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6, err_msg=str(shape)),
                     params, reference_params)


def test_lora_with_fsdp_trains_as_one_device(tmp_path, tiny_model):
    from tljax.train.run import prepare

    prepared = prepare(load_config(run_config(tmp_path, tiny_model)))
    iterator = prepared.objective.train_batches(16, 0)
    batches = [next(iterator) for _ in range(5)]
    one, *_ = trajectory(prepared, *LAYOUTS[0], batches)
    both, *_ = trajectory(prepared, *LAYOUTS[3], batches)
    np.testing.assert_allclose(both, one, rtol=2e-5)


def per_device_bytes(engine) -> int:
    from tljax.train.sharding import bytes_per_device

    return bytes_per_device((engine.trainable, engine.frozen, engine.opt_state))


def test_per_device_bytes_fall_as_one_over_fsdp(full_run):
    prepared, _ = full_run
    whole = per_device_bytes(engine_on(prepared, {"data": 8, "fsdp": 1}, 8)[0])
    for fsdp in (2, 4, 8):
        engine, _ = engine_on(prepared, {"data": -1, "fsdp": fsdp}, 8)
        measured = per_device_bytes(engine)
        # what is not split: step counts and the few vectors whose length fsdp does not divide (a 2-class bias)
        assert whole / fsdp <= measured <= whole / fsdp * 1.01, (fsdp, measured, whole)
        kernel = engine.trainable["bert"]["encoder"]["layer"][0]["attention"]["self"]["query"]["kernel"][...]
        assert kernel.sharding.spec == PartitionSpec("fsdp", None) or kernel.sharding.spec == PartitionSpec(None, "fsdp")
        moments = [leaf for leaf in jax.tree.leaves(engine.opt_state) if leaf.shape == kernel.shape]
        assert moments and all(m.sharding.spec == kernel.sharding.spec for m in moments)  # AdamW's mu and nu


def test_sharding_rules_choose_per_path_and_must_cover_every_parameter(full_run):
    from tljax.train.sharding import MeshError, make_mesh, parameter_shardings, parameter_spec

    assert parameter_spec((30522, 384), "shard", 8) == PartitionSpec(None, "fsdp")  # the vocabulary does not divide
    assert parameter_spec((384, 1536), "shard", 8) == PartitionSpec(None, "fsdp")  # the largest dimension
    assert parameter_spec((3,), "shard", 8) == PartitionSpec()
    assert parameter_spec((384, 384), "replicate", 8) == PartitionSpec()
    prepared, _ = full_run
    params = prepared.adaptation.model
    from flax import nnx

    state = nnx.state(params, nnx.Param)
    mesh = make_mesh({"fsdp": 8})
    shardings = parameter_shardings(state, mesh, (("LayerNorm", "replicate"), (".*", "shard")))
    assert shardings["bert"]["encoder"]["layer"][0]["output"]["LayerNorm"]["scale"].spec == PartitionSpec()
    assert shardings["bert"]["encoder"]["layer"][0]["output"]["dense"]["kernel"].spec != PartitionSpec()
    with pytest.raises(MeshError, match="match no training.sharding rule"):
        parameter_shardings(state, mesh, (("kernel", "shard"),))


def test_mesh_shapes_and_their_errors():
    from tljax.errors import InputError
    from tljax.train.sharding import make_mesh

    assert dict(make_mesh({"data": -1, "fsdp": 2}).shape) == {"data": 4, "fsdp": 2}
    assert dict(make_mesh().shape) == {"data": 8, "fsdp": 1}
    for shape, message in (({"data": 3}, "needs 3 devices; this run has 8"), ({"fsdp": 3}, "do not split"),
                           ({"model": 2}, "unknown axes"), ({"data": -1, "fsdp": -1}, "one axis at most"),
                           ({"data": 0}, "whole number")):
        with pytest.raises(InputError, match=message):
            make_mesh(shape)
    with pytest.raises(InputError, match="unknown axes"):  # checked with the config, before any folder exists
        load_config(None, ["training.mesh={tensor: 2}"])
    with pytest.raises(InputError, match="shard | replicate"):
        load_config(None, ["training.sharding=[[kernel, split]]"])


def test_a_checkpoint_saved_on_one_mesh_restores_onto_another(full_run, tmp_path):
    """Saved sharded over fsdp = 8, restored data parallel (and the other way): the same values, placed as
    the reading run places them, and training continues as it would have."""
    from tljax.train.checkpoints import Checkpoints
    from tljax.train.sharding import shard_batch

    prepared, batches = full_run
    _, _, saver, params, opt = trajectory(prepared, {"fsdp": 8}, 8, batches, steps=3)
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    checkpoints.save("latest", 3, params, opt, {"step": 3})
    saved = jax.tree.map(np.asarray, (params, opt))
    for shape in ({"data": 8}, {"data": 2, "fsdp": 4}):
        reader, mesh = engine_on(prepared, shape, 8)
        restored, restored_opt, meta = checkpoints.restore("latest", reader.trainable, reader.opt_state)
        assert meta["step"] == 3
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, (restored, restored_opt)), saved)
        jax.tree.map(lambda a, b: a.sharding == b.sharding or pytest.fail(f"{a.sharding} != {b.sharding}"),
                     restored, reader.trainable)
        after, _, metrics = reader.train_step(restored, reader.frozen, restored_opt, shard_batch(batches[3], mesh),
                                              jax.random.key(3))
        expected, _, expected_metrics = saver.train_step(*jax.tree.map(lambda x: x.copy(), (params,)),
                                                         saver.frozen, jax.tree.map(lambda x: x.copy(), opt),
                                                         shard_batch(batches[3], saver_mesh(saver)),
                                                         jax.random.key(3))
        np.testing.assert_allclose(float(metrics["loss"]), float(expected_metrics["loss"]), rtol=2e-5)
    checkpoints.close()


def saver_mesh(engine):
    return jax.tree.leaves(engine.trainable)[0].sharding.mesh


def test_a_mesh_or_rules_that_do_not_fit_are_refused_before_the_run_folder_exists(tmp_path, tiny_model, capsys):
    from tljax.train.__main__ import main

    config = run_config(tmp_path, tiny_model)
    for override, message in (("training.mesh={data: 3}", "needs 3 devices; this run has 8"),
                              ("training.sharding=[[kernel, shard]]", "match no training.sharding rule")):
        assert main(["--config", str(config), "--set", override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1]
        assert not (tmp_path / "run").exists()


def no_dropout_model(tiny_model, folder):
    """The tiny model with dropout off: its random masks are drawn per micro-batch, so a run that splits its
    global batch into other micro-batches draws other masks (equally likely ones, not the same)."""
    model_dir = folder / "no-dropout"
    shutil.copytree(tiny_model, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


def stopped_copy(run, folder, step):
    """A copy of the finished `run` as a run stopped after saving its checkpoint of `step` would have left it
    (later checkpoints and the results removed), with its config pointing at the copy."""
    copy = folder / "run"
    shutil.copytree(run, copy)
    for kind in ("latest", "best"):
        for saved in (copy / "checkpoints" / kind).iterdir():
            if int(saved.name) > step:
                shutil.rmtree(saved)
    for result in ("summary.json", "export", "curves.png", "diagnosis.txt"):
        shutil.rmtree(copy / result) if (copy / result).is_dir() else (copy / result).unlink()
    config = folder / "config.yaml"
    config.write_text((run.parent / "config.yaml").read_text().replace(str(run), str(copy)))
    return copy, config


def logged(run, split="train"):
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["split"] == split}


@pytest.fixture(scope="module")
def saved_on_eight(tmp_path_factory, tiny_model):
    """A LoRA run straight through on 8 devices (12 steps, a global batch of 2 x 8 = 16 rows, checkpoints at
    4, 8 and 12), dropout off."""
    from tljax.train.__main__ import main

    folder = tmp_path_factory.mktemp("eight")
    config = run_config(folder, no_dropout_model(tiny_model, folder), {"name": "lora", "rank": 4, "dropout": 0.0},
                        per_device_train_batch_size=2, logging_steps=1)
    assert main(["--config", str(config)]) == 0
    return folder / "run"


@pytest.mark.parametrize("devices", (4, 1))
def test_a_run_saved_on_eight_devices_resumes_on_fewer_with_the_same_batches_and_losses(saved_on_eight, tmp_path,
                                                                                        devices):
    """Resumed from step 8 on 4 devices (2 micro-batches a step) or 1 (8 micro-batches): the same global
    batches, schedule and steps, so the same losses as the uninterrupted run. Tolerance: that of the layouts
    above (2e-5): the micro-batches' gradients are summed in another order (float32, ~1e-7 relative), which
    the AdamW steps carry to ~1e-6; a batch of other rows or another learning rate moves the loss at 1e-3."""
    run, config = stopped_copy(saved_on_eight, tmp_path, 8)
    done = subprocess.run([sys.executable, "-m", "tljax.train", "--config", str(config), "--resume"],
                          env=cli_env(devices), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    reference, resumed = logged(saved_on_eight), logged(run)
    assert sorted(resumed) == list(range(1, 13))  # steps 1-8 kept from before, 9-12 trained again
    np.testing.assert_allclose([resumed[s] for s in range(9, 13)], [reference[s] for s in range(9, 13)], rtol=2e-5)
    assert f"{8 // devices} accumulated micro-batches of {2 * devices}" in done.stderr  # said, not silent
    for name, value in load_file(run / "export" / "trainable.safetensors").items():
        np.testing.assert_allclose(value, load_file(saved_on_eight / "export" / "trainable.safetensors")[name],
                                   rtol=2e-5, atol=1e-6, err_msg=name)
    assert json.loads((run / "summary.json").read_text())["steps"] == 12  # the same schedule's length


def test_a_resume_on_devices_that_do_not_divide_the_global_batch_is_refused_naming_those_that_do(tmp_path):
    from tljax.errors import InputError
    from tljax.train.loop import accumulation_steps

    assert accumulation_steps(16, 2, 8) == 1 and accumulation_steps(16, 2, 4) == 2 and accumulation_steps(16, 2, 1) == 8
    with pytest.raises(InputError) as refused:
        accumulation_steps(16, 2, 3)
    message = str(refused.value)
    assert "global batch is 16 rows (2 per device)" in message and "3 devices (6 rows a micro-batch)" in message
    assert "resume on 1, 2, 4 or 8 devices" in message and "accumulate 8, 4, 2 or 1 micro-batches" in message
    assert "\n" not in message


def test_a_micro_batch_is_the_same_rows_of_the_global_batch_however_many_processes_share_it():
    from tljax.train.loop import micro_batch

    rows = {"input_ids": np.arange(32).reshape(16, 2), "labels": np.arange(16)}
    for processes in (1, 2, 4):
        blocks = [{k: v[i * 16 // processes:(i + 1) * 16 // processes] for k, v in rows.items()}
                  for i in range(processes)]  # each process's contiguous block (tljax.data.batches' share)
        for index in range(2):
            parts = [micro_batch(block, index, 2) for block in blocks]
            np.testing.assert_array_equal(np.concatenate([p["labels"] for p in parts]), rows["labels"][index::2])
            np.testing.assert_array_equal(np.concatenate([p["input_ids"] for p in parts]),
                                          rows["input_ids"][index::2])
