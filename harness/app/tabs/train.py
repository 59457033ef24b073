"""The train tab: starts, stops and resumes a training run from the page (a packaged model or a model directory,
a task (a label per text, named entities, or questions about a passage), a method, a packaged corpus or an
uploaded file (CSV / TSV with its text and label columns; CoNLL or JSON Lines with entity spans for entities; SQuAD
JSON, or JSON Lines / CSV records of question, context and answers, for questions), a step budget), shows how
many parameters the method trains, and follows the run's progress and loss curves while it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from harness.app.access import check_listed, check_upload
from harness.app.catalogue import learning_curves
from harness.app.service import Service
from harness.app.tabs.common import DEFAULT_BASE, Translated, trainable_counts
from harness.app.texts import text
from harness.app.trainer import TASKS, UPLOAD_SUFFIXES, Trainer, csv_columns
from tljax import zoo
from tljax.errors import InputError
from tljax.methods import METHODS

UPLOADED = "upload"  # the corpus choice that means the uploaded file
RUN_NAMES = {"sequence-classification": "app-lora", "token-classification": "app-ner-lora",
             "question-answering": "app-qa-lora"}  # each task's default run name


def build(service: Service, trainer: Trainer, tr: Translated, ui_language: gr.State) -> None:
    """The tab, inside the open page; its runs are `trainer`'s, `ui_language` holds the page's language."""
    with tr(gr.Tab(tr.t("tab_train"), id="train"), label="tab_train"):
        with gr.Row():
            train_model = tr(gr.Dropdown(list(zoo.PACKAGED), value=DEFAULT_BASE, allow_custom_value=True,
                                         label=tr.t("model"), elem_id="train-model"), label="model")
            train_method = tr(gr.Dropdown(list(METHODS), value="lora", label=tr.t("method"),
                                          elem_id="train-method"), label="method")
            train_trains = tr(gr.Textbox(label=tr.t("trains"), interactive=False, elem_id="train-trains"),
                              label="trains")
        with gr.Row():
            train_task = tr(gr.Radio([(tr.t("task_labels"), "sequence-classification"),
                                      (tr.t("task_entities"), "token-classification"),
                                      (tr.t("task_answers"), "question-answering")],
                                     value="sequence-classification", label=tr.t("train_task"), elem_id="train-task"),
                            label="train_task")
            corpus = tr(gr.Dropdown([*TASKS["sequence-classification"], (tr.t("uploaded"), UPLOADED)],
                                    value="rotten-tomatoes", allow_custom_value=True,
                                    label=tr.t("corpus"), elem_id="train-corpus"), label="corpus")
            # every suffix either task reads; the start refuses a file its task does not read
            upload = tr(gr.File(label=tr.t("upload"), file_types=sorted({x for v in UPLOAD_SUFFIXES.values()
                                                                           for x in v}),
                                type="filepath", elem_id="train-upload"), label="upload")
        with gr.Row():
            text_column = tr(gr.Dropdown(["text"], value="text", allow_custom_value=True,
                                         label=tr.t("text_column"), elem_id="train-text-column"), label="text_column")
            label_column = tr(gr.Dropdown(["label"], value="label", allow_custom_value=True,
                                          label=tr.t("label_column"), elem_id="train-label-column"),
                              label="label_column")
            declared = tr(gr.Textbox(label=tr.t("labels"), elem_id="train-labels"), label="labels")
        with gr.Row():
            steps = tr(gr.Number(value=100, minimum=1, maximum=100_000, precision=0, label=tr.t("steps"),
                                 elem_id="train-steps"), label="steps")
            run_name = tr(gr.Textbox(value="app-lora", label=tr.t("run_name"), elem_id="train-name"),
                          label="run_name")
        with gr.Row():
            start = tr(gr.Button(tr.t("start"), variant="primary", elem_id="train-start"), value="start")
            stop = tr(gr.Button(tr.t("stop"), elem_id="train-stop"), value="stop")
            resume = tr(gr.Button(tr.t("resume"), elem_id="train-resume"), value="resume")
        train_status = gr.Markdown(elem_id="train-status")
        train_progress = tr(gr.Slider(0, 100, value=0, label=tr.t("progress"), interactive=False,
                                      elem_id="train-progress"), label="progress")
        train_curve = gr.LinePlot(x="step", y="loss", color="split", height=220, elem_id="train-curve")
        timer = gr.Timer(1.0, active=False)

    def trains(model, method):
        try:
            count, share = trainable_counts(check_listed(service.public, "models", model, zoo.PACKAGED))[method]
        except (InputError, OSError) as error:
            return f"⚠️ {error}"
        return f"{count:,} ({share:.2f}%)"

    def for_task(task, page_lang):
        """The corpora of a task (its packaged ones, or an upload), and the columns only a CSV has."""
        corpora = TASKS[task]
        tabular = task == "sequence-classification"
        return (gr.update(choices=[*corpora, (text("uploaded", page_lang), UPLOADED)], value=corpora[0]),
                gr.update(interactive=tabular), gr.update(interactive=tabular), gr.update(value=RUN_NAMES[task]))

    def columns_of(path, task):
        if not path:
            return gr.update(), gr.update(), gr.update()
        suffix = Path(path).suffix.lower()
        if suffix not in UPLOAD_SUFFIXES[task]:
            raise gr.Error(text("upload_kind", "en").format(suffix=suffix, valid=", ".join(UPLOAD_SUFFIXES[task])))
        if task != "sequence-classification":  # words and tags, or questions: no columns to choose
            return gr.update(), gr.update(), gr.update(value=UPLOADED)
        try:
            found = csv_columns(check_upload(service.public, path))
        except InputError as error:
            raise gr.Error(str(error)) from None
        text_default = "text" if "text" in found else (found[0] if found else None)
        label_default = "label" if "label" in found else (found[-1] if found else None)
        return (gr.update(choices=found, value=text_default), gr.update(choices=found, value=label_default),
                gr.update(value=UPLOADED))

    def start_run(model, method, task, source, uploaded, text_col, label_col, labels_text, budget, name, page_lang,
                  resuming=False):
        if source == UPLOADED:
            if not uploaded:
                return f"⚠️ {text('upload_first', page_lang)}", gr.update(active=False)
            source = str(uploaded)
        labels = [x.strip() for x in (labels_text or "").split(",") if x.strip()] or None
        if task == "question-answering" and labels:
            return f"⚠️ {text('qa_no_labels', page_lang)}", gr.update(active=False)
        try:
            trainer.start(model=model, method=method, source=source, steps=int(budget or 0),
                          name=(name or "").strip(), text_column=text_col, label_column=label_col, labels=labels,
                          resume=resuming, task=task)
        except InputError as error:  # TrainError, or what a public page does not open
            return f"⚠️ {error}", gr.update(active=False)
        return f"{text('state_running', page_lang)}: {name}", gr.update(active=True)

    def watch(name, page_lang):
        job = trainer.job((name or "").strip())
        if job is None:
            return gr.update(), gr.update(), gr.update(), gr.update(active=False)
        step, total = job.progress()
        train, validation = learning_curves(job.run_dir)
        points = [{"step": r["step"], "loss": r["loss"], "split": r["split"]} for r in train + validation
                  if "loss" in r]
        state = job.state
        message = f"{text('state_' + state, page_lang)}: {job.run_dir}"
        if state == "failed":
            message += f"\n\n⚠️ {job.message()}"
        return (message, gr.update(value=100.0 * min(step, total) / max(total, 1)), pd.DataFrame(points or
                {"step": [], "loss": [], "split": []}), gr.update(active=state == "running"))

    train_inputs = [train_model, train_method, train_task, corpus, upload, text_column, label_column, declared, steps,
                    run_name, ui_language]
    start.click(start_run, train_inputs, [train_status, timer], api_name="train_start", queue=False)
    resume.click(lambda *a: start_run(*a, resuming=True), train_inputs, [train_status, timer], queue=False,
                 api_name="train_resume")
    stop.click(lambda name: (trainer.job(name.strip()).stop() if trainer.job(name.strip()) else None), [run_name],
               None, queue=False, api_name="train_stop")
    timer.tick(watch, [run_name, ui_language], [train_status, train_progress, train_curve, timer], queue=False)
    upload.upload(columns_of, [upload, train_task], [text_column, label_column, corpus], queue=False)
    train_task.change(for_task, [train_task, ui_language], [corpus, text_column, label_column, run_name], queue=False)
    # a question-answering run has no labels (its own event: the corpus chooser's endpoint keeps its outputs)
    train_task.change(lambda task: gr.update(interactive=task != "question-answering"), [train_task], [declared],
                      queue=False, api_name=False)
    for control in (train_model, train_method):
        control.input(trains, [train_model, train_method], [train_trains], concurrency_id="models")


def job_state(trainer: Trainer, name: str) -> dict[str, Any]:
    """The state of `trainer`'s run called `name`: state, step, steps, run_dir, message ({"state": "none"}
    when it has none)."""
    job = trainer.job((name or "").strip())
    if job is None:
        return {"state": "none"}
    step, total = job.progress()
    return {"state": job.state, "step": step, "steps": total, "run_dir": str(job.run_dir), "message": job.message()}
