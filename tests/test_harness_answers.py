"""The harness on answer tasks: task files, decoder replies read as answers, SQuAD figures, demonstrations, and
every variant kind on tiny models through a suite (a run, a trained sweep, an encoder's most similar sentence, a
decoder asked zero-shot and few-shot)."""

import json
import re

import pytest
import yaml

from harness.answers import (AnswerItem, AnswerTemplate, answer_messages, answer_plain_context,
                             draw_answer_demonstrations, read_answer, summarise_answers)
from harness.suite import load_suite, run_suite
from harness.tasks import TaskError, load_task
from harness.variants import Models, VariantError, evaluate, parse_variant
from tljax.squad import squad_metrics

TEMPLATE = AnswerTemplate("{context} Q: {question}", "not in the passage", "{context}\nQ: {question}\nA:")
CONTEXT = "O rio Negro encontra o Solimões perto de Manaus. As águas correm lado a lado por seis quilômetros."


def test_the_builtin_answer_tasks_pair_each_question_with_its_translation():
    english, portuguese = load_task("qa-en"), load_task("qa-pt")
    assert english.kind == portuguese.kind == "answers"
    assert [i.id for i in english.items] == [i.id for i in portuguese.items]
    assert len(english.items) >= 120 and english.has_unanswerable
    assert (english.language, portuguese.language) == ("en", "pt")
    assert portuguese.template().none == "não está no texto" and english.template("pt").none == "não está no texto"
    assert not {i.passage for i in english.items} & {d.passage for d in english.demonstration_items}
    for item in portuguese.items:
        assert all(item.context[s: s + len(t)] == t for t, s in item.answers)


@pytest.mark.parametrize("change, message", [
    ({"kind": "spans"}, "kind 'spans' is unknown"),
    ({"labels": ["a", "b"]}, "has no labels"),
    ({"templates": {"en": {"instruction": "no context here {question}"}}}, "{context} and {question}"),
    ({"templates": {"en": {"plain": "{context} {question}"}}}, "needs instruction"),
    ({"templates": {"en": {"instruction": "{context} {question}", "none": " "}}}, "none is empty"),
])
def test_bad_answer_tasks_are_refused_with_what_would_be_right(tmp_path, change, message):
    from conftest import write_squad

    task = {"name": "t", "kind": "answers", "data": {"source": str(write_squad(tmp_path / "s.json")), "split": "test"},
            "templates": {"en": {"instruction": "{context} {question}"}}, **change}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    with pytest.raises(TaskError, match=re.escape(message)):
        load_task(path).items


@pytest.mark.parametrize("reply, text, found", [
    ("Manaus", "Manaus", True),
    ("Answer: \"Manaus\".\nIt is in Amazonas.", "Manaus", True),  # a label, quotes, the first line only
    ("seis quilômetros.", "seis quilômetros", True),
    ("rio negro", "rio negro", True),  # located whatever its case
    ("Not in the passage.", "", False),
    ("not in the passage: it does not say", "", False),
    ("Belém", "Belém", False),  # an answer that is not in the passage: scored, not located
])
def test_a_decoder_reply_is_read_as_an_answer_and_located_in_the_passage(reply, text, found):
    answer = read_answer(reply, TEMPLATE, CONTEXT)
    assert answer.text == text
    if found:
        assert CONTEXT[answer.start:answer.end].lower() == text.lower()
    else:
        assert (answer.start, answer.end) == (-1, -1)


def test_the_figures_are_squads_and_seeds_are_averaged():
    golds = [["Manaus"], [], ["seis quilômetros", "cerca de seis quilômetros"], ["rio Negro"]]
    seeds = [["Manaus", "", "seis", "o rio Negro"], ["Belém", "Manaus", "cerca de seis quilômetros", "Negro"]]
    records = [[{"id": str(i), "gold": g, "predicted": p} for i, (g, p) in enumerate(zip(golds, s))] for s in seeds]
    summary = summarise_answers(records)
    expected = [squad_metrics(s, golds) for s in seeds]
    assert summary["answer"]["f1"] == pytest.approx(sum(e["f1"] for e in expected) / 2)
    assert summary["answer"]["exact_per_seed"] == pytest.approx([e["exact"] for e in expected])
    assert summary["answer"]["has_answer_f1"] == pytest.approx(sum(e["has_answer_f1"] for e in expected) / 2)
    assert summary["answer"]["no_answer_exact"] == pytest.approx(0.5) and summary["unanswered"] == 0.5
    low, high = summary["answer"]["f1_ci"]
    assert low <= summary["answer"]["f1"] <= high


def test_demonstrations_use_short_passages_never_the_questions_own_and_show_an_unanswered_one():
    pool = [AnswerItem(f"p{i // 3}/q{i % 3}", f"question {i}", "short passage" if i % 5 else "x" * 2000,
                       ((("short", 0),) if i % 4 else ()), "en") for i in range(60)]
    item = AnswerItem("p2/q1", "asked", CONTEXT, (("Manaus", 41),), "pt")
    demos = draw_answer_demonstrations(pool, item, 3, seed=0)
    assert len(demos) == 3 and all(d.passage != "p2" and len(d.context) < 900 for d in demos)
    assert sum(not d.answers for d in demos) == 1
    assert demos == draw_answer_demonstrations(pool, item, 3, seed=0)
    messages = answer_messages(TEMPLATE, item, demos[:1])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == TEMPLATE.answer(demos[0])
    plain = answer_plain_context(TEMPLATE, item, [pool[1], pool[4]])
    assert plain == ("short passage\nQ: question 1\nA: short\n\nshort passage\nQ: question 4\nA: not in the passage"
                     f"\n\n{CONTEXT}\nQ: asked\nA:")


def _answer_task(tmp_path, source, split="test") -> str:
    task = {"name": "tiny-answers", "kind": "answers", "data": {"source": str(source), "split": split},
            "templates": {"en": {"instruction": "{context} {question}", "plain": "{context} {question}",
                                 "none": "none"}}}
    path = tmp_path / "tiny-answers.yaml"
    path.write_text(yaml.safe_dump(task))
    return str(path)


def test_a_run_on_an_answer_task_scores_what_its_training_report_scored(tmp_path, reader):
    folder, _ = reader
    run = folder / "run"
    task = load_task(_answer_task(tmp_path, folder / "squad.json"))
    loaded = Models()
    evaluation = evaluate(parse_variant({"kind": "run", "run": str(run)}), task, task.items, 0, loaded)
    summary = summarise_answers([evaluation.records])
    report = json.loads((run / "summary.json").read_text())
    assert summary["items"] == report["test"]["questions"]
    assert summary["answer"]["f1"] == pytest.approx(report["test"]["f1"], abs=1e-12)
    assert evaluation.costs["trainable_parameters"] == report["trainable_parameters"]
    for record in evaluation.records:  # every answer is its span of the passage
        if record["predicted"]:
            assert record["context"][record["start"]:record["end"]] == record["predicted"]
    everything = load_task(_answer_task(tmp_path, folder / "squad.json", split="all"))
    with pytest.raises(VariantError, match=r"trained on \d+ of the 96 questions"):
        evaluate(parse_variant({"kind": "run", "run": str(run)}), everything, everything.items, 0, loaded)
    with pytest.raises(VariantError, match="evaluate it on an answer task"):
        evaluate(parse_variant({"kind": "run", "run": str(run)}), load_task("sentiment-en"), [], 0, loaded)


def test_a_suite_on_an_answer_task_runs_every_variant_kind(tmp_path, reader, tiny_model, tiny_decoder):
    folder, _ = reader
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["training"]["max_steps"] = 32
    (tmp_path / "qa.yaml").write_text(yaml.safe_dump(config))
    suite = {"name": "tiny-qa", "tasks": [_answer_task(tmp_path, folder / "squad.json")],
             "variants": [{"kind": "run", "run": str(folder / "run"), "name": "run"},
                          {"kind": "train", "config": str(tmp_path / "qa.yaml"), "lr_scales": [0.5, 1],
                           "name": "trained"},
                          {"kind": "zero-shot", "model": str(tiny_model), "name": "similar"},
                          {"kind": "zero-shot", "model": str(tiny_decoder), "max_new_tokens": 4, "name": "asked"},
                          {"kind": "few-shot", "model": str(tiny_decoder), "k": 2, "seeds": [0, 1],
                           "prompt": "plain", "max_new_tokens": 4, "name": "shown"}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    rows = {r["variant"]: r for r in run_suite(load_suite(tmp_path / "suite.yaml"), tmp_path / "out",
                                               say=lambda _: None)}
    assert all(r["metric"] == "F1" and r["score"] == r["summary"]["answer"]["f1"] for r in rows.values())
    # the run learnt where the answers are; the most similar sentence is the whole (one-sentence) passage
    assert rows["run"]["score"] > rows["similar"]["score"]
    assert "learning rate" in rows["trained"]["notes"][0]
    assert rows["shown"]["summary"]["seeds"] == 2
    records = [json.loads(line) for line in next((tmp_path / "out" / "predictions").glob("shown__*"))
               .read_text().splitlines()]
    assert records[0]["prompt"].count(" the film") == 3 and "reply" in records[0]
    similar = [json.loads(line) for line in next((tmp_path / "out" / "predictions").glob("similar__*"))
               .read_text().splitlines()]
    assert all(r["predicted"] == r["context"][r["start"]:r["end"]] for r in similar)
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "F1 (95% CI)" in markdown and "| run | " in markdown and "answerable F1" in markdown
    again = run_suite(load_suite(tmp_path / "suite.yaml"), tmp_path / "out", say=lambda _: None)
    assert [r["score"] for r in again] == [r["score"] for r in rows.values()]  # from the cache
    with pytest.raises(VariantError, match="is an encoder"):
        evaluate(parse_variant({"kind": "few-shot", "model": str(tiny_model), "k": 2}),
                 load_task(suite["tasks"][0]), [], 0, Models())
