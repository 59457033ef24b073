"""The harness on entity tasks: task files, decoder replies read into spans, entity F1 as seqeval counts it,
demonstrations, and every variant kind on tiny models through a suite (a run, a trained sweep, an encoder's
few-shot tag classifier, a decoder asked zero-shot and few-shot)."""

import json
import re

import numpy as np
import pytest
import yaml

from harness.entities import (EntityItem, EntityTemplate, draw_entity_demonstrations, entity_messages,
                              entity_plain_context, parse_entity_reply, summarise_entities)
from harness.suite import load_suite, run_suite
from harness.tasks import TaskError, load_task
from harness.variants import Models, VariantError, evaluate, parse_variant
from tljax.tagging import entities

TYPES = ("PER", "ORG", "LOC")
TEMPLATE = EntityTemplate("Entities of: {text}", ("person", "organisation", "place"), "none", "Text: {text}\nEntities:")


def test_the_builtin_entity_tasks_pair_each_sentence_with_its_translation():
    english, portuguese = load_task("ner-en"), load_task("ner-pt")
    assert english.kind == portuguese.kind == "entities"
    assert len(english.items) == len(portuguese.items) == 107  # the corpus's fixed test split (its README)
    assert [i.id for i in english.items] == [i.id for i in portuguese.items]
    assert (english.language, portuguese.language) == ("en", "pt")
    assert portuguese.template().types[0] == "pessoa" and english.template("pt").none == "nenhuma"
    for item in portuguese.items:  # each gold span is whole words of its text
        starts, ends = {a for a, _ in item.words}, {b for _, b in item.words}
        assert all(s in starts and e in ends for s, e, _ in item.entities)
    assert not {i.text for i in english.items} & {d.text for d in english.demonstration_items}


@pytest.mark.parametrize("change, message", [
    ({"kind": "spans"}, "kind 'spans' is unknown"),
    ({"labels": []}, "one or more distinct entity types"),
    ({"templates": {"en": {"instruction": "no text here", "types": {"PER": "p", "LOC": "l"}}}}, "{text}"),
    ({"templates": {"en": {"instruction": "{text}", "types": {"PER": "p"}}}}, "must name every type"),
    ({"templates": {"en": {"instruction": "{text}", "types": {"PER": "x", "LOC": "X"}}}}, "its own non-empty word"),
    ({"templates": {"en": {"instruction": "{text}", "types": {"PER": "a: b", "LOC": "c"}}}}, "without ':'"),
    ({"labels": ["PER"], "templates": {"en": {"instruction": "{text}", "types": {"PER": "p"}}}}, "missing ['LOC']"),
])
def test_bad_entity_tasks_are_refused_with_what_would_be_right(tmp_path, change, message):
    from conftest import write_tagged

    task = {"name": "t", "kind": "entities", "data": {"source": str(write_tagged(tmp_path / "t.jsonl")),
                                                      "split": "test"},
            "labels": ["PER", "LOC"], "templates": {"en": {"instruction": "{text}", "types": {"PER": "p", "LOC": "l"}}},
            **change}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    with pytest.raises(TaskError, match=re.escape(message)):
        load_task(path).items


TEXT = "Ana Lima works at Petrobras, lives in Recife with Rui Costa and Ana Lima."


@pytest.mark.parametrize("reply, expected, unfound, readable", [
    ("person: Ana Lima\norganisation: Petrobras", [("Ana Lima", "PER"), ("Petrobras", "ORG")], [], True),
    ("- **PER**: Ana Lima; LOC: Recife.", [("Ana Lima", "PER"), ("Recife", "LOC")], [], True),  # bullets, codes
    ("person: Ana Lima, Rui Costa", [("Ana Lima", "PER"), ("Rui Costa", "PER")], [], True),  # a list
    ("place: recife", [("Recife", "LOC")], [], True),  # another case where the exact one is absent
    ("person: \"Ana Lima\"\nperson: Ana Lima", [("Ana Lima", "PER"), ("Ana Lima", "PER", 1)], [], True),
    ("person: Joana", [], [("Joana", "PER")], True),  # not in the text: a false positive
    ("person: Ana", [("Ana", "PER")], [], True),  # a part of a name is a span (a boundary error)
    ("person: Lim", [], [("Lim", "PER")], True),  # never inside a word
    ("None.", [], [], True),
    ("The text talks about a meeting.", [], [], False),
    ("animal: Ana Lima", [], [], False),  # no known type
])
def test_a_decoder_reply_is_read_into_spans_of_the_text(reply, expected, unfound, readable):
    spans = []
    for words, label, *nth in expected:  # the nth occurrence of the words in the text
        start = -1
        for _ in range((nth or [0])[0] + 1):
            start = TEXT.index(words, start + 1)
        spans.append((start, start + len(words), label))
    parsed = parse_entity_reply(reply, TEMPLATE, TYPES, TEXT)
    assert list(parsed.spans) == sorted(spans) and list(parsed.unfound) == unfound and parsed.readable == readable


def test_portuguese_replies_keep_their_accents():
    template = EntityTemplate("{text}", ("pessoa", "organização", "lugar"), "nenhuma")
    text = "A Fundação Oswaldo Cruz abriu vagas em São João del-Rei."
    parsed = parse_entity_reply("organização: Fundação Oswaldo Cruz\nLugar: são joão del-rei", template, TYPES, text)
    assert [(text[s:e], t) for s, e, t in parsed.spans] == [("Fundação Oswaldo Cruz", "ORG"),
                                                            ("São João del-Rei", "LOC")]
    assert parse_entity_reply("Nenhuma", template, TYPES, text).readable


def _random_tags(rng, words: int) -> list[str]:
    tags = rng.choice(["O", "O", "O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC"], words)
    return [str(t) for t in tags]


def test_entity_f1_is_what_seqeval_counts_and_its_interval_holds_it():
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    gold, predicted, records = [], [], []
    for n in range(60):
        words = [(3 * i, 3 * i + 2) for i in range(int(rng.integers(3, 12)))]
        g = _random_tags(rng, len(words))
        p = [t if rng.random() < 0.7 else str(rng.choice(["O", "B-PER", "I-ORG", "B-LOC"])) for t in g]
        gold.append(g)
        predicted.append(p)
        spans = lambda tags: [[words[e.start][0], words[e.end - 1][1], e.label] for e in entities(tags)]  # noqa
        records.append({"id": str(n), "gold": spans(g), "predicted": spans(p)})
    summary = summarise_entities([records], TYPES)
    entity = summary["entity"]
    assert entity["f1"] == pytest.approx(f1_score(gold, predicted), abs=1e-12)
    assert entity["precision"] == pytest.approx(precision_score(gold, predicted), abs=1e-12)
    assert entity["recall"] == pytest.approx(recall_score(gold, predicted), abs=1e-12)
    report = classification_report(gold, predicted, output_dict=True)
    for label in TYPES:
        assert entity["per_type"][label] == pytest.approx(report[label]["f1-score"], abs=1e-12)
    assert entity["f1_ci"][0] < entity["f1"] < entity["f1_ci"][1]
    assert summary["entities"] == sum(len(entities(g)) for g in gold)

    # an entity named but not in the text is a false positive; two seeds: every figure their mean
    other = [{**r, "predicted": [], "unfound": [["x", "PER"]], "readable": False} for r in records]
    both = summarise_entities([records, other], TYPES)
    assert both["entity"]["f1"] == pytest.approx(entity["f1"] / 2) and both["entity"]["precision_per_seed"][1] == 0
    assert both["unread_per_seed"] == [0, 60] and both["unfound"] == 30


def test_demonstrations_show_each_type_first_and_never_the_text_or_its_translation():
    pool = [EntityItem(f"d/{i}", f"text {i}", ((0, 4, TYPES[i % 3]),) if i % 4 else (), "en", ((0, 4), (5, 7)))
            for i in range(24)]
    item = EntityItem("d/5", "text 5", (), "pt", ())
    demos = draw_entity_demonstrations(pool, item, 4, TYPES, seed=0)
    assert len(demos) == 4 and "d/5" not in {d.id for d in demos}
    assert {e[2] for d in demos for e in d.entities} == set(TYPES)
    assert demos == draw_entity_demonstrations(pool, item, 4, TYPES, seed=0)
    assert demos != draw_entity_demonstrations(pool, item, 4, TYPES, seed=1)
    messages = entity_messages(TEMPLATE, TYPES, "Ana", demos[:1])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == TEMPLATE.answer(demos[0], TYPES)
    plain = entity_plain_context(TEMPLATE, TYPES, "Ana", [pool[1], pool[4]])
    assert plain == "Text: text 1\nEntities: organisation: text\n\nText: text 4\nEntities: none\n\nText: Ana\nEntities:"


def _entity_task(tmp_path, source, split="test") -> str:
    task = {"name": "tiny-entities", "kind": "entities", "data": {"source": str(source), "split": split},
            "labels": ["PER", "LOC"],
            "templates": {"en": {"instruction": "entities of {text}", "plain": "{text} entities",
                                 "types": {"PER": "good", "LOC": "bad"}, "none": "none"}}}
    path = tmp_path / "tiny-entities.yaml"
    path.write_text(yaml.safe_dump(task))
    return str(path)


def test_a_run_on_an_entity_task_scores_what_its_training_report_scored(tmp_path, tagger):
    folder, _ = tagger
    run = folder / "run"
    task = load_task(_entity_task(tmp_path, folder / "tagged.jsonl"))
    loaded = Models()
    evaluation = evaluate(parse_variant({"kind": "run", "run": str(run)}), task, task.items, 0, loaded)
    summary = summarise_entities([evaluation.records], task.labels)
    report = json.loads((run / "summary.json").read_text())["test"]
    assert summary["items"] == 16 and summary["entity"]["f1"] == pytest.approx(report["f1"], abs=1e-12)
    assert evaluation.costs["trainable_parameters"] == json.loads((run / "summary.json").read_text())[
        "trainable_parameters"]
    everything = load_task(_entity_task(tmp_path, folder / "tagged.jsonl", split="all"))
    with pytest.raises(VariantError, match="trained on 128 of the 160 texts"):
        evaluate(parse_variant({"kind": "run", "run": str(run)}), everything, everything.items, 0, loaded)
    with pytest.raises(VariantError, match="tags entities; evaluate it on an entity task"):
        evaluate(parse_variant({"kind": "run", "run": str(run)}), load_task("sentiment-en"), [], 0, loaded)


def test_a_suite_on_an_entity_task_runs_every_variant_kind(tmp_path, tagger, tiny_model, tiny_decoder):
    folder, _ = tagger
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["training"]["max_steps"] = 16
    (tmp_path / "ner.yaml").write_text(yaml.safe_dump(config))
    suite = {"name": "tiny-ner", "tasks": [_entity_task(tmp_path, folder / "tagged.jsonl")],
             "variants": [{"kind": "run", "run": str(folder / "run"), "name": "run"},
                          {"kind": "train", "config": str(tmp_path / "ner.yaml"), "lr_scales": [0.5, 1],
                           "name": "trained"},
                          {"kind": "few-shot", "model": str(tiny_model), "k": 4, "seeds": [0, 1], "name": "encoder"},
                          {"kind": "zero-shot", "model": str(tiny_decoder), "max_new_tokens": 6, "name": "asked"},
                          {"kind": "few-shot", "model": str(tiny_decoder), "k": 2, "prompt": "plain",
                           "max_new_tokens": 6, "name": "shown"}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    rows = {r["variant"]: r for r in run_suite(load_suite(tmp_path / "suite.yaml"), tmp_path / "out",
                                               say=lambda _: None)}
    assert all(r["metric"] == "entity F1" and r["score"] == r["summary"]["entity"]["f1"] for r in rows.values())
    # the few-shot tag classifier reads the entity words' identity off the frozen model; the trained runs learn
    # the task; the tiny random decoder names no type it knows
    assert rows["encoder"]["summary"]["seeds"] == 2 and rows["encoder"]["score"] > 0.5
    assert rows["encoder"]["costs"]["trainable_parameters"] == 32 * 5 + 5
    assert rows["trained"]["score"] > 0.5 and "learning rate" in rows["trained"]["notes"][0]
    assert rows["asked"]["summary"]["unread"] + rows["asked"]["summary"]["unfound"] > 0
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions").glob("shown__*").__next__()
               .read_text().splitlines()]
    assert records[0]["prompt"].count(" entities") == 3 and "reply" in records[0]
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "entity F1 (95% CI)" in markdown and "| run | " in markdown and "| F1 LOC | F1 PER |" in markdown
    assert (tmp_path / "out" / "plots" / "language_matrix.png").is_file()
    again = run_suite(load_suite(tmp_path / "suite.yaml"), tmp_path / "out", say=lambda _: None)
    assert [r["score"] for r in again] == [r["score"] for r in rows.values()]  # from the cache
    with pytest.raises(VariantError, match="is an encoder"):
        evaluate(parse_variant({"kind": "zero-shot", "model": str(tiny_model)}),
                 load_task(suite["tasks"][0]), [], 0, Models())


def test_the_few_shot_tagger_skips_words_without_a_state_of_their_own(tmp_path, tagger, tiny_model, monkeypatch):
    """A word whose first token is the previous word's (e5's tokenizer merges some) has no state (NaN): the tag
    classifier is fitted on the other words, and such a word follows its neighbour."""
    import harness.entity_variants as entity_variants
    from tljax.data.windows import NO_TOKEN

    folder, _ = tagger
    task = load_task(_entity_task(tmp_path, folder / "tagged.jsonl"))
    plain = entity_variants.WordFeatures.__call__

    def merged_first_words(self, texts, words, prefix=""):
        features, followers = plain(self, texts, words, prefix)
        for f, follow in zip(features, followers):
            f[0], follow[0] = np.nan, NO_TOKEN  # as a word with no token of its own
        return features, followers

    monkeypatch.setattr(entity_variants.WordFeatures, "__call__", merged_first_words)
    records = evaluate(parse_variant({"kind": "few-shot", "model": str(tiny_model), "k": 4}), task, task.items, 0,
                       Models()).records
    assert summarise_entities([records], task.labels)["entity"]["f1"] > 0.5  # NaN in the fit: every word O, F1 0
