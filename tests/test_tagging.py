"""Token classification (named entities): tag schemes and entity metrics against seqeval, the readers of the
formats users have, label alignment and windows, every method on a token classifier (the command on a tiny
model: tests/test_tagging_runs.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from tljax.data import DataError
from tljax.data.sources import load_tagged
from tljax.data.tagged import word_spans
from tljax.data.windows import IGNORED, continuation_tags, encode_words, word_tags
from tljax.methods import METHODS, adapt, make_method
from tljax.models import BertForTokenClassification, EncoderConfig
from tljax.tagging import TagError, detect_scheme, entities, entity_metrics, tag_names, to_iob2
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
                                                             pair="[CLS] $A [SEP] $B:1 [SEP]:1",
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
