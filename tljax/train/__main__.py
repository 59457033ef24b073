"""`python -m tljax.train [--config configs/X.yaml] [--set section.key=value ...] [--resume]`

With no arguments: the embedded default (LoRA on MiniLM-L6, Rotten Tomatoes sentiment). A config's `task`
chooses what the run predicts: sequence-classification (a label per text), token-classification (a tag per
word: named entities, configs/ner.yaml), question-answering (the answer's span in a passage, configs/qa.yaml),
masked-lm / causal-lm (continued pre-training; causal-lm with `chat`: chat tuning).
Several processes (hosts) train one run together when started with --coordinator / --num-processes /
--process-id, the JAX_* variables, or under SLURM / Open MPI with several tasks (see the README).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

EXIT_BAD_INPUT, EXIT_STOPPED = 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tljax.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a YAML run config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. training.learning_rate=1e-3 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir from its checkpoint")
    group = parser.add_argument_group("several processes (hosts) training one run")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the run (JAX_NUM_PROCESSES)")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1 (JAX_PROCESS_ID)")
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run that JAX detects (e.g. a multi-host Cloud TPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    # the heavy imports (JAX, transformers) after argument parsing, so that --help answers at once
    from tljax.cache import enable_compilation_cache
    from tljax.errors import InputError
    from tljax.runs import FINAL_STEP
    from tljax.train.config import load_config
    from tljax.train.loop import TrainingStopped, train, write_config
    from tljax.train import distributed
    from tljax.train.rundir import check_usable
    from tljax.train.run import prepare

    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id, distributed=args.distributed)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    enable_compilation_cache()  # the first step of a rerun (same shapes) does not compile again
    main_process = distributed.is_main()  # the one that prints (every process reports its own errors)
    say = (lambda text: print(text, file=sys.stderr)) if main_process else (lambda text: None)
    try:
        config = load_config(args.config, args.overrides)  # every setting checked here
        run_dir = Path(config.output_dir)
        resume = check_usable(run_dir, resume=args.resume)  # refused at once: another run's folder, a finished one
        prepared = prepare(config)  # every input checked before anything is written (the mesh too)
        with _claim(run_dir, resume) as resume:
            if args.resume and not resume:
                say(f"--resume: {run_dir} has no saved checkpoint (the run stopped before its first one was "
                    "complete); starting the run again from the beginning")
            if not resume and main_process:  # a resumed run keeps its record (the loop checks the config is the same)
                write_config(prepared, run_dir)
            say(prepared.split_report)
            count, total = prepared.objective.count(FINAL_STEP)
            say(f"{config.model}: training {count:,} of {total:,} parameters ({100 * count / total:.2f}%)")
            summary = train(prepared, run_dir, resume=resume)
    except InputError as error:  # the user's input: one line; anything else is a bug and keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingStopped as stopped:
        say(f"stopped: {stopped}")
        return EXIT_STOPPED
    if main_process:
        _report(summary, run_dir)
    return 0


@contextlib.contextmanager
def _claim(run_dir: Path, resume: bool):
    """Holds the run folder's lock (process 0) for the block; yields whether the run resumes. Every
    process learns process 0's outcome, so that all start, or all stop, together."""
    from tljax.train import distributed
    from tljax.train.rundir import RunDirectoryError, RunLock

    lock, failure = None, None
    if distributed.is_main():
        try:
            lock = RunLock(run_dir, resume=resume).__enter__()
        except RunDirectoryError as error:
            failure = error
    outcome = distributed.from_main(-1 if failure else int(lock.resume) if lock else 0)  # process 0's counts
    if outcome < 0:
        raise failure or RunDirectoryError(f"process 0 could not claim {run_dir} (its output says why)")
    try:
        yield bool(outcome)
    finally:
        if lock is not None:
            lock.__exit__()


def _metrics_line(metrics: dict) -> str:
    if "chrf" in metrics:  # generated text (seq2seq)
        return (f"chrF {metrics['chrf']:.2f}  BLEU {metrics['bleu']:.2f}  ROUGE-1/2/L {metrics['rouge1']:.2f} / "
                f"{metrics['rouge2']:.2f} / {metrics['rougeL']:.2f}  exact match {metrics['exact']:.4f}  loss "
                f"{metrics['loss']:.4f}")
    if "exact" in metrics:  # answers (question answering)
        split = (f"  (answerable: F1 {metrics['has_answer_f1']:.4f}; unanswerable left unanswered: "
                 f"{metrics['no_answer_exact']:.4f})") if "has_answer_f1" in metrics else ""
        return f"exact match {metrics['exact']:.4f}  F1 {metrics['f1']:.4f}{split}"
    if "per_type" in metrics:  # entities (token classification)
        return (f"entity F1 {metrics['f1']:.4f}  precision {metrics['precision']:.4f}  recall {metrics['recall']:.4f}"
                f"  macro F1 {metrics['macro_f1']:.4f}  word accuracy {metrics['accuracy']:.4f}")
    if "accuracy" not in metrics:  # a mean over tasks one of which answers questions: what every kind has
        return f"F1 {metrics['f1']:.4f}  loss {metrics['loss']:.4f}"
    mcc = f"  MCC {metrics['mcc']:.4f}" if "mcc" in metrics else ""  # (absent from a mean over tasks of two kinds)
    return (f"accuracy {metrics['accuracy']:.4f}  precision {metrics['precision']:.4f}  recall {metrics['recall']:.4f}"
            f"  F1 {metrics['f1']:.4f}{mcc}")


def _report(summary: dict, run_dir: Path) -> None:
    """The run's result in the terms of what it was for (classification, several tasks, language modelling,
    distillation, other languages)."""
    test = summary["test"]
    step = f"(best checkpoint: step {summary['best_step']})"
    if "perplexity" in test:
        before = summary["before"]["test"]
        print(f"\nheld-out test text: loss {before['loss']:.4f} -> {test['loss']:.4f}, perplexity "
              f"{before['perplexity']:.2f} -> {test['perplexity']:.2f}, token accuracy {before['accuracy']:.4f} -> "
              f"{test['accuracy']:.4f} {step}")
    elif "tasks" in test:
        print(f"\ntest, mean over {len(test['tasks'])} tasks: {_metrics_line(test)} {step}")
        for name, metrics in test["tasks"].items():
            print(f"  {name:20} {_metrics_line(metrics)}")
    else:
        print(f"\ntest: {_metrics_line(test)}  {step}")
    if "chrf" in test and "before" in summary:
        print(f"  before training: {_metrics_line(summary['before']['test'])}")
    if "per_type" in test:
        for label, scores in test["per_type"].items():
            print(f"  {label:8} F1 {scores['f1']:.4f}  precision {scores['precision']:.4f}  recall "
                  f"{scores['recall']:.4f}  ({scores['support']} entities)")
    if "baseline" in summary:  # a tagger's or a reader's
        baseline = summary["baseline"]
        low, high = baseline["f1_difference_interval"]
        print(f"baseline ({baseline['what']}): {'' if 'exact' in test else 'entity '}F1 {baseline['f1']:.4f}; the "
              f"model's lead over it, 95% bootstrap interval: {low:+.4f} to {high:+.4f}")
    if "distillation" in summary and "exact" in summary["distillation"]["student"]:  # a reader's
        d = summary["distillation"]
        teacher, student = d["teacher"], d["student"]
        print(f"distillation: student F1 {student['f1']:.4f} (exact match {student['exact']:.4f}) vs teacher "
              f"{teacher['f1']:.4f} ({teacher['exact']:.4f}): {100 * d['f1_retained']:.1f}% of its F1 retained; "
              f"{student['parameters']:,} vs {teacher['parameters']:,} parameters")
    elif "distillation" in summary and "f1_retained" in summary["distillation"]:  # a tagger's
        d = summary["distillation"]
        print(f"distillation: student entity F1 {d['student']['f1']:.4f} vs teacher {d['teacher']['f1']:.4f} "
              f"({100 * d['f1_retained']:.1f}% retained); {d['student']['parameters']:,} vs "
              f"{d['teacher']['parameters']:,} parameters")
    elif "distillation" in summary:
        d = summary["distillation"]
        teacher, student = d["teacher"], d["student"]
        print(f"distillation: student accuracy {student['accuracy']:.4f} vs teacher {teacher['accuracy']:.4f} "
              f"({100 * d['accuracy_retained']:.1f}% retained); {student['parameters']:,} vs {teacher['parameters']:,} "
              f"parameters; {student['examples_per_second']:.0f} vs {teacher['examples_per_second']:.0f} "
              f"examples/s ({d['speed_up']:.2f}x)")
    for name, metrics in summary.get("evaluation", {}).items():
        print(f"  {name:20} ({metrics['language']}, {metrics['examples']} examples, not trained on): "
              f"{_metrics_line(metrics)}")
        if "baseline" in metrics:
            low, high = metrics["baseline"]["f1_difference_interval"]
            print(f"  {'':20} baseline {'' if 'exact' in metrics else 'entity '}F1 {metrics['baseline']['f1']:.4f}; "
                  f"lead {low:+.4f} to {high:+.4f}")
    print(f"\n{summary['diagnosis']}\n")
    print(f"written to {run_dir}/: config.yaml, metrics.jsonl, curves.png, diagnosis.txt, summary.json, checkpoints/")
    for item in summary["export"]:
        print(f"  export: {item}")
    if "perplexity" in test:
        if (run_dir / "export" / "model").is_dir():
            print(f"\nfine-tune from it: python -m tljax.train --set model={run_dir}/export/model")
        return
    if "chrf" in test and (run_dir / "export" / "run.json").is_file():  # text to text
        example = summary["examples"][0]["input"] if summary.get("examples") else "some text"
        print(f"\nuse it:\n  python -m tljax.predict {run_dir} {json.dumps(example, ensure_ascii=False)}")
        # an encoder-decoder's Hugging Face class and PEFT adapter are the seq2seq ones
        kind = "Seq2SeqLM" if (run_dir / "export" / "model").is_dir() and json.loads(
            (run_dir / "export" / "model" / "config.json").read_text()).get("is_encoder_decoder") else "CausalLM"
        adapter = run_dir / "export" / "adapter"
        if adapter.is_dir() and json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM":
            kind = "Seq2SeqLM"
        if (run_dir / "export" / "model").is_dir():
            print(f"  in PyTorch: transformers.AutoModelFor{kind}.from_pretrained('{run_dir}/export/model')")
        if adapter.is_dir():
            print(f"  in PyTorch: peft.AutoPeftModelFor{kind}.from_pretrained('{adapter}')")
        print("  (the prompt's form, which the model was taught: export/run.json, seq2seq and text_prefix)")
        return
    if (run_dir / "export" / "run.json").is_file() and \
            json.loads((run_dir / "export" / "run.json").read_text()).get("task") == "causal-lm":  # chat tuning
        print(f"\nscore it in the harness beside zero-shot and few-shot: a variant {{kind: run, run: {run_dir}}}")
        print(f"  in PyTorch: transformers.AutoModelForCausalLM.from_pretrained('{run_dir}/export/model')")
        return
    predictable = run_dir if (run_dir / "export" / "run.json").is_file() else \
        next((p for p in sorted((run_dir / "export").iterdir()) if (p / "run.json").is_file()), run_dir)
    export_dir = predictable / "export" if predictable == run_dir else predictable
    # the kind of the export shown (a multi-task run's first task's, whatever the mean over its tasks holds)
    task = json.loads((export_dir / "run.json").read_text()).get("task") if (export_dir / "run.json").is_file() \
        else None
    tagging, answering = task == "token-classification", task == "question-answering"
    example = "Maria Souza moved to Recife in March 2024." if tagging else "a delightful, moving film"
    kind = "QuestionAnswering" if answering else "TokenClassification" if tagging else "SequenceClassification"
    if answering:
        print(f"\nuse it:\n  python -m tljax.predict {predictable} --question \"Where did Maria move?\" --context "
              "\"Maria Souza moved to Recife in March 2024.\"")
    else:
        print(f"\nuse it:\n  python -m tljax.predict {predictable} \"{example}\"")
    if (export_dir / "model").is_dir():  # a class of its own (mean pooling) is named by auto_map: code to trust
        remote = ", trust_remote_code=True" if "auto_map" in (export_dir / "model" / "config.json").read_text() else ""
        print(f"  in PyTorch: transformers.AutoModelFor{kind}.from_pretrained('{export_dir}/model'{remote})")
    if (export_dir / "adapter").is_dir():
        # PEFT builds the base model's head before it loads the adapter's: it needs the number of labels
        labels = "" if answering else \
            f", num_labels={len(json.loads((export_dir / 'run.json').read_text()).get('labels', ()))}"
        print(f"  in PyTorch: peft.AutoPeftModelFor{kind}.from_pretrained('{export_dir}/adapter'{labels})")
        if answering:  # PeftModelForQuestionAnswering.forward does not pass token_type_ids on to the model
            print("    (call its .base_model(input_ids=..., attention_mask=..., token_type_ids=...): PEFT's question-"
                  "answering wrapper drops the token types a BERT reads)")


if __name__ == "__main__":
    sys.exit(main())
