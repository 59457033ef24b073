"""The runs tab: one finished (or stopped, or failed) training run found on disk at a time: its model, method,
trainable parameters and state, its learning curves, test metrics, diagnosis, configuration and exports.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from harness.app.access import check_listed
from harness.app.catalogue import find_runs, read_run
from harness.app.service import Service
from harness.app.tabs.common import Settings, Translated
from harness.app.texts import text
from tljax.errors import InputError


@dataclasses.dataclass
class Runs:
    """What the page's refresh needs: the run chooser, `listing` (the runs again) and the run's outputs."""
    choice: gr.Dropdown
    listing: Callable[[str | None, str], tuple[Any, ...]]  # (current run, page language) -> chooser, each output
    outputs: list[Any]


def build(service: Service, settings: Settings, tr: Translated, ui_language: gr.State) -> Runs:
    """The tab, inside the open page; `ui_language` holds the page's language."""
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

    return Runs(run_choice, runs_list, run_outputs)
