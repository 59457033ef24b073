"""Cross-lingual extractive question answering on the real packaged models: e5-small trained on tljax's English
QA set, scored on its Portuguese test split, at half the reduced budget of tests/test_qa_real.py (50 steps: F1
0.256 on the Portuguese questions against the baseline's 0.104, the lead's 95% interval +0.082 to +0.224; at 100
steps 0.460: docs/qa.md), in its own module, so that the two runs train on the two test workers at once. A
`python -m tljax.train` process on one CPU device, shared by the test workers."""

import json

import pytest

from conftest import reduced_config, shared_run

pytestmark = pytest.mark.real


def test_e5_trained_on_english_answers_portuguese_questions_above_the_baseline(tmp_path_factory):
    run = shared_run(tmp_path_factory, "e5-qa-en", reduced_config("qa_cross_lingual.yaml", max_steps=50, eval_steps=50))
    summary = json.loads((run / "summary.json").read_text())
    portuguese = summary["evaluation"]["qa-pt"]
    assert portuguese["language"] == "pt-BR" and portuguese["examples"] == 156
    low, _ = portuguese["baseline"]["f1_difference_interval"]
    assert low > 0, portuguese  # above the Portuguese passage's sentence sharing the most words with the question

    # the harness's cross-lingual row: the run on the Portuguese test questions, as its report scored them
    from harness.answers import summarise_answers
    from harness.tasks import load_task
    from harness.variants import Models, evaluate, parse_variant

    task = load_task("qa-pt")
    records = evaluate(parse_variant({"kind": "run", "run": str(run)}), task, task.items, 0, Models()).records
    assert summarise_answers([records])["answer"]["f1"] == pytest.approx(portuguese["f1"], abs=1e-12)
