"""Distillation, continued pre-training, multi-task learning and cross-lingual evaluation (tiny models)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from conftest import FILLER, NEGATIVE, POSITIVE, WORDS, save_word_tokenizer, write_reviews
from tljax.train.__main__ import main

TRAINING = {"learning_rate": 1e-2, "max_steps": 24, "per_device_train_batch_size": 16, "eval_steps": 8,
            "logging_steps": 4, "early_stopping_patience": None}


def write_config(tmp_path: Path, name: str, config: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / name), **config}))
    return path


def reviews_data(tmp_path: Path, **extra) -> dict:
    return {"source": str(write_reviews(tmp_path / "reviews.csv")), "text_column": "review",
            "label_column": "sentiment", "labels": ["neg", "pos"], "max_length": 32, **extra}


def summary_of(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / name / "summary.json").read_text())


@pytest.fixture(scope="module")
def teacher(tiny_model, tmp_path_factory) -> Path:
    """A tiny BERT fully fine-tuned on the tiny reviews: the teacher of the distillation tests."""
    tmp_path = tmp_path_factory.mktemp("teacher")
    config = write_config(tmp_path, "teacher", {"model": str(tiny_model), "data": reviews_data(tmp_path),
                                                "method": {"name": "full"}, "training": TRAINING})
    assert main(["--config", str(config)]) == 0
    assert summary_of(tmp_path, "teacher")["test"]["accuracy"] > 0.8
    return tmp_path / "teacher"


# ---------------------------------------------------------------------------------------------- distillation


def test_a_student_learns_from_the_teacher_alone(tmp_path, tiny_model, teacher):
    """alpha = 1: no label reaches the student, only the teacher's soft targets; it still learns the task,
    from a one-layer student cut out of the two-layer model, and the report compares the two."""
    config = write_config(tmp_path, "student", {
        "model": str(tiny_model), "data": reviews_data(tmp_path), "method": {"name": "full"},
        "distillation": {"teacher": str(teacher), "alpha": 1.0, "temperature": 2.0, "student_layers": [1]},
        "training": TRAINING})
    assert main(["--config", str(config)]) == 0
    summary = summary_of(tmp_path, "student")
    assert summary["test"]["accuracy"] > 0.8, summary["test"]
    report = summary["distillation"]
    assert report["teacher"]["accuracy"] > 0.8
    assert report["student"]["parameters"] < report["teacher"]["parameters"]
    assert report["accuracy_retained"] == pytest.approx(summary["test"]["accuracy"] / report["teacher"]["accuracy"])
    assert report["student"]["examples_per_second"] > 0 and report["speed_up"] > 0
    records = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    soft = [r for r in records if r["split"] == "train"]
    assert soft, "training steps are logged"

    from tljax.predict import Predictor

    predictor = Predictor.load(tmp_path / "student")  # the one-layer student reloads from its export
    assert predictor(["a great superb film"])[0][0] == "pos"
    assert predictor(["an awful dull movie"])[0][0] == "neg"
    exported = json.loads((tmp_path / "student" / "export" / "model" / "config.json").read_text())
    assert exported["num_hidden_layers"] == 1


def test_hidden_state_matching_trains_projections_and_leaves_the_teacher_untouched(tmp_path, tiny_model, teacher):
    from tljax.train.config import load_config
    from tljax.runs import FINAL_STEP
    from tljax.train.run import prepare
    from tljax.train.step import split

    config_path = write_config(tmp_path, "hidden", {
        "model": str(tiny_model), "data": reviews_data(tmp_path), "method": {"name": "full"},
        "distillation": {"teacher": str(teacher), "hidden_weight": 1.0}, "training": TRAINING})
    prepared = prepare(load_config(config_path))
    adaptation = prepared.adaptation
    _, trainable, frozen = split(adaptation.model, adaptation.trainable(FINAL_STEP))
    paths = {"/".join(map(str, p)) for p, _ in __import__("flax").nnx.to_flat_state(trainable)}
    assert any(p.startswith("distillation/projections/") for p in paths)
    assert not any(p.startswith("distillation/teacher/") for p in paths)
    # methods whose patterns also match the teacher's paths (biases, LoRA) still leave it frozen
    mixed = prepare(load_config(config_path, ["method=[{name: bitfit}, {name: lora, rank: 4}]"])).adaptation
    mixed_paths = {"/".join(map(str, p)) for p, _ in
                   __import__("flax").nnx.to_flat_state(split(mixed.model, mixed.trainable(FINAL_STEP))[1])}
    assert any(p.endswith("lora_a") for p in mixed_paths) and any(p.endswith("bias") for p in mixed_paths)
    assert not any(p.startswith("distillation/teacher/") for p in mixed_paths)
    teacher_before = {p: np.asarray(v.get_value()) for p, v in
                      __import__("flax").nnx.to_flat_state(__import__("flax").nnx.state(adaptation.model.distillation.teacher))}

    assert main(["--config", str(config_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "hidden" / "metrics.jsonl").read_text().splitlines()]
    assert summary_of(tmp_path, "hidden")["test"]["accuracy"] > 0.75
    # the teacher object used for the run is never updated (its state lives in the frozen half)
    teacher_after = {p: np.asarray(v.get_value()) for p, v in
                     __import__("flax").nnx.to_flat_state(__import__("flax").nnx.state(adaptation.model.distillation.teacher))}
    assert all(np.array_equal(teacher_before[p], teacher_after[p]) for p in teacher_before)
    assert records
    # the export is the student alone: no teacher, no projections
    saved = load_file(tmp_path / "hidden" / "export" / "trainable.safetensors")
    assert saved and not any(name.startswith("distillation") for name in saved)


def test_hidden_state_loss_falls(tmp_path, tiny_model, teacher):
    """The hidden-state term alone (alpha 0 keeps only the label loss besides it) decreases in training."""
    from tljax.train.config import load_config
    from tljax.runs import FINAL_STEP
    from tljax.train.optim import OptimizerConfig, build_optimizer
    from tljax.train.run import prepare
    from tljax.train.sharding import data_mesh, replicate, shard_batch
    from tljax.train.step import make_train_step, split

    import jax

    config_path = write_config(tmp_path, "hidden-loss", {
        "model": str(tiny_model), "data": reviews_data(tmp_path), "method": {"name": "full"},
        "distillation": {"teacher": str(teacher), "hidden_weight": 1.0, "alpha": 0.0}, "training": TRAINING})
    prepared = prepare(load_config(config_path))
    objective, adaptation = prepared.objective, prepared.adaptation
    graphdef, trainable, frozen = split(adaptation.model, adaptation.trainable(FINAL_STEP))
    tx = build_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=0), 40, adaptation.new_parameter_rules())
    mesh = data_mesh()
    opt_state = tx.init(trainable)
    trainable, frozen, opt_state = replicate((trainable, frozen, opt_state), mesh)
    step = make_train_step(graphdef, objective.loss, tx)
    batches = objective.train_batches(16, 0)
    losses = []
    for number in range(40):
        trainable, opt_state, metrics = step(trainable, frozen, opt_state, shard_batch(next(batches), mesh),
                                             jax.random.key(number))
        losses.append(float(metrics["hidden_loss"]))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_distillation_refuses_a_teacher_for_other_labels_and_another_tokenizer(tmp_path, tiny_model, teacher,
                                                                                capsys):
    other = tmp_path / "other.csv"
    write_reviews(other, label_names=("bad", "good"))
    config = write_config(tmp_path, "labels", {
        "model": str(tiny_model), "method": {"name": "full"}, "training": TRAINING,
        "data": {"source": str(other), "text_column": "review", "label_column": "sentiment", "max_length": 32},
        "distillation": {"teacher": str(teacher)}})
    assert main(["--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "the teacher" in error and "predicts labels ['neg', 'pos']" in error and "['bad', 'good']" in error
    assert not (tmp_path / "labels").exists()

    # a student with its own tokenizer: logits distillation is fine, hidden-state matching is refused
    student_dir = tmp_path / "student-model"
    student_dir.mkdir()
    for item in tiny_model.iterdir():
        if item.is_file():
            (student_dir / item.name).write_bytes(item.read_bytes())
    vocab = json.loads((student_dir / "tokenizer.json").read_text())
    vocab["model"]["vocab"] = {w: i for i, w in enumerate(reversed(WORDS))}
    (student_dir / "tokenizer.json").write_text(json.dumps(vocab))
    config = write_config(tmp_path, "tokenizer", {
        "model": str(student_dir), "data": reviews_data(tmp_path), "method": {"name": "full"}, "training": TRAINING,
        "distillation": {"teacher": str(teacher), "hidden_weight": 1.0}})
    assert main(["--config", str(config)]) == 2
    assert "share a tokenizer" in capsys.readouterr().err

    config = write_config(tmp_path, "missing", {"model": str(tiny_model), "data": reviews_data(tmp_path),
                                                "distillation": {"teacher": str(tmp_path / "nowhere")}})
    assert main(["--config", str(config)]) == 2
    assert "a teacher is a finished tljax run" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ continued pre-training


def write_text(path: Path, documents: int = 300, seed: int = 1) -> Path:
    """Unlabelled 'domain' text with structure to learn: sentences of one template, some words free."""
    rng = np.random.RandomState(seed)
    lines = []
    for _ in range(documents):
        words = []
        for _ in range(rng.randint(1, 4)):
            words += ["the", rng.choice(["film", "movie"]), "was", rng.choice(["really", "quite"]),
                      rng.choice(POSITIVE + NEGATIVE)]
        lines.append(" ".join(words))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_masked_lm_lowers_the_held_out_loss_and_the_result_fine_tunes(tmp_path, tiny_model):
    text = write_text(tmp_path / "domain.txt")
    config = write_config(tmp_path, "mlm", {
        "model": str(tiny_model), "task": "masked-lm", "data": {"source": str(text), "max_length": 16},
        "method": {"name": "full"},
        "training": {**TRAINING, "max_steps": 40, "metric_for_best_model": "loss"}})
    assert main(["--config", str(config)]) == 0
    summary = summary_of(tmp_path, "mlm")
    before, after = summary["before"]["test"]["loss"], summary["test"]["loss"]
    assert after < 0.8 * before, (before, after)
    assert summary["test"]["perplexity"] < summary["before"]["test"]["perplexity"]
    records = [json.loads(line) for line in (tmp_path / "mlm" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and records[0]["split"] == "validation"  # the starting point is on the curve
    model_dir = tmp_path / "mlm" / "export" / "model"
    assert json.loads((model_dir / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    from tljax.predict import Predictor

    with pytest.raises(ValueError, match="not a classifier; fine-tune from it"):
        Predictor.load(tmp_path / "mlm")

    # LoRA on a masked-LM model: PEFT has no layout for it, so the export is the merged model alone (with a warning)
    config = write_config(tmp_path, "mlm-lora", {
        "model": str(tiny_model), "task": "masked-lm", "data": {"source": str(text), "max_length": 16},
        "method": {"name": "lora", "rank": 2}, "training": {**TRAINING, "max_steps": 4, "metric_for_best_model": "loss"}})
    assert main(["--config", str(config)]) == 0
    assert (tmp_path / "mlm-lora" / "export" / "model" / "config.json").is_file()
    assert not (tmp_path / "mlm-lora" / "export" / "adapter").exists()

    # fine-tuning starts from the continued pre-training's result
    config = write_config(tmp_path, "downstream", {"model": str(model_dir), "data": reviews_data(tmp_path),
                                                   "method": {"name": "full"}, "training": TRAINING})
    assert main(["--config", str(config)]) == 0
    assert summary_of(tmp_path, "downstream")["test"]["accuracy"] > 0.75


def test_masking_follows_bert(tiny_model):
    from transformers import AutoTokenizer

    from tljax.train.language_modelling import encode_windows, mask_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, len(WORDS), (400, 50)).astype(np.int32)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "weights": np.ones(400, np.float32)}
    masked = mask_tokens(batch, np.random.default_rng(1), mask_id=tokenizer.mask_token_id, vocab_size=len(WORDS),
                         special_ids=np.asarray(tokenizer.all_special_ids))
    chosen = masked["labels"] != -100
    assert abs(chosen[:, 1:-1].mean() - 0.15) < 0.01
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # special tokens are never targets
    assert np.array_equal(masked["labels"][chosen], ids[chosen])
    as_mask = masked["input_ids"][chosen] == tokenizer.mask_token_id
    unchanged = masked["input_ids"][chosen] == ids[chosen]
    assert abs(as_mask.mean() - 0.8) < 0.03
    assert abs(unchanged.mean() - (0.1 + 0.1 / len(WORDS))) < 0.03
    assert np.array_equal(masked["input_ids"][~chosen], ids[~chosen])
    again = mask_tokens(batch, np.random.default_rng(1), mask_id=tokenizer.mask_token_id, vocab_size=len(WORDS),
                        special_ids=np.asarray(tokenizer.all_special_ids))
    assert np.array_equal(again["input_ids"], masked["input_ids"])  # the same position, the same masks

    # rows are capped at max_targets(T) masked tokens (one compiled shape for the gathered positions)
    from tljax.train.language_modelling import max_targets

    short = {k: v[:, :8] for k, v in batch.items() if k != "weights"} | {"weights": batch["weights"]}
    capped = mask_tokens({**short, "attention_mask": np.ones_like(short["input_ids"])}, np.random.default_rng(2),
                         mask_id=4, vocab_size=len(WORDS), special_ids=np.asarray([2, 3]))
    assert ((capped["labels"] != -100).sum(1) <= max_targets(8)).all()

    # long documents are cut into windows, each framed by the special tokens
    windows = encode_windows(("good film " * 20,), tokenizer, 16)
    assert len(windows) == 3 and all(w[0] == tokenizer.cls_token_id and w[-1] == tokenizer.sep_token_id
                                     for w in windows.ids)
    assert sum(len(w) - 2 for w in windows.ids) == 40


def test_masked_lm_loss_at_the_masked_positions_equals_the_loss_over_all_logits(tiny_model):
    """Training scores only the masked positions; the result is the full-vocabulary loss over every position."""
    import jax.numpy as jnp
    from transformers import AutoTokenizer

    from tljax.models import BertForMaskedLM
    from tljax.train.language_modelling import mask_tokens, masked_lm_loss
    from tljax.train.losses import language_model_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = BertForMaskedLM.from_pretrained(tiny_model, seed=1)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, len(WORDS), (6, 20)).astype(np.int32)
    mask = (np.arange(20)[None] < rng.integers(8, 21, (6, 1))).astype(np.int32)
    batch = mask_tokens({"input_ids": ids * mask, "attention_mask": mask, "weights": np.ones(6, np.float32)},
                        rng, mask_id=tokenizer.mask_token_id, vocab_size=len(WORDS),
                        special_ids=np.asarray(tokenizer.all_special_ids))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    gathered, _ = masked_lm_loss(model, batch, None)
    full, _ = language_model_loss(model, batch, None)
    np.testing.assert_allclose(float(gathered), float(full), rtol=1e-6)


def test_causal_lm_lowers_the_held_out_loss(tmp_path):
    from tljax.models import DecoderConfig, LlamaForCausalLM

    directory = tmp_path / "tiny-llama"
    config = DecoderConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                           tie_word_embeddings=True)
    LlamaForCausalLM.from_config(config, seed=0).save_pretrained(directory)
    # after the model: writing a model directory replaces it whole
    save_word_tokenizer(directory, bert=False)
    text = write_text(tmp_path / "domain.txt")
    run = write_config(tmp_path, "clm", {
        "model": str(directory), "task": "causal-lm", "data": {"source": str(text), "max_length": 16},
        "method": {"name": "full"},
        "training": {**TRAINING, "max_steps": 40, "metric_for_best_model": "perplexity"}})
    assert main(["--config", str(run)]) == 0
    summary = summary_of(tmp_path, "clm")
    assert summary["test"]["loss"] < 0.8 * summary["before"]["test"]["loss"], summary
    assert summary["best_step"] == max(step for step in (8, 16, 24, 32, 40))  # perplexity: lower is better


def test_continued_pretraining_errors(tmp_path, tiny_model, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    config = write_config(tmp_path, "empty", {"model": str(tiny_model), "task": "masked-lm",
                                              "data": {"source": str(empty)}, "method": {"name": "full"},
                                              "training": {"metric_for_best_model": "loss"}})
    assert main(["--config", str(config)]) == 2
    assert "has no text" in capsys.readouterr().err and not (tmp_path / "empty").exists()

    config = write_config(tmp_path, "metric", {"model": str(tiny_model), "task": "masked-lm",
                                               "data": {"source": str(write_text(tmp_path / "t.txt"))},
                                               "method": {"name": "full"},
                                               "training": {"metric_for_best_model": "f1"}})
    assert main(["--config", str(config)]) == 2
    assert "valid: loss, perplexity, accuracy" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- multi-task


def write_topics(path: Path, n: int = 240, seed: int = 3) -> Path:
    """A second task on the same vocabulary: does the text mention the actors?"""
    rng = np.random.RandomState(seed)
    others = [w for w in FILLER if w != "actors"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(n):
            words = list(rng.choice(others, rng.randint(3, 8))) + (["actors"] if i % 2 else [])
            rng.shuffle(words)
            writer.writerow([" ".join(words), "cast" if i % 2 else "other"])
    return path


def test_multi_task_trains_every_head_and_reports_each_task(tmp_path, tiny_model):
    tasks = [{"name": "sentiment", "source": str(write_reviews(tmp_path / "reviews.csv")), "text_column": "review",
              "label_column": "sentiment"},
             {"name": "cast", "source": str(write_topics(tmp_path / "topics.csv")), "text_prefix": "the "}]
    config = write_config(tmp_path, "multi", {
        "model": str(tiny_model), "tasks": tasks, "data": {"max_length": 32}, "method": {"name": "full"},
        "training": {**TRAINING, "max_steps": 48, "task_sampling_temperature": 1.0}})
    assert main(["--config", str(config)]) == 0
    summary = summary_of(tmp_path, "multi")
    assert set(summary["test"]["tasks"]) == {"sentiment", "cast"}
    for name, metrics in summary["test"]["tasks"].items():
        assert metrics["accuracy"] > 0.75, (name, metrics)
        assert {"precision", "recall", "f1", "mcc", "confusion_matrix"} <= set(metrics)
    assert summary["test"]["accuracy"] == pytest.approx(np.mean([m["accuracy"] for m in summary["test"]["tasks"].values()]))
    assert summary["tasks"]["sentiment"]["sampling_probability"] == pytest.approx(0.5, abs=0.05)

    from tljax.predict import Predictor

    sentiment = Predictor.load(tmp_path / "multi" / "export" / "sentiment")
    cast = Predictor.load(tmp_path / "multi" / "export" / "cast")
    assert sentiment.labels == ["neg", "pos"] and cast.labels == ["cast", "other"]
    assert sentiment.info.text_prefix == "" and cast.info.text_prefix == "the "  # as each task trained
    assert sentiment(["a superb great film"])[0][0] == "pos"
    assert cast(["the actors and the story"])[0][0] == "cast"
    assert cast(["the story and the plot"])[0][0] == "other"
    with pytest.raises(ValueError, match="multi-task run with one export per task; name one: .*export/cast, "
                                         ".*export/sentiment"):
        Predictor.load(tmp_path / "multi")


def test_task_sampling_and_its_resumable_order():
    from tljax.data.batches import BatchIterator, Encoded
    from tljax.train.multitask import MixtureBatches, sampling_probabilities

    assert sampling_probabilities([900, 100], 1.0) == pytest.approx([0.9, 0.1])
    assert sampling_probabilities([900, 100], 2.0) == pytest.approx([0.75, 0.25])
    assert sampling_probabilities([900, 100], 1e6) == pytest.approx([0.5, 0.5], abs=1e-4)

    def mixture(position=None):
        tasks = [Encoded(tuple(np.full(3, k + 5, np.int32) for _ in range(40)), np.zeros(40, np.int32), 0,
                         {"task": np.full(40, k, np.int32)}) for k in range(2)]
        position = position or {"draw": 0, "tasks": [{"epoch": 0, "index": 0}] * 2}
        return MixtureBatches([BatchIterator(e, 4, 0, 8, seed=k, **p) for k, (e, p) in
                               enumerate(zip(tasks, position["tasks"]))], np.asarray([0.7, 0.3]), 0, position["draw"])

    first = mixture()
    order = [int(next(first)["task"][0]) for _ in range(200)]
    assert 0.6 < np.mean(np.asarray(order) == 0) < 0.8
    resumed = mixture()
    for _ in range(50):
        next(resumed)
    resumed = mixture(resumed.position())
    assert [int(next(resumed)["task"][0]) for _ in range(150)] == order[50:]


def test_multi_task_errors(tmp_path, tiny_model, capsys):
    source = str(write_reviews(tmp_path / "reviews.csv"))
    for tasks, message in [
        ([{"name": "a", "source": source, "text_column": "review", "label_column": "sentiment"},
          {"name": "a", "source": source, "text_column": "review", "label_column": "sentiment"}],
         "task name 'a' appears more than once"),
        ([], "tasks must be a non-empty list"),
        ([{"name": "a"}], "must be a mapping with a name and a source"),
        ([{"name": "a", "source": source, "max_length": 9}], "unknown keys ['max_length']"),
    ]:
        config = write_config(tmp_path, "bad", {"model": str(tiny_model), "tasks": tasks})
        assert main(["--config", str(config)]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------ cross-lingual evaluation


def test_extra_evaluation_sets_are_reported_and_must_share_the_labels(tmp_path, tiny_model, capsys):
    shifted = write_reviews(tmp_path / "other.csv", n=80, seed=9)
    config = write_config(tmp_path, "xl", {
        "model": str(tiny_model), "data": reviews_data(tmp_path), "method": {"name": "full"}, "training": TRAINING,
        "evaluation": {"other": {"source": str(shifted), "text_column": "review", "label_column": "sentiment"},
                       "held-out": {"source": str(shifted), "split": "test", "text_column": "review",
                                    "label_column": "sentiment"}}})
    assert main(["--config", str(config)]) == 0
    evaluation = summary_of(tmp_path, "xl")["evaluation"]
    assert evaluation["other"]["examples"] == 80 and evaluation["other"]["accuracy"] > 0.75
    assert 0 < evaluation["held-out"]["examples"] < 20

    config = write_config(tmp_path, "xl-bad", {
        "model": str(tiny_model), "data": reviews_data(tmp_path), "method": {"name": "full"},
        "evaluation": {"pt": "reviews-pt"}})  # positive / negative, not neg / pos
    assert main(["--config", str(config)]) == 2
    assert "has labels ['negative', 'positive'], but the model is trained for ['neg', 'pos']" in capsys.readouterr().err


def test_the_portuguese_set():
    from tljax.data import load_source

    reviews = load_source("reviews-pt")
    assert len(reviews) >= 400 and reviews.language == "pt-BR"
    assert reviews.class_counts() == {"negative": len(reviews) // 2, "positive": len(reviews) // 2}
    assert len(set(reviews.texts)) == len(reviews)
    from tljax.data.bundled import records

    rows = records("reviews-pt")
    assert {r["domain"] for r in rows} == {"films", "books", "apps", "products", "restaurants", "services"}
    styles = {s for r in rows for s in r["style"]}
    assert styles == {"negation", "irony", "mixed", "informal", "formal", "comparative", "question"}
    lengths = [len(r["text"].split()) for r in rows]
    assert min(lengths) <= 5 and max(lengths) >= 40
    portuguese, english = load_source("reviews-pt-parallel"), load_source("reviews-en-parallel")
    assert len(portuguese) == len(english) >= 100
    assert portuguese.labels == english.labels and portuguese.groups == english.groups
    assert portuguese.class_counts()["positive"] == len(portuguese) // 2
    assert set(portuguese.texts) <= set(reviews.texts) and not set(english.texts) & set(reviews.texts)


def test_bad_distillation_settings_are_config_errors():
    from tljax.train.config import ConfigKeyError, load_config

    for override, message in [("distillation.student_layers=3", "is not a valid"),
                              ("distillation.student_layers=[]", "non-empty list of layer indices"),
                              ("distillation.student_layers=[true]", "non-empty list of layer indices"),
                              ("distillation.layer_map=[1, 2]", "pairs of integers"),
                              ("distillation.layer_map=[[1, a]]", "pairs of integers"),
                              ("distillation.temperature=0", "temperature must be > 0"),
                              ("distillation.alpha=2", "between 0 and 1")]:
        with pytest.raises(ConfigKeyError, match=message):
            load_config(None, ["distillation.teacher=runs/x", override])


def test_more_bad_input_is_one_line(tmp_path, tiny_model, capsys):
    source = str(write_reviews(tmp_path / "reviews.csv"))
    config = write_config(tmp_path, "reserved", {"model": str(tiny_model), "tasks": [
        {"name": "items", "source": source, "text_column": "review", "label_column": "sentiment"}]})
    assert main(["--config", str(config)]) == 2
    assert "task name 'items' is reserved" in capsys.readouterr().err
    config = write_config(tmp_path, "empty-set", {
        "model": str(tiny_model), "data": reviews_data(tmp_path),
        "evaluation": {"none": {"source": source, "text_column": "review", "label_column": "sentiment",
                                "max_examples": 0}}})
    assert main(["--config", str(config)]) == 2
    assert "max_examples must be a whole number >= 1" in capsys.readouterr().err


def test_a_run_saved_before_a_setting_existed_still_resumes():
    from tljax.train.config import load_config
    from tljax.train.loop import config_changes

    config = load_config()
    current = config.to_dict()
    older = {k: v for k, v in current.items() if k not in ("evaluation", "tasks", "distillation")}
    older["training"] = {k: v for k, v in current["training"].items() if k != "task_sampling_temperature"}
    assert config_changes(older, config) == []
    older["training"]["learning_rate"] = 1.0
    assert config_changes(older, config) == ["training.learning_rate"]


# ------------------------------------------------------------------------------------------ the pooler


def test_feature_extraction_trains_the_pooler_with_the_head_and_an_export_must_hold_every_trained_parameter(
        tmp_path, tiny_model):
    """The pooler is part of the new head under every method (the checkpoint's was not trained for the task);
    an export lacking any trained parameter is refused by name, not loaded with that parameter at its start."""
    from safetensors.numpy import save_file

    from tljax.models.checkpoint import CheckpointError
    from tljax.runs import load_exported

    config = write_config(tmp_path, "frozen", {"model": str(tiny_model), "data": reviews_data(tmp_path),
                                               "method": {"name": "feature-extraction"}, "training": TRAINING})
    assert main(["--config", str(config)]) == 0
    export = tmp_path / "frozen" / "export"
    saved = load_file(export / "trainable.safetensors")
    assert sorted(saved) == ["bert/pooler/dense/bias", "bert/pooler/dense/kernel", "classifier/bias",
                             "classifier/kernel"]
    base = load_file(tiny_model / "model.safetensors")["pooler.dense.weight"].T
    assert np.abs(saved["bert/pooler/dense/kernel"] - base).max() > 1e-3  # it trained
    run = json.loads((export / "run.json").read_text())
    assert run["pooling"] == "pooler" and run["pooler_with_head"] is True

    without_head = {k: v for k, v in saved.items() if not k.startswith("classifier/")}
    save_file(without_head, export / "trainable.safetensors")
    with pytest.raises(CheckpointError, match=r"2 trained parameters are missing \(classifier/bias, "
                                              r"classifier/kernel\)"):
        load_exported(export)
    # an export written before the pooler joined the head holds no pooler: its run.json says nothing of it, and
    # the pooler it classified through was the base model's, which it loads with
    without_pooler = {k: v for k, v in saved.items() if not k.startswith("bert/pooler/")}
    save_file(without_pooler, export / "trainable.safetensors")
    with pytest.raises(CheckpointError, match=r"missing \(bert/pooler/dense/bias, bert/pooler/dense/kernel\)"):
        load_exported(export)
    (export / "run.json").write_text(json.dumps({k: v for k, v in run.items()
                                                 if k not in ("pooling", "pooler_with_head")}))
    model, _, info = load_exported(export)
    assert info.pooler_with_head is False
    np.testing.assert_array_equal(np.asarray(model.bert.pooler.dense.kernel[...]), base)


def test_a_mean_pooled_run_exports_a_directory_pytorch_loads(tmp_path, tiny_model, capsys):
    """pooling: mean: no pooler; export/model (LoRA merged) names its own PyTorch class, which gives the logits
    we give; no PEFT adapter, whose base model would read a pooler."""
    import torch
    import transformers

    from tljax.runs import load_exported

    config = write_config(tmp_path, "mean", {"model": str(tiny_model), "data": reviews_data(tmp_path),
                                             "pooling": "mean", "method": {"name": "lora", "rank": 4},
                                             "training": TRAINING})
    assert main(["--config", str(config)]) == 0
    export = tmp_path / "mean" / "export"
    assert f"from_pretrained('{export}/model', trust_remote_code=True)" in capsys.readouterr().out
    assert not any("pooler" in name for name in load_file(export / "trainable.safetensors"))
    assert (export / "model").is_dir() and not (export / "adapter").exists()
    model, tokenizer, info = load_exported(export)
    assert info.pooling == "mean" and model.bert.pooler is None
    batch = tokenizer(["a great superb film", "the plot was dull", "it"], padding=True, return_tensors="np")
    ours = np.asarray(model(batch["input_ids"], batch["attention_mask"]))
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(export / "model",
                                                                                trust_remote_code=True).eval()
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor(batch["input_ids"]),
                           attention_mask=torch.tensor(batch["attention_mask"])).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_mean_pooling_is_for_encoder_classifiers(tmp_path, tiny_model, capsys):
    config = write_config(tmp_path, "mlm-mean", {"model": str(tiny_model), "task": "masked-lm", "pooling": "mean",
                                                 "data": reviews_data(tmp_path)})
    assert main(["--config", str(config)]) == 2
    assert "pooling: mean is for sequence classification" in capsys.readouterr().err
    config = write_config(tmp_path, "other", {"model": str(tiny_model), "pooling": "max"})
    assert main(["--config", str(config)]) == 2
    assert "pooling 'max' is unknown; valid: pooler, mean" in capsys.readouterr().err


def test_throughput_compiles_each_shape_once_then_times_whole_passes():
    from tljax.train.distill import throughput

    batches = [{"input_ids": np.zeros((4, width), np.int32), "weights": np.asarray([1, 1, 1, weight], np.float32)}
               for width, weight in ((16, 1), (16, 0), (32, 1))]
    calls = []
    speed = throughput(lambda batch: calls.append(batch["input_ids"].shape) or np.zeros(4), batches, repeats=2)
    assert calls == [(4, 16), (4, 32)] + [(4, 16), (4, 16), (4, 32)] * 2  # a warm-up per shape, two timed passes
    assert speed > 0 and np.isfinite(speed)
