"""The Python API: `tljax.fine_tune` is `python -m tljax.train` in this process (the same config, the same run, bit
for bit), data in memory written into the run folder, one-line errors raised as exceptions, an interrupted run
resumed; `tljax.Run` on a finished run; `harness.evaluate` (tiny model, CSV)."""

import json
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import jax
import numpy as np
import pandas
import pytest
import yaml
from safetensors.numpy import load_file

import tljax
from conftest import cli_env, write_reviews, write_tagged
from notebooks.run import loaded_results
from tljax.api import plan, write_data
from tljax.errors import InputError
from tljax.train.config import load_config
from tljax.train.loop import TrainingStopped

CONFIGS = Path(__file__).parents[1] / "configs"
# the tiny run: 8 steps of 2 rows on each of the 8 simulated devices, evaluated (and saved) every 4
TRAINING = {"learning_rate": 5e-3, "max_steps": 8, "per_device_train_batch_size": 2, "eval_steps": 4,
            "logging_steps": 2, "early_stopping_patience": None}


def tiny_run(tiny_model: Path, data, output_dir: Path, **arguments) -> tljax.Run:
    return tljax.fine_tune(model=str(tiny_model), data=data, method={"name": "lora", "rank": 4},
                           output_dir=output_dir, config={"data": {"max_length": 32}}, **{**TRAINING, **arguments})


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model):
    """A finished LoRA run of the tiny BERT from a DataFrame (review / sentiment columns): (its folder's parent,
    the DataFrame, the Run)."""
    folder = tmp_path_factory.mktemp("api")
    frame = pandas.read_csv(write_reviews(folder / "reviews.csv"))
    return folder, frame, tiny_run(tiny_model, frame, folder / "run")


def test_fine_tune_is_the_command_bit_for_bit(finished):
    folder, frame, run = finished
    data = folder / "run" / "data" / "train.jsonl"
    records = [json.loads(line) for line in data.read_text().splitlines()]
    assert records == [{"text": t, "label": s} for t, s in zip(frame["review"], frame["sentiment"])]
    saved = yaml.safe_load((folder / "run" / "config.yaml").read_text())
    assert saved["data"]["source"] == str(data) and saved["data"]["text_column"] == "text"
    # the saved config, repeated by the command on as many devices as this process has
    assert jax.device_count() == 8
    done = subprocess.run([sys.executable, "-m", "tljax.train", "--config", str(folder / "run" / "config.yaml"),
                           "--set", f"output_dir={folder / 'command'}"], env=cli_env(devices=8), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    ours, theirs = (json.loads((folder / name / "summary.json").read_text()) for name in ("run", "command"))
    assert ours["test"] == theirs["test"] and ours["best_step"] == theirs["best_step"]
    assert run.metrics["test"] == ours["test"]
    a, b = (load_file(folder / name / "export" / "trainable.safetensors") for name in ("run", "command"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("name", ["ner.yaml", "qa.yaml", "seq2seq.yaml"])
def test_the_config_fine_tune_builds_is_the_yaml_one(name, tmp_path):
    raw = yaml.safe_load((CONFIGS / name).read_text())
    rest = {key: value for key, value in raw.items()
            if key not in ("model", "task", "method", "output_dir", "training", "data")}
    planned, tables = plan(model=raw["model"], data=raw["data"]["source"], method=raw["method"], task=raw["task"],
                           output_dir=raw["output_dir"], config={**rest, "data": {
                               k: v for k, v in raw["data"].items() if k != "source"}}, **raw["training"])
    assert planned == load_config(CONFIGS / name) and not tables
    # the config.yaml a run writes of it reads back as the same config (what the command reruns)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(planned.to_dict(), sort_keys=False))
    assert load_config(tmp_path / "config.yaml") == planned


def test_training_arguments_take_hugging_face_names():
    planned, _ = plan(bf16=True, label_smoothing_factor=0.1, max_steps=-1, metric_for_best_model="eval_f1",
                      num_train_epochs=2, task="seq2seq")
    training = planned.training
    assert (training.dtype, training.label_smoothing, training.max_steps) == ("bfloat16", 0.1, None)
    assert (training.metric_for_best_model, training.num_train_epochs) == ("f1", 2)
    assert planned.model == "minilm-l6" and planned.data.source == "rotten-tomatoes"  # the embedded default run's


def test_datasets_lists_and_records_are_written_into_the_run_folder_and_read_by_the_run(tmp_path, tiny_model):
    import datasets

    from tljax.train.run import prepare

    frame = pandas.read_csv(write_reviews(tmp_path / "reviews.csv"))
    labels = datasets.ClassLabel(names=["neg", "pos"])
    table = datasets.Dataset.from_dict({"sentence": list(frame["review"]), "label": [
        labels.str2int(s) for s in frame["sentiment"]]}, features=datasets.Features(
        {"sentence": datasets.Value("string"), "label": labels}))
    cases = {"dataset": (table, {}), "lists": ((list(frame["review"]), list(frame["sentiment"])), {}),
             "splits": ({"train": table.select(range(200)), "test": table.select(range(200, 240))}, {}),
             "tagged records": ([json.loads(line) for line in write_tagged(tmp_path / "tagged.jsonl").read_text()
                                 .splitlines()], {"task": "token-classification"})}
    for case, (data, arguments) in cases.items():
        output = tmp_path / case.replace(" ", "-")
        planned, tables = plan(model=str(tiny_model), data=data, output_dir=output, config={"data": {"max_length": 32}},
                               **arguments)
        write_data(output, tables, resume=False)
        source = planned.data.source
        if case == "splits":  # read as a directory of data files, its splits kept
            assert source == f"hf:{output / 'data'}" and sorted(p.name for p in (output / "data").iterdir()) == [
                "test.jsonl", "train.jsonl"]
        else:
            assert source == str(output / "data" / "train.jsonl")
        prepared = prepare(planned)  # the run reads them: its splits and labels
        if case == "tagged records":
            assert set(prepared.label_names) >= {"B-PER", "B-LOC"}
            continue
        assert prepared.label_names == ("neg", "pos"), case  # a class label feature written by its names
        first = json.loads((output / "data" / "train.jsonl").read_text().splitlines()[0])
        assert first == {"text": frame["review"][0], "label": frame["sentiment"][0]}


def one_line_error(call) -> str:
    with pytest.raises(InputError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message
    deepest = traceback.extract_tb(raised.tb)[-1]  # raised by the API's own function, not from deep inside
    assert Path(deepest.filename).name in ("api.py", "run_handle.py", "notebook.py"), deepest
    return message


def test_bad_input_raises_the_one_line_error_and_leaves_nothing(tmp_path, tiny_model):
    frame = pandas.DataFrame({"text": ["a fine film", "awful"] * 20, "sentence": ["x", "y"] * 20,
                              "label": ["pos", "neg"] * 20})
    run = tmp_path / "run"

    def attempt(data=frame, **arguments):
        return lambda: tiny_run(tiny_model, data, run, **arguments)

    assert "several columns that could hold the texts (text, sentence); name one with text_column=" in \
        one_line_error(attempt())
    assert "has no label column 'stars'; its columns are ['text', 'sentence', 'label']" in \
        one_line_error(attempt(text_column="text", label_column="stars"))
    message = one_line_error(attempt(text_column="text", learnig_rate=1e-3))
    assert message.startswith("unknown training argument learnig_rate; valid: ") and "learning_rate" in message
    reviews = pandas.read_csv(write_reviews(tmp_path / "reviews.csv"))  # data the run reads: then the method
    assert "unknown method" in one_line_error(lambda: tljax.fine_tune(
        model=str(tiny_model), data=reviews, method="lorra", output_dir=run, max_steps=1))
    assert "texts and 1 labels" in one_line_error(attempt(data=(["a", "b"], ["pos"])))
    assert not run.exists()  # the data written for the bad method's run was removed with its folder


def test_a_finished_run_loads_predicts_compares_and_draws(finished, tiny_model):
    folder, _, run = finished
    for opened in (tljax.Run.load(folder / "run"), tljax.Run.load(folder / "run" / "export")):
        assert opened.path == folder / "run" and opened.metrics == run.metrics
    assert {"accuracy", "f1", "loss"} <= set(run.metrics["validation"])
    assert run.diagnosis == (folder / "run" / "diagnosis.txt").read_text().strip()
    one = run.predict("the film was superb")
    assert set(one) == {"text", "label", "probabilities"} and one["label"] in ("neg", "pos")
    assert [p["text"] for p in run.predict(["superb", "awful"])] == ["superb", "awful"]
    assert "test accuracy" in repr(run) and "<table>" in run._repr_html_()

    figure = run.curves()
    assert [axes.get_title() for axes in figure.axes] == ["loss", "validation accuracy"]
    assert len(figure.axes[0].lines) == 3  # train, smoothed, validation

    code = run.pytorch_code
    assert f"transformers.AutoModelForSequenceClassification.from_pretrained('{folder / 'run' / 'export'}/model')" in code
    assert "peft.AutoPeftModelForSequenceClassification.from_pretrained(" in code and "num_labels=2" in code
    copy = run.export(folder / "copied")
    assert (copy / "run.json").is_file() and run.export() == folder / "run" / "export"
    assert "an export without its run folder" in one_line_error(lambda: tljax.Run.load(copy).metrics)

    table = run.compare(folder / "command" if (folder / "command").is_dir() else run)
    assert list(table.columns[:4]) == ["model", "method", "task", "trainable parameters"]
    assert len(table) == 2 and table["method"].iloc[0] == "lora" and "test accuracy" in table.columns
    assert table["trainable parameters"].iloc[0] == json.loads((folder / "run" / "summary.json").read_text())[
        "trainable_parameters"]
    assert "not a finished tljax run" in one_line_error(lambda: tljax.Run.load(folder))


def test_harness_evaluate_returns_the_results_table(finished, tiny_model, capsys):
    import harness

    folder, _, run = finished
    task = folder / "tiny-task.yaml"  # the CSV's test split, which the run did not train on
    task.write_text(yaml.safe_dump({
        "name": "tiny", "data": {"source": str(folder / "reviews.csv"), "text_column": "review",
                                 "label_column": "sentiment", "split": "test"}, "labels": ["neg", "pos"],
        "templates": {"en": {"instruction": "the film was {text}", "verbalisers": {"neg": "bad", "pos": "good"},
                             "descriptions": {"neg": "bad awful", "pos": "good great"}}}}))
    table = harness.evaluate(task=str(task), variants=[{"kind": "zero-shot", "model": str(tiny_model)}, run],
                             limit=20, out=folder / "evaluated")
    assert list(table["variant"]) == [f"zero-shot {tiny_model}", "run run"]
    assert list(table["task"]) == [str(task)] * 2 and list(table["items"]) == [20, 20]  # as results.md names it
    assert table["metric"].tolist() == ["accuracy"] * 2 and table["score"].between(0, 1).all()
    assert (table["score_low"] <= table["score"]).all() and table["trainable_parameters"].iloc[1] > 0
    records = json.loads((folder / "evaluated" / "results.json").read_text())["rows"]
    assert table["score"].tolist() == [row["score"] for row in records]
    capsys.readouterr()
    again = harness.evaluate(task=str(task), variants=[{"kind": "zero-shot", "model": str(tiny_model)}, run],
                             limit=20, out=folder / "evaluated")
    assert again.equals(table) and loaded_results(capsys.readouterr().out) == 2  # scored once, loaded as a copy says
    with pytest.raises(InputError, match="variants is a list"):
        harness.evaluate(task=str(task), variants=[])


def test_a_finished_run_of_the_same_settings_is_loaded_not_trained_again(finished, tiny_model, capsys, tmp_path):
    """A notebook's cells run again (or its other-language copy in the same folder): fine_tune loads the run."""
    import os
    import shutil

    folder, frame, run = finished
    before = {p: p.stat().st_mtime_ns for p in (folder / "run").rglob("*") if p.is_file()}
    capsys.readouterr()
    again = tiny_run(tiny_model, frame, folder / "run")
    printed = capsys.readouterr().out
    assert "already holds this run, finished (the same settings and data): loaded, not trained again" in printed
    assert "test:" in printed and again.metrics == run.metrics  # its results printed as after training
    assert loaded_results(printed) == 1  # as a notebook's copy counts what it loaded
    assert {p: p.stat().st_mtime_ns for p in (folder / "run").rglob("*") if p.is_file()} == before  # nothing written
    # other settings, or other data, are refused in one line naming what differs; nothing is written
    message = one_line_error(lambda: tiny_run(tiny_model, frame, folder / "run", learning_rate=1e-3))
    assert "already holds a finished run with other settings (training.learning_rate: 0.005 there, 0.001 here)" \
        in message
    changed = frame.assign(sentiment=frame["sentiment"][::-1].to_numpy())
    assert "already holds a finished run on other data" in one_line_error(
        lambda: tiny_run(tiny_model, changed, folder / "run"))
    assert {p: p.stat().st_mtime_ns for p in (folder / "run").rglob("*") if p.is_file()} == before
    # a run of a data file: loaded while the file is as it was, refused once it changed after the run finished
    copy, reviews = tmp_path / "run", tmp_path / "reviews.csv"
    shutil.copytree(folder / "run", copy)
    shutil.copy(folder / "reviews.csv", reviews)
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    saved["data"].update(source=str(reviews), text_column="review", label_column="sentiment")
    (copy / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    shutil.rmtree(copy / "data")
    finished_at = (copy / "summary.json").stat().st_mtime
    os.utime(reviews, (finished_at - 60, finished_at - 60))
    arguments = dict(model=str(tiny_model), data=str(reviews), text_column="review", label_column="sentiment",
                     method={"name": "lora", "rank": 4}, output_dir=copy, config={"data": {"max_length": 32}},
                     **TRAINING)
    assert tljax.fine_tune(**arguments).metrics == run.metrics
    os.utime(reviews, (finished_at + 60, finished_at + 60))
    assert f"{reviews} changed after it finished" in one_line_error(lambda: tljax.fine_tune(**arguments))


def test_an_interrupted_run_resumes_to_the_parameters_of_an_uninterrupted_one(finished, tiny_model, monkeypatch):
    """The notebook's interrupt button is SIGINT in the kernel: the loop saves a checkpoint after that step."""
    from tljax import faults

    folder, frame, _ = finished
    steps = []

    def interrupt_at_the_third_step(name):
        steps.extend([name] if name == "step" else [])
        if len(steps) == 3 and name == "step":
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(faults, "point", interrupt_at_the_third_step)
    with pytest.raises(TrainingStopped, match=r"interrupted at step 3; checkpoint saved. Continue with "
                                              r"tljax.fine_tune\(\.\.\., resume=True\)"):
        tiny_run(tiny_model, frame, folder / "interrupted")
    monkeypatch.undo()
    assert "already holds a run" in one_line_error(lambda: tiny_run(tiny_model, frame, folder / "interrupted"))
    changed = frame.assign(sentiment=frame["sentiment"][::-1].to_numpy())
    assert "the data differs" in one_line_error(lambda: tiny_run(tiny_model, changed, folder / "interrupted",
                                                                 resume=True))
    tiny_run(tiny_model, frame, folder / "interrupted", resume=True)
    a, b = (load_file(folder / name / "export" / "trainable.safetensors") for name in ("run", "interrupted"))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_the_progress_bar_is_the_notebook_one_only_in_a_kernel(monkeypatch):
    import types

    from tqdm import tqdm

    from tljax import progress

    assert not progress.in_notebook() and type(progress.progress_bar(total=1, disable=True)) is tqdm
    kernel = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    assert progress.in_notebook()
    monkeypatch.setattr(progress.importlib.util, "find_spec", lambda name: None)  # no ipywidgets: the text bar
    assert type(progress.progress_bar(total=1, disable=True)) is tqdm
