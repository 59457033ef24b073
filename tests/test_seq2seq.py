"""task: seq2seq on a tiny random decoder: the loss covers the target's tokens only (label smoothing as computed by
hand), the metrics against rouge_score and sacrebleu, the readers on good and bad files, every decoder method
trains under the objective, a copy task learnt through the command (exact match and chrF far above the untrained
model's), resumed bit-exact, exported into PyTorch and PEFT with equal logits, and predicted."""

import json
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

from tljax.train.__main__ import main

DIGITS = list("0123456789")
WORDS = ["[PAD]", "[UNK]", "[SEP]", *DIGITS, "copy", ":"]
TINY = dict(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=64, initializer_range=0.2, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> Path:
    """A tiny random Llama over the digits (a word-level tokenizer, [SEP] as its end of sequence), and 1,200 copy
    pairs of 2-3 digits beside it (pairs.jsonl)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("digits-llama")
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                            eos_token="[SEP]").save_pretrained(directory)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).save_pretrained(directory)
    rng = np.random.default_rng(0)
    with (directory / "pairs.jsonl").open("w") as handle:
        for _ in range(1200):
            digits = " ".join(rng.choice(DIGITS, rng.integers(2, 4)))
            handle.write(json.dumps({"digits": digits, "copy": digits}) + "\n")
    return directory


def run_config(tmp_path: Path, model: Path, name: str = "run", **training) -> Path:
    config = {"model": str(model), "task": "seq2seq",
              "data": {"source": str(model / "pairs.jsonl"), "text_column": "digits", "target_column": "copy",
                       "max_length": 16, "max_target_length": 5, "separator": " :", "max_eval_examples": 64},
              "method": {"name": "full"},
              "training": {"learning_rate": 1e-2, "max_steps": 300, "per_device_train_batch_size": 4,
                           "per_device_eval_batch_size": 8, "eval_steps": 100, "metric_for_best_model": "chrf",
                           "early_stopping_patience": None, "warmup_ratio": 0.05,
                           **training},
              "output_dir": str(tmp_path / name)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# -- the loss ---------------------------------------------------------------------------------------------------


def tiny_objective(rng, smoothing: float = 0.0, shared: int = 0):
    """A `TextToText` over four rows (prompts of 3-6 tokens after `shared` common ones, targets of 1-3 with their
    end token) on a random tiny Llama, and a batch of them with one padding row."""
    from tljax.data.batches import Encoded, make_batch
    from tljax.data.pairs import PairDataset
    from tljax.models import DecoderConfig, LlamaForCausalLM
    from tljax.train.chat import reply_labels
    from tljax.train.seq2seq import PairSplit, TextToText

    model = LlamaForCausalLM.from_config(DecoderConfig.from_hf({**TINY, "vocab_size": 97, "attention_dropout": 0.0}))
    start = rng.randint(3, 97, shared)
    prompts, targets = [3, 6, 4, 5], [2, 3, 1, 3]
    rows = tuple(np.concatenate([start, rng.randint(3, 97, p + t)]).astype(np.int32) for p, t in zip(prompts, targets))
    extras = {"reply_start": np.asarray(prompts, np.int32) + shared, "example": np.arange(4, dtype=np.int32),
              "task": np.zeros(4, np.int32)}
    encoded = Encoded(rows, np.zeros(4, np.int32), 0, extras)
    pairs = PairDataset("tiny", ("a",) * 4, ("b",) * 4)
    objective = TextToText(None, {"train": PairSplit(pairs, encoded)}, 0, 32, label_smoothing=smoothing)
    return model, objective, reply_labels(make_batch(encoded, [0, 1, 2, 3], 5, 0, 32))


def target_loss(objective, model, batch) -> float:
    """The objective's loss of `batch`, compiled (a tiny model's eager ops cost more than its compilation)."""
    return float(nnx.jit(lambda m, b: objective.loss(m, b, None)[0])(model, batch))


def hand_loss(model, batch, smoothing: float) -> float:
    """The mean over the target tokens of (1 - e) * -log p(token) + e * mean over the vocabulary of -log p, from the
    logits of every position (NumPy, float64)."""
    logits = np.asarray(nnx.jit(lambda m, ids, mask: m(ids, mask))(model, batch["input_ids"], batch["attention_mask"]),
                        np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    losses = []
    for row in range(4):  # the padding row (weight 0) takes no part
        start, width = batch["reply_start"][row], int((batch["attention_mask"][row] > 0).sum())
        for position in range(start, width):  # each target token, predicted by the position before it
            token = batch["input_ids"][row, position]
            losses.append((1 - smoothing) * -log_p[row, position - 1, token] - smoothing * log_p[row, position - 1].mean())
    return float(np.mean(losses))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_loss_is_on_the_target_tokens_only_and_smoothed_as_by_hand(rng, smoothing):
    model, objective, batch = tiny_objective(rng, smoothing)
    np.testing.assert_allclose(target_loss(objective, model, batch), hand_loss(model, batch, smoothing), rtol=1e-5)
    # the prompt's positions carry no label: they are read, never scored
    positions = np.arange(batch["labels"].shape[1])[None]
    assert (batch["labels"][positions < batch["reply_start"][:, None]] == -100).all()


def test_a_shared_start_kept_once_gives_the_whole_rows_loss(rng):
    from tljax.data.batches import make_batch
    from tljax.train.chat import reply_labels, split_shared_start
    from tljax.train.seq2seq import PairSplit, TextToText

    model, objective, batch = tiny_objective(rng, 0.1, shared=20)
    part = objective.encoded["train"]
    shared, rest = split_shared_start({"train": part.rows})
    assert len(shared) == 20
    cut = TextToText(None, {"train": PairSplit(part.dataset, rest["train"])}, 0, 32, label_smoothing=0.1,
                     shared=shared)
    cut_batch = reply_labels(make_batch(rest["train"], [0, 1, 2, 3], 5, 0, 32))
    np.testing.assert_allclose(target_loss(cut, model, cut_batch), target_loss(objective, model, batch), rtol=1e-5)


# one of each way a method changes a decoder (gradual unfreezing trains as partial, pfeiffer as houlsby, p-tuning as
# prompt: the same modules), to keep the compilations few
DECODER_METHODS = ["full", "partial", "bitfit", "lora", "houlsby", "prefix", "prompt"]


def test_every_decoder_method_trains_under_the_objective(rng):
    """The target loss reaches each method's trainable parameters (feature extraction trains a task head only,
    which a decoder writing text has not: refused, below)."""
    from tljax.methods import adapt, make_method
    from tljax.runs import FINAL_STEP

    for name in DECODER_METHODS:
        model, objective, batch = tiny_objective(rng, 0.1)
        adaptation = adapt(model, [make_method(name, {"num_virtual_tokens": 3} if name in ("prefix", "prompt") else {})])
        graphdef, params, rest = nnx.split(adaptation.model, adaptation.trainable(FINAL_STEP), ...)
        loss, grads = jax.jit(jax.value_and_grad(
            lambda p: objective.loss(nnx.merge(graphdef, p, rest), batch, None)[0]))(params)
        assert np.isfinite(float(loss)) and jax.tree.leaves(grads), name
        assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)) > 0, name


# -- the metrics ------------------------------------------------------------------------------------------------


def test_the_metrics_are_rouge_score_and_sacrebleu_on_the_same_strings():
    import sacrebleu
    from rouge_score import rouge_scorer

    from tljax.text_metrics import WordTokenizer, text_metrics

    outputs = ["O filme foi ótimo.", "não gostei do livro", "the cat sat on the mat", "", "Ótimo  serviço"]
    targets = ["O filme foi muito bom.", "Não gostei do livro.", "the cat sat on a mat", "nada", "Ótimo serviço"]
    metrics = text_metrics(outputs, targets)
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(outputs, [targets]).score)
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(outputs, [targets]).score)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=WordTokenizer())
    for name in ("rouge1", "rouge2", "rougeL"):
        expected = np.mean([scorer.score(t, o)[name].fmeasure for o, t in zip(outputs, targets)])
        assert metrics[name] == pytest.approx(100 * expected)
    assert metrics["exact"] == pytest.approx(1 / 5)  # whitespace collapsed; case and punctuation count
    # rouge_score's own tokenizer reads only a-z and digits: "não" would be "n o"; the words here keep accents
    assert WordTokenizer().tokenize("Não, é ótimo!") == ["não", "é", "ótimo"]
    assert text_metrics([], []) == {name: 0.0 for name in metrics}


# -- the data ---------------------------------------------------------------------------------------------------


def test_the_bundled_parallel_sets_have_fixed_splits_both_ways():
    from tljax.data.pairs import load_pairs

    there, back = load_pairs("reviews-en-pt"), load_pairs("reviews-pt-en")
    assert len(there) == 128 and there.inputs == back.targets and there.targets == back.inputs
    assert there.language == "pt-BR" and back.language == "en"
    assert {s: there.predefined_split.count(s) for s in ("train", "validation", "test")} == \
        {"train": 96, "validation": 16, "test": 16}
    sentences = load_pairs("ner-pt-en")
    assert len(sentences) == 842 and sentences.predefined_split.count("test") == 107
    assert len(load_pairs("questions-en-pt")) == 789
    labelled = load_pairs("reviews-en-parallel")  # a labelled set: the label's word is the target
    assert set(labelled.targets) == {"negative", "positive"}


@pytest.mark.parametrize("name, content, expected", [
    ("pairs.jsonl", '{"text": "a", "target": "b"}\n{"text": "c", "target": ""}\n', "pairs.jsonl line 2: the target "
     "(target) is empty"),
    ("pairs.jsonl", '{"text": "a", "target": "b"}\n{"target": "d"}\n', "pairs.jsonl line 2: the input (text) is "
     "missing"),
    ("pairs.jsonl", '{"text": "a", "target": "b"}\n{"text": ["c"], "target": "d"}\n', "line 2: the input (text) is "
     "not text (list"),
    ("pairs.jsonl", '{"text": "a", "target": "b"}\nnot json\n', "pairs.jsonl line 2 is not valid JSON"),
    ("pairs.csv", "text,label\na,b\n", "has no target column 'target'"),
    ("pairs.csv", "text,target\na,b\n,d\n", "pairs.csv line 3: the input (text) is empty"),
    ("pairs.txt", "a b\n", "cannot tell the format"),
])
def test_bad_pair_files_are_refused_in_one_line(tmp_path, name, content, expected):
    from tljax.data import DataError
    from tljax.data.pairs import load_pairs

    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as error:
        load_pairs(str(path))
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_bad_file_stops_the_command_in_one_line(tmp_path, digits_model, capsys):
    (tmp_path / "bad.jsonl").write_text('{"digits": "1 2", "copy": "1 2"}\n{"digits": "3", "copy": null}\n')
    config = run_config(tmp_path, digits_model)
    assert main(["--config", str(config), "--set", f"data.source={tmp_path / 'bad.jsonl'}"]) == 2
    error = capsys.readouterr().err.strip()
    assert "bad.jsonl line 2: the target (copy) is missing" in error and error.count("\n") == 0
    assert not (tmp_path / "run").exists()  # nothing written


def test_the_packaged_config_parses():
    from tljax.train.config import load_config

    config = load_config(Path(__file__).parent.parent / "configs" / "seq2seq.yaml")
    assert config.task == "seq2seq" and config.data.source == "reviews-en-pt"
    assert config.methods()[0]["name"] == "lora" and config.training.metric_for_best_model == "chrf"


def test_label_smoothing_is_refused_where_no_output_is_written(tmp_path, digits_model, capsys):
    config = run_config(tmp_path, digits_model)
    assert main(["--config", str(config), "--set", "task=causal-lm", "--set", "training.label_smoothing=0.1"]) == 2
    assert "label_smoothing is for task: seq2seq" in capsys.readouterr().err


# -- runs through the command -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory, digits_model) -> Path:
    """The tiny decoder fully fine-tuned to copy 2-3 digits (300 steps of 32 pairs, 4 on each of the 8 simulated devices)."""
    root = tmp_path_factory.mktemp("copy")
    assert main(["--config", str(run_config(root, digits_model))]) == 0
    return root / "run"


def test_a_copy_task_is_learnt_and_scored_on_generated_outputs(copy_run):
    summary = json.loads((copy_run / "summary.json").read_text())
    test, before = summary["test"], summary["before"]["test"]
    assert set(test) >= {"chrf", "bleu", "rouge1", "rouge2", "rougeL", "exact", "loss", "accuracy"}
    assert test["exact"] >= 0.5 and before["exact"] == 0.0
    assert test["chrf"] > before["chrf"] + 40 and test["loss"] < before["loss"] / 2
    shown = summary["examples"][0]
    assert set(shown) == {"input", "target", "output"}
    history = [json.loads(line) for line in (copy_run / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if h["split"] == "validation"] == [0, 100, 200, 300]
    assert (copy_run / "curves.png").is_file() and "validation chrf" in summary["diagnosis"]


def test_the_export_loads_in_pytorch_with_equal_logits_and_predicts(copy_run, capsys):
    import torch
    import transformers

    from tljax.predict import load_predictor
    from tljax.predict import main as predict
    from tljax.runs import load_exported

    model, tokenizer, info = load_exported(copy_run / "export")
    assert info.task == "seq2seq" and info.seq2seq == {"prompt_form": "plain", "separator": " :",
                                                       "max_target_length": 5}
    ids = np.asarray([tokenizer("3 1 4 :", add_special_tokens=False)["input_ids"]])
    ours = np.asarray(model(jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids))))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(copy_run / "export" / "model").eval()
    with torch.no_grad():
        theirs = loaded(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)

    generator = load_predictor(copy_run)
    outputs = generator(["3 1 4", "2 7"])
    assert predict([str(copy_run), "3 1 4", "2 7"]) == 0
    assert capsys.readouterr().out.splitlines() == outputs
    assert predict(["--json", str(copy_run), "3 1 4"]) == 0
    assert json.loads(capsys.readouterr().out) == {"text": "3 1 4", "output": outputs[0]}
    assert predict(["--task", "other", str(copy_run), "3 1 4"]) == 2
    assert "is not one this run was trained on" in capsys.readouterr().err


def test_a_lora_run_resumes_bit_exact_and_exports_a_peft_causal_lm_adapter(tmp_path, digits_model, monkeypatch):
    """Interrupted (SIGINT) at step 7 of 12, resumed: the parameters of the run that went straight through; LoRA's
    PEFT adapter gives PyTorch the exported model's logits."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from safetensors.numpy import load_file

    from tljax import faults
    from tljax.runs import load_exported

    lora = {"training.max_steps=12", "training.eval_steps=4", "training.label_smoothing=0.1"}
    settings = [arg for item in sorted(lora) for arg in ("--set", item)] + \
        ["--set", "method={name: lora, rank: 4, alpha: 8, dropout: 0.1, targets: [q_proj, v_proj]}"]
    assert main(["--config", str(run_config(tmp_path, digits_model, "straight")), *settings]) == 0
    config = run_config(tmp_path, digits_model, "resumed")
    passes = {"step": 0}

    def interrupt_at_step_seven(name):
        passes[name] = passes.get(name, 0) + 1
        if name == "step" and passes[name] == 7:
            signal.raise_signal(signal.SIGINT)  # the loop saves at the end of this step and stops

    monkeypatch.setattr(faults, "point", interrupt_at_step_seven)
    assert main(["--config", str(config), *settings]) == 3
    monkeypatch.undo()
    assert not (tmp_path / "resumed" / "summary.json").exists()
    assert main(["--config", str(config), "--resume", *settings]) == 0
    a, b = (load_file(tmp_path / name / "export" / "trainable.safetensors") for name in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    export = tmp_path / "straight" / "export"
    assert json.loads((export / "adapter" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    model, tokenizer, _ = load_exported(export)
    ids = np.asarray([tokenizer("5 5 2 :", add_special_tokens=False)["input_ids"]])
    ours = np.asarray(model(jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids))))
    with torch.no_grad():
        theirs = AutoPeftModelForCausalLM.from_pretrained(export / "adapter").eval()(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_feature_extraction_is_refused_in_one_line(tmp_path, digits_model, capsys):
    config = run_config(tmp_path, digits_model)
    assert main(["--config", str(config), "--set", "method={name: feature-extraction}"]) == 2
    error = capsys.readouterr().err.strip()
    assert "trains nothing" in error and error.count("\n") == 0


def test_several_tasks_train_as_prefixed_inputs_and_are_scored_each(tmp_path, digits_model, capsys):
    from tljax.predict import load_predictor

    rows = [json.loads(line) for line in (digits_model / "pairs.jsonl").read_text().splitlines()]
    with (tmp_path / "first.jsonl").open("w") as handle:  # a second task: the first digit
        for row in rows[:400]:
            handle.write(json.dumps({"digits": row["digits"], "copy": row["digits"].split()[0]}) + "\n")
    tasks = [{"name": "copy", "source": str(digits_model / "pairs.jsonl"), "text_prefix": "copy : "},
             {"name": "first", "source": str(tmp_path / "first.jsonl"), "text_prefix": ": "}]
    config = run_config(tmp_path, digits_model, max_steps=8, eval_steps=8)
    assert main(["--config", str(config), "--set", f"tasks={json.dumps(tasks)}"]) == 0
    out = capsys.readouterr().out
    assert "mean over 2 tasks" in out and "first" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["test"]["tasks"]) == {"copy", "first"}
    assert summary["test"]["chrf"] == pytest.approx(np.mean([m["chrf"] for m in summary["test"]["tasks"].values()]))
    generator = load_predictor(tmp_path / "run")
    assert generator.prefixes == {"copy": "copy : ", "first": ": "}
    assert len(generator(["1 2"], task="first")) == 1
    with pytest.raises(Exception, match="name one with --task"):
        generator(["1 2"])
    same = [{**tasks[0]}, {**tasks[1], "text_prefix": "copy : "}]
    assert main(["--config", str(config), "--set", f"tasks={json.dumps(same)}",
                 "--set", f"output_dir={tmp_path / 'other'}"]) == 2
    assert "its own text_prefix" in capsys.readouterr().err
