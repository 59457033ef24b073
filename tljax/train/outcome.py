"""What a finished run reports: its result in the terms of what it was for, where everything was written, and how
to use it (`python -m tljax.predict`, the lines that load its export in PyTorch). `python -m tljax.train` prints
`report`; `tljax.Run` shows the same lines (`Run.pytorch_code`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def metrics_line(metrics: dict[str, Any]) -> str:
    """One split's figures on one line, as its kind of run measures them."""
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


def report(summary: dict[str, Any], run_dir: Path) -> str:
    """The run's result in the terms of what it was for (classification, several tasks, language modelling,
    distillation, other languages), where it was written and how to use it."""
    return "\n".join(result_lines(summary) + [f"\n{summary['diagnosis']}\n", _written(run_dir, summary),
                                         *_usage(summary, Path(run_dir))])


def result_lines(summary: dict[str, Any]) -> list[str]:
    """The test figures (and what the run measured beyond them), a line each; the first starts with a newline."""
    test = summary["test"]
    step = f"(best checkpoint: step {summary['best_step']})"
    lines = []
    if "perplexity" in test:
        before = summary["before"]["test"]
        lines.append(f"\nheld-out test text: loss {before['loss']:.4f} -> {test['loss']:.4f}, perplexity "
                     f"{before['perplexity']:.2f} -> {test['perplexity']:.2f}, token accuracy {before['accuracy']:.4f}"
                     f" -> {test['accuracy']:.4f} {step}")
    elif "tasks" in test:
        lines.append(f"\ntest, mean over {len(test['tasks'])} tasks: {metrics_line(test)} {step}")
        lines += [f"  {name:20} {metrics_line(metrics)}" for name, metrics in test["tasks"].items()]
    else:
        lines.append(f"\ntest: {metrics_line(test)}  {step}")
    if "chrf" in test and "before" in summary:
        lines.append(f"  before training: {metrics_line(summary['before']['test'])}")
    if "per_type" in test:
        lines += [f"  {label:8} F1 {scores['f1']:.4f}  precision {scores['precision']:.4f}  recall "
                  f"{scores['recall']:.4f}  ({scores['support']} entities)" for label, scores in test["per_type"].items()]
    if "baseline" in summary:  # a tagger's or a reader's
        baseline = summary["baseline"]
        low, high = baseline["f1_difference_interval"]
        lines.append(f"baseline ({baseline['what']}): {'' if 'exact' in test else 'entity '}F1 {baseline['f1']:.4f}; "
                     f"the model's lead over it, 95% bootstrap interval: {low:+.4f} to {high:+.4f}")
    lines += _distillation(summary)
    for name, metrics in summary.get("evaluation", {}).items():
        lines.append(f"  {name:20} ({metrics['language']}, {metrics['examples']} examples, not trained on): "
                     f"{metrics_line(metrics)}")
        if "baseline" in metrics:
            low, high = metrics["baseline"]["f1_difference_interval"]
            lines.append(f"  {'':20} baseline {'' if 'exact' in metrics else 'entity '}F1 "
                         f"{metrics['baseline']['f1']:.4f}; lead {low:+.4f} to {high:+.4f}")
    return lines


def _distillation(summary: dict[str, Any]) -> list[str]:
    if "distillation" not in summary:
        return []
    d = summary["distillation"]
    teacher, student = d["teacher"], d["student"]
    if "exact" in student:  # a reader's
        return [f"distillation: student F1 {student['f1']:.4f} (exact match {student['exact']:.4f}) vs teacher "
                f"{teacher['f1']:.4f} ({teacher['exact']:.4f}): {100 * d['f1_retained']:.1f}% of its F1 retained; "
                f"{student['parameters']:,} vs {teacher['parameters']:,} parameters"]
    if "f1_retained" in d:  # a tagger's
        return [f"distillation: student entity F1 {student['f1']:.4f} vs teacher {teacher['f1']:.4f} "
                f"({100 * d['f1_retained']:.1f}% retained); {student['parameters']:,} vs "
                f"{teacher['parameters']:,} parameters"]
    return [f"distillation: student accuracy {student['accuracy']:.4f} vs teacher {teacher['accuracy']:.4f} "
            f"({100 * d['accuracy_retained']:.1f}% retained); {student['parameters']:,} vs {teacher['parameters']:,} "
            f"parameters; {student['examples_per_second']:.0f} vs {teacher['examples_per_second']:.0f} "
            f"examples/s ({d['speed_up']:.2f}x)"]


def _written(run_dir: Path, summary: dict[str, Any]) -> str:
    return "\n".join([f"written to {run_dir}/: config.yaml, metrics.jsonl, curves.png, curves.json, diagnosis.txt, "
                      "summary.json, checkpoints/", *(f"  export: {item}" for item in summary["export"])])


def _usage(summary: dict[str, Any], run_dir: Path) -> list[str]:
    """How to use the run: predict from the command line, load it in PyTorch, fine-tune from it."""
    test = summary["test"]
    if "perplexity" in test:
        return [f"\nfine-tune from it: python -m tljax.train --set model={run_dir}/export/model"] \
            if (run_dir / "export" / "model").is_dir() else []
    export_dir = export_of(run_dir)
    pytorch = [f"  in PyTorch: {code}" + (f"\n    ({note})" if note else "") for code, note in pytorch_loading(export_dir)]
    task = _export_task(export_dir)
    if "chrf" in test and (run_dir / "export" / "run.json").is_file():  # text to text
        example = summary["examples"][0]["input"] if summary.get("examples") else "some text"
        return [f"\nuse it:\n  python -m tljax.predict {run_dir} {json.dumps(example, ensure_ascii=False)}", *pytorch,
                "  (the prompt's form, which the model was taught: export/run.json, seq2seq and text_prefix)"]
    if _export_task(run_dir / "export") == "causal-lm":  # chat tuning
        return [f"\nuse it:\n  python -m tljax.predict {run_dir} \"a delightful, moving film\"",
                f"score it in the harness beside zero-shot and few-shot: a variant {{kind: run, run: {run_dir}}}",
                *pytorch]
    predictable = run_dir if export_dir == run_dir / "export" else export_dir
    if task == "question-answering":
        return [f"\nuse it:\n  python -m tljax.predict {predictable} --question \"Where did Maria move?\" --context "
                "\"Maria Souza moved to Recife in March 2024.\"", *pytorch]
    example = "Maria Souza moved to Recife in March 2024." if task == "token-classification" else \
        "a delightful, moving film"
    return [f"\nuse it:\n  python -m tljax.predict {predictable} \"{example}\"", *pytorch]


def pytorch_loading(export_dir: Path) -> list[tuple[str, str | None]]:
    """The statements that load an export (the directory holding its run.json) in PyTorch (`transformers`,
    `peft`), each with a note to read beside it (or None); none for an export PyTorch cannot load, or for a
    language model's (a base to fine-tune)."""
    export_dir = Path(export_dir)
    if not (export_dir / "run.json").is_file():
        return []
    info = json.loads((export_dir / "run.json").read_text())
    task = info.get("task")
    if task == "seq2seq":
        return _text_to_text_loading(export_dir)
    if task in ("masked-lm", "causal-lm"):  # only a chat-tuned decoder answers
        return [(f"transformers.AutoModelForCausalLM.from_pretrained('{export_dir}/model')", None)] \
            if info.get("chat") else []
    answering = task == "question-answering"
    kind = "QuestionAnswering" if answering else "TokenClassification" if task == "token-classification" \
        else "SequenceClassification"
    found = []
    if (export_dir / "model").is_dir():  # a class of its own (mean pooling) is named by auto_map: code to trust
        remote = ", trust_remote_code=True" if "auto_map" in (export_dir / "model" / "config.json").read_text() else ""
        found.append((f"transformers.AutoModelFor{kind}.from_pretrained('{export_dir}/model'{remote})", None))
    if (export_dir / "adapter").is_dir():
        # PEFT builds the base model's head before it loads the adapter's: it needs the number of labels
        labels = "" if answering else f", num_labels={len(info.get('labels', ()))}"
        # PeftModelForQuestionAnswering.forward does not pass token_type_ids on to the model
        note = ("call its .base_model(input_ids=..., attention_mask=..., token_type_ids=...): PEFT's question-"
                "answering wrapper drops the token types a BERT reads") if answering else None
        found.append((f"peft.AutoPeftModelFor{kind}.from_pretrained('{export_dir}/adapter'{labels})", note))
    return found


def _text_to_text_loading(export: Path) -> list[tuple[str, str | None]]:
    # an encoder-decoder's Hugging Face class and PEFT adapter are the seq2seq ones
    kind = "Seq2SeqLM" if (export / "model").is_dir() and json.loads(
        (export / "model" / "config.json").read_text()).get("is_encoder_decoder") else "CausalLM"
    adapter = export / "adapter"
    if adapter.is_dir() and json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM":
        kind = "Seq2SeqLM"
    found = []
    if (export / "model").is_dir():
        found.append((f"transformers.AutoModelFor{kind}.from_pretrained('{export}/model')", None))
    if adapter.is_dir():
        found.append((f"peft.AutoPeftModelFor{kind}.from_pretrained('{adapter}')", None))
    return found


def export_of(run_dir: Path) -> Path:
    """A finished run's export directory (the one holding run.json): `export/`, or a multi-task run's first
    task's (`export/<task>/`)."""
    export = Path(run_dir) / "export"
    if (export / "run.json").is_file() or not export.is_dir():
        return export
    return next((p for p in sorted(export.iterdir()) if (p / "run.json").is_file()), export)


def _export_task(export_dir: Path) -> str | None:
    """The task an export's run.json records (None without one)."""
    path = export_dir / "run.json"
    return json.loads(path.read_text()).get("task") if path.is_file() else None
