"""The benchmark keeps working (`python -m benchmarks`): a few steps of each workload, both sides.

Nothing here times anything or asserts a ratio; it checks that each side runs, that both train the same
parameters, and that where the two sides compute the same thing (greedy tokens, log-likelihoods) they agree.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from benchmarks.data import prepare

    directory = tmp_path_factory.mktemp("bench")
    widths = prepare(directory, count=2, items=3)
    assert sum(widths.values()) == 2 and all(width in (16, 32, 64) for width in widths)
    return directory


@pytest.mark.parametrize("method", ["full", "lora", "bitfit", "prefix", "prompt"])
def test_both_sides_train_the_same_parameters(method):
    from benchmarks import torch_side
    from benchmarks.common import run_config
    from tljax.runs import FINAL_STEP
    from tljax.train.run import prepare

    config = run_config(method)
    _, theirs = torch_side.classifier(config)
    ours, _ = prepare(config).objective.count(FINAL_STEP)
    assert ours == theirs


def test_the_driver_measures_and_updates_its_report(work, tmp_path):
    from benchmarks.report import NOTES_MARKER, TABLE_HEADER

    report = tmp_path / "performance.md"
    kept = "| train step, lora, 32 x 128 | 1.000 s/step | 1.000 s/step | **1.00** | 1 / 1 (1.00x) | 1.0 / 1.0 | |"
    replaced = "| inference forward, 32 x 128 | 9.000 s/batch | 1.000 s/batch | **9.00** | 1 / 1 (1.00x) | | |"
    report.write_text("# old\n\nMeasured by `python -m benchmarks --only train` (7 min) on 2 cores\n\n"
                      + "\n".join(TABLE_HEADER + [kept, replaced]) + f"\n\n{NOTES_MARKER}\nwritten analysis\n")
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "forward", "--update",
                           "--output", str(report), "--work", str(work)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    assert kept in text and replaced not in text  # only what was measured again is rewritten
    assert "| inference forward, default shapes |" in text and "| inference forward, 32 x 128 |" in text
    assert "`python -m benchmarks --only train` then `python -m benchmarks --quick --only forward --update" in text
    assert text.endswith("written analysis\n")  # the notes survive a rewrite
    ratio = float(text.split("| inference forward, 32 x 128 |")[1].split("**")[1])
    assert 0 < ratio < 100


def test_train_step_workload_on_both_sides(work):
    from benchmarks import jax_side, torch_side

    spec = {"workload": "train", "method": "lora", "batches": str(work / "default.npz"), "repeats": 1}
    trainable = []
    for side in (jax_side, torch_side):
        result = side.train(spec)
        assert result["step_s"] > 0
        trainable.append(result["trainable"])
    # LoRA rank 8 on query and value in 6 layers (6 x 2 x 8 x (384 + 384)), the pooler (384 x 384 + 384), the
    # classifier (384 x 2 + 2)
    assert trainable == [6 * 2 * 8 * 768 + 384 * 385 + 385 * 2] * 2


def test_decoders_agree_on_greedy_tokens_and_log_likelihoods(work):
    from benchmarks import jax_side, torch_side

    spec = {"workload": "generate", "new_tokens": 6, "repeats": 1}
    assert jax_side.generate(spec)["tokens"] == torch_side.generate(spec)["tokens"]
    spec = {"workload": "score", "requests": str(work / "scoring.json"), "repeats": 1}
    ours, theirs = jax_side.score(spec)["logprob"], torch_side.score(spec)["logprob"]
    contexts, answers = json.loads((work / "scoring.json").read_text())
    assert len(ours) == len(contexts) * len(answers) >= 6
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_the_trainer_reference_runs_the_default_config(tmp_path):
    from benchmarks import hf_trainer

    assert hf_trainer.main(["--output-dir", str(tmp_path), "--set", "training.max_steps=2",
                            "--set", "training.eval_steps=2", "--set", "data.max_eval_examples=16"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 2 and 0 <= summary["test"]["accuracy"] <= 1


def test_the_sweep_workload_trains_every_point(work):
    from benchmarks import jax_side

    spec = {"workload": "sweep", "batches": str(work / "default.npz"), "steps": 2, "scales": [0.3, 3.0]}
    together = jax_side.sweep(spec)["final_loss"]
    alone = [jax_side.sweep({**spec, "scale": scale})["final_loss"] for scale in spec["scales"]]
    np.testing.assert_allclose(together, alone, rtol=1e-4)


def test_the_long_scoring_benchmark_gives_both_commands_the_same_reviews_and_prompt(tmp_path):
    """`python -m benchmarks.long_scoring`'s inputs: the harness suite and the lm-evaluation-harness task hold the
    same reviews (the harness's own sample), and lm-eval's question renders as the harness's instruction."""
    import jinja2
    import yaml

    from benchmarks.long_scoring import LM_EVAL_TASK, write_inputs
    from harness.suite import load_suite, sample
    from harness.tasks import load_task

    suite_file, chosen = write_inputs(tmp_path, 3)
    [task] = [load_task(name) for name in load_suite(suite_file).tasks]
    assert [item.id for item in sample(task.items, 3)] == [row["id"] for row in chosen]
    lm_eval_task = yaml.safe_load((tmp_path / "lm_eval_tasks" / f"{LM_EVAL_TASK}.yaml").read_text())
    rows = [json.loads(line) for line in Path(lm_eval_task["dataset_kwargs"]["data_files"]["test"]).read_text()
            .splitlines()]
    assert rows == chosen and len({row["label"] for row in rows} | {0, 1}) == 2
    for row in rows:
        rendered = jinja2.Template(lm_eval_task["doc_to_text"]).render(**row)
        assert rendered == task.template("en").question(row["text"])
    assert lm_eval_task["doc_to_choice"] == list(task.template("en").verbalisers)
