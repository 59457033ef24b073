"""Question answering through the command on a tiny model: train, resume bit-exact, export into PyTorch and PEFT
with equal span scores, predict; cached features for feature extraction. (Metrics, readers, windows and the
methods: tests/test_qa.py.)"""

import json
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from conftest import cli_env, qa_config
from tljax.train.__main__ import main


def test_a_qa_run_resumes_exports_into_pytorch_and_predicts(tmp_path, tiny_model, reader, capsys):
    straight, out = reader
    assert "exact match" in out and "baseline" in out and "AutoModelForQuestionAnswering" in out
    summary = json.loads((straight / "run" / "summary.json").read_text())
    assert {"exact", "f1", "loss"} <= set(summary["test"])
    history = [json.loads(line) for line in (straight / "run" / "metrics.jsonl").read_text().splitlines()]
    validation = [h for h in history if h.get("split") == "validation"]  # it holds unanswerable questions
    assert {"has_answer_f1", "no_answer_f1", "no_answer_questions"} <= set(validation[-1])
    # the model learnt where answers are: above the most-similar-sentence baseline (the whole passage here)
    assert summary["test"]["f1"] > summary["baseline"]["f1"]

    # killed after its step-32 checkpoint, resumed: the same parameters as the straight run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    config = qa_config(resumed, tiny_model)
    process = subprocess.Popen([sys.executable, "-m", "tljax.train", "--config", str(config)], env=cli_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint, deadline = resumed / "run" / "checkpoints" / "latest" / "32", time.time() + 240
    while not checkpoint.is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert checkpoint.is_dir() and not (resumed / "run" / "summary.json").exists()
    assert main(["--config", str(config), "--resume"]) == 0
    a, b = (load_file(run / "run" / "export" / "trainable.safetensors") for run in (straight, resumed))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    # the Hugging Face directory and the PEFT QUESTION_ANS adapter give PyTorch the same span scores
    from peft import AutoPeftModelForQuestionAnswering

    from tljax.runs import load_exported

    export = straight / "run" / "export"
    model, tokenizer, info = load_exported(export)
    assert info.task == "question-answering" and info.answers["allow_null"] is True
    # the null threshold was chosen on validation (auto), and the export answers with the one the test used
    assert info.answers["threshold_source"] == "validation"
    assert info.answers["null_score_diff_threshold"] == summary["test"]["null_threshold"]
    encoded = tokenizer(["the film", "the plot"], ["it was good and the actors dull", "a story"], padding=True,
                        return_tensors="np")
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
              "token_type_ids": encoded.get("token_type_ids", np.zeros_like(encoded["input_ids"]))}
    ours = np.asarray(model(*(jnp.asarray(inputs[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))))
    real = encoded["attention_mask"] == 1
    for loaded in (transformers.AutoModelForQuestionAnswering.from_pretrained(export / "model"),
                   AutoPeftModelForQuestionAnswering.from_pretrained(export / "adapter")):
        with torch.no_grad():
            out = loaded.eval()(**{k: torch.tensor(v) for k, v in inputs.items()})
        theirs = np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
        np.testing.assert_allclose(ours[real], theirs[real], atol=1e-5, rtol=0)

    from tljax.predict import main as predict

    context = "the plot was a story and the actors were great"
    assert predict(["--json", str(straight / "run"), "--question", "the film", "--context", context]) == 0
    found = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert found["question"] == "the film" and set(found) >= {"answer", "start", "end", "score", "answered"}
    if found["answered"]:
        assert context[found["start"]:found["end"]] == found["answer"]
    (tmp_path / "context.txt").write_text(context)
    assert predict([str(straight / "run"), "--question", "the film", "--context-file",
                    str(tmp_path / "context.txt")]) == 0
    printed = capsys.readouterr().out
    assert "the film" in printed and ("probability" in printed or "does not answer" in printed)


@pytest.mark.parametrize("arguments, expected", [
    (["--question", "the film"], "give the context once"),
    (["--question", "", "--context", "a plot"], "a question is missing or empty"),
    (["a text"], "is a question-answering run: give --question"),
    (["--question", "the film", "--context", "   "], "the context is empty"),
])
def test_predict_refuses_a_wrong_call_in_one_line(reader, capsys, arguments, expected):
    from tljax.predict import main as predict

    straight, _ = reader
    assert predict([str(straight / "run"), *arguments]) == 2
    error = capsys.readouterr().err
    assert expected in error and error.count("\n") == 1


def test_feature_extraction_trains_the_span_head_on_cached_features(tmp_path, tiny_model, capsys):
    config = qa_config(tmp_path, tiny_model, method={"name": "feature-extraction"}, max_steps=24,
                       learning_rate=3e-2)
    assert main(["--config", str(config)]) == 0
    assert "the frozen backbone encodes" in capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if h.get("split") == "train"]
    assert losses[-1] < losses[0]
    trained = load_file(tmp_path / "run" / "export" / "trainable.safetensors")
    assert set(trained) == {"qa_outputs/bias", "qa_outputs/kernel"}  # only the head trained
    assert summary["test"]["f1"] >= 0
