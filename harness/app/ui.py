"""The page: side by side, blind comparison, results, runs, training and methods, in English and Portuguese.

Each tab is built by its module under `harness/app/tabs/`; `build` lays out the header (title, language, refresh),
adds the tabs in order and wires what spans them: the refresh, the language switch and the training-state API.
Every event that runs a model shares one queue (`concurrency_id="models"`); the page only calls the service,
the catalogue, the arena and the trainer. A public page (`service.public`, see access.py) opens only what it lists
and the files uploaded to it; a refusal is shown where the answer would have been.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from harness.app.service import Service
from harness.app.tabs import blind, methods, results, runs, side, train
from harness.app.tabs.common import MODEL_CONCURRENCY, Settings, Translated
from harness.app.texts import LANGUAGES
from harness.app.trainer import Trainer

QUEUE_SIZE = 200  # waiting events held (20 users x 4 columns, and room): beyond it Gradio asks users to wait


def build(service: Service, settings: Settings, language: str = "en") -> gr.Blocks:
    """The page (not launched)."""
    trainer = Trainer(settings.runs[0], public=service.public)
    tr = Translated(language)
    bases = service.bases()

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

        # the tabs in the page's order (each wires its own events, so the events keep their order too)
        side_tab = side.build(service, tr, ui_language, bases)
        arena_base = blind.build(service, settings, tr, ui_language, bases)
        results_tab = results.build(settings, tr, ui_language)
        runs_tab = runs.build(service, settings, tr, ui_language)
        train.build(service, trainer, tr, ui_language)
        methods_text = methods.build(service, tr)

        # -- the whole page -----------------------------------------------------------------------------------------
        def refresh_all(current_run, task_name, lang, base_name, suite_name, base_for_columns, page_lang, *current):
            columns = side_tab.switch_base(base_for_columns, page_lang)[:side.COLUMNS]
            for i, update in enumerate(columns):  # keep a column's choice while it is still listed
                if current[i] in update["choices"]:
                    update["value"] = current[i]
            bases_now = service.bases()
            return (*columns, gr.update(choices=bases_now), gr.update(choices=bases_now),
                    *runs_tab.listing(current_run, page_lang),
                    *results_tab.view(task_name, lang, base_name, suite_name, page_lang))

        refresh_inputs = [runs_tab.choice, *results_tab.inputs[:4], side_tab.base, ui_language, *side_tab.selectors]
        refresh_outputs = [*side_tab.selectors, side_tab.base, arena_base, runs_tab.choice, *runs_tab.outputs,
                           *results_tab.outputs]
        refresh.click(refresh_all, refresh_inputs, refresh_outputs, queue=False, api_name="refresh")
        page.load(refresh_all, refresh_inputs, refresh_outputs, queue=False)

        translated = [component for component, *_ in tr.items]

        def switch_language(lang):
            return [lang, *tr.updates(lang), methods.markdown(lang)]

        language_switch.change(switch_language, [language_switch], [ui_language, *translated, methods_text],
                               queue=False, api_name="switch_language")

        def train_state(name: str) -> dict:
            """The state of the page's training run called `name`: state, step, steps, run_dir, message."""
            return train.job_state(trainer, name)

        gr.api(train_state, api_name="train_state")  # after the tabs: an API endpoint between tabs splits them
        # the browser's language chooses the default (Portuguese for pt-*)
        page.load(None, None, [language_switch],
                  js="() => (navigator.language || 'en').toLowerCase().startsWith('pt') ? 'pt' : 'en'")
    page.queue(default_concurrency_limit=MODEL_CONCURRENCY, max_size=QUEUE_SIZE)
    return page


def load_settings(runs: list[str], results: list[str], votes: str) -> Settings:
    return Settings([Path(r) for r in runs], [Path(r) for r in results], Path(votes))
