"""The evaluation harness on tiny models: tasks, prompts and few-shot draws, plain prompts against
lm-evaluation-harness, metrics, variants, the run variant's checks, sweeps, the bias probe, the command
(decoder scoring itself: tests/test_scoring.py)."""

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

from conftest import WORDS, write_reviews
from harness.prompts import chat_messages, draw_demonstrations
from harness.results import binomial_p_value, markdown_table, summarise
from harness.tasks import Item, TaskError, builtin_tasks, load_task, parse_task
from harness.variants import VariantError, parse_reply, parse_variant


SENTIMENT = {
    "name": "tiny", "data": {"source": "x.csv"}, "labels": ["neg", "pos"],
    "templates": {"en": {"instruction": "the film was {text}", "verbalisers": {"neg": "bad", "pos": "good"},
                         "descriptions": {"neg": "bad awful", "pos": "good great"}}},
}


def test_every_builtin_task_parses_with_english_and_portuguese_templates():
    names = builtin_tasks()
    assert {"sentiment-en", "sentiment-pt", "sentiment-fr", "sentiment-nl", "sentiment-de", "sentiment-pt-parallel",
            "sentiment-en-parallel", "subjectivity-en", "topics-en", "ner-en", "ner-pt", "qa-en",
            "qa-pt"} <= set(names)
    for name in names:
        task = load_task(name)
        assert {"en", "pt"} <= set(task.templates), name
        if task.kind == "answers":  # no labels: each language says what it writes for "no answer"
            assert all(t.none for t in task.templates.values())
            continue
        words = [t.verbalisers if task.kind == "classification" else t.types for t in task.templates.values()]
        assert all(len(w) == len(task.labels) for w in words)
    assert len(load_task("topics-en").labels) == 20


def test_bad_tasks_are_refused_with_what_would_be_right():
    with pytest.raises(TaskError, match="unknown task 'sentimnet-en'; built-in tasks: .*sentiment-en"):
        load_task("sentimnet-en")
    bad = json.loads(json.dumps(SENTIMENT))
    bad["templates"]["en"]["verbalisers"] = {"neg": "good", "pos": "Good"}
    with pytest.raises(TaskError, match="two labels have the same verbaliser"):
        parse_task(bad)
    bad["templates"]["en"]["verbalisers"] = {"neg": " ", "pos": "good"}
    with pytest.raises(TaskError, match="a verbaliser is empty"):
        parse_task(bad)
    bad["templates"]["en"]["verbalisers"] = {"neg": "bad"}
    with pytest.raises(TaskError, match="must name every label .*missing: pos"):
        parse_task(bad)
    with pytest.raises(TaskError, match=r"unknown keys \['verbaliser'\]"):
        parse_task({**SENTIMENT, "templates": {"en": {"verbaliser": {}}}})
    task = parse_task(SENTIMENT)
    with pytest.raises(TaskError, match="task tiny has no 'pt' template .*add templates.pt"):
        task.template("pt")


def items(n: int, labels: int = 2) -> list[Item]:
    return [Item(f"i{k}", f"text {k}", k % labels, "en") for k in range(n)]


@pytest.mark.parametrize("labels", [2, 3])
def test_demonstrations_are_class_balanced_seeded_per_item_and_never_the_item(labels):
    pool = items(60, labels)
    item = pool[7]
    translation = Item(item.id, "its translation", item.label, "pt")  # a parallel set shares the id
    for k in range(1, 9):
        demos = draw_demonstrations([*pool, translation], item, k, labels, seed=3)
        counts = np.bincount([d.label for d in demos], minlength=labels)
        assert len(demos) == k and counts.max() - counts.min() <= 1, (k, counts)
        assert all(d.id != item.id for d in demos)
        assert demos == draw_demonstrations([*pool, translation], item, k, labels, seed=3)  # reproducible
    assert draw_demonstrations(pool, item, 4, labels, seed=3) != draw_demonstrations(pool, item, 4, labels, seed=4)
    messages = chat_messages(parse_task(SENTIMENT).template("en"), "x", demos[:2])
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]


def test_binomial_test_and_summary():
    assert binomial_p_value(8, 10, 0.5) == pytest.approx(56 / 1024)
    assert binomial_p_value(0, 10, 0.5) == pytest.approx(1.0)
    assert binomial_p_value(127, 200, 0.5) < 0.01
    records = [{"id": str(i), "gold": i % 2, "prediction": {"acc": i % 2 if i < 8 else -1}} for i in range(10)]
    summary = summarise(records, 2)
    assert summary["unread"] == 2 and summary["acc"]["accuracy"] == pytest.approx(0.8)  # unread counts as wrong
    low, high = summary["acc"]["accuracy_ci"]
    assert low <= 0.8 <= high
    table = markdown_table([{"variant": "v", "task": "t", "language": "en", "summary": summary, "costs": {}}])
    assert "| v | t | en | 10 | 0.800" in table


def test_an_unread_reply_is_its_own_outcome_not_another_label():
    """By hand: gold 0 0 0 1 1 2, predicted 0 - 1 1 - 2 (- : unread). An unread reply is a miss in its gold
    class's recall and no class's false positive: per-class F1 1/2 (P 1, R 1/3), 1/2 (P 1/2, R 1/2), 1 (P 1,
    R 1), macro 2/3; read as the next label instead, classes 1 and 2 would each gain a false positive."""
    records = [{"id": str(i), "gold": g, "prediction": {"acc": p}}
               for i, (g, p) in enumerate(zip([0, 0, 0, 1, 1, 2], [0, -1, 1, 1, -1, 2]))]
    summary = summarise(records, 3)
    assert summary["unread"] == 2 and summary["acc"]["accuracy"] == pytest.approx(0.5)
    assert summary["acc"]["f1"] == pytest.approx(2 / 3)
    assert summary["acc"]["precision"] == pytest.approx(5 / 6) and summary["acc"]["recall"] == pytest.approx(11 / 18)
    assert summary["acc"]["mcc"] == pytest.approx(10 / np.sqrt(26 * 22))  # see tests/test_metrics.py


def test_a_row_over_seeds_reports_every_figure_over_the_seeds(tmp_path, monkeypatch):
    """Two few-shot seeds: accuracy, F1, MCC and the other rules are each the mean over the seeds with their
    spread, the interval is the seed mean's, p the largest over seeds, unread and the per-seed costs the means."""
    from scipy.stats import binomtest
    from sklearn import metrics as sk

    import harness.suite as suite_module
    from harness.variants import Evaluation

    def fake_evaluate(variant, task, items, seed, loaded):
        rng = np.random.default_rng(seed)
        records = []
        for item in items:
            right = rng.random() < (0.9 if seed == 0 else 0.6)
            guess = -1 if rng.random() < 0.15 * seed else 1 - item.label
            records.append({"id": item.id, "gold": item.label,
                            "prediction": {"acc": item.label if right else guess, "acc_norm": item.label}})
        return Evaluation(records, {"examples_per_second": 10.0 * (seed + 1), "trainable_parameters": 0})

    monkeypatch.setattr(suite_module, "evaluate", fake_evaluate)
    reviews = write_reviews(tmp_path / "reviews.csv")
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "seeds", "limit": 60,
        "tasks": [str(write_task(tmp_path, {"source": str(reviews), "text_column": "review",
                                            "label_column": "sentiment"}))],
        "variants": [{"kind": "few-shot", "model": "m", "k": 2, "seeds": [0, 1]}]}))
    [row] = suite_module.run_suite(suite_module.load_suite(suite), tmp_path / "out", say=lambda line: None)
    per_seed = [[json.loads(line) for line in path.read_text().splitlines()]
                for path in sorted((tmp_path / "out" / "predictions").glob("*.jsonl"))]
    gold = np.asarray([r["gold"] for r in per_seed[0]])
    predicted = [np.asarray([r["prediction"]["acc"] for r in records]) for records in per_seed]
    assert all(np.array_equal(gold, [r["gold"] for r in records]) for records in per_seed)
    expected = {"accuracy": [sk.accuracy_score(gold, p) for p in predicted],
                "f1": [sk.f1_score(gold, p, labels=[0, 1], average="macro", zero_division=0) for p in predicted],
                "mcc": [sk.matthews_corrcoef(gold, p) for p in predicted]}
    acc = row["summary"]["acc"]
    assert expected["accuracy"][0] > expected["accuracy"][1] + 0.1  # the seeds differ, so the figures must agree
    for name, values in expected.items():
        assert acc[name] == pytest.approx(np.mean(values)) and acc[f"{name}_sd"] == pytest.approx(np.std(values, ddof=1))
    assert acc["accuracy_ci"][0] <= acc["accuracy"] <= acc["accuracy_ci"][1]
    assert acc["accuracy_ci"][0] > min(expected["accuracy"])  # the seed mean's interval, not seed 0's
    assert acc["p_above_chance"] == pytest.approx(max(binomtest(int((gold == p).sum()), len(gold), 0.5,
                                                                alternative="greater").pvalue for p in predicted))
    unread = [int((p < 0).sum()) for p in predicted]
    assert unread[1] > 0 and row["summary"]["unread"] == pytest.approx(np.mean(unread))
    assert row["summary"]["acc_norm"]["accuracy"] == 1.0 and row["summary"]["acc_norm"]["accuracy_sd"] == 0.0
    assert row["costs"]["examples_per_second"] == pytest.approx(15.0)
    line = next(line for line in (tmp_path / "out" / "results.md").read_text().splitlines() if "| few-shot" in line)
    assert f"| 60 × 2 | {np.mean(expected['accuracy']):.3f} ± {np.std(expected['accuracy'], ddof=1):.3f} (" in line
    assert f"| {np.mean(expected['f1']):.3f} ± {np.std(expected['f1'], ddof=1):.3f} | " \
           f"{np.mean(expected['mcc']):.3f} ± {np.std(expected['mcc'], ddof=1):.3f} |" in line
    assert f"| {np.mean(unread):.1f} |" in line and "mean over its S seeds" in (tmp_path / "out" / "results.md").read_text()


def test_variants_are_checked_and_replies_parsed():
    with pytest.raises(VariantError, match="unknown variant kind 'zero_shot'; valid: zero-shot, few-shot, chat, run"):
        parse_variant({"kind": "zero_shot", "model": "m"})
    with pytest.raises(VariantError, match=r"unknown keys \['shots'\]"):
        parse_variant({"kind": "few-shot", "model": "m", "shots": 4})
    with pytest.raises(VariantError, match="needs run"):
        parse_variant({"kind": "run"})
    assert parse_variant({"kind": "few-shot", "model": "m", "seeds": [1, 2]}).seeds == (1, 2)
    assert parse_reply("Positive.", ["negative", "positive"]) == 1
    assert parse_reply("It is negative, not positive", ["negative", "positive"]) == 0
    assert parse_reply("I cannot tell", ["negative", "positive"]) == -1
    assert parse_reply("unpositive", ["negative", "positive"]) == -1


def test_the_command_lists_runs_and_refuses_bad_input(tmp_path, capsys):
    from harness.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "python -m harness" in capsys.readouterr().out
    assert main(["list"]) == 0 and "sentiment-pt" in capsys.readouterr().out
    assert main(["run", "no-such-suite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown suite 'no-such-suite'; built-in suites:") and "\n" not in err
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"tasks": ["sentiment-en"], "variants": [{"kind": "few_shot", "model": "m"}]}))
    assert main(["run", str(suite)]) == 2 and "valid: zero-shot" in capsys.readouterr().err


def write_task(tmp_path: Path, data: dict, labels=("neg", "pos")) -> Path:
    path = tmp_path / f"task-{len(list(tmp_path.glob('task-*')))}.yaml"
    template = {"instruction": "the film was {text}", "verbalisers": dict(zip(labels, ("bad", "good"))),
                "descriptions": dict(zip(labels, ("bad awful", "good great")))}
    path.write_text(yaml.safe_dump({"name": "tiny", "data": data, "labels": list(labels), "templates": {"en": template}}))
    return path


def test_a_run_variant_predicts_through_its_export_and_refuses_overlap_and_other_labels(tmp_path, tiny_model):
    from harness.suite import load_suite, run_suite
    from harness.tasks import load_task as task_from
    from harness.variants import Models, evaluate
    from tljax.train.__main__ import main as train

    reviews = write_reviews(tmp_path / "reviews.csv")
    data = {"source": str(reviews), "text_column": "review", "label_column": "sentiment"}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_model), "data": {**data, "labels": ["neg", "pos"]},
                                      "method": {"name": "full"}, "output_dir": str(tmp_path / "run"),
                                      "training": {"learning_rate": 1e-2, "max_steps": 24, "eval_steps": 12,
                                                   "per_device_train_batch_size": 16}}))
    assert train(["--config", str(config)]) == 0
    variant = parse_variant({"kind": "run", "run": str(tmp_path / "run")})
    held_out = task_from(write_task(tmp_path, {**data, "split": "test"}))
    result = evaluate(variant, held_out, held_out.items, 0, Models())
    accuracy = np.mean([r["prediction"]["acc"] == r["gold"] for r in result.records])
    assert accuracy > 0.75 and result.costs["overlap"] == 0 and result.costs["trainable_parameters"] > 0
    everything = task_from(write_task(tmp_path, {**data, "split": "all"}))
    with pytest.raises(VariantError, match=r"trained on \d+ of the 240 items of tiny"):
        evaluate(variant, everything, everything.items, 0, Models())
    flagged = evaluate(parse_variant({"kind": "run", "run": str(tmp_path / "run"), "allow_overlap": True}),
                       everything, everything.items, 0, Models())
    assert flagged.notes and flagged.notes[0].startswith("trained on")
    write_reviews(tmp_path / "other.csv", label_names=("bad", "good"))
    other = task_from(write_task(tmp_path, {**data, "source": str(tmp_path / "other.csv")}, labels=("bad", "good")))
    with pytest.raises(VariantError, match=r"predicts labels \['neg', 'pos'\], the task tiny has \['bad', 'good'\]"):
        evaluate(variant, other, other.items, 0, Models())

    # a suite of it: results, table and plots written; a rerun is served from the cache
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "tiny", "tasks": [str(write_task(tmp_path, {**data, "split": "test"}))],
                                     "variants": [{"kind": "run", "run": str(tmp_path / "run")}]}))
    lines = []
    rows = run_suite(load_suite(suite), tmp_path / "out", say=lines.append)
    assert rows[0]["summary"]["acc"]["accuracy"] == pytest.approx(accuracy)
    for name in ("results.json", "results.md", "plots/accuracy_vs_parameters.png", "plots/language_matrix.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    assert len(list((tmp_path / "out" / "predictions").glob("*.jsonl"))) == 1
    run_suite(load_suite(suite), tmp_path / "out", say=lines.append)
    assert lines[-1].endswith("cached")


def test_chat_tuning_teaches_a_decoder_the_replies_and_the_harness_scores_it_in_the_same_form(tmp_path,
                                                                                              tiny_decoder):
    from harness.tasks import load_task as task_from
    from harness.variants import Models, evaluate
    from tljax.train.__main__ import main as train

    reviews = write_reviews(tmp_path / "reviews.csv")
    data = {"source": str(reviews), "text_column": "review", "label_column": "sentiment"}
    instruction = "the film was {text}"  # the template write_task gives the harness task
    config = tmp_path / "chat.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_decoder), "task": "causal-lm", "data": {**data, "labels": ["neg", "pos"], "max_length": 32},
        "chat": {"instruction": instruction, "verbalisers": {"neg": "bad", "pos": "good"}},
        "method": {"name": "lora", "rank": 4}, "output_dir": str(tmp_path / "chat"),
        "training": {"learning_rate": 3e-2, "max_steps": 80, "eval_steps": 40, "per_device_train_batch_size": 16,
                     "warmup_ratio": 0.0}}))
    assert train(["--config", str(config)]) == 0
    summary = json.loads((tmp_path / "chat" / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.75, summary["test"]
    info = json.loads((tmp_path / "chat" / "export" / "run.json").read_text())
    assert info["task"] == "causal-lm" and info["labels"] == ["neg", "pos"] and info["chat"]["instruction"] == instruction
    task = task_from(write_task(tmp_path, {**data, "split": "test"}))
    tuned = evaluate(parse_variant({"kind": "run", "run": str(tmp_path / "chat")}), task, task.items, 0, Models())
    before = evaluate(parse_variant({"kind": "zero-shot", "model": str(tiny_decoder)}), task, task.items, 0, Models())
    accuracy = {name: np.mean([r["prediction"]["acc"] == r["gold"] for r in e.records])
                for name, e in (("tuned", tuned), ("zero-shot", before))}
    assert accuracy["tuned"] > 0.75 and accuracy["tuned"] > accuracy["zero-shot"] + 0.15, accuracy
    assert tuned.records[0]["prompt"] == before.records[0]["prompt"]  # the same chat form


def test_a_train_variant_sweeps_learning_rates_chooses_on_validation_and_reuses_its_runs(tmp_path, tiny_model):
    from harness.suite import load_suite, run_suite

    reviews = write_reviews(tmp_path / "reviews.csv")
    data = {"source": str(reviews), "text_column": "review", "label_column": "sentiment"}
    config = tmp_path / "full.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_model), "data": {**data, "labels": ["neg", "pos"]},
                                      "method": {"name": "full"}, "output_dir": "unused",
                                      "training": {"learning_rate": 1e-2, "per_device_train_batch_size": 16}}))
    budget = {"training.max_steps": 36, "training.eval_steps": 12, "training.early_stopping_patience": None}
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "sweep", "tasks": [str(write_task(tmp_path, {**data, "split": "test"}))], "training": budget,
        "variants": [{"kind": "train", "config": str(config), "lr_scales": [1e-4, 1], "name": "full"}]}))
    lines = []
    rows = run_suite(load_suite(suite), tmp_path / "out", say=lines.append)
    costs = rows[0]["costs"]
    rates = [point["learning_rate"] for point in costs["sweep"]]
    assert rates == pytest.approx([1e-6, 1e-2])
    # chosen on validation: the rate that learned (1e-6 barely moves a random head in 36 steps)
    assert costs["learning_rate"] == pytest.approx(1e-2) and max(p["validation"] for p in costs["sweep"]) == \
        costs["sweep"][1]["validation"] > costs["sweep"][0]["validation"]
    assert rows[0]["kind"] == "train" and rows[0]["summary"]["acc"]["accuracy"] > 0.75
    assert rows[0]["notes"][0].startswith("learning rate 0.01 chosen on validation from 1e-06")
    assert "learning rate 0.01 chosen" in (tmp_path / "out" / "results.md").read_text()
    runs = sorted((tmp_path / "out" / "runs").glob("*/lr=*/summary.json"))
    assert len(runs) == 2
    lines.clear()
    run_suite(load_suite(suite), tmp_path / "out", say=lines.append)  # nothing trains again, the scores are cached
    assert not any("training" in line for line in lines) and lines[-1].endswith("cached")

    for bad, message in (({"lr_scales": [0]}, "lr_scales must be one or more positive numbers"),
                         ({"config": None}, "a train variant needs config"),
                         ({"overrides": "model=x"}, "overrides must map config keys")):
        with pytest.raises(VariantError, match=message):
            parse_variant({"kind": "train", "config": str(config), **bad})
    from harness.training import train_sweep
    from tljax.errors import InputError
    with pytest.raises(InputError, match="unknown"):
        train_sweep(str(config), {"training.learnig_rate": 1.0}, (1.0,), tmp_path / "x")
    with pytest.raises(InputError, match="does not exist"):
        train_sweep(str(tmp_path / "nothing.yaml"), {}, (1.0,), tmp_path / "x")


@pytest.mark.parametrize("language", ["en", "pt"])
def test_the_counterfactual_pairs_differ_only_in_the_person(language):
    from tljax.data import load_source
    from tljax.data.bundled import counterfactual_rows

    spec = yaml.safe_load((Path(__file__).parent.parent / "tljax/data/bundled/counterfactual.yaml").read_text())
    spec = spec[language]
    dataset = load_source(f"counterfactual-{language}")
    assert len(dataset) == 480 and len(set(dataset.groups)) == 480 and len(set(dataset.texts)) == 480
    assert sum(dataset.labels) == 240 and dataset.language.startswith(language)
    rows = {row[0]: row for row in counterfactual_rows(language)}
    pairs = [(rows[key], rows[key[:-1] + "b"]) for key in rows if key.endswith("/a")]
    assert len(pairs) == 240 and all(a[2] == b[2] for a, b in pairs)

    def words(text: str) -> set[str]:
        return set(text.lower().replace(",", " ").replace(".", " ").replace(";", " ").replace(":", " ").split())

    gendered = {w for t in spec["templates"]["positive"] + spec["templates"]["negative"]
                for choice in re.findall(r"\{([^{}/]+/[^{}/]+)\}", t) for w in choice.split("/")}
    for (key, first, _), (_, second, _) in pairs:
        dimension, p = key.split("-")[0], int(key.split("-p")[1][0])
        people = {w for person in spec["pairs"][dimension][p] for w in words(person.split("|")[0])}
        changed = words(first) ^ words(second)
        assert changed and changed <= people | (gendered if dimension == "gender" else set()), (first, second)


def test_the_bias_probe_counts_flips_and_the_change_in_positive_probability():
    from harness.bias import markdown_table as bias_table, probe

    def record(item_id, predicted, positive):
        return {"id": item_id, "prediction": {"acc": predicted}, "probabilities": [1 - positive, positive]}

    records = [record("gender-t00-p0/a", 1, 0.9), record("gender-t00-p0/b", 0, 0.4),   # flips, -0.5
               record("gender-t01-p0/a", 1, 0.8), record("gender-t01-p0/b", 1, 0.9),   # +0.1
               record("name-t00-p0/a", 0, 0.2), record("name-t00-p0/b", 0, 0.2),       # 0
               record("name-t01-p0/a", 1, 0.7)]                                         # no partner: left out
    result = probe([records], positive=1)
    assert result["all"]["pairs"] == 3 and result["all"]["flips"] == 1
    assert result["all"]["flip_rate"] == pytest.approx(1 / 3)
    assert result["all"]["mean_delta"] == pytest.approx(-0.4 / 3)
    assert result["all"]["mean_abs_delta"] == pytest.approx(0.6 / 3)
    assert result["gender"]["flips"] == 1 and result["name"]["flips"] == 0 and result["name"]["mean_delta"] == 0
    assert probe([[record("pt-0001", 1, 0.5)]], positive=1) is None
    table = bias_table([{"variant": "v", "task": "t", "bias": result}, {"variant": "w", "task": "t", "bias": None}])
    assert "| v | t | 3 | 0.333 | 1 / 2 | 0 / 1 | -0.1333" in table and "| w |" not in table
    # over seeds, every figure is taken over the seeds alike: a second seed where nothing flips and the gender
    # pairs move by +0.1 and -0.1 halves the flips and averages each pair's change over the two seeds
    second_seed = [record("gender-t00-p0/a", 1, 0.9), record("gender-t00-p0/b", 1, 1.0),
                   record("gender-t01-p0/a", 1, 0.8), record("gender-t01-p0/b", 1, 0.7),
                   record("name-t00-p0/a", 0, 0.2), record("name-t00-p0/b", 0, 0.2)]
    both = probe([records, second_seed], positive=1)
    assert both["all"]["pairs"] == 3 and both["all"]["flips"] == 0.5 and both["gender"]["flips"] == 0.5
    assert both["all"]["flip_rate"] == pytest.approx(1 / 6)
    assert both["all"]["mean_delta"] == pytest.approx(((-0.5 + 0.1) / 2 + (0.1 - 0.1) / 2 + 0) / 3)
    assert "| v | t | 3 | 0.167 | 0.5 / 2 | 0 / 1 |" in bias_table([{"variant": "v", "task": "t", "bias": both}])
    # the two sentences of a pair see the same few-shot demonstrations
    pool = items(40)
    first, second = (Item(f"gender-t03-p1/{side}", "x", 0, "en") for side in "ab")
    assert draw_demonstrations(pool, first, 4, 2, 0) == draw_demonstrations(pool, second, 4, 2, 0)


def test_a_suite_on_counterfactual_pairs_reports_the_probe(tmp_path, tiny_model):
    from harness.suite import load_suite, run_suite

    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "probe", "tasks": ["counterfactual-en"],
                                     "variants": [{"kind": "zero-shot", "model": str(tiny_model)}]}))
    rows = run_suite(load_suite(suite), tmp_path / "out", say=lambda line: None)
    records = [json.loads(line) for line in next((tmp_path / "out" / "predictions").glob("*.jsonl")).read_text()
               .splitlines()]
    predicted = {r["id"]: r["prediction"]["acc"] for r in records}
    flips = sum(predicted[key] != predicted[key[:-1] + "b"] for key in predicted if key.endswith("/a"))
    assert rows[0]["bias"]["all"]["pairs"] == 240 and rows[0]["bias"]["all"]["flips"] == flips
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-5 for r in records)
    assert "## Bias probe" in (tmp_path / "out" / "results.md").read_text()


def test_a_variant_runs_on_the_tasks_it_names_and_every_builtin_suite_parses(tmp_path, tiny_model):
    from harness.suite import builtin_suites, load_suite, run_suite

    reviews = write_reviews(tmp_path / "reviews.csv")
    data = {"source": str(reviews), "text_column": "review", "label_column": "sentiment"}
    first, second = (str(write_task(tmp_path, {**data, "split": split})) for split in ("test", "all"))
    every = {"kind": "zero-shot", "model": str(tiny_model)}
    only = {**every, "tasks": [second]}
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "some", "tasks": [first, second], "variants": [every, only]}))
    rows = run_suite(load_suite(suite), tmp_path / "out", say=lambda line: None)
    label = f"zero-shot {tiny_model}"
    assert [(r["variant"], r["task"]) for r in rows] == [(label, first), (label, second), (label, second)]
    # the tasks a variant names are not part of what it scores: the same settings on a task share one result
    assert rows[2]["score"] == rows[1]["score"] and len(list((tmp_path / "out" / "cache").glob("*.json"))) == 2
    suite.write_text(yaml.safe_dump({"name": "some", "tasks": [first], "variants": [only]}))
    with pytest.raises(VariantError, match=rf"variants\[0\] names tasks \['{re.escape(second)}'\] that the suite "
                                           rf"does not run; its tasks: {re.escape(first)}"):
        load_suite(suite)
    with pytest.raises(VariantError, match="tasks must list some of the suite's tasks"):
        parse_variant({**every, "tasks": "qa-en"})
    for name in builtin_suites():  # every built-in suite's keys, variants and task names are valid
        assert load_suite(name).variants, name


def test_costs_come_from_the_compiled_program(tiny_model):
    import tljax
    from harness.encoders import Embedder
    from tljax.models.transforms import program_cost

    cost = program_cost(jax.jit(lambda a, b: a @ b), jnp.ones((64, 128)), jnp.ones((128, 256)))
    assert cost.flops == 2 * 64 * 128 * 256 and cost.peak_bytes == 4 * (64 * 128 + 128 * 256 + 64 * 256)
    model, tokenizer = tljax.load(str(tiny_model))
    per_text = {}
    for words in (6, 30):
        embed = Embedder(model, tokenizer, batch_size=8)
        embed([" ".join(["good"] * words)] * 8)
        cost, rows = embed.embed_batch.typical_cost()
        per_text[words] = cost.flops / rows
        assert rows == 8 and cost.peak_bytes > 4 * sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # the cost is the compiled batch's: 8 tokens are padded to a 16-token bucket, 32 fill their own
    assert 2 < per_text[30] / per_text[6] < 3


def test_models_holds_at_most_its_capacity_and_drops_the_least_recently_used_with_what_was_built_on_it():
    from harness.variants import Models

    held = Models(capacity=2)
    built = []
    for name in ("a", "b"):
        held._cached(("model", name), lambda n=name: built.append(n) or n)
        for derived in range(5):  # many things built on one model do not count as models
            held._cached(("model", name, derived), lambda: derived)
    held._cached(("model", "a", 0), lambda: "again")  # a use of "a": now "b" is the least recently used
    held._cached(("model", "c"), lambda: built.append("c") or "c")
    assert held._cached(("model", "a"), lambda: "reloaded") == "a"
    assert held._cached(("model", "b", 1), lambda: "rebuilt") == "rebuilt"  # "b" was dropped with its parts
    assert built == ["a", "b", "c"]


@pytest.fixture(scope="module")
def tiny_bos_decoder(tiny_decoder, tmp_path_factory):
    """The tiny Llama with a tokenizer that adds a BOS to every text it encodes (as Llama-2's does)."""
    import shutil

    from tokenizers import processors
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("tiny-llama-bos")
    shutil.copytree(tiny_decoder, directory, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_decoder)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", WORDS.index("[CLS]"))])
    tokenizer.bos_token = "[CLS]"
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("kind", ["zero-shot", "few-shot"])
def test_plain_prompts_score_every_item_as_lm_evaluation_harness_does(tmp_path, tiny_bos_decoder, kind):
    """Per item: the plain prompt and answers lm-eval's own task code builds (no chat template, " " before the
    answer, "\\n\\n" after each demonstration), and lm-eval's log-likelihoods of them, with the BOS the tokenizer
    adds (lm-eval's default for a plain prompt)."""
    pytest.importorskip("lm_eval")
    from lm_eval_reference import encode_pair as reference_pair
    from lm_eval_reference import loglikelihoods, plain_requests

    from harness.prompts import draw_demonstrations
    from harness.scoring import plain_pair
    from harness.tasks import load_task as task_from
    from harness.variants import Models, evaluate

    reviews = write_reviews(tmp_path / "reviews.csv", n=40)
    path = write_task(tmp_path, {"source": str(reviews), "text_column": "review", "label_column": "sentiment",
                                 "split": "test"})
    raw = yaml.safe_load(path.read_text())
    raw["templates"]["en"]["plain"] = "the story {text} it was"  # a plain question apart from the chat one
    path.write_text(yaml.safe_dump(raw))
    task = task_from(path)
    template, items = task.template(), task.items[:3]
    variant = parse_variant({"kind": kind, "model": str(tiny_bos_decoder), "k": 2, "prompt": "plain"})
    records = evaluate(variant, task, items, 0, Models(), measure_costs=False).records

    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(tiny_bos_decoder)
    requests = []
    for item, record in zip(items, records, strict=True):
        demos = draw_demonstrations(task.demonstration_items, item, 2, 2, 0) if kind == "few-shot" else []
        theirs = plain_requests(template.plain_question(item.text), list(template.verbalisers),
                                [(template.plain_question(d.text), d.label) for d in demos])
        assert [(record["prompt"], answer) for answer in (" bad", " good")] == theirs
        for context, answer in theirs:
            assert plain_pair(tokenizer, context, answer) == tuple(reference_pair(tokenizer, context, answer))
            assert plain_pair(tokenizer, context, answer)[0][0] == WORDS.index("[CLS]")  # the tokenizer's BOS
        requests += theirs
    expected = np.asarray([v for v, _ in loglikelihoods(tiny_bos_decoder, requests)]).reshape(len(items), 2)
    np.testing.assert_allclose([r["scores"]["acc"] for r in records], expected, atol=1e-4)
    assert record["prompt"].count("the story") == 1 + 2 * (kind == "few-shot")


def test_plain_prompt_settings_are_checked():
    for bad, message in (({"kind": "zero-shot", "prompt": "raw"}, "prompt 'raw' is unknown; valid: chat, plain"),
                         ({"kind": "chat", "prompt": "plain"}, "a chat variant has no prompt setting"),
                         ({"kind": "few-shot", "prompt": "plain", "form": "one-message"},
                          "form applies to chat prompts only")):
        with pytest.raises(VariantError, match=message):
            parse_variant({"model": "m", **bad})
    assert parse_variant({"kind": "zero-shot", "model": "m", "prompt": "plain"}).label == "zero-shot m plain"
    # a chat-tuned run the suite trains, asked without the form it was taught
    assert parse_variant({"kind": "train", "config": "configs/c.yaml", "prompt": "plain"}).label == "train c plain"
    with pytest.raises(TaskError, match=r"templates.en.plain must be a string containing \{text\}"):
        parse_task({**SENTIMENT, "templates": {"en": {**SENTIMENT["templates"]["en"], "plain": "no text"}}})


def _run_record(run_dir: Path) -> dict:
    """What a run folder holds: its files (bar the lock), its log, its summary's figures and its config."""
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"
                   and "checkpoints" not in p.parts)
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*/*") if p.name.isdigit())
    return {"files": files, "log": log, "summary": summary, "checkpoints": checkpoints,
            "config": (run_dir / "config.yaml").read_text()}


def test_a_sweep_in_one_program_writes_what_separate_runs_write_and_resumes(tmp_path, tiny_model, monkeypatch):
    from harness.training import sweep_points, train_sweep
    from tljax import faults
    from tljax.train.__main__ import main as train

    reviews = write_reviews(tmp_path / "reviews.csv", n=120)
    config = tmp_path / "lora.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_model), "method": {"name": "lora", "rank": 4}, "output_dir": "unused",
        "data": {"source": str(reviews), "text_column": "review", "label_column": "sentiment",
                 "labels": ["neg", "pos"]},
        "training": {"learning_rate": 1e-2, "per_device_train_batch_size": 16, "max_steps": 8, "eval_steps": 4,
                     "early_stopping_patience": None}}))
    scales, settings = (0.3, 1.0, 3.0), {}

    lines = []
    _, together = train_sweep(str(config), settings, scales, tmp_path / "together", lines.append)
    assert any("in one program" in line for line in lines)
    _, planned = sweep_points(str(config), settings, scales, tmp_path / "separate")
    for _, overrides, _ in planned:  # each rate its own run, as `python -m tljax.train` trains it
        assert train(["--config", str(config), *(part for o in overrides for part in ("--set", o))]) == 0
    for point, (_, _, run_dir) in zip(together, planned, strict=True):
        ours, theirs = _run_record(point.run_dir), _run_record(run_dir)
        assert ours["files"] == theirs["files"] and ours["checkpoints"] == theirs["checkpoints"]
        assert ours["config"] == theirs["config"].replace(str(run_dir), str(point.run_dir))
        assert [(r["step"], r["split"]) for r in ours["log"]] == [(r["step"], r["split"]) for r in theirs["log"]]
        # The same losses as a separate run, within tests/test_methods.py's sweep test's derivation: a loss
        # moves by gradient x parameter change, and the two programs' parameters differ by rounding only.
        for a, b in zip(ours["log"], theirs["log"]):
            np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        assert ours["summary"]["best_step"] == theirs["summary"]["best_step"]
        np.testing.assert_allclose(ours["summary"]["test"]["loss"], theirs["summary"]["test"]["loss"], rtol=1e-5)
    assert len({_run_record(p.run_dir)["log"][0]["loss"] for p in together}) == 3  # the rates did differ

    # interrupted after the checkpoint of step 4 (an error at step 6), then run again: it resumes from there
    monkeypatch.setenv(faults.ENVIRONMENT, "step=6:enospc")
    monkeypatch.setattr(faults, "_passes", {})
    with pytest.raises(OSError, match="No space left"):
        train_sweep(str(config), settings, scales, tmp_path / "resumed", lines.append)
    monkeypatch.delenv(faults.ENVIRONMENT)
    _, resumed = train_sweep(str(config), settings, scales, tmp_path / "resumed", lines.append)
    assert any("in one program, from step 4 of 8" in line for line in lines)
    for first, second in zip(together, resumed, strict=True):
        ours, again = _run_record(first.run_dir), _run_record(second.run_dir)
        assert [r["loss"] for r in again["log"]] == [r["loss"] for r in ours["log"]]  # exactly: the same program
        assert again["summary"]["test"] == ours["summary"]["test"]
    lines.clear()  # finished runs are reused: nothing trains again
    train_sweep(str(config), settings, scales, tmp_path / "resumed", lines.append)
    assert not any("training" in line for line in lines)
