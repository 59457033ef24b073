"""Whole commands on long inputs: `python -m harness run` against `lm_eval`, wall time, the same requests.

    python -m benchmarks.long_scoring [--items 64] [--work /tmp/long-scoring] [--batch-size 8]

SmolLM2-135M-Instruct zero-shot in chat form on N full film reviews of the Pang & Lee polarity corpus
(`pang-lee-reviews`, hundreds of words each: about 400 to 2,500 tokens as a prompt), two answers each. Three
commands, one after the other, each in its own process, timed from start to exit (model conversion is done
before: both read the same converted Hugging Face directory):

1. `python -m harness run` with its compilation cache off (`TLJAX_COMPILATION_CACHE=0`): a first run;
2. the same command again with the cache on and filled by a run before it (a warm rerun; a fresh output
   folder, so that no prediction is reused);
3. `lm_eval --model hf ... --apply_chat_template --batch_size B --device cpu` (lm-evaluation-harness's own
   command, float32, PyTorch on every core) on a task written here with the same reviews, instruction and
   answers.

It prints a table (and writes `long-scoring.json` into the work folder): wall seconds, accuracy, the time ratio
against `lm_eval`, and the largest difference between the two sides' per-request log-likelihoods. The
benchmark times things; the test suite does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"
TASK = "reviews-long-en"
LM_EVAL_TASK = "tljax_reviews_long_en"


def write_inputs(work: Path, items: int) -> tuple[Path, list[dict]]:
    """The harness suite (a task over `pang-lee-reviews`, its first `items` of the harness's fixed sample) and the
    same reviews as an lm-evaluation-harness task; returns (suite file, the items as lm_eval reads them)."""
    import yaml

    from harness.suite import sample
    from harness.tasks import load_task

    english = load_task("sentiment-en").template("en")
    task_file = work / f"{TASK}.yaml"
    task_file.write_text(yaml.safe_dump({
        "name": TASK, "data": {"source": "pang-lee-reviews", "split": "all"}, "labels": ["negative", "positive"],
        "templates": {"en": {"instruction": english.instruction, "plain": english.plain,
                             "verbalisers": dict(zip(("negative", "positive"), english.verbalisers)),
                             "descriptions": dict(zip(("negative", "positive"), english.descriptions))}}},
        allow_unicode=True))
    suite_file = work / "suite.yaml"
    suite_file.write_text(yaml.safe_dump({"name": "long-scoring", "tasks": [str(task_file)], "limit": items,
                                          "variants": [{"kind": "zero-shot", "model": MODEL}]}))
    task = load_task(task_file)
    chosen = [{"id": item.id, "text": item.text, "label": item.label} for item in sample(task.items, items)]
    data = work / "reviews.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in chosen))
    before, after = english.instruction.split("{text}")
    (work / "lm_eval_tasks").mkdir(exist_ok=True)
    (work / "lm_eval_tasks" / f"{LM_EVAL_TASK}.yaml").write_text(yaml.safe_dump({
        "task": LM_EVAL_TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice",
        "doc_to_text": before + "{{text}}" + after, "doc_to_choice": list(english.verbalisers),
        "doc_to_target": "label", "metric_list": [{"metric": "acc"}]}, allow_unicode=True))
    return suite_file, chosen


def timed(command: list[str], env: dict[str, str], log: Path) -> float:
    """Runs `command` to its exit (its output into `log`); wall seconds. A failure stops the benchmark."""
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(command[:4])} ... exited {done.returncode}; its output: {log}")
    return seconds


def harness_scores(out: Path) -> dict[str, list[float]]:
    [predictions] = (out / "predictions").glob("*.jsonl")
    return {r["id"]: r["scores"]["acc"] for r in map(json.loads, predictions.read_text().splitlines())}


def lm_eval_scores(out: Path) -> dict[str, list[float]]:
    [samples] = out.rglob(f"samples_{LM_EVAL_TASK}_*.jsonl")
    return {r["doc"]["id"]: [float(resp[0][0]) for resp in r["resps"]]
            for r in map(json.loads, samples.read_text().splitlines())}


def accuracy(scores: dict[str, list[float]], gold: dict[str, int]) -> float:
    return sum(max(range(len(s)), key=s.__getitem__) == gold[i] for i, s in scores.items()) / len(scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.long_scoring", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=64, help="reviews (two requests each)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/long-scoring"))
    parser.add_argument("--batch-size", type=int, default=8, help="lm_eval's --batch_size")
    args = parser.parse_args(argv)

    from tljax import zoo

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    directory = zoo.resolve(MODEL)  # converted once, before anything is timed
    suite, chosen = write_inputs(args.work, args.items)
    gold = {row["id"]: row["label"] for row in chosen}
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    harness = [sys.executable, "-m", "harness", "run", str(suite), "--out"]
    runs = {
        "harness, cold": timed([*harness, str(args.work / "cold")], {**env, "TLJAX_COMPILATION_CACHE": "0"},
                               args.work / "cold.log"),
    }
    timed([*harness, str(args.work / "fill")], env, args.work / "fill.log")  # fills the compilation cache
    runs["harness, warm"] = timed([*harness, str(args.work / "warm")], env, args.work / "warm.log")
    runs["lm_eval"] = timed([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                             f"pretrained={directory},dtype=float32", "--tasks", LM_EVAL_TASK, "--include_path",
                             str(args.work / "lm_eval_tasks"), "--apply_chat_template", "--batch_size",
                             str(args.batch_size), "--device", "cpu", "--output_path", str(args.work / "lm_eval"),
                             "--log_samples"], env, args.work / "lm_eval.log")
    ours, theirs = harness_scores(args.work / "cold"), lm_eval_scores(args.work / "lm_eval")
    if ours.keys() != theirs.keys():
        sys.exit(f"the two sides scored different reviews: {sorted(ours.keys() ^ theirs.keys())[:5]}")
    difference = max(abs(a - b) for i in ours for a, b in zip(ours[i], theirs[i]))
    lengths = sorted(len(row["text"].split()) for row in chosen)
    result = {"items": args.items, "requests": 2 * args.items, "words per review (min, median, max)":
              [lengths[0], lengths[len(lengths) // 2], lengths[-1]], "seconds": runs,
              "accuracy": {"harness": accuracy(ours, gold), "lm_eval": accuracy(theirs, gold)},
              "largest log-likelihood difference": difference}
    (args.work / "long-scoring.json").write_text(json.dumps(result, indent=1))
    print(f"{args.items} Pang & Lee reviews ({lengths[0]} to {lengths[-1]} words, median {lengths[len(lengths) // 2]}), "
          f"{2 * args.items} requests; largest log-likelihood difference {difference:.1e}\n")
    print("| command | wall time | / lm_eval | accuracy |\n|---|---:|---:|---:|")
    for name, seconds in runs.items():
        side = "lm_eval" if name == "lm_eval" else "harness"
        print(f"| {name} | {seconds:.0f} s | {seconds / runs['lm_eval']:.2f} | {result['accuracy'][side]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
