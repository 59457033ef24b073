"""Token classification (named entities): tag schemes and entity metrics against seqeval, the readers of the
formats users have, label alignment and windows, every method on a token classifier, and the whole command
(train, resume, export into PyTorch and PEFT, predict) on a tiny model."""

import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
import yaml
from flax import nnx
from safetensors.numpy import load_file
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from conftest import FILLER, NEGATIVE, POSITIVE, cli_env
from tljax.data import DataError
from tljax.data.sources import load_tagged
from tljax.data.tagged import word_spans
from tljax.data.windows import IGNORED, continuation_tags, encode_words, word_tags
from tljax.methods import METHODS, adapt, make_method
from tljax.models import BertForTokenClassification, EncoderConfig
from tljax.tagging import TagError, detect_scheme, entities, entity_metrics, tag_names, to_iob2
from tljax.train.__main__ import main
from tljax.train.optim import OptimizerConfig, build_optimizer
from tljax.train.step import make_train_step, split
from tljax.train.tagging import token_classification_loss

TYPES = ("LOC", "PER")


def random_tags(rng, length: int, valid: bool) -> list[str]:
    """A random tag sequence; `valid` keeps it IOB2 (no I- without its entity), otherwise anything goes."""
    tags, previous = [], "O"
    for _ in range(length):
        kind = rng.choice(TYPES)
        prefix = rng.choice(["O", "O", "B", "I"])
        if valid and prefix == "I" and (previous == "O" or previous[2:] != kind):
            prefix = "B"
        tag = "O" if prefix == "O" else f"{prefix}-{kind}"
        tags.append(tag)
        previous = tag
    return tags


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_entity_metrics_equal_seqeval(strict):
    rng = np.random.RandomState(0)
    gold = [random_tags(rng, rng.randint(1, 12), valid=True) for _ in range(300)]
    predicted = [[t if rng.rand() < 0.7 else random_tags(rng, 1, valid=False)[0] for t in g] for g in gold]
    options = {"mode": "strict", "scheme": IOB2} if strict else {}
    ours = entity_metrics(gold, predicted, strict=strict)
    assert ours["f1"] == pytest.approx(f1_score(gold, predicted, **options), abs=1e-12)
    assert ours["precision"] == pytest.approx(precision_score(gold, predicted, **options), abs=1e-12)
    assert ours["recall"] == pytest.approx(recall_score(gold, predicted, **options), abs=1e-12)
    assert ours["macro_f1"] == pytest.approx(f1_score(gold, predicted, average="macro", **options), abs=1e-12)
    assert ours["accuracy"] == pytest.approx(accuracy_score(gold, predicted), abs=1e-12)
    report = classification_report(gold, predicted, output_dict=True, **options)
    for label, scores in ours["per_type"].items():
        for name in ("precision", "recall", "f1"):
            assert scores[name] == pytest.approx(report[label][name if name != "f1" else "f1-score"], abs=1e-12)
        assert scores["support"] == report[label]["support"]
    assert 0.2 < ours["f1"] < 0.9  # a mix of hits and misses, not a degenerate case


def test_schemes_convert_to_iob2_and_a_broken_sequence_is_refused():
    assert to_iob2(["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "iob1") == ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    assert to_iob2(["B-PER", "I-PER", "E-PER", "S-LOC", "O", "U-PER"], "bioes") == \
        ["B-PER", "I-PER", "I-PER", "B-LOC", "O", "B-PER"]
    assert detect_scheme(["O", "I-PER", "I-PER", "B-PER"]) == "iob1"
    assert detect_scheme(["B-PER", "I-PER", "O", "B-LOC"]) == "iob2"
    assert detect_scheme(["S-PER", "O"]) == "bioes"
    with pytest.raises(TagError, match="no entity comes before it") as error:
        to_iob2(["O", "I-PER"], "iob2")
    assert error.value.position == 1
    with pytest.raises(TagError, match="ends an entity of several words with E-"):
        to_iob2(["B-PER", "O"], "bioes")
    assert [(e.start, e.end, e.label) for e in entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"])] == \
        [(0, 2, "PER"), (3, 4, "LOC"), (4, 5, "LOC")]
    assert [(e.start, e.end) for e in entities(["O", "I-LOC", "B-LOC"], strict=True)] == [(2, 3)]


# -- readers ------------------------------------------------------------------------------------------------------

# CoNLL-2003's layout (word, part of speech, chunk, tag; IOB1 tags; -DOCSTART- -X- -X- O between documents),
# with sentences written for this test.
CONLL_2003 = """-DOCSTART- -X- -X- O

Lisbon NNP B-NP I-LOC
hosts VBZ B-VP O
the DT B-NP O
Atlantic NNP I-NP I-MISC
Summit NNP I-NP I-MISC
. . O O

Anna NNP B-NP I-PER
Berg NNP I-NP I-PER
Carl NNP I-NP B-PER
Dunn NNP I-NP I-PER
spoke VBD B-VP O

-DOCSTART- -X- -X- O

Acme NNP B-NP I-ORG
Corp NNP I-NP I-ORG
fell VBD B-VP O
"""

# HAREM through its usual CoNLL conversion: one word and its IOB2 tag per line, HAREM's categories.
HAREM = """O O
presidente O
da O
Câmara B-ORGANIZACAO
Municipal I-ORGANIZACAO
de I-ORGANIZACAO
Évora I-ORGANIZACAO
, O
Rui B-PESSOA
Lemos I-PESSOA
, O
chegou O
em O
1998 B-TEMPO
. O
"""


def test_conll_2003_layout_reads_as_iob2_split_by_document(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL_2003)
    data = load_tagged(str(path))
    assert data.texts[0] == "Lisbon hosts the Atlantic Summit ."
    assert data.tags[0] == ("B-LOC", "O", "O", "B-MISC", "I-MISC", "O")
    assert data.tags[1] == ("B-PER", "I-PER", "B-PER", "I-PER", "O")  # IOB1's B-: a second entity
    assert data.types == ("LOC", "MISC", "ORG", "PER")
    assert data.groups == ("doc1", "doc1", "doc2")  # a document never straddles two splits
    text, (start, end) = data.texts[2], data.words[2][1]
    assert text[start:end] == "Corp"


def test_harem_conversion_and_accents(tmp_path):
    path = tmp_path / "harem.txt"
    path.write_text(HAREM, encoding="utf-8")
    data = load_tagged(str(path))
    assert data.types == ("ORGANIZACAO", "PESSOA", "TEMPO")
    assert [data.texts[0][s:e] for s, e in data.words[0]][3:7] == ["Câmara", "Municipal", "de", "Évora"]
    assert [(e.label, e.start, e.end) for e in entities(data.tags[0])] == \
        [("ORGANIZACAO", 3, 7), ("PESSOA", 8, 10), ("TEMPO", 13, 14)]


def test_json_lines_spans_and_doccano(tmp_path):
    path = tmp_path / "spans.jsonl"
    rows = [{"text": "A doutora Ana Lima chegou a São Paulo em 12/03/2024.", "document": "d1",
             "entities": [{"start": 10, "end": 18, "label": "PER"}, {"start": 28, "end": 37, "label": "LOC"}]},
            {"text": "Visitei Recife.", "label": [[8, 14, "LOC"]], "document": "d2"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    data = load_tagged(str(path))
    words = [data.texts[0][s:e] for s, e in data.words[0]]
    assert words[:9] == ["A", "doutora", "Ana", "Lima", "chegou", "a", "São", "Paulo", "em"]
    assert data.tags[0][:9] == ("O", "O", "B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O")
    assert data.tags[1] == ("O", "B-LOC", "O") and data.groups == ("d1", "d2")


def test_hugging_face_datasets_directory(tmp_path):
    import datasets

    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))})
    part = {"tokens": [["Ana", "Lima", "riu"], ["Rui", "saiu"]], "ner_tags": [[1, 2, 0], [1, 0]]}
    datasets.DatasetDict({name: datasets.Dataset.from_dict(part, features=features)
                          for name in ("train", "validation", "test")}).save_to_disk(tmp_path / "ds")
    data = load_tagged(f"hf:{tmp_path / 'ds'}")
    assert len(data) == 6 and data.tags[0] == ("B-PER", "I-PER", "O")
    assert data.predefined_split == ("train", "train", "validation", "validation", "test", "test")


@pytest.mark.parametrize("name, body, expected", [
    ("bad.conll", "Ana B-PER\nLima X-PER\n", r"bad.conll, line 2: .*'X-PER'"),
    ("bad.conll", "Ana B-PER\nLima I-PER NN\n", r"bad.conll, line 2: 3 columns, but line 1 has 2"),
    ("bad.bio", "Ana O\nLima I-PER\nB-LOC B-LOC\n", r"bad.bio, line 2: .*no entity"),
    ("bad.jsonl", '{"text": "Ana", "entities": [{"start": 0, "end": 9, "label": "PER"}]}',
     r"bad.jsonl, line 1: entity PER at 0..9 lies outside its text"),
    ("bad.jsonl", '{"text": "Ana Lima", "entities": [{"start": 0, "end": 8, "label": "PER"}, '
                  '{"start": 4, "end": 8, "label": "LOC"}]}', r"bad.jsonl, line 1: .*overlaps"),
])
def test_malformed_files_are_refused_with_file_and_line(tmp_path, name, body, expected):
    path = tmp_path / name
    path.write_text(body)
    scheme = "iob2" if name == "bad.bio" else "auto"
    with pytest.raises(DataError, match=expected):
        load_tagged(str(path), scheme=scheme)


def test_the_bundled_corpus_is_parallel_original_and_split_by_document():
    from tljax.data.bundled.ner_corpus import check_corpus

    counts = check_corpus()  # unique ids, spans, entity for entity, no near-duplicates
    assert counts["documents"] >= 100 and set(counts["registers"]) == {"news", "legal", "medical", "reviews",
                                                                        "everyday"}
    sentences = sum(counts["pt"][part]["sentences"] for part in ("train", "validation", "test"))
    assert sentences >= 600
    for language in ("pt", "en"):
        for part in ("validation", "test"):
            assert all(counts[language][part][t] >= 15 for t in ("DATE", "LOC", "MISC", "ORG", "PER"))


# -- alignment and windows ----------------------------------------------------------------------------------------


def wordpiece_tokenizer():
    """A BERT-like tokenizer whose vocabulary splits words into several pieces (and keeps accents)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "s", "##ão", "pa", "##ulo", "jo", "##ão", "mora", "em", "na",
              "rua", "das", "flores", ".", ",", "ana", "##s", "re", "##ci", "##fe", "e"]
    tokenizer = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                                cls_token="[CLS]", sep_token="[SEP]")


LABELS = tag_names(TYPES)  # O, B-LOC, I-LOC, B-PER, I-PER


def test_first_sub_token_carries_the_tag_and_accents_map_back():
    tokenizer = wordpiece_tokenizer()
    text = "João mora em São Paulo."
    words = word_spans(text)
    gold = ["B-PER", "O", "O", "B-LOC", "I-LOC", "O"]
    ids = [[LABELS.index(t) for t in gold]]
    windows = encode_words([text], [words], ids, tokenizer, 32)
    tokens = tokenizer.convert_ids_to_tokens(windows.encoded.ids[0])
    assert tokens == ["[CLS]", "jo", "##ão", "mora", "em", "s", "##ão", "pa", "##ulo", ".", "[SEP]"]
    assert list(windows.encoded.labels[0]) == [IGNORED, 3, IGNORED, 0, 0, 1, IGNORED, 2, IGNORED, 0, IGNORED]
    every = encode_words([text], [words], ids, tokenizer, 32, continuation=continuation_tags(LABELS))
    assert list(every.encoded.labels[0]) == [IGNORED, 3, 4, 0, 0, 1, 2, 2, 2, 0, IGNORED]  # B- continues as I-
    assert [text[s:e] for s, e in words] == ["João", "mora", "em", "São", "Paulo", "."]


def test_a_text_longer_than_the_model_reads_is_tagged_whole_in_windows():
    tokenizer = wordpiece_tokenizer()
    text = " ".join(["João mora na rua das flores em São Paulo e Ana em Recife ."] * 3)
    words = word_spans(text)
    pattern = ["B-PER", "O", "O", "B-LOC", "I-LOC", "I-LOC", "O", "B-LOC", "I-LOC", "O", "B-PER", "O", "B-LOC", "O"]
    gold = pattern * 3
    windows = encode_words([text], [words], [[LABELS.index(t) for t in gold]], tokenizer, 16, stride=4)
    assert len(windows.encoded) > 3 and all(len(ids) <= 16 for ids in windows.encoded.ids)
    owned = np.concatenate([o[o >= 0] for o in windows.owned])
    assert sorted(owned) == list(range(len(words)))  # every word predicted once, none cut away
    # a model that is right at every position gives back every word's tag
    scores = [np.where(np.arange(len(LABELS))[None] == np.maximum(labels, 0)[:, None], 0.0, -9.0)
              for labels in windows.encoded.labels]
    assert word_tags(windows.word_scores(scores)[0], windows.followers[0], LABELS) == gold


# -- every method on a token classifier ---------------------------------------------------------------------------

VOCAB = 64
ENCODER = EncoderConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, id2label=dict(enumerate(LABELS)))
OPTIONS = {"partial": {"freeze_layers": 1}, "gradual-unfreezing": {"every": 2}, "lora": {"rank": 4},
           "prefix": {"num_virtual_tokens": 4, "projection_size": 16}, "prompt": {"num_virtual_tokens": 4},
           "p-tuning": {"num_virtual_tokens": 4, "encoder": "lstm", "encoder_hidden_size": 16}}


def tagged_batch(seed: int, n: int = 48) -> dict:
    """Tokens 8-15 are a person's first word and 16-23 its second, 24-31 a place; everything else is O."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(32, VOCAB, (n, 12))
    labels = np.zeros_like(ids)
    for row in range(n):
        at = rng.randint(1, 9)
        ids[row, at], ids[row, at + 1], labels[row, at], labels[row, at + 1] = \
            rng.randint(8, 16), rng.randint(16, 24), 3, 4
        place = (at + 3) % 12 or 1
        ids[row, place], labels[row, place] = rng.randint(24, 32), 1
    mask = np.ones_like(ids)
    mask[: n // 4, 10:] = 0
    labels = np.where(mask == 1, labels, -100)
    return {"input_ids": jnp.asarray(ids * mask), "attention_mask": jnp.asarray(mask),
            "labels": jnp.asarray(labels.astype(np.int32)), "weights": jnp.ones((n,), jnp.float32)}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_learns_tags_and_keeps_frozen_parameters_bit_identical(method):
    adaptation = adapt(BertForTokenClassification.from_config(ENCODER, seed=1), [make_method(method, OPTIONS.get(method))])
    trainable_paths = {p for p, _, rule in adaptation.rules().report(adaptation.model) if rule.trainable}
    before = {"/".join(map(str, p)): np.asarray(v.get_value())
              for p, v in nnx.to_flat_state(nnx.state(adaptation.model, nnx.Param))}
    graphdef, trainable, frozen = split(adaptation.model, adaptation.trainable())
    rate = {"full": 3e-3, "feature-extraction": 3e-2, "gradual-unfreezing": 3e-2}.get(method, 1e-2)
    steps = 100
    tx = build_optimizer(OptimizerConfig(learning_rate=rate, lr_scheduler_type="constant"), steps)
    opt_state, step = tx.init(trainable), make_train_step(graphdef, token_classification_loss, tx)
    batch, losses = tagged_batch(0), []
    for i in range(steps):
        trainable, opt_state, metrics = step(trainable, frozen, opt_state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    after = {"/".join(map(str, p)): np.asarray(v.get_value())
             for p, v in nnx.to_flat_state(nnx.state(nnx.merge(graphdef, trainable, frozen), nnx.Param))}
    for path in before:
        if path not in trainable_paths:
            np.testing.assert_array_equal(before[path], after[path], err_msg=f"{path} is frozen but changed")
    assert any(not np.array_equal(before[p], after[p]) for p in trainable_paths)
    # held-out sentences of the same task: the tagger generalises, well above the untrained model
    model = nnx.merge(graphdef, trainable, frozen)
    held_out = tagged_batch(1)
    untrained = adapt(BertForTokenClassification.from_config(ENCODER, seed=1),
                      [make_method(method, OPTIONS.get(method))]).model
    trained_loss = float(token_classification_loss(model, held_out, None)[0])
    untrained_loss = float(token_classification_loss(untrained, held_out, None)[0])
    # measured over initial seeds 1-3: 0.003 (full) to 0.41 (LoRA) of the untrained loss; a method that trains
    # nothing, or trains a frozen part, stays at 1
    assert trained_loss < 0.5 * untrained_loss, f"{method}: {untrained_loss:.3f} -> {trained_loss:.3f}"


def test_the_decoder_token_classifier_learns_tags_with_lora():
    from tljax.models import DecoderConfig, LlamaForTokenClassification

    config = DecoderConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                           id2label=dict(enumerate(LABELS)), classifier_dropout=0.0)
    adaptation = adapt(LlamaForTokenClassification.from_config(config, seed=1), [make_method("lora", {"rank": 4})])
    frozen_before = {"/".join(map(str, p)): np.asarray(v.get_value())
                     for p, v in nnx.to_flat_state(nnx.state(adaptation.model, nnx.Not(adaptation.trainable())))}
    graphdef, trainable, frozen = split(adaptation.model, adaptation.trainable())
    tx = build_optimizer(OptimizerConfig(learning_rate=1e-2, lr_scheduler_type="constant"), 100)
    opt_state, step = tx.init(trainable), make_train_step(graphdef, token_classification_loss, tx)
    batch = tagged_batch(0)
    for i in range(100):
        trainable, opt_state, _ = step(trainable, frozen, opt_state, batch, jax.random.key(i))
    model = nnx.merge(graphdef, trainable, frozen)
    frozen_after = {"/".join(map(str, p)): np.asarray(v.get_value())
                    for p, v in nnx.to_flat_state(nnx.state(model, nnx.Not(adaptation.trainable())))}
    assert frozen_before.keys() == frozen_after.keys()
    assert all(np.array_equal(frozen_before[k], frozen_after[k]) for k in frozen_before)
    # every tag here is told by its token alone, which a causal model sees as well as an encoder
    held_out = tagged_batch(1)
    untrained = LlamaForTokenClassification.from_config(config, seed=1)
    trained_loss = float(token_classification_loss(model, held_out, None)[0])
    assert trained_loss < 0.5 * float(token_classification_loss(untrained, held_out, None)[0])


# -- the command on a tiny model ----------------------------------------------------------------------------------


def write_tagged(path, n: int = 160, seed: int = 0):
    """Texts of filler words with a few entity words: POSITIVE words are people, NEGATIVE words places."""
    rng = np.random.RandomState(seed)
    with path.open("w") as handle:
        for i in range(n):
            words = list(rng.choice(FILLER, rng.randint(3, 8)))
            spans, text = [], ""
            for word in words + [rng.choice(POSITIVE), rng.choice(NEGATIVE)]:
                text += (" " if text else "")
                if word in POSITIVE or word in NEGATIVE:
                    spans.append({"start": len(text), "end": len(text) + len(word),
                                  "label": "PER" if word in POSITIVE else "LOC"})
                text += word
            handle.write(json.dumps({"text": text, "entities": spans, "document": f"d{i // 4}"}) + "\n")
    return path


def tagging_config(tmp_path, tiny_model, method=None, **training):
    config = {"model": str(tiny_model), "task": "token-classification",
              "data": {"source": str(write_tagged(tmp_path / "tagged.jsonl")), "max_length": 32},
              "method": method or {"name": "lora", "rank": 8},
              "training": {"learning_rate": 5e-2, "max_steps": 24, "per_device_train_batch_size": 16,
                           "eval_steps": 8, "early_stopping_patience": None, "metric_for_best_model": "f1",
                           **training},
              "output_dir": str(tmp_path / "run")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def tagger(tmp_path_factory, tiny_model):
    """A finished LoRA tagging run on the tiny model (its directory holds `run/` and `config.yaml`), and what
    the command printed: the resume, export and prediction tests read it, and it teaches the distillation
    test's student."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("tagger")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--config", str(tagging_config(folder, tiny_model))]) == 0
    return folder, printed.getvalue()


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
