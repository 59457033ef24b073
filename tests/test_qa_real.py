"""Extractive question answering on the real packaged models and tljax's QA set, reduced budgets (the
full-budget figures, every method on both models and languages, are in docs/qa.md). Each run is a
`python -m tljax.train` process on one CPU device, shared by the test workers."""

import json

import pytest

from conftest import reduced_config, shared_run

pytestmark = pytest.mark.real

# 100 steps of 16 windows of 256 tokens: the reduced budget at which a reader clears the baseline (docs/qa.md)
BUDGET = {"max_steps": 100, "eval_steps": 100}


def test_minilm_lora_answers_english_questions_above_the_most_similar_sentence(tmp_path_factory):
    run = shared_run(tmp_path_factory, "minilm-qa", reduced_config("qa.yaml", **BUDGET))
    summary = json.loads((run / "summary.json").read_text())
    test, baseline = summary["test"], summary["baseline"]
    assert test["questions"] == 156 and test["no_answer_questions"] == 20
    low, _ = baseline["f1_difference_interval"]  # the paired bootstrap interval of the lead over the baseline
    assert low > 0, (test, baseline)
    # the threshold it answers with was chosen on validation and travels with the export
    exported = json.loads((run / "export" / "run.json").read_text())["answers"]
    assert exported["threshold_source"] == "validation" and exported["null_score_diff_threshold"] == \
        test["null_threshold"]
