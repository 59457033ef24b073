"""The page: side by side, blind comparison, results, runs, training and methods, in English and Portuguese.

Every event that runs a model shares one queue (`concurrency_id="models"`); the page only calls the service,
the catalogue, the arena and the trainer. A public page (`service.public`, see access.py) opens only what it lists
and the files uploaded to it; a refusal is shown where the answer would have been.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from harness.app import arena
from harness.app.access import check_listed, check_upload
from harness.app.catalogue import (BIAS_COLUMNS, TABLE_COLUMNS, base_model, bias_rows, disagreements, find_results,
                                   find_runs, learning_curves, read_run, table_rows)
from harness.app.service import Choice, Service
from harness.app.texts import EXAMPLES, LANGUAGES, METHOD_EXPLANATIONS, text
from harness.app.trainer import Trainer, csv_columns
from tljax import zoo
from tljax.data import PACKAGED_CORPORA
from tljax.errors import InputError
from tljax.methods import METHODS
from tljax.methods.__main__ import trainable_table

COLUMNS = 4  # variants side by side at most
MODEL_CONCURRENCY = 2  # model events at once (two CPU cores); the rest wait in the queue
QUEUE_SIZE = 200  # waiting events held (20 users x 4 columns, and room): beyond it Gradio asks users to wait
DEFAULT_BASE = "minilm-l6"
UPLOADED = "upload"  # the corpus choice that means the uploaded file
NONE, ALL = "-", "*"  # the values behind "(none)" and "(all)", whatever the page's language


@dataclasses.dataclass
class Settings:
    runs: list[Path]  # where finished runs are found (the first: where the Train tab writes)
    results: list[Path]  # where harness results are found
    votes: Path  # the blind comparison's votes (JSON lines)


class Translated:
    """The components whose texts follow the page's language: (component, attribute, text key)."""

    def __init__(self, language: str = "en"):
        self.language = language
        self.items: list[tuple[Any, str, str]] = []

    def __call__(self, component, fmt: str = "{}", **keys: str):
        """Registers `component`'s attributes (label=key, ...) to follow the language, each shown as fmt."""
        for attribute, key in keys.items():
            self.items.append((component, attribute, key, fmt))
        return component

    def t(self, key: str) -> str:
        return text(key, self.language)

    def updates(self, language: str) -> list[Any]:
        return [gr.update(**{attribute: fmt.format(text(key, language))}) for _, attribute, key, fmt in self.items]


def _tag(choice: Choice, language: str, latency: float | None = None, notice: str = "",
         trainable: int | None = None) -> str:
    trainable = choice.trainable if trainable is None else trainable
    trainable = "-" if trainable is None else f"{trainable:,}"
    parts = [f"**{choice.name}**", choice.method, f"{trainable} {text('trainable', language)}"]
    if latency is not None:
        parts.append(f"{text('latency', language)} {latency * 1000:.0f} ms")
    tag = " · ".join(parts)
    return tag + (f"\n\n⚠️ {notice}" if notice else "")


def build(service: Service, settings: Settings, language: str = "en") -> gr.Blocks:
    """The page (not launched)."""
    trainer = Trainer(settings.runs[0], public=service.public)
    tr = Translated(language)
    bases = service.bases()

    def choice_names(base: str) -> list[str]:
        return [c.name for c in service.choices(base)]

    with gr.Blocks(title="tljax") as page:
        ui_language = gr.State(language)
        with gr.Row():
            with gr.Column(scale=4):
                tr(gr.Markdown(tr.t("title")), value="title")
                tr(gr.Markdown(tr.t("subtitle")), value="subtitle")
            with gr.Column(scale=1, min_width=200):
                language_switch = tr(gr.Radio([(v, k) for k, v in LANGUAGES.items()],
                                              value=language, label=tr.t("page_language"), elem_id="page-language"),
                                     label="page_language")
                refresh = tr(gr.Button(tr.t("refresh"), size="sm", elem_id="refresh"), value="refresh")

        # -- side by side ------------------------------------------------------------------------------------
        with tr(gr.Tab(tr.t("tab_side"), id="side"), label="tab_side"):
            with gr.Row():
                base = tr(gr.Dropdown(bases, value=DEFAULT_BASE, label=tr.t("base"), elem_id="base",
                                      allow_custom_value=True), label="base")  # or a model directory
                task = tr(gr.Dropdown(service.tasks(), value="sentiment-en", label=tr.t("task"), elem_id="task",
                                      allow_custom_value=True),  # or a task YAML file
                          label="task")
                message_language = tr(gr.Radio([(v, k) for k, v in LANGUAGES.items()], value="en",
                                               label=tr.t("message_language"), elem_id="message-language"),
                                      label="message_language")
            names = choice_names(DEFAULT_BASE)
            defaults = (names + [None] * COLUMNS)[:COLUMNS]
            selectors, tags, labels, chats = [], [], [], []
            with gr.Row():
                for i in range(COLUMNS):
                    with gr.Column(min_width=220):
                        options = names if i < 2 else [(tr.t("none"), NONE), *names]
                        # the service checks a variant's name (the list changes with the runs on disk)
                        selectors.append(tr(gr.Dropdown(options, value=defaults[i] or NONE,
                                                        label=f"{tr.t('variant')} {i + 1}", elem_id=f"variant-{i}",
                                                        allow_custom_value=True),
                                            fmt=f"{{}} {i + 1}", label="variant"))
                        tags.append(gr.Markdown(elem_id=f"tag-{i}"))
                        labels.append(tr(gr.Label(label=tr.t("probabilities"), elem_id=f"label-{i}"),
                                         label="probabilities"))
                        chats.append(tr(gr.Chatbot(label=tr.t("reply"), height=320, elem_id=f"chat-{i}"),
                                        label="reply"))
            message = tr(gr.Textbox(label=tr.t("message"), placeholder=tr.t("placeholder"), lines=2,
                                    elem_id="message"), label="message", placeholder="placeholder")
            notice = gr.Markdown(elem_id="notice")
            with gr.Row():
                send = tr(gr.Button(tr.t("send"), variant="primary", elem_id="send"), value="send")
                regenerate = tr(gr.Button(tr.t("regenerate"), elem_id="regenerate"), value="regenerate")
                clear = tr(gr.Button(tr.t("clear"), elem_id="clear"), value="clear")
            last_message = gr.State("")
            gr.Examples([[e, "en"] for e in EXAMPLES["en"]] + [[e, "pt"] for e in EXAMPLES["pt"]],
                        inputs=[message, message_language], label=tr.t("examples"))

        def column_answer(base_name, task_name, lang, variant_name, text_in, history, page_lang) -> Iterator:
            """One column's answer: the label and its probabilities, then (decoders) the streamed reply."""
            history = list(history or [])
            if not variant_name or variant_name == NONE:
                yield history, None, ""
                return
            if not (text_in or "").strip():
                yield history, None, text("empty", page_lang)
                return
            try:
                choice = service.choice(base_name, variant_name)
                if not choice.available:
                    yield history, None, f"**{choice.name}**: {text('unavailable', page_lang)} ({choice.reason})"
                    return
                download = service.needs_download(choice)
                if download:
                    yield history, None, f"{text('downloading', page_lang)}: {download}"
                answer = service.answer(choice, task_name, lang, text_in)
            except InputError as error:
                yield history, None, f"⚠️ {error}"
                return
            summary = f"{answer.label} ({answer.probabilities[answer.label]:.2f}, {text('by_scoring', page_lang)})"
            history = history + [{"role": "user", "content": answer.text},
                                 {"role": "assistant", "content": summary}]
            tag = _tag(choice, page_lang, answer.latency_s, answer.notice(page_lang), answer.trainable)
            yield history, answer.probabilities, tag
            if choice.decoder:
                reply = ""
                for reply in service.reply(choice, task_name, lang, text_in):
                    history[-1] = {"role": "assistant", "content": reply}
                    yield history, answer.probabilities, tag
                implied = service.implied_label(task_name, lang, reply)
                said = f"{text('implies', page_lang)}: **{implied}**" if implied else text("no_label", page_lang)
                history[-1] = {"role": "assistant", "content": f"{reply}\n\n→ {said} · {summary}"}
                yield history, answer.probabilities, tag

        def check_message(text_in, page_lang):
            return text("empty", page_lang) if not (text_in or "").strip() else "", text_in

        for trigger in (send.click, message.submit):
            checked = trigger(check_message, [message, ui_language], [notice, last_message], queue=False)
            for i in range(COLUMNS):
                checked.then(column_answer, [base, task, message_language, selectors[i], message, chats[i],
                                             ui_language], [chats[i], labels[i], tags[i]],
                             concurrency_id="models", concurrency_limit=MODEL_CONCURRENCY,
                             api_name=f"answer_{i + 1}" if trigger == send.click else False)
        for i in range(COLUMNS):
            regenerate.click(lambda h: (h or [])[:-2], [chats[i]], [chats[i]], queue=False).then(
                column_answer, [base, task, message_language, selectors[i], last_message, chats[i], ui_language],
                [chats[i], labels[i], tags[i]], concurrency_id="models", api_name=False)
            selectors[i].change(lambda: ([], None, ""), None, [chats[i], labels[i], tags[i]], queue=False)
        clear.click(lambda: [[]] * COLUMNS + [None] * COLUMNS + [""] * COLUMNS + ["", ""], None,
                    chats + labels + tags + [message, notice], queue=False)

        def switch_base(base_name, page_lang):
            """Each column's selector for `base_name`'s variants, and a notice (why the base cannot be opened)."""
            try:
                names, said = choice_names(base_name), ""
            except InputError as error:
                names, said = [], f"⚠️ {error}"
            values = (names + [None] * COLUMNS)[:COLUMNS]
            return [*(gr.update(choices=names if i < 2 else [(text("none", page_lang), NONE), *names],
                                value=values[i] or NONE) for i in range(COLUMNS)), said]

        base.change(switch_base, [base, ui_language], [*selectors, notice], queue=False)
        sentiment = {"en": "sentiment-en", "pt": "sentiment-pt"}
        message_language.change(lambda lang, current: sentiment[lang] if current in sentiment.values() else current,
                                [message_language, task], [task], queue=False)

        # -- blind comparison ---------------------------------------------------------------------------------
        with tr(gr.Tab(tr.t("tab_arena"), id="arena"), label="tab_arena"):
            tr(gr.Markdown(tr.t("arena_help")), value="arena_help")
            pair_state = gr.State(None)
            with gr.Row():
                arena_base = tr(gr.Dropdown(bases, value=DEFAULT_BASE, label=tr.t("base"), elem_id="arena-base",
                                     allow_custom_value=True),
                                label="base")
                new_pair = tr(gr.Button(tr.t("new_pair"), elem_id="new-pair"), value="new_pair")
            with gr.Row():
                arena_chats, arena_labels = [], []
                for side in ("model_a", "model_b"):
                    with gr.Column():
                        arena_chats.append(tr(gr.Chatbot(label=tr.t(side), height=220, elem_id=f"arena-{side}"),
                                              label=side))
                        arena_labels.append(tr(gr.Label(label=tr.t("probabilities")), label="probabilities"))
            arena_message = tr(gr.Textbox(label=tr.t("message"), placeholder=tr.t("placeholder"),
                                          elem_id="arena-message"), label="message", placeholder="placeholder")
            with gr.Row():
                vote_buttons = [tr(gr.Button(tr.t(key), elem_id=f"vote-{outcome}"), value=key)
                                for key, outcome in (("a_better", "a"), ("b_better", "b"), ("tie", "tie"))]
            arena_notice = gr.Markdown(elem_id="arena-notice")
            tr(gr.Markdown(f"### {tr.t('ratings')}"), fmt="### {}", value="ratings")
            ratings_table = gr.Dataframe(headers=["variant", "rating", "95% CI", "votes", "wins", "harness accuracy"],
                                         interactive=False, elem_id="ratings")

        def draw(base_name):
            # variants that can answer the sentiment tasks the comparison asks (a run for other labels cannot)
            try:
                choices = service.choices(base_name)
            except InputError as error:
                return None, [], [], None, None, f"⚠️ {error}"
            usable = [c.name for c in choices if c.available and service.fits(c, "sentiment-en")]
            pair = arena.draw_pair(usable, random.Random())
            return {"base": base_name, "a": pair.a, "b": pair.b, "answered": False}, [], [], None, None, ""

        def arena_answer(pair, base_name, text_in, page_lang):
            if not pair or pair["base"] != base_name:
                pair, *_, refused = draw(base_name)
                if pair is None:
                    return None, gr.update(), gr.update(), None, None, refused
            if not (text_in or "").strip():
                return pair, gr.update(), gr.update(), None, None, text("empty", page_lang)
            outputs = []
            lang = "pt" if _looks_portuguese(text_in) else "en"
            task_name = f"sentiment-{lang}"
            for side in ("a", "b"):
                try:
                    choice = service.choice(pair["base"], pair[side])
                    answer = service.answer(choice, task_name, lang, text_in)
                    reply = answer.label
                    if choice.decoder:
                        reply = list(service.reply(choice, task_name, lang, text_in))[-1] or answer.label
                except InputError as error:
                    return pair, gr.update(), gr.update(), None, None, f"⚠️ {error}"
                outputs.append(([{"role": "user", "content": answer.text}, {"role": "assistant", "content": reply}],
                                answer.probabilities))
            return {**pair, "answered": True}, outputs[0][0], outputs[1][0], outputs[0][1], outputs[1][1], ""

        def vote(outcome, pair, text_in, page_lang):
            if not pair or not pair.get("answered"):
                return pair, text("vote_first", page_lang), ratings_frame(pair["base"]) if pair else gr.update()
            arena.record_vote(settings.votes, arena.Pair(pair["a"], pair["b"]), outcome, base=pair["base"],
                              text=text_in)
            # the names are shown now: the next votes are on a new pair, drawn blind
            return (draw(pair["base"])[0], text("voted", page_lang).format(a=pair["a"], b=pair["b"]),
                    ratings_frame(pair["base"]))

        def ratings_frame(base_name):
            """The ratings of `base_name`'s variants (its votes only), with the harness's English accuracy."""
            try:
                choices = service.choices(base_name)
            except InputError as error:
                raise gr.Error(str(error)) from None
            accuracy = _harness_accuracy(find_results(settings.results), base_name, choices)
            votes = [v for v in arena.read_votes(settings.votes) if v.get("base") == base_name]
            return [[r.name, round(r.rating), f"{r.low:.0f}-{r.high:.0f}", r.votes, r.wins, accuracy.get(r.name, "")]
                    for r in arena.ratings(votes)]

        new_pair.click(draw, [arena_base], [pair_state, *arena_chats, *arena_labels, arena_notice], queue=False)
        arena_base.change(lambda b: ratings_frame(b), [arena_base], [ratings_table], queue=False)
        arena_message.submit(arena_answer, [pair_state, arena_base, arena_message, ui_language],
                             [pair_state, *arena_chats, *arena_labels, arena_notice], concurrency_id="models",
                             api_name="arena_answer")
        for button, outcome in zip(vote_buttons, arena.OUTCOMES):
            button.click(lambda p, m, lang, o=outcome: vote(o, p, m, lang), [pair_state, arena_message, ui_language],
                         [pair_state, arena_notice, ratings_table], queue=False, api_name=f"vote_{outcome}")

        # -- results --------------------------------------------------------------------------------------------
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
            suites = [s.name for s in sets]
            chosen = next((s for s in sets if s.name == suite_name), sets[0] if sets else None)
            plots = chosen.plots if chosen else {}
            tasks = sorted({r["task"] for r in chosen.rows}) if chosen else []
            return (text("no_results", page_lang) if not sets else "",
                    gr.update(choices=every(r["task"] for r in rows), value=task_name or ALL),
                    gr.update(choices=every(r.get("language") for r in rows), value=lang or ALL),
                    gr.update(choices=every(base_model(r) for r in rows), value=base_name or ALL),
                    table, gr.update(choices=suites, value=chosen.name if chosen else None),
                    plots.get("accuracy_vs_parameters"), plots.get("accuracy_vs_training_time"),
                    plots.get("language_matrix"), bias_rows(sets),
                    gr.update(choices=tasks, value=tasks[0] if tasks else None))

        results_outputs = [results_notice, filter_task, filter_language, filter_base, results_table, suite_choice,
                           plot_parameters, plot_time, plot_languages, bias_table, explorer_task]
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

        # -- runs -------------------------------------------------------------------------------------------------
        with tr(gr.Tab(tr.t("tab_runs"), id="runs"), label="tab_runs"):
            run_choice = tr(gr.Dropdown(label=tr.t("run"), elem_id="run-choice",
                                     allow_custom_value=True), label="run")
            run_summary = gr.Markdown(elem_id="run-summary")
            with gr.Row():
                run_curves = tr(gr.Image(label=tr.t("curves"), type="filepath"), label="curves")
                run_metrics = tr(gr.JSON(label=tr.t("test_metrics")), label="test_metrics")
            run_diagnosis = tr(gr.Textbox(label=tr.t("diagnosis"), lines=3, interactive=False), label="diagnosis")
            run_config = tr(gr.Code(language="yaml", label=tr.t("config")), label="config")
            run_exports = tr(gr.JSON(label=tr.t("exports")), label="exports")

        def runs_list(current, page_lang):
            runs = find_runs(settings.runs)
            names = [str(r.path) for r in runs]
            value = current if current in names else (names[0] if names else None)
            return gr.update(choices=names, value=value), *(run_view(value, page_lang))

        def run_view(path, page_lang):
            if not path:
                return text("no_runs", page_lang), None, None, "", "", None
            try:  # a public page shows only the runs it lists
                if service.public:
                    check_listed(True, "runs", path, [str(r.path) for r in find_runs(settings.runs)])
            except InputError as error:
                return f"⚠️ {error}", None, None, "", "", None
            run = read_run(Path(path))
            summary = json.loads((run.path / "summary.json").read_text()) if (run.path / "summary.json").is_file() else {}
            head = (f"**{run.name}** · {run.model} · {run.method} · "
                    f"{'-' if run.trainable is None else f'{run.trainable:,}'} {text('trainable', page_lang)} · "
                    f"{run.status}{f' ({run.reason})' if run.reason else ''}")
            curves = run.path / "curves.png"
            config = (run.path / "config.yaml").read_text() if (run.path / "config.yaml").is_file() else ""
            diagnosis = (run.path / "diagnosis.txt").read_text() if (run.path / "diagnosis.txt").is_file() else \
                summary.get("diagnosis", "")
            return head, str(curves) if curves.is_file() else None, run.test or None, diagnosis, config, \
                summary.get("export")

        run_outputs = [run_summary, run_curves, run_metrics, run_diagnosis, run_config, run_exports]
        run_choice.input(run_view, [run_choice, ui_language], run_outputs, queue=False)

        # -- train --------------------------------------------------------------------------------------------------
        with tr(gr.Tab(tr.t("tab_train"), id="train"), label="tab_train"):
            with gr.Row():
                train_model = tr(gr.Dropdown(list(zoo.PACKAGED), value=DEFAULT_BASE, allow_custom_value=True,
                                             label=tr.t("model"), elem_id="train-model"), label="model")
                train_method = tr(gr.Dropdown(list(METHODS), value="lora", label=tr.t("method"),
                                              elem_id="train-method"), label="method")
                train_trains = tr(gr.Textbox(label=tr.t("trains"), interactive=False, elem_id="train-trains"),
                                  label="trains")
            with gr.Row():
                corpus = tr(gr.Dropdown([*PACKAGED_CORPORA, (tr.t("uploaded"), UPLOADED)], value="rotten-tomatoes",
                                        allow_custom_value=True,
                                        label=tr.t("corpus"), elem_id="train-corpus"), label="corpus")
                upload = tr(gr.File(label=tr.t("upload"), file_types=[".csv", ".tsv"], type="filepath",
                                    elem_id="train-upload"), label="upload")
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
                count, share = _trainable(check_listed(service.public, "models", model, zoo.PACKAGED))[method]
            except (InputError, OSError) as error:
                return f"⚠️ {error}"
            return f"{count:,} ({share:.2f}%)"

        def columns_of(path):
            if not path:
                return gr.update(), gr.update(), gr.update()
            try:
                found = csv_columns(check_upload(service.public, path))
            except InputError as error:
                raise gr.Error(str(error)) from None
            text_default = "text" if "text" in found else (found[0] if found else None)
            label_default = "label" if "label" in found else (found[-1] if found else None)
            return (gr.update(choices=found, value=text_default), gr.update(choices=found, value=label_default),
                    gr.update(value=UPLOADED))

        def start_run(model, method, source, uploaded, text_col, label_col, labels_text, budget, name, page_lang,
                      resuming=False):
            if source == UPLOADED:
                if not uploaded:
                    return f"⚠️ {text('upload_first', page_lang)}", gr.update(active=False)
                source = str(uploaded)
            labels = [x.strip() for x in (labels_text or "").split(",") if x.strip()] or None
            try:
                trainer.start(model=model, method=method, source=source, steps=int(budget or 0),
                              name=(name or "").strip(), text_column=text_col, label_column=label_col, labels=labels,
                              resume=resuming)
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

        train_inputs = [train_model, train_method, corpus, upload, text_column, label_column, declared, steps, run_name,
                        ui_language]
        start.click(start_run, train_inputs, [train_status, timer], api_name="train_start", queue=False)
        resume.click(lambda *a: start_run(*a, resuming=True), train_inputs, [train_status, timer], queue=False,
                     api_name="train_resume")
        stop.click(lambda name: (trainer.job(name.strip()).stop() if trainer.job(name.strip()) else None), [run_name],
                   None, queue=False, api_name="train_stop")
        timer.tick(watch, [run_name, ui_language], [train_status, train_progress, train_curve, timer], queue=False)
        upload.upload(columns_of, [upload], [text_column, label_column, corpus], queue=False)
        for control in (train_model, train_method):
            control.input(trains, [train_model, train_method], [train_trains], concurrency_id="models")

        # -- methods ------------------------------------------------------------------------------------------------
        with tr(gr.Tab(tr.t("tab_methods"), id="methods"), label="tab_methods"):
            tr(gr.Markdown(tr.t("methods_help")), value="methods_help")
            methods_text = gr.Markdown(_methods_markdown(language), elem_id="methods-text")
            methods_model = tr(gr.Dropdown(list(zoo.PACKAGED), value=DEFAULT_BASE, allow_custom_value=True,
                                           label=tr.t("model"), elem_id="methods-model"), label="model")
            methods_table = tr(gr.Dataframe(headers=["method", "trainable parameters", "% of the model"],
                                            interactive=False, label=tr.t("methods_table"), elem_id="methods-table"),
                               label="methods_table")

        def method_rows(model):
            try:
                rows = _trainable(check_listed(service.public, "models", model, zoo.PACKAGED))
                return [[name, f"{count:,}", f"{share:.3f}"] for name, (count, share) in rows.items()]
            except (InputError, OSError) as error:
                raise gr.Error(str(error)) from None

        methods_model.input(method_rows, [methods_model], [methods_table], concurrency_id="models")

        # -- the whole page -----------------------------------------------------------------------------------------
        def refresh_all(current_run, task_name, lang, base_name, suite_name, base_for_columns, page_lang, *current):
            columns = switch_base(base_for_columns, page_lang)[:COLUMNS]
            for i, update in enumerate(columns):  # keep a column's choice while it is still listed
                if current[i] in update["choices"]:
                    update["value"] = current[i]
            bases_now = service.bases()
            return (*columns, gr.update(choices=bases_now), gr.update(choices=bases_now),
                    *runs_list(current_run, page_lang), *results_view(task_name, lang, base_name, suite_name, page_lang))

        refresh_inputs = [run_choice, *results_inputs[:4], base, ui_language, *selectors]
        refresh_outputs = [*selectors, base, arena_base, run_choice, *run_outputs, *results_outputs]
        refresh.click(refresh_all, refresh_inputs, refresh_outputs, queue=False, api_name="refresh")
        page.load(refresh_all, refresh_inputs, refresh_outputs, queue=False)

        translated = [component for component, *_ in tr.items]

        def switch_language(lang):
            return [lang, *tr.updates(lang), _methods_markdown(lang)]

        language_switch.change(switch_language, [language_switch], [ui_language, *translated, methods_text],
                               queue=False, api_name="switch_language")
        def train_state(name: str) -> dict:
            """The state of the page's training run called `name`: state, step, steps, run_dir, message."""
            return _job_state(trainer, name)

        gr.api(train_state, api_name="train_state")  # after the tabs: an API endpoint between tabs splits them
        # the browser's language chooses the default (Portuguese for pt-*)
        page.load(None, None, [language_switch],
                  js="() => (navigator.language || 'en').toLowerCase().startsWith('pt') ? 'pt' : 'en'")
    page.queue(default_concurrency_limit=MODEL_CONCURRENCY, max_size=QUEUE_SIZE)
    return page


@functools.lru_cache(maxsize=16)
def _trainable(model: str) -> dict[str, tuple[int, float]]:
    """method -> (trainable parameters, % of the model) on `model` (its config only; computed once per model)."""
    return {name: (count, share) for name, count, share in trainable_table(zoo.resolve(model))}


def _job_state(trainer: Trainer, name: str) -> dict[str, Any]:
    job = trainer.job((name or "").strip())
    if job is None:
        return {"state": "none"}
    step, total = job.progress()
    return {"state": job.state, "step": step, "steps": total, "run_dir": str(job.run_dir), "message": job.message()}


def _methods_markdown(language: str) -> str:
    return "\n".join(f"- **{name}**: {METHOD_EXPLANATIONS[name][language == 'pt']}" for name in METHODS)


def _harness_accuracy(sets, base: str, choices: list[Choice], task: str = "sentiment-en") -> dict[str, float]:
    """The harness's accuracy on `task` of each of `base`'s choices that a results row describes: the same
    kind, model and k, or the same run directory."""
    found: dict[str, float] = {}
    for result in sets:
        for row in result.rows:
            settings, accuracy = row.get("settings") or {}, (row["summary"].get("acc") or {}).get("accuracy")
            if row["task"] != task or accuracy is None:
                continue
            for choice in choices:
                variant = choice.variant
                same = (variant.kind == row["kind"] == "run" and settings.get("run")
                        and Path(settings["run"]).resolve() == Path(variant.run).resolve()) or \
                    (variant.kind == row["kind"] != "run" and settings.get("model") == base
                     and (variant.kind == "zero-shot" or settings.get("k") == variant.k))
                if same and not settings.get("language") and not settings.get("demonstrations"):
                    found.setdefault(choice.name, round(accuracy, 3))
    return found


def _looks_portuguese(message: str) -> bool:
    """A rough guess for the blind comparison, which asks no language: common Portuguese words or letters."""
    words = set(message.lower().replace(",", " ").replace(".", " ").split())
    return bool(words & {"não", "uma", "muito", "é", "está", "foi", "que", "com", "filme", "mas", "eu", "isso",
                         "ótimo", "péssimo", "adorei", "gostei"}) or any(c in message for c in "ãõçêâ")


def load_settings(runs: list[str], results: list[str], votes: str) -> Settings:
    return Settings([Path(r) for r in runs], [Path(r) for r in results], Path(votes))

