"""Token classification through the command on a tiny model: train, resume, export into PyTorch and PEFT,
predict; the CRF layer; cached per-token features; NER in a multi-task run; distillation of a tagger; continued
pre-training on the NER set's text. (Metrics, readers, alignment and the methods: tests/test_tagging.py.)"""

import json
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import torch
import transformers
import yaml
from flax import nnx
from safetensors.numpy import load_file

from conftest import cli_env, tagging_config, write_tagged
from tljax.train.__main__ import main

# -- the command on a tiny model ----------------------------------------------------------------------------------


def test_a_tagging_run_resumes_exports_into_pytorch_and_predicts(tmp_path, tiny_model, tagger, capsys):
    straight, out = tagger
    assert "entity F1" in out and "baseline" in out and "AutoModelForTokenClassification" in out
    summary = json.loads((straight / "run" / "summary.json").read_text())
    # 0.90 measured (the baseline, each word's most frequent tag, is perfect on this data: entity words are
    # entities wherever they occur; the real-model tests hold trained models to it)
    assert summary["test"]["f1"] > 0.5 and summary["baseline"]["f1"] == 1.0
    assert set(summary["test"]["per_type"]) == {"LOC", "PER"}

    # killed after its step-16 checkpoint, resumed: the same parameters as the straight run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    config = tagging_config(resumed, tiny_model)
    process = subprocess.Popen([sys.executable, "-m", "tljax.train", "--config", str(config)], env=cli_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint, deadline = resumed / "run" / "checkpoints" / "latest" / "16", time.time() + 240
    while not checkpoint.is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert checkpoint.is_dir() and not (resumed / "run" / "summary.json").exists()
    assert main(["--config", str(config), "--resume"]) == 0
    a, b = (load_file(run / "run" / "export" / "trainable.safetensors") for run in (straight, resumed))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    # the Hugging Face directory and the PEFT TOKEN_CLS adapter give PyTorch the same logits
    from peft import AutoPeftModelForTokenClassification

    from tljax.runs import load_exported

    export = straight / "run" / "export"
    model, tokenizer, info = load_exported(export)
    assert info.task == "token-classification" and info.labels == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
    encoded = tokenizer(["the film was good in awful", "a plot"], padding=True, return_tensors="np")
    ours = np.asarray(model(jnp.asarray(encoded["input_ids"]), jnp.asarray(encoded["attention_mask"])))
    real = encoded["attention_mask"] == 1
    for loaded in (transformers.AutoModelForTokenClassification.from_pretrained(export / "model"),
                   AutoPeftModelForTokenClassification.from_pretrained(export / "adapter", num_labels=5)):
        with torch.no_grad():
            theirs = loaded.eval()(input_ids=torch.tensor(encoded["input_ids"]),
                                   attention_mask=torch.tensor(encoded["attention_mask"])).logits.numpy()
        np.testing.assert_allclose(ours[real], theirs[real], atol=1e-5, rtol=0)

    from tljax.predict import main as predict

    assert predict(["--json", str(straight / "run"), "the plot was a story great dull"]) == 0
    found = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["entities"]
    text = "the plot was a story great dull"
    assert all(text[e["start"]:e["end"]] == e["text"] for e in found)
    assert {(e["text"], e["label"]) for e in found} == {("great", "PER"), ("dull", "LOC")}


# -- the CRF layer ------------------------------------------------------------------------------------------------


def test_crf_likelihood_and_viterbi_equal_pytorch_crf():
    from torchcrf import CRF as TorchCRF

    from tljax.models.crf import CRF, compact
    from tljax.tagging import viterbi

    rng = np.random.RandomState(0)
    tags_count, lengths = 5, [7, 3, 1, 5]
    reference = TorchCRF(tags_count, batch_first=True)
    ours = CRF(tags_count, rngs=nnx.Rngs(0))
    for name in ("start_transitions", "end_transitions", "transitions"):  # the same (random) parameters
        getattr(ours, name)[...] = jnp.asarray(getattr(reference, name).detach().numpy())
    emissions = rng.randn(len(lengths), 7, tags_count).astype(np.float32)
    tags = rng.randint(0, tags_count, (len(lengths), 7))
    mask = (np.arange(7)[None] < np.asarray(lengths)[:, None])
    with torch.no_grad():
        expected = reference(torch.tensor(emissions), torch.tensor(tags), torch.tensor(mask), reduction="none")
        paths = reference.decode(torch.tensor(emissions), torch.tensor(mask))
    got = ours.log_likelihood(jnp.asarray(emissions), jnp.asarray(tags), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), expected.numpy(), atol=1e-5, rtol=0)
    start, end, transitions = ours.numpy_parameters()
    for row, n in enumerate(lengths):
        assert viterbi(emissions[row, :n].astype(np.float64), start, end, transitions) == paths[row]
    # labelled positions scattered in a row (first sub-tokens) read as one sequence
    scattered = np.zeros((1, 9), bool)
    scattered[0, [1, 4, 5, 8]] = True
    values, real = compact(jnp.arange(9)[None], jnp.asarray(scattered))
    assert np.asarray(values)[0, :4].tolist() == [1, 4, 5, 8] and np.asarray(real)[0].tolist() == [1] * 4 + [0] * 5


def test_a_crf_run_exports_its_transitions_beside_the_model_and_decodes_with_them(tmp_path, tiny_model, capsys):
    config = tagging_config(tmp_path, tiny_model, max_steps=16)
    raw = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**raw, "crf": True}))
    assert main(["--config", str(config)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["f1"] > 0.5
    export = run / "export"
    crf = load_file(export / "crf.safetensors")
    assert set(crf) == {"start_transitions", "end_transitions", "transitions"} and crf["transitions"].shape == (5, 5)
    # the Hugging Face model is the emission model, without the CRF
    assert not any("crf" in name for name in load_file(export / "model" / "model.safetensors"))
    from tljax.runs import load_exported

    model, _, info = load_exported(export)
    assert info.crf and np.array_equal(np.asarray(model.crf.transitions[...]), crf["transitions"])
    assert json.loads((export / "run.json").read_text())["crf"] is True

    from tljax.predict import main as predict

    capsys.readouterr()
    assert predict(["--json", str(run), "the plot was a story great dull"]) == 0
    found = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["entities"]
    assert {(e["text"], e["label"]) for e in found} == {("great", "PER"), ("dull", "LOC")}


def test_feature_extraction_trains_the_tagger_on_cached_features_with_the_same_result(tmp_path, tiny_model):
    """Per-token features computed once give the head (and a CRF) the same training as the whole model."""
    import dataclasses

    from tljax.train.config import load_config
    from tljax.train.loop import train
    from tljax.train.run import prepare
    from tljax.train.tagging import TokenClassification, TokenFeatureClassification

    config = load_config(tagging_config(tmp_path, tiny_model, {"name": "feature-extraction"}, max_steps=8,
                                        eval_steps=4), ["crf=true"])
    fast, slow = prepare(config), prepare(config)
    assert type(fast.objective) is TokenFeatureClassification
    assert "input_ids" not in next(fast.objective.train_batches(16, 0))  # the backbone does not run per step
    slow.objective = TokenClassification(**{f.name: getattr(slow.objective, f.name)
                                            for f in dataclasses.fields(TokenClassification) if f.init})
    results = {}
    for name, prepared in (("fast", fast), ("slow", slow)):
        (tmp_path / name).mkdir()
        summary = train(prepared, tmp_path / name)
        results[name] = (summary["test"], load_file(tmp_path / name / "export" / "trainable.safetensors"),
                         load_file(tmp_path / name / "export" / "crf.safetensors"))
    (fast_test, fast_params, fast_crf), (slow_test, slow_params, slow_crf) = results["fast"], results["slow"]
    assert fast_params.keys() == slow_params.keys() == {"classifier/kernel", "classifier/bias"}
    for name in fast_params:
        np.testing.assert_allclose(fast_params[name], slow_params[name], atol=2e-5, err_msg=name)
    for name in fast_crf:
        assert not np.allclose(fast_crf[name], 0)
        np.testing.assert_allclose(fast_crf[name], slow_crf[name], atol=2e-5, err_msg=name)
    assert fast_test["f1"] == slow_test["f1"]
    np.testing.assert_allclose(fast_test["loss"], slow_test["loss"], atol=1e-5)


def test_continued_pretraining_reads_the_ner_sets_training_documents_only():
    from tljax.data import split_dataset
    from tljax.train.language_modelling import load_texts

    texts = load_texts("ner-pt")
    splits = split_dataset(texts, validation=0.1, test=0.1, seed=0)
    held_out = {g for name in ("validation", "test") for g in splits[name].groups}
    assert len(splits["train"]) == 628 and not held_out & set(splits["train"].groups)
    assert texts.language == "pt-BR" and "[" not in "".join(texts.texts)  # plain text, no markup


def test_ner_as_one_head_of_a_multi_task_run(tmp_path, tiny_model):
    from conftest import write_reviews
    from tljax.predict import load_predictor

    config = {"model": str(tiny_model), "data": {"max_length": 32}, "method": {"name": "full"},
              "tasks": [{"name": "sentiment", "source": str(write_reviews(tmp_path / "reviews.csv")),
                         "text_column": "review", "label_column": "sentiment"},
                        {"name": "ner", "task": "token-classification",
                         "source": str(write_tagged(tmp_path / "tagged.jsonl"))}],
              "training": {"learning_rate": 1e-2, "max_steps": 48, "per_device_train_batch_size": 16,
                           "eval_steps": 24, "early_stopping_patience": None, "task_sampling_temperature": 1.0},
              "output_dir": str(tmp_path / "run")}
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--config", str(path)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    ner, sentiment = summary["test"]["tasks"]["ner"], summary["test"]["tasks"]["sentiment"]
    assert "per_type" in ner and ner["f1"] > 0.5 and sentiment["accuracy"] > 0.7, (ner["f1"], sentiment["accuracy"])
    assert summary["tasks"]["ner"]["kind"] == "token-classification"
    # each task exports as its own kind of model
    tagger = load_predictor(tmp_path / "run" / "export" / "ner")
    assert tagger.info.task == "token-classification" and tagger.labels == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
    found = tagger(["the plot was a story great dull"])[0]
    assert {(e["text"], e["label"]) for e in found} == {("great", "PER"), ("dull", "LOC")}
    assert load_predictor(tmp_path / "run" / "export" / "sentiment")(["a superb great film"])[0][0] == "pos"
    assert transformers.AutoConfig.from_pretrained(tmp_path / "run" / "export" / "ner" / "model").architectures == \
        ["BertForTokenClassification"]


def test_a_tagger_distils_from_a_teacher_tagger(tmp_path, tiny_model, tagger, capsys):
    teacher_dir, student_dir = tagger[0], tmp_path / "student"
    student_dir.mkdir()
    config = tagging_config(student_dir, tiny_model)
    raw = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**raw, "distillation": {"teacher": str(teacher_dir / "run"), "alpha": 0.5,
                                                                  "temperature": 2.0}}))
    assert main(["--config", str(config)]) == 0
    summary = json.loads((student_dir / "run" / "summary.json").read_text())
    distilled = summary["distillation"]
    assert distilled["teacher"]["f1"] > 0.5 and distilled["student"]["f1"] == summary["test"]["f1"] > 0.5
    logged = [json.loads(line) for line in (student_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(record.get("soft_loss", 0) > 0 for record in logged)  # the teacher's term was trained on
    # a teacher whose tags differ is refused before anything is written
    capsys.readouterr()
    config.write_text(yaml.safe_dump({**raw, "output_dir": str(student_dir / "other"),
                                      "data": {**raw["data"], "labels": ["PER", "LOC"]},
                                      "distillation": {"teacher": str(teacher_dir / "run")}}))
    assert main(["--config", str(config)]) == 2
    assert "the same tags" in capsys.readouterr().err and not (student_dir / "other").exists()
