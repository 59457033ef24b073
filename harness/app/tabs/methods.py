"""The methods tab: what each transfer-learning method does, in the page's language, and a table of how many
parameters each method trains on a chosen model (and what share of the model that is).
"""

from __future__ import annotations

import gradio as gr

from harness.app.access import check_listed
from harness.app.service import Service
from harness.app.tabs.common import DEFAULT_BASE, Translated, trainable_counts
from harness.app.texts import METHOD_EXPLANATIONS
from tljax import zoo
from tljax.errors import InputError
from tljax.methods import METHODS


def build(service: Service, tr: Translated) -> gr.Markdown:
    """The tab, inside the open page; returns the methods' explanations (the language switch rewrites them)."""
    with tr(gr.Tab(tr.t("tab_methods"), id="methods"), label="tab_methods"):
        tr(gr.Markdown(tr.t("methods_help")), value="methods_help")
        methods_text = gr.Markdown(markdown(tr.language), elem_id="methods-text")
        methods_model = tr(gr.Dropdown(list(zoo.PACKAGED), value=DEFAULT_BASE, allow_custom_value=True,
                                       label=tr.t("model"), elem_id="methods-model"), label="model")
        methods_table = tr(gr.Dataframe(headers=["method", "trainable parameters", "% of the model"],
                                        interactive=False, label=tr.t("methods_table"), elem_id="methods-table"),
                           label="methods_table")

    def method_rows(model):
        try:
            rows = trainable_counts(check_listed(service.public, "models", model, zoo.PACKAGED))
            return [[name, f"{count:,}", f"{share:.3f}"] for name, (count, share) in rows.items()]
        except (InputError, OSError) as error:
            raise gr.Error(str(error)) from None

    methods_model.input(method_rows, [methods_model], [methods_table], concurrency_id="models")

    return methods_text


def markdown(language: str) -> str:
    """Each method's explanation in `language`, as a Markdown list."""
    return "\n".join(f"- **{name}**: {METHOD_EXPLANATIONS[name][language == 'pt']}" for name in METHODS)
