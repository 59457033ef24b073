"""`python -m tljax.train`: configs, the loop, checkpoints, resume, errors and artifacts (tiny model, CSV)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from conftest import cli_env, write_reviews
from tljax.train.__main__ import main
from tljax.train.config import DEFAULT_RUN, ConfigKeyError, load_config

def run_config(tmp_path: Path, tiny_model: Path, method: dict | None = None, **training) -> Path:
    config = {
        "model": str(tiny_model),
        "data": {"source": str(write_reviews(tmp_path / "reviews.csv")), "text_column": "review",
                 "label_column": "sentiment", "labels": ["neg", "pos"], "max_length": 32},
        "method": method or {"name": "lora", "rank": 4},
        "training": {"learning_rate": 5e-3, "max_steps": 12, "per_device_train_batch_size": 16, "eval_steps": 4,
                     "logging_steps": 2, "early_stopping_patience": None, **training},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_default_config_is_configs_lora_yaml():
    from_file = load_config(Path(__file__).parents[1] / "configs" / "lora.yaml")
    assert from_file == load_config()
    assert load_config().method == DEFAULT_RUN["method"]


def test_every_method_has_a_config_file():
    from tljax.methods import METHODS

    names = {yaml.safe_load(p.read_text())["method"]["name"] for p in (Path(__file__).parents[1] / "configs").glob("*.yaml")}
    assert names == set(METHODS)


def test_overrides_are_typed_and_unknown_keys_list_the_valid_ones():
    config = load_config(None, ["training.learning_rate=1e-3", "training.max_steps=7", "data.labels=[a, b]",
                                "method.rank=4", "training.early_stopping_patience=none"])
    assert config.training.learning_rate == 1e-3 and config.training.max_steps == 7
    assert config.data.labels == ["a", "b"] and config.method["rank"] == 4
    assert config.training.early_stopping_patience is None
    # the overrides changed that run only, not the embedded default every later run in the process starts from
    assert load_config().method["rank"] == 8 and load_config(None, ["data.source=x"]).data.max_length == 64
    with pytest.raises(ConfigKeyError, match="unknown config key training.learnig_rate; valid: training.learning_rate"):
        load_config(None, ["training.learnig_rate=1"])
    with pytest.raises(ConfigKeyError, match="training.max_steps='many' is not a valid"):
        load_config(None, ["training.max_steps=many"])


def test_a_run_writes_every_artifact_and_the_export_reloads(tmp_path, tiny_model, capsys):
    config = run_config(tmp_path, tiny_model, {"name": "full"}, learning_rate=1e-2, max_steps=24, eval_steps=8)
    assert main(["--config", str(config)]) == 0
    run = tmp_path / "run"
    out = capsys.readouterr().out
    assert "test: accuracy" in out and "python -m tljax.predict" in out
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "diagnosis.txt", "summary.json"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    validation = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in validation] == [8, 16, 24]
    assert {"accuracy", "precision", "recall", "f1", "mcc", "confusion_matrix"} <= set(validation[0])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.75, summary["test"]
    assert (run / "export" / "model" / "model.safetensors").is_file()

    from tljax.predict import Predictor

    predictor = Predictor.load(run)
    (good, probabilities), (bad, _) = predictor(["the film was superb", "a boring and awful plot"])
    assert (good, bad) == ("pos", "neg") and abs(sum(probabilities.values()) - 1) < 1e-5

    import torch
    import transformers

    reference = transformers.AutoModelForSequenceClassification.from_pretrained(run / "export" / "model").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(run / "export" / "model")
    with torch.no_grad():
        logits = reference(**tokenizer(["the film was superb"], return_tensors="pt")).logits
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy()[0], list(probabilities.values()), atol=1e-4)
    assert reference.config.id2label == {0: "neg", 1: "pos"}
    assert int(logits.argmax()) == 1


def test_predict_command(tmp_path, tiny_model, capsys):
    config = run_config(tmp_path, tiny_model, {"name": "full"}, learning_rate=1e-2, max_steps=24, eval_steps=8)
    assert main(["--config", str(config)]) == 0
    capsys.readouterr()
    from tljax.predict import main as predict

    assert predict([str(tmp_path / "run"), "superb and lovely", "dull and boring"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pos\t(neg ") and lines[1].startswith("neg\t")
    assert predict([str(tmp_path / "nowhere"), "some text"]) == 2
    assert "is not a finished tljax run" in capsys.readouterr().err


# the same 8 simulated devices as this process (conftest), so both runs use the same global batch
SUBPROCESS_ENV = cli_env()


def final_trainable(run: Path) -> dict[str, np.ndarray]:
    return load_file(run / "export" / "trainable.safetensors")


def test_a_killed_run_resumes_to_the_same_parameters(tmp_path, tiny_model):
    straight = tmp_path / "straight"
    straight.mkdir()
    assert main(["--config", str(run_config(straight, tiny_model))]) == 0

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    config = run_config(resumed, tiny_model)
    env = SUBPROCESS_ENV
    process = subprocess.Popen([sys.executable, "-m", "tljax.train", "--config", str(config)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = resumed / "run" / "checkpoints" / "latest" / "8"
    deadline = time.time() + 240
    while not checkpoint.is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.is_dir() and not (resumed / "run" / "summary.json").exists()
    assert main(["--config", str(config), "--resume"]) == 0
    a, b = final_trainable(straight / "run"), final_trainable(resumed / "run")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    steps = [json.loads(line)["step"] for line in (resumed / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "validation"]
    assert steps == [4, 8, 12]
    assert (resumed / "run" / "export" / "adapter" / "adapter_config.json").is_file()  # LoRA: a PEFT adapter
    # resuming with another config would silently train something else: refused
    assert main(["--config", str(config), "--resume", "--set", "training.seed=7"]) == 2


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, tiny_model):
    config = run_config(tmp_path, tiny_model, max_steps=2000, eval_steps=1000)
    process = subprocess.Popen([sys.executable, "-m", "tljax.train", "--config", str(config)],
                               env=SUBPROCESS_ENV, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (log.is_file() and log.stat().st_size > 0) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 3
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    assert any((tmp_path / "run" / "checkpoints" / "latest").iterdir())


def run_failing(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_one_line_and_leaves_no_run_directory(tmp_path, tiny_model, capsys):
    config = run_config(tmp_path, tiny_model)
    run = tmp_path / "run"
    err = run_failing(["--config", str(config), "--set", "training.learnig_rate=1"], capsys)
    assert "valid: training.learning_rate" in err
    assert "does not exist" in run_failing(["--config", str(tmp_path / "missing.yaml")], capsys)
    assert "review_text" in run_failing(["--config", str(config), "--set", "data.text_column=review_text"], capsys)
    err = run_failing(["--config", str(config), "--set", "data.labels=[neg, positive]"], capsys)
    assert "pos" in err and "positive" in err
    err = run_failing(["--config", str(config), "--set", f"data.source={tmp_path / 'nowhere.csv'}"], capsys)
    assert "nowhere.csv" in err
    write_reviews(tmp_path / "few.csv", n=2)
    err = run_failing(["--config", str(config), "--set", f"data.source={tmp_path / 'few.csv'}"], capsys)
    assert "empty" in err
    assert "unknown method" in run_failing(["--config", str(config), "--set", "method.name=lorra"], capsys)
    assert "unknown model" in run_failing(["--config", str(config), "--set", "model=bert-klingon"], capsys)
    assert "valid: accuracy, f1" in run_failing(["--config", str(config), "--set",
                                                 "training.metric_for_best_model=eval_loss"], capsys)
    assert "at least 1" in run_failing(["--config", str(config), "--set", "training.eval_steps=0"], capsys)
    assert "no checkpoint" in run_failing(["--config", str(config), "--resume"], capsys)
    for setting, says in (("training.learning_rate=-1", "learning_rate must be > 0"),
                          ("data.max_length=0", "max_length must be at least 8"),
                          ("training.dtype=float16", "valid: float32, bfloat16"),
                          ("training.warmup_ratio=2", "between 0 and 1"),
                          ("method={rank: 4}", "needs a name")):
        assert says in run_failing(["--config", str(config), "--set", setting], capsys)
    assert not run.exists()


def test_one_run_per_output_folder(tmp_path, tiny_model, capsys):
    from tljax.train.rundir import RunLock

    config = run_config(tmp_path, tiny_model)
    run = tmp_path / "run"
    # another process holds the folder: refused at once, before any input is loaded
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); f.write('4242'); f.flush(); print('held', flush=True); "
                               "time.sleep(60)", str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    run.mkdir()
    try:
        assert holder.stdout.readline().strip() == "held"
        err = run_failing(["--config", str(config)], capsys)
        assert "another run is using" in err and "4242" in err
        with pytest.raises(Exception, match="another run is using"):
            RunLock(run, resume=False).__enter__()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock went with it, and a run that left no checkpoint restarts
    (run / "config.yaml").write_text("model: x\n")
    (run / "metrics.jsonl").write_text('{"step": 99, "split": "train", "loss": 1.0}\n')
    assert main(["--config", str(config)]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 99 not in steps
    capsys.readouterr()
    # a finished run is kept: a second run into it is refused
    assert "already holds a run" in run_failing(["--config", str(config)], capsys)
    # a folder no run started (no .lock) is never cleared, even if it holds only a config.yaml
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    assert "already holds a run" in run_failing(["--config", str(config), "--set", f"output_dir={mine}"], capsys)
    assert (mine / "config.yaml").read_text() == "my own notes\n"


def test_a_checkpoint_that_does_not_fit_is_refused_clearly(tmp_path):
    from tljax.models import CheckpointError
    from tljax.train.checkpoints import Checkpoints

    checkpoints = Checkpoints(tmp_path / "checkpoints")
    params, opt_state = {"a": np.ones(3, np.float32)}, {"count": np.zeros((), np.int32)}
    checkpoints.save("latest", 4, params, opt_state, {"step": 4})
    restored = checkpoints.restore("latest", params, opt_state)
    assert restored[2]["step"] == 4
    with pytest.raises(CheckpointError, match="does not fit this run"):
        checkpoints.restore("latest", {"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)}, opt_state)
    checkpoints.close()


def test_feature_extraction_trains_the_head_on_cached_features_with_the_same_result(tmp_path, tiny_model):
    """The loop's fast path (features computed once) trains the same head as the whole model every step."""
    from tljax.train.features import FeatureClassification
    from tljax.train.loop import train
    from tljax.train.objectives import Classification
    from tljax.train.run import prepare

    config = load_config(run_config(tmp_path, tiny_model, {"name": "feature-extraction"}, learning_rate=5e-2,
                                    max_steps=12, eval_steps=6))
    fast, slow = prepare(config), prepare(config)
    assert type(fast.objective) is FeatureClassification
    assert "input_ids" not in next(fast.objective.train_batches(16, 0))  # the backbone does not run per step
    fields = {f.name: getattr(slow.objective, f.name) for f in __import__("dataclasses").fields(Classification)
              if f.init}
    slow.objective = Classification(**fields)
    results = {}
    for name, prepared in (("fast", fast), ("slow", slow)):
        (tmp_path / name).mkdir()
        summary = train(prepared, tmp_path / name)
        results[name] = (summary["test"], final_trainable(tmp_path / name))
    (fast_test, fast_params), (slow_test, slow_params) = results["fast"], results["slow"]
    assert fast_params.keys() == slow_params.keys() == {"classifier/kernel", "classifier/bias",  # the head:
                                                         "bert/pooler/dense/kernel", "bert/pooler/dense/bias"}
    for name in fast_params:
        assert not np.allclose(fast_params[name], 0)  # trained
        np.testing.assert_allclose(fast_params[name], slow_params[name], atol=2e-5, err_msg=name)
    assert fast_test["accuracy"] == slow_test["accuracy"]
    np.testing.assert_allclose(fast_test["loss"], slow_test["loss"], atol=1e-5)


def test_gradient_accumulation_logs_the_mean_loss_of_its_micro_batches(tmp_path, tiny_model):
    from tljax.train.loop import _mean_metrics

    parts = [{"loss": jax.numpy.float32(1.0), "parameters_finite": jax.numpy.bool_(True)},
             {"loss": jax.numpy.float32(3.0), "parameters_finite": jax.numpy.bool_(True)}]
    assert float(_mean_metrics(parts)["loss"]) == 2.0
    config = run_config(tmp_path, tiny_model, max_steps=4, eval_steps=4, logging_steps=1,
                        gradient_accumulation_steps=2, learning_rate=1e-9)
    assert main(["--config", str(config)]) == 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in logged if r["split"] == "train"]
    # each micro-batch's loss, recomputed with the same batches and dropout keys (the rate leaves the model as
    # it started)
    from tljax.train.run import prepare

    prepared = prepare(load_config(config))
    from tljax.train.loop import micro_batch

    batches = prepared.objective.train_batches(16 * len(jax.devices()) * 2, 42)  # a global batch per step
    parts = [micro_batch(batch, m, 2) for batch in (next(batches) for _ in range(4)) for m in range(2)]
    model, key = prepared.adaptation.model, jax.random.key(42)
    micro = [float(prepared.objective.loss(model, part, jax.random.fold_in(key, k))[0]) for k, part in enumerate(parts)]
    np.testing.assert_allclose(train_losses, np.reshape(micro, (4, 2)).mean(1), rtol=1e-4)
    assert not np.allclose(train_losses, micro[1::2], rtol=1e-4)  # not the last micro-batch's


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model, capsys):
    # the warm-up makes the first update harmless (rate 0) and the next ones absurd
    config = run_config(tmp_path, tiny_model, max_steps=40, eval_steps=1, learning_rate=1e38, max_grad_norm=None,
                        warmup_ratio=0.5)
    assert main(["--config", str(config)]) == 3
    err = capsys.readouterr().err
    assert "became" in err and "last good checkpoint" in err
    latest = tmp_path / "run" / "checkpoints" / "latest"
    kept = [int(p.name) for p in latest.iterdir() if p.name.isdigit()]
    assert kept and not (tmp_path / "run" / "summary.json").exists()


def test_virtual_tokens_take_positions_from_the_text(tmp_path, tiny_model):
    from tljax.train.run import prepare

    for method, expected in (({"name": "lora"}, 64), ({"name": "prompt", "num_virtual_tokens": 4}, 60),
                             ({"name": "prefix", "num_virtual_tokens": 6, "projection_size": None}, 58)):
        config = load_config(run_config(tmp_path, tiny_model, method), ["data.max_length=512"])
        assert prepare(config).max_length == expected  # the tiny model has 64 positions


def test_partial_fine_tuning_computes_its_frozen_bottom_once_and_trains_the_same(tmp_path, tiny_model):
    import shutil

    from tljax.train.features import FrozenBottomClassification, frozen_bottom
    from tljax.train.loop import build_engine
    from tljax.train.run import prepare
    from tljax.train.sharding import data_mesh, shard_batch

    # with dropout off everywhere, caching the frozen bottom (which turns dropout off there) changes nothing:
    # the cached and the uncached run are the same computation, ordered differently
    model_dir = tmp_path / "no-dropout"
    shutil.copytree(tiny_model, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model_dir / "config.json").write_text(json.dumps(config))
    mesh, runs = data_mesh(), {}
    for cache in (True, False):
        folder = tmp_path / f"cache-{cache}"
        folder.mkdir()
        method = {"name": "partial", "freeze_layers": 1, "cache_frozen": cache}
        prepared = prepare(load_config(run_config(folder, model_dir, method)))
        assert isinstance(prepared.objective, FrozenBottomClassification) == cache
        engine = build_engine(prepared, 6, mesh)
        frozen_before = jax.tree.map(np.array, engine.frozen)
        batches = prepared.objective.train_batches(16, 0)
        params, opt, losses = engine.trainable, engine.opt_state, []
        for i in range(6):
            batch = next(batches)
            assert ("hidden" in batch) == cache
            params, opt, metrics = engine.train_step(params, engine.frozen, opt, shard_batch(batch, mesh),
                                                     jax.random.key(i))
            losses.append(float(metrics["loss"]))
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, engine.frozen), frozen_before)
        runs[cache] = losses, jax.tree.map(np.asarray, params)
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), runs[True][1], runs[False][1])

    # where it does not apply: rules given by path, the embeddings training, prompts below the layers
    for method in ({"name": "partial", "path_rules": [["embeddings", "freeze"], [".*", "train"]]},
                   {"name": "partial", "freeze_layers": 1, "freeze_embeddings": False},
                   {"name": "partial", "freeze_layers": 0}):
        assert frozen_bottom(prepare(load_config(run_config(tmp_path, model_dir, method))).adaptation) == 0


def test_a_partial_run_with_a_cached_bottom_trains_evaluates_and_exports(tmp_path, tiny_model):
    from tljax.predict import Predictor

    # the tiny model's embeddings and bottom layer are random: the top layer needs some steps to find the words
    config = run_config(tmp_path, tiny_model, {"name": "partial", "freeze_layers": 1}, learning_rate=1e-2,
                        max_steps=60, eval_steps=10)
    assert main(["--config", str(config)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.75 and summary["steps"] == 60  # 24 test reviews: chance is 0.5
    labels = [label for label, _ in Predictor.load(tmp_path / "run")(["a great film", "an awful film"])]
    assert set(labels) <= {"neg", "pos"}
