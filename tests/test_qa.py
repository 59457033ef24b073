"""Extractive question answering: the SQuAD metrics against torchmetrics and hand-computed v2 cases, the readers
of the formats users have, windows and answer location, post-processing over windows with the null threshold,
every method on a span model, and the bundled set's invariants. (The command on a tiny model:
tests/test_qa_runs.py; the heads' parity: tests/test_qa_models.py.)"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from test_tagging import wordpiece_tokenizer
from tljax.data import DataError
from tljax.data.answer_windows import best_answers, encode_questions
from tljax.data.sources import load_questions
from tljax.methods import METHODS, adapt, make_method
from tljax.models import BertForQuestionAnswering, EncoderConfig
from tljax.squad import normalize_answer, squad_metrics
from tljax.train.optim import OptimizerConfig, build_optimizer
from tljax.train.qa import most_similar_sentence, question_answering_loss
from tljax.train.step import make_train_step, split

# -- the metric ---------------------------------------------------------------------------------------------------

CASES = [  # (prediction, gold answers)
    ("Rio Negro", ["Rio Negro", "the Rio Negro"]),
    ("the Rio Negro river", ["Rio Negro"]),
    ("Negro", ["Rio Negro"]),
    ("1808.", ["1808"]),
    ("in 1808", ["1808", "in early 1808"]),
    ("São Paulo, Brazil", ["São Paulo"]),
    ("A  Amazônia!", ["amazônia"]),
    ("nothing in common", ["Rio Negro"]),
    ("an apple a day", ["apple day"]),
    ("six kilometres", ["about six kilometres", "six km"]),
    ("Dom Pedro II", ["Pedro II", "Dom Pedro II"]),
    ("the the the", ["the"]),
]


def test_exact_match_and_f1_equal_torchmetrics_squad():
    from torchmetrics.functional.text import squad

    predictions = [p for p, _ in CASES]
    golds = [g for _, g in CASES]
    ours = squad_metrics(predictions, golds)
    theirs = squad([{"prediction_text": p, "id": str(i)} for i, p in enumerate(predictions)],
                   [{"answers": {"answer_start": [0] * len(g), "text": g}, "id": str(i)} for i, g in enumerate(golds)])
    assert ours["exact"] * 100 == pytest.approx(float(theirs["exact_match"]), abs=1e-4)
    assert ours["f1"] * 100 == pytest.approx(float(theirs["f1"]), abs=1e-4)
    for prediction, gold in CASES:  # question by question too
        one = squad([{"prediction_text": prediction, "id": "a"}],
                    [{"answers": {"answer_start": [0] * len(gold), "text": gold}, "id": "a"}])
        mine = squad_metrics([prediction], [gold])
        assert mine["f1"] * 100 == pytest.approx(float(one["f1"]), abs=1e-4), (prediction, gold)


def test_v2_scores_unanswerable_questions_as_the_official_script_does():
    # by hand: an unanswerable question scores 1 only when left unanswered; an answerable one left unanswered 0
    predictions = ["", "Recife", "", "the Rio Negro river"]
    golds = [[], [], ["Manaus"], ["Rio Negro"]]
    metrics = squad_metrics(predictions, golds)
    # F1 of the last: "rio negro river" against "rio negro": precision 2/3, recall 1 -> 0.8
    assert metrics["exact"] == pytest.approx(1 / 4)
    assert metrics["f1"] == pytest.approx((1 + 0 + 0 + 0.8) / 4)
    assert metrics["has_answer_f1"] == pytest.approx(0.4) and metrics["has_answer_questions"] == 2
    assert metrics["no_answer_exact"] == pytest.approx(0.5) and metrics["no_answer_questions"] == 2
    assert normalize_answer("The  Amazon, river!") == "amazon river"
    assert "has_answer_f1" not in squad_metrics(["x"], [["x"]])  # v1.1: no split


# -- readers -------------------------------------------------------------------------------------------------------

CONTEXT = "Maria mora em Recife desde 2010. Ela trabalha no porto."


def squad_file(path, version="v2.0", start=14):
    qas = [{"id": "a", "question": "Onde Maria mora?", "answers": [{"text": "Recife", "answer_start": start},
                                                                   {"text": "em Recife", "answer_start": 11}]},
           {"id": "b", "question": "Quando ela nasceu?", "answers": [], "is_impossible": True}]
    if version == "v1.1":
        qas = qas[:1]
    path.write_text(json.dumps({"version": version, "data": [{"title": "Recife", "paragraphs": [
        {"context": CONTEXT, "qas": qas}]}]}))
    return path


def test_squad_files_jsonl_csv_and_datasets_directories_read_alike(tmp_path):
    import datasets

    v2 = load_questions(str(squad_file(tmp_path / "v2.json")))
    assert v2.ids == ("a", "b") and v2.answers[0] == (("Recife", 14), ("em Recife", 11)) and v2.answers[1] == ()
    assert v2.groups[0] == v2.groups[1]  # a paragraph's questions stay together
    assert load_questions(str(squad_file(tmp_path / "v1.json", "v1.1"))).answers == (v2.answers[0],)
    rows = [{"id": "a", "question": "Onde Maria mora?", "context": CONTEXT,
             "answers": {"text": ["Recife"], "answer_start": [14]}},
            {"id": "b", "question": "Quando ela nasceu?", "context": CONTEXT,
             "answers": {"text": [], "answer_start": []}}]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    lines = load_questions(str(tmp_path / "qa.jsonl"))
    import csv

    with (tmp_path / "qa.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "question", "context", "answers"])
        writer.writeheader()
        writer.writerows({**r, "answers": json.dumps(r["answers"])} for r in rows)
    table = load_questions(str(tmp_path / "qa.csv"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "validation": datasets.Dataset.from_list(
        [{**rows[0], "id": "c"}])}).save_to_disk(str(tmp_path / "hf"))
    hf = load_questions(f"hf:{tmp_path / 'hf'}")
    for dataset in (lines, table):
        assert dataset.questions == v2.questions and dataset.answers == ((("Recife", 14),), ())
    assert hf.predefined_split == ("train", "train", "validation") and hf.answers[0] == (("Recife", 14),)


@pytest.mark.parametrize("case, expected", [
    ("start", "answer_start 13 does not point at the answer 'Recife'"),
    ("question", "the question is missing or empty"),
    ("context", "the context is missing or empty"),
    ("json", "not valid JSON"),
])
def test_bad_records_are_named_in_one_line(tmp_path, case, expected):
    path = tmp_path / ("bad.json" if case in ("start", "json") else "bad.jsonl")
    if case == "start":
        squad_file(path, start=13)
    elif case == "json":
        path.write_text('{"data": [')
        path = path.rename(tmp_path / "bad.jsonl")
    else:
        record = {"question": "" if case == "question" else "Onde?", "context": CONTEXT if case != "context" else None,
                  "answers": {"text": [], "answer_start": []}}
        first = json.dumps({"question": "Onde?", "context": CONTEXT, "answers": []})
        path.write_text(first + "\n" + json.dumps(record))
    with pytest.raises(DataError) as caught:
        load_questions(str(path))
    message = str(caught.value)
    assert expected in message and str(path) in message and "\n" not in message
    if case == "start":
        assert "question a" in message and "occurs at 14" in message
    if case in ("question", "context"):
        assert "line 2" in message


# -- windows, answer location, post-processing --------------------------------------------------------------------

def long_context():
    """A context of 34 tokens, three windows of 20 (14 of context after "[CLS] ana mora em [SEP]" and before the
    last [SEP], the next one starting 10 tokens on): tokens 0-13, 10-23, 20-33. Its answer, "são paulo" (s ##ão
    pa ##ulo), is tokens 22-25: across the second window's end, whole in the third."""
    words = ["mora", "em", "na", "rua", "das", "flores", "e", "ana"]
    return " ".join(words[i % len(words)] for i in range(22)) + " são paulo " + " ".join(["rua"] * 8)


def pair_tokenizer():
    tokenizer = wordpiece_tokenizer()
    tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]  # as BERT's gives them
    return tokenizer


def test_a_context_three_windows_long_is_read_whole_and_its_answer_found_across_a_window_boundary():
    tokenizer = pair_tokenizer()
    context = long_context()
    start = context.index("são paulo")
    windows = encode_questions(["ana mora em"], [context], [[("são paulo", start)]], tokenizer, 20, stride=4)
    assert [len(ids) for ids in windows.encoded.ids] == [20, 20, 20]
    covered = [w[w[:, 0] >= 0] for w in windows.offsets]
    # the second window ends after "são", the answer's first word
    assert [(c[0, 0], c[-1, 1]) for c in covered] == [(0, covered[0][-1, 1]), (covered[1][0, 0], start + 3),
                                                      (covered[2][0, 0], len(context))]
    types = windows.encoded.extras["token_type_ids"]
    assert all(t.tolist() == [0] * 5 + [1] * 15 for t in types)  # question 0, context and its [SEP] 1, as BERT
    starts, ends = windows.encoded.extras["start_positions"], windows.encoded.extras["end_positions"]
    assert starts.tolist() == [0, 0, 5 + 2] and ends.tolist() == [0, 0, 5 + 5]  # only the third holds it whole
    offsets = windows.offsets[2]
    assert context[offsets[7, 0]: offsets[10, 1]] == "são paulo"
    # a question the context does not answer points at the null position in every window
    none = encode_questions(["ana mora em"], [context], [[]], tokenizer, 20, stride=4)
    assert none.encoded.extras["start_positions"].tolist() == [0, 0, 0]


def test_post_processing_takes_the_best_span_over_windows_and_respects_the_null_threshold():
    context = long_context()
    windows = encode_questions(["ana mora em"], [context], None, pair_tokenizer(), 20, stride=4)
    lengths = [len(ids) for ids in windows.encoded.ids]
    starts = [np.full(n, -5.0) for n in lengths]
    ends = [np.full(n, -5.0) for n in lengths]
    # window 0: a span scoring 4 + 4; window 2: a span scoring 5 + 4 (the best); window 1: a longer one
    starts[0][6], ends[0][7] = 4.0, 4.0
    starts[2][8], ends[2][9] = 5.0, 4.0
    starts[1][5], ends[1][18] = 9.0, 9.0  # 14 tokens long: beyond max_answer_length 10
    for w in range(3):
        starts[w][0], ends[w][0] = 4.0, 4.0  # the null score: 8 in every window
    found = best_answers(windows, [context], starts, ends, n_best=5, max_answer_length=10)[0]
    a, b = windows.offsets[2][8, 0], windows.offsets[2][9, 1]
    assert (found.start, found.end, found.text) == (a, b, context[a:b]) and found.score == 9.0
    assert best_answers(windows, [context], starts, ends, max_answer_length=20)[0].score == 18.0
    # with unanswerable questions allowed: null 8 against the best span's 9
    starts[2][0] = ends[2][0] = 5.5  # the least null over windows counts: still 8 (windows 0 and 1)
    assert best_answers(windows, [context], starts, ends, max_answer_length=10, allow_null=True)[0].answered
    for w in range(3):
        starts[w][0] = 6.0  # null 10 in every window: beats the span by 1
    assert not best_answers(windows, [context], starts, ends, max_answer_length=10, allow_null=True,
                            null_threshold=0.5)[0].answered
    assert best_answers(windows, [context], starts, ends, max_answer_length=10, allow_null=True,
                        null_threshold=1.5)[0].answered
    assert best_answers(windows, [context], starts, ends, max_answer_length=10)[0].answered  # v1.1: always


def test_the_most_similar_sentence_baseline():
    context = "Recife fica em Pernambuco. Maria mora em Recife desde 2010! Ela trabalha no porto."
    assert most_similar_sentence("Desde quando Maria mora em Recife?", context) == "Maria mora em Recife desde 2010!"


# -- every method on a span model ---------------------------------------------------------------------------------

VOCAB = 64
ENCODER = EncoderConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
OPTIONS = {"partial": {"freeze_layers": 1}, "gradual-unfreezing": {"every": 2}, "lora": {"rank": 4},
           "prefix": {"num_virtual_tokens": 4, "projection_size": 16}, "prompt": {"num_virtual_tokens": 4},
           "p-tuning": {"num_virtual_tokens": 4, "encoder": "lstm", "encoder_hidden_size": 16}}


def span_batch(seed: int, n: int = 48) -> dict:
    """Token 4 is the question; the context's answer starts at a token in 8-15 and ends at the next token in
    16-23; a sixth of the rows have no such tokens (the null answer, position 0)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(32, VOCAB, (n, 14))
    ids[:, 0], ids[:, 1], ids[:, 2] = 2, 4, 3  # [CLS] question [SEP]
    types = np.zeros_like(ids)
    types[:, 3:] = 1
    starts, ends = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for row in range(n):
        if row % 6:
            at = rng.randint(3, 10)
            length = rng.randint(0, 3)
            ids[row, at], ids[row, at + length + 1] = rng.randint(8, 16), rng.randint(16, 24)
            starts[row], ends[row] = at, at + length + 1
    mask = np.ones_like(ids)
    mask[: n // 4, 13:] = 0
    return {"input_ids": jnp.asarray(ids * mask), "attention_mask": jnp.asarray(mask),
            "token_type_ids": jnp.asarray(types * mask), "start_positions": jnp.asarray(starts),
            "end_positions": jnp.asarray(ends), "weights": jnp.ones((n,), jnp.float32)}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_learns_spans_and_keeps_frozen_parameters_bit_identical(method):
    adaptation = adapt(BertForQuestionAnswering.from_config(ENCODER, seed=1),
                       [make_method(method, OPTIONS.get(method))])
    trainable_paths = {p for p, _, rule in adaptation.rules().report(adaptation.model) if rule.trainable}
    before = {"/".join(map(str, p)): np.asarray(v.get_value())
              for p, v in nnx.to_flat_state(nnx.state(adaptation.model, nnx.Param))}
    graphdef, trainable, frozen = split(adaptation.model, adaptation.trainable())
    rate = {"full": 3e-3, "feature-extraction": 3e-2, "gradual-unfreezing": 3e-2, "bitfit": 3e-2, "prompt": 3e-2,
            "p-tuning": 3e-2}.get(method, 1e-2)
    steps = 100
    tx = build_optimizer(OptimizerConfig(learning_rate=rate, lr_scheduler_type="constant"), steps)
    opt_state, step = tx.init(trainable), make_train_step(graphdef, question_answering_loss, tx)
    batch = span_batch(0)
    for i in range(steps):
        trainable, opt_state, _ = step(trainable, frozen, opt_state, batch, jax.random.key(i))
    after = {"/".join(map(str, p)): np.asarray(v.get_value())
             for p, v in nnx.to_flat_state(nnx.state(nnx.merge(graphdef, trainable, frozen), nnx.Param))}
    for path in before:
        if path not in trainable_paths:
            np.testing.assert_array_equal(before[path], after[path], err_msg=f"{path} is frozen but changed")
    assert any(not np.array_equal(before[p], after[p]) for p in trainable_paths)
    model = nnx.merge(graphdef, trainable, frozen)
    held_out = span_batch(1)
    untrained = adapt(BertForQuestionAnswering.from_config(ENCODER, seed=1),
                      [make_method(method, OPTIONS.get(method))]).model
    trained_loss = float(question_answering_loss(model, held_out, None)[0])
    untrained_loss = float(question_answering_loss(untrained, held_out, None)[0])
    assert trained_loss < 0.5 * untrained_loss, f"{method}: {untrained_loss:.3f} -> {trained_loss:.3f}"


def test_the_decoder_span_model_learns_with_lora():
    from tljax.models import DecoderConfig, LlamaForQuestionAnswering

    config = DecoderConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64)
    adaptation = adapt(LlamaForQuestionAnswering.from_config(config, seed=1), [make_method("lora", {"rank": 4})])
    graphdef, trainable, frozen = split(adaptation.model, adaptation.trainable())
    tx = build_optimizer(OptimizerConfig(learning_rate=1e-2, lr_scheduler_type="constant"), 100)
    opt_state, step = tx.init(trainable), make_train_step(graphdef, question_answering_loss, tx)
    batch = span_batch(0)
    for i in range(100):
        trainable, opt_state, _ = step(trainable, frozen, opt_state, batch, jax.random.key(i))
    model = nnx.merge(graphdef, trainable, frozen)
    held_out = span_batch(1)
    untrained = LlamaForQuestionAnswering.from_config(config, seed=1)
    assert float(question_answering_loss(model, held_out, None)[0]) < \
        0.5 * float(question_answering_loss(untrained, held_out, None)[0])


# -- the bundled set ----------------------------------------------------------------------------------------------

def test_the_bundled_set_holds_its_invariants_and_reads_the_same_in_both_languages():
    from tljax.data.bundled.qa_corpus import check_questions, questions

    counts = check_questions(questions())
    assert counts["passages"] >= 150 and counts["questions"] >= 600
    assert 0.10 <= counts["unanswerable"] / counts["questions"] <= 0.20
    assert counts["long passages"] >= counts["passages"] / 5
    pt, en = load_questions("qa-pt"), load_questions("qa-en")
    assert pt.ids == en.ids and pt.groups == en.groups and pt.predefined_split == en.predefined_split
    assert pt.answerable == en.answerable
    for dataset in (pt, en):  # every answer is what its offsets say
        for context, answers in zip(dataset.contexts, dataset.answers):
            assert all(context[s: s + len(text)] == text for text, s in answers)
    splits = {s: {g for g, x in zip(pt.groups, pt.predefined_split) if x == s} for s in ("train", "validation", "test")}
    assert not (splits["train"] & splits["test"]) and not (splits["validation"] & splits["test"])


def test_the_set_exports_as_squad_files_that_read_back_the_same(tmp_path, capsys):
    from tljax.data.__main__ import main

    assert main(["export", "qa-en", str(tmp_path)]) == 0
    exported = {p.name for p in tmp_path.iterdir()}
    assert exported == {"qa-en.train.json", "qa-en.validation.json", "qa-en.test.json"}
    original = load_questions("qa-en")
    test = original.subset([i for i, s in enumerate(original.predefined_split) if s == "test"])
    again = load_questions(str(tmp_path / "qa-en.test.json"))  # as a user's SQuAD v2.0 file
    assert (again.ids, again.questions, again.contexts, again.answers) == \
        (test.ids, test.questions, test.contexts, test.answers)
    capsys.readouterr()
    assert main(["check-qa"]) == 0 and "questions:" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {id: x-001, title: t, pt: 'O [rio]{q1} corre.', en: 'The river runs.', questions: "
                   "[{id: q1, pt: 'O que corre?', en: 'What runs?'}]}\n")
    assert main(["check-qa", str(bad)]) == 2
    assert "x-001/q1 (en): no [answer]{q1} mark" in capsys.readouterr().err


def test_the_null_threshold_chosen_is_the_one_with_the_best_f1():
    from tljax.data.answer_windows import Prediction, choose_null_threshold

    def span(text, score, null):
        return Prediction(text, 0, len(text), score, null, 0.5)

    # margins (null - span): -3 (right span), 1 (wrong span, unanswerable), 2 (right span), 5 (unanswerable)
    predictions = [span("Manaus", 6.0, 3.0), span("Recife", 4.0, 5.0), span("1808", 4.0, 6.0), span("x", 1.0, 6.0)]
    golds = [["Manaus"], [], ["1808"], []]
    threshold, f1 = choose_null_threshold(predictions, golds)
    # by hand: t < -3: all unanswered, F1 2/4; -3 <= t < 1: 3/4; 1 <= t < 2: 2/4; 2 <= t < 5: 3/4; t >= 5: 2/4 ...
    # the best (3/4) at t in [-3, 1) or [2, 5): the candidates are the margins, the nearest 0 of them is 2
    assert f1 == pytest.approx(0.75) and threshold == pytest.approx(2.0)
    # ... and what it chose scores what it said
    found = [("" if p.null_score - p.score > threshold else p.text) for p in predictions]
    assert squad_metrics(found, golds)["f1"] == pytest.approx(f1)
