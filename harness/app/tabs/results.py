"""The results tab: the harness results found on disk as one table (filtered by task, language and base model),
the entity tasks' table (entity F1), the answer tasks' table (SQuAD F1 with its interval, exact match, answerable
F1, no-answer, unanswered), a suite's plots (the score against trainable parameters and training time, the
language matrix), the bias table, and an explorer of the items on which two or more of a suite's variants
disagree (on an entity task: the entities each found; on an answer task: each one's answer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import gradio as gr

from harness.app.catalogue import (ANSWER_COLUMNS, BIAS_COLUMNS, ENTITY_COLUMNS, TABLE_COLUMNS, answer_rows, base_model,
                                   bias_rows, disagreements, entity_rows, find_results, table_rows)
from harness.app.tabs.common import Settings, Translated
from harness.app.texts import text

ALL = "*"  # the value behind "(all)", whatever the page's language


@dataclasses.dataclass
class Results:
    """What the page's refresh needs: `view` (the tab's contents again), its inputs and its outputs."""
    view: Callable[..., tuple[Any, ...]]  # (task, language, base, suite, page language) -> each output's value
    inputs: list[Any]  # the three filters, the suite, the page's language
    outputs: list[Any]


def build(settings: Settings, tr: Translated, ui_language: gr.State) -> Results:
    """The tab, inside the open page; `ui_language` holds the page's language."""
    with tr(gr.Tab(tr.t("tab_results"), id="results"), label="tab_results"):
        tr(gr.Markdown(tr.t("results_help")), value="results_help")
        results_notice = gr.Markdown(elem_id="results-notice")
        with gr.Row():
            filter_task = tr(gr.Dropdown(label=tr.t("task"), elem_id="filter-task",
                                 allow_custom_value=True), label="task")
            filter_language = tr(gr.Dropdown(label=tr.t("language"), elem_id="filter-language",
                                 allow_custom_value=True), label="language")
            filter_base = tr(gr.Dropdown(label=tr.t("base"), elem_id="filter-base",
                                 allow_custom_value=True), label="base")
        results_table = tr(gr.Dataframe(headers=list(TABLE_COLUMNS), interactive=False, label=tr.t("table"),
                                        elem_id="results-table", wrap=True), label="table")
        entity_table = tr(gr.Dataframe(headers=list(ENTITY_COLUMNS), interactive=False, label=tr.t("entity_table"),
                                       elem_id="entity-table", wrap=True), label="entity_table")
        answer_table = tr(gr.Dataframe(headers=list(ANSWER_COLUMNS), interactive=False, label=tr.t("answer_table"),
                                       elem_id="answer-table", wrap=True), label="answer_table")
        suite_choice = tr(gr.Dropdown(label=tr.t("suite"), elem_id="suite",
                                 allow_custom_value=True), label="suite")
        with gr.Row():
            plot_parameters = tr(gr.Image(label=tr.t("plot_parameters"), type="filepath"), label="plot_parameters")
            plot_time = tr(gr.Image(label=tr.t("plot_time"), type="filepath"), label="plot_time")
            plot_languages = tr(gr.Image(label=tr.t("plot_languages"), type="filepath"), label="plot_languages")
        tr(gr.Markdown(f"### {tr.t('bias')}"), fmt="### {}", value="bias")
        bias_table = gr.Dataframe(headers=list(BIAS_COLUMNS), interactive=False, elem_id="bias-table")
        tr(gr.Markdown(f"### {tr.t('explorer')}"), fmt="### {}", value="explorer")
        with gr.Row():
            explorer_task = tr(gr.Dropdown(label=tr.t("task"), elem_id="explorer-task",
                                 allow_custom_value=True), label="task")
            explorer_variants = tr(gr.Dropdown(multiselect=True, label=tr.t("variants"),
                                               elem_id="explorer-variants"), label="variants")
        explorer_table = gr.Dataframe(interactive=False, wrap=True, elem_id="explorer-table")
        explorer_item = tr(gr.JSON(label=tr.t("item")), label="item")
        explorer_state = gr.State([])

    def results_view(task_name, lang, base_name, suite_name, page_lang):
        sets = find_results(settings.results)
        every = lambda values: [(text("all", page_lang), ALL), *sorted({v for v in values if v})]  # noqa: E731
        rows = [r for s in sets for r in s.rows]
        pick = lambda v: None if not v or v == ALL else v  # noqa: E731
        table = table_rows(sets, pick(task_name), pick(lang), pick(base_name))
        found = entity_rows(sets, pick(task_name), pick(lang), pick(base_name))
        answered = answer_rows(sets, pick(task_name), pick(lang), pick(base_name))
        suites = [s.name for s in sets]
        chosen = next((s for s in sets if s.name == suite_name), sets[0] if sets else None)
        plots = chosen.plots if chosen else {}
        tasks = sorted({r["task"] for r in chosen.rows}) if chosen else []
        return (text("no_results", page_lang) if not sets else "",
                gr.update(choices=every(r["task"] for r in rows), value=task_name or ALL),
                gr.update(choices=every(r.get("language") for r in rows), value=lang or ALL),
                gr.update(choices=every(base_model(r) for r in rows), value=base_name or ALL),
                table, found, gr.update(choices=suites, value=chosen.name if chosen else None),
                plots.get("accuracy_vs_parameters"), plots.get("accuracy_vs_training_time"),
                plots.get("language_matrix"), bias_rows(sets),
                gr.update(choices=tasks, value=tasks[0] if tasks else None), answered)

    # the answer table is the last output: the endpoint's earlier outputs keep their places
    results_outputs = [results_notice, filter_task, filter_language, filter_base, results_table, entity_table,
                       suite_choice,
                       plot_parameters, plot_time, plot_languages, bias_table, explorer_task, answer_table]
    results_inputs = [filter_task, filter_language, filter_base, suite_choice, ui_language]
    for control in (filter_task, filter_language, filter_base, suite_choice):
        control.input(results_view, results_inputs, results_outputs, queue=False)

    def explorer_variant_choices(suite_name, task_name):
        chosen = next((s for s in find_results(settings.results) if s.name == suite_name), None)
        names = [r["variant"] for r in chosen.rows if r["task"] == task_name] if chosen else []
        return gr.update(choices=names, value=names[:2])

    def explore(suite_name, task_name, variant_names):
        chosen = next((s for s in find_results(settings.results) if s.name == suite_name), None)
        if not chosen or not variant_names or len(variant_names) < 2:
            return [], []
        listed = {(r["task"], r["variant"]) for r in chosen.rows}  # the task is opened: only one the suite ran
        if any((task_name, v) not in listed for v in variant_names):
            raise gr.Error(f"{suite_name} has no results of {variant_names} on {task_name!r}")
        found = disagreements(chosen, task_name, variant_names)
        rows = []
        for item in found:
            predicted = next(iter(item["answers"].values())).get("predicted")
            if isinstance(predicted, str):  # an answer task: each one's answer to the question
                named = [_answers(item["gold"]), *(_answers([a["predicted"]]) for a in item["answers"].values())]
            elif predicted is not None:  # an entity task: the entities each found
                named = [_entities(item["text"], spans) for spans in
                         (item["gold"], *(a["predicted"] for a in item["answers"].values()))]
            else:
                labels = item["labels"]
                named = [labels[i] if labels and i is not None and i >= 0 else i
                         for i in (item["gold"], *(a["prediction"].get("acc") for a in item["answers"].values()))]
            rows.append([item["id"], item["text"][:80], *named])
        return gr.update(value=rows, headers=["id", "text", "gold", *variant_names]), found

    explorer_task.change(explorer_variant_choices, [suite_choice, explorer_task], [explorer_variants], queue=False)
    explorer_variants.change(explore, [suite_choice, explorer_task, explorer_variants],
                             [explorer_table, explorer_state], queue=False)
    def explore_item(found: list, event: gr.SelectData):
        return found[event.index[0]] if found and event.index else None

    explorer_table.select(explore_item, [explorer_state], [explorer_item], queue=False)

    return Results(results_view, results_inputs, results_outputs)


def _answers(words: list[str]) -> str:
    """Answers as the explorer lists them: "six kilometres | about six kilometres", or "(no answer)"."""
    return " | ".join(w for w in words if w) or "(no answer)"


def _entities(text_of_item: str, spans: list) -> str:
    """Entities as the explorer lists them: "PER: Maria Souza; LOC: Recife"."""
    return "; ".join(f"{label}: {text_of_item[start:end]}" for start, end, label in spans) or "-"
