"""Named-entity recognition on the real packaged models and tljax's NER set, reduced budgets (the full-budget
figures, every method on both models and languages, are in docs/ner.md). Each run is a
`python -m tljax.train` process on one CPU device, shared by the test workers."""

import json

import pytest

from conftest import reduced_config, shared_run

pytestmark = pytest.mark.real


def test_minilm_lora_tags_english_entities_well_above_the_most_frequent_tag(minilm_ner_run):
    summary = json.loads((minilm_ner_run / "summary.json").read_text())
    test, baseline = summary["test"], summary["baseline"]
    assert test["f1"] >= 0.5, test
    low, high = baseline["f1_difference_interval"]  # the paired bootstrap interval of the lead over the baseline
    assert low > 0 and test["f1"] - baseline["f1"] > 0, baseline
    assert set(test["per_type"]) == {"DATE", "LOC", "MISC", "ORG", "PER"} and test["entities"] == 175


def test_e5_trained_on_english_tags_portuguese_above_the_baseline(tmp_path_factory):
    run = shared_run(tmp_path_factory, "e5-ner-en", reduced_config("ner_cross_lingual.yaml", max_steps=60,
                                                                  eval_steps=30))
    summary = json.loads((run / "summary.json").read_text())
    portuguese = summary["evaluation"]["pt"]
    assert portuguese["language"] == "pt-BR" and portuguese["examples"] == 107
    low, _ = portuguese["baseline"]["f1_difference_interval"]
    assert low > 0, portuguese["baseline"]  # above "each word's most frequent English training tag"

    # the harness's cross-lingual row: the run on both languages' test sentences, as its report scored them
    from harness.entities import summarise_entities
    from harness.tasks import load_task
    from harness.variants import Models, evaluate, parse_variant

    loaded, variant = Models(), parse_variant({"kind": "run", "run": str(run)})
    for name, expected in (("ner-en", summary["test"]["f1"]), ("ner-pt", portuguese["f1"])):
        task = load_task(name)
        records = evaluate(variant, task, task.items, 0, loaded).records
        assert summarise_entities([records], task.labels)["entity"]["f1"] == pytest.approx(expected, abs=1e-9)
