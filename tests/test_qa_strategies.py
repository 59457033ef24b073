"""Question answering with the other strategies, on a tiny model: distillation of a reader (its loss by hand, a
distilled student run), continued pre-training on a QA set's passages, QA as one head of a multi-task run with
its export into PyTorch, and the strategies' config files. (The QA task itself: tests/test_qa.py.)"""

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
import yaml

from conftest import qa_config, write_reviews, write_squad, write_tagged
from tljax.train.__main__ import main

CONFIGS = Path(__file__).parents[1] / "configs"

# -- distillation -------------------------------------------------------------------------------------------------


def _log_softmax(x: np.ndarray) -> np.ndarray:
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def test_the_span_distillation_loss_equals_a_hand_computation():
    from tljax.train.qa_distill import span_distillation_loss

    rng = np.random.RandomState(0)
    student = rng.randn(3, 5, 2).astype(np.float32) * 2
    teacher = rng.randn(3, 7, 2).astype(np.float32) * 2  # the cached scores are max_length wide
    lengths, weights = [5, 3, 4], [1.0, 1.0, 0.0]  # the last row pads the batch
    starts, ends = [1, 0, 2], [3, 2, 3]
    mask = (np.arange(5)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    batch = {"attention_mask": jnp.asarray(mask), "weights": jnp.asarray(weights, jnp.float32),
             "start_positions": jnp.asarray(starts, jnp.int32), "end_positions": jnp.asarray(ends, jnp.int32),
             "teacher_scores": jnp.asarray(teacher)}
    t, alpha = 2.0, 0.3
    hard, soft = [], []
    for row in range(2):  # the real rows, over each one's real tokens
        n = lengths[row]
        log_p = [_log_softmax(student[row, :n, c].astype(np.float64)) for c in (0, 1)]
        hard.append(-(log_p[0][starts[row]] + log_p[1][ends[row]]) / 2)
        kl = []
        for c in (0, 1):  # start, end
            p_teacher = np.exp(_log_softmax(teacher[row, :n, c] / t))
            kl.append((p_teacher * (np.log(p_teacher) - _log_softmax(student[row, :n, c] / t))).sum())
        soft.append(np.mean(kl))
    expected = (1 - alpha) * np.mean(hard) + alpha * t * t * np.mean(soft)
    loss, metrics = span_distillation_loss(jnp.asarray(student), batch, t, alpha)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["soft_loss"]) == pytest.approx(np.mean(soft), rel=1e-5)
    assert float(metrics["hard_loss"]) == pytest.approx(np.mean(hard), rel=1e-5)
    # a student that scores as its teacher does has nothing left to learn from it
    same = span_distillation_loss(jnp.asarray(teacher[:, :5]), batch, t, alpha)[1]["soft_loss"]
    assert abs(float(same)) < 1e-6


def test_a_reader_distils_from_a_teacher_reader_on_its_windows(tmp_path, tiny_model, reader, capsys):
    teacher = reader[0] / "run"
    config = qa_config(tmp_path, tiny_model, max_steps=16)
    raw = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**raw, "distillation": {"teacher": str(teacher), "alpha": 0.5,
                                                                  "temperature": 2.0}}))
    capsys.readouterr()
    assert main(["--config", str(config)]) == 0
    assert "distillation: student F1" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    distilled, taught_by = summary["distillation"], json.loads((teacher / "summary.json").read_text())
    # the teacher read the student's test windows (the same data, tokenizer and max_length): its own test figures
    assert distilled["teacher"]["loss"] == pytest.approx(taught_by["test"]["loss"], abs=1e-5)
    assert distilled["teacher"]["f1"] == taught_by["test"]["f1"]
    assert distilled["student"]["f1"] == summary["test"]["f1"] and distilled["student"]["exact"] == \
        summary["test"]["exact"]
    # the same architecture as deployed (LoRA merged): as many parameters
    assert distilled["student"]["parameters"] == distilled["teacher"]["parameters"] > 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(record.get("soft_loss", 0) > 0 for record in logged)  # the teacher's term was trained on
    assert any(record.get("split") == "validation" for record in logged)


def test_a_teacher_that_reads_otherwise_is_refused_in_one_line(tmp_path, tiny_model, reader, capsys):
    # a student whose tokenizer numbers the words otherwise (the same network)
    other = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_model, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    # a teacher of another task
    tagger_like = tmp_path / "tagger-like"
    shutil.copytree(reader[0] / "run" / "export", tagger_like / "export")
    record = json.loads((tagger_like / "export" / "run.json").read_text())
    (tagger_like / "export" / "run.json").write_text(json.dumps({**record, "task": "token-classification"}))
    for name, model, teacher, expected in (
            ("tokenizer", other, reader[0] / "run", "tokenises text differently from the student"),
            ("task", tiny_model, tagger_like, "is a token-classification run; a reader learns from a question-")):
        (tmp_path / name).mkdir()
        config = qa_config(tmp_path / name, tiny_model)
        raw = yaml.safe_load(config.read_text())
        config.write_text(yaml.safe_dump({**raw, "model": str(model), "distillation": {"teacher": str(teacher)}}))
        capsys.readouterr()
        assert main(["--config", str(config)]) == 2
        error = capsys.readouterr().err.strip()
        assert expected in error and "\n" not in error and not (tmp_path / name / "run").exists(), error


# -- continued pre-training on the passages -----------------------------------------------------------------------


def test_continued_pretraining_reads_a_qa_sets_distinct_training_passages_only():
    from tljax.data import split_dataset
    from tljax.data.sources import load_questions
    from tljax.train.language_modelling import load_texts

    texts, questions = load_texts("qa-pt"), load_questions("qa-pt")
    assert len(texts) == len(set(texts.texts)) == len(set(questions.groups)) == 156  # each passage once
    assert set(texts.texts) == set(questions.contexts) and texts.language == "pt-BR"
    splits = split_dataset(texts, validation=0.1, test=0.1, seed=0)
    asked = split_dataset(questions, validation=0.1, test=0.1, seed=0)
    for name in ("train", "validation", "test"):  # the passages of the QA run's splits, split alike
        assert set(splits[name].texts) == set(asked[name].contexts), name
    held_out = {text for name in ("validation", "test") for text in splits[name].texts}
    assert len(splits["test"]) and not held_out & set(splits["train"].texts)


# -- multi-task ---------------------------------------------------------------------------------------------------


def test_question_answering_as_one_head_of_a_multi_task_run_exports_a_pytorch_reader(tmp_path, tiny_model):
    from tljax.data.answer_windows import encode_questions
    from tljax.data.batches import make_batch
    from tljax.predict import load_predictor
    from tljax.runs import load_exported

    config = {"model": str(tiny_model), "data": {"max_length": 32}, "method": {"name": "full"},
              "tasks": [{"name": "sentiment", "source": str(write_reviews(tmp_path / "reviews.csv")),
                         "text_column": "review", "label_column": "sentiment"},
                        {"name": "ner", "task": "token-classification",
                         "source": str(write_tagged(tmp_path / "tagged.jsonl"))},
                        {"name": "qa", "task": "question-answering", "source": str(write_squad(tmp_path / "squad.json")),
                         "stride": 8}],
              "training": {"learning_rate": 1e-2, "max_steps": 60, "per_device_train_batch_size": 16,
                           "eval_steps": 30, "early_stopping_patience": None, "task_sampling_temperature": 1.0,
                           "metric_for_best_model": "loss"},  # (beside the loss, the curves show the mean F1)
              "output_dir": str(tmp_path / "run")}
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--config", str(path)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    tasks = summary["test"]["tasks"]
    assert {"exact", "f1", "loss"} <= set(tasks["qa"]) and "per_type" in tasks["ner"] and "mcc" in tasks["sentiment"]
    assert summary["test"]["f1"] == pytest.approx(np.mean([m["f1"] for m in tasks.values()]))
    # 1.0, 1.0 and 0.71 measured (the answer is the passage's one POSITIVE word: a full model finds it)
    assert tasks["qa"]["f1"] > 0.8 and tasks["ner"]["f1"] > 0.8 and tasks["sentiment"]["accuracy"] > 0.6, tasks
    assert summary["tasks"]["qa"]["kind"] == "question-answering" and "validation f1" in summary["diagnosis"]

    export = tmp_path / "run" / "export" / "qa"
    model, tokenizer, info = load_exported(export)
    assert info.task == "question-answering" and info.labels == ("start", "end") and info.answers["allow_null"]
    # windows as the run reads them, the context's tokens typed 1 (a pair tokenizer's, as BERT's types them)
    windows = encode_questions(["the film", "the film"], ["a plot was great and it", "the story was dull"], None,
                               tokenizer, info.max_length)
    batch = make_batch(windows.encoded, [0, 1], 2, tokenizer.pad_token_id, info.max_length)
    batch["token_type_ids"] = np.stack([np.pad(place[:, 0] >= 0, (0, batch["input_ids"].shape[1] - len(place)))
                                        for place in windows.offsets]).astype(np.int32)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    ours = np.asarray(model(*map(jnp.asarray, inputs.values())))
    reference = transformers.AutoModelForQuestionAnswering.from_pretrained(export / "model").eval()
    assert type(reference).__name__ == "BertForQuestionAnswering"
    with torch.no_grad():
        out = reference(**{k: torch.tensor(v, dtype=torch.long) for k, v in inputs.items()})
    theirs = np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
    real = batch["attention_mask"] == 1
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-5, rtol=0)
    assert not np.allclose(ours[real][:, 0], ours[real][0, 0])  # the head was trained: its scores differ by token
    assert load_predictor(export)(["the film"], ["a plot was great and it"])[0]["answer"] == "great"
    assert load_predictor(tmp_path / "run" / "export" / "ner").info.task == "token-classification"
    assert load_predictor(tmp_path / "run" / "export" / "sentiment")(["a superb great film"])[0][0] == "pos"


# -- the config files ---------------------------------------------------------------------------------------------


def test_the_qa_strategy_configs_parse_with_the_packaged_models_and_their_tasks_accept_them():
    import importlib

    from tljax.train.config import load_config
    from tljax.train.multitask import parse_tasks
    from tljax.train.tasks import TASKS, task_of
    from tljax.zoo.registry import PACKAGED

    importlib.import_module("tljax.train.run")  # where the tasks register
    assert "question-answering" in TASKS

    configs = {name: load_config(CONFIGS / f"{name}.yaml") for name in (
        "qa_distillation", "qa_domain_pretraining", "qa_after_pretraining", "qa_multitask", "qa_cross_lingual")}
    for name, config in configs.items():
        task_of(config)  # the task reads every section the file has
        assert config.model in PACKAGED or name == "qa_after_pretraining", name
    distilled = configs["qa_distillation"]
    assert (distilled.model, distilled.task, distilled.distillation.teacher) == ("minilm-l3", "question-answering",
                                                                                 "runs/qa")
    teacher = load_config(CONFIGS / "qa.yaml")
    assert teacher.output_dir == "runs/qa" and (teacher.data.max_length, teacher.data.stride) == \
        (distilled.data.max_length, distilled.data.stride)  # the student's windows are the teacher's
    pretraining, after = configs["qa_domain_pretraining"], configs["qa_after_pretraining"]
    assert (pretraining.model, pretraining.task, pretraining.data.source) == ("e5-small", "masked-lm", "qa-pt")
    assert after.model == f"{pretraining.output_dir}/export/model" and after.task == "question-answering"
    assert after.data.source == "qa-pt" and after.data.text_prefix == "query: "
    multi = configs["qa_multitask"]
    assert multi.model == "minilm-l6" and multi.method["name"] == "lora"
    assert [(name, kind, data.source) for name, kind, data in parse_tasks(multi.tasks, multi.data)] == [
        ("sentiment", "sequence-classification", "rotten-tomatoes"), ("ner", "token-classification", "ner-en"),
        ("qa", "question-answering", "qa-en")]
    across = configs["qa_cross_lingual"]
    assert (across.model, across.data.source, across.data.text_prefix) == ("e5-small", "qa-en", "query: ")
    assert across.evaluation == {"qa-pt": {"source": "qa-pt", "split": "test"}} and across.method["name"] == "lora"
