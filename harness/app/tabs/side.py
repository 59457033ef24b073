"""The side-by-side tab: up to four variants of one base model answer the same message, each column showing
the predicted label with its probabilities, a tag (method, trainable parameters, latency, any notice) and, for
a decoder, its streamed reply with the label that reply implies. On an entity task (ner-en, ner-pt) each column
shows the message with the entities it found marked by type (the score on hover), and a decoder's reply. On an
answer task (qa-en, qa-pt) the message is a passage and a second box holds the question: each column marks its
answer in the passage with its score (a run's probability, an encoder's sentence similarity; a decoder's reply
above), or says that, as the variant reads it, the passage does not answer the question.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from harness.app.highlight import answer_html, entity_html
from harness.app.service import Answer, Choice, Service
from harness.app.tabs.common import DEFAULT_BASE, MODEL_CONCURRENCY, Translated
from harness.app.texts import EXAMPLES, LANGUAGES, QA_EXAMPLES, text
from tljax.errors import InputError

COLUMNS = 4  # variants side by side at most
NONE = "-"  # the value behind "(none)", whatever the page's language
# a task per message language: the switch of the message's language moves to the other of its pair
PAIRED = ({"en": "sentiment-en", "pt": "sentiment-pt"}, {"en": "ner-en", "pt": "ner-pt"},
          {"en": "qa-en", "pt": "qa-pt"})


@dataclasses.dataclass
class Side:
    """What the page's refresh needs: the base chooser, each column's variant chooser, and `switch_base`."""
    base: gr.Dropdown
    selectors: list[gr.Dropdown]
    switch_base: Callable[[str, str], list[Any]]  # (base, page language) -> the selectors' updates, a notice


def _tag(choice: Choice, language: str, latency: float | None = None, notice: str = "",
         trainable: int | None = None) -> str:
    trainable = choice.trainable if trainable is None else trainable
    trainable = "-" if trainable is None else f"{trainable:,}"
    parts = [f"**{choice.name}**", choice.method, f"{trainable} {text('trainable', language)}"]
    if latency is not None:
        parts.append(f"{text('latency', language)} {latency * 1000:.0f} ms")
    tag = " · ".join(parts)
    return tag + (f"\n\n⚠️ {notice}" if notice else "")


def answer_content(answer: Answer, language: str) -> str:
    """What a column's chat says for an answer: the answer and its score; a decoder's reply first, the answer
    read from it after an arrow."""
    span = answer.span or {}
    score = span.get("score")
    said = answer.label + (f" ({text('score_' + span['score_name'], language)} {score:.2f})"
                           if span.get("text") and score is not None and span.get("score_name") else "")
    reply = answer.record.get("reply")
    return f"{reply}\n\n→ {said}" if reply is not None else said


def build(service: Service, tr: Translated, ui_language: gr.State, bases: list[str]) -> Side:
    """The tab, inside the open page; `ui_language` holds the page's language, `bases` the base models listed."""

    def choice_names(base: str) -> list[str]:
        return [c.name for c in service.choices(base)]

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
        selectors, tags, labels, views, chats = [], [], [], [], []
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
                    views.append(tr(gr.HTML(label=tr.t("entities"), elem_id=f"entities-{i}"), label="entities"))
                    chats.append(tr(gr.Chatbot(label=tr.t("reply"), height=320, elem_id=f"chat-{i}"),
                                    label="reply"))
        message = tr(gr.Textbox(label=tr.t("message"), placeholder=tr.t("placeholder"), lines=2,
                                elem_id="message"), label="message", placeholder="placeholder")
        # shown on an answer task only: what is asked about the message, its passage
        question = tr(gr.Textbox(label=tr.t("question"), placeholder=tr.t("question_placeholder"), lines=1,
                                 visible=False, elem_id="question"), label="question",
                      placeholder="question_placeholder")
        notice = gr.Markdown(elem_id="notice")
        with gr.Row():
            send = tr(gr.Button(tr.t("send"), variant="primary", elem_id="send"), value="send")
            regenerate = tr(gr.Button(tr.t("regenerate"), elem_id="regenerate"), value="regenerate")
            clear = tr(gr.Button(tr.t("clear"), elem_id="clear"), value="clear")
        last_message, last_question = gr.State(""), gr.State("")
        gr.Examples([[e, "en"] for e in EXAMPLES["en"]] + [[e, "pt"] for e in EXAMPLES["pt"]],
                    inputs=[message, message_language], label=tr.t("examples"))
        # a passage with a question about it sets its answer task too (the question means nothing to the others)
        gr.Examples([[passage, asked, lang, f"qa-{lang}"] for lang in ("en", "pt") for passage, asked in
                     QA_EXAMPLES[lang]], inputs=[message, question, message_language, task],
                    label=tr.t("qa_examples"))

    def column_answer(base_name, task_name, lang, variant_name, text_in, history, page_lang,
                      asked: str | None = None) -> Iterator:
        """One column's answer: the label and its probabilities, then (decoders) the streamed reply; on an entity
        task, the entities marked in the text (and a decoder's reply, the one they were read from); on an answer
        task, the answer to `asked` marked in the passage `text_in` (and a decoder's reply, read as the answer)."""
        history = list(history or [])
        if not variant_name or variant_name == NONE:
            yield history, None, "", ""
            return
        if not (text_in or "").strip():
            yield history, None, text("empty", page_lang), ""
            return
        try:
            choice = service.choice(base_name, variant_name)
            if not choice.available:
                yield history, None, f"**{choice.name}**: {text('unavailable', page_lang)} ({choice.reason})", ""
                return
            if not service.fits(choice, task_name):
                hint = service.unfit_reason(task_name, page_lang)
                yield history, None, (f"**{choice.name}**: {text('does_not_fit', page_lang)} {task_name}"
                                      + (f": {hint}" if hint else "")), ""
                return
            if service.task(task_name).kind == "answers" and not (asked or "").strip():
                yield history, None, text("empty_question", page_lang), ""
                return
            download = service.needs_download(choice)
            if download:
                yield history, None, f"{text('downloading', page_lang)}: {download}", ""
            answer = service.answer(choice, task_name, lang, text_in, asked or "")
        except InputError as error:
            yield history, None, f"⚠️ {error}", ""
            return
        tag = _tag(choice, page_lang, answer.latency_s, answer.notice(page_lang), answer.trainable)
        if answer.span is not None:
            history = history + [{"role": "user", "content": answer.question},
                                 {"role": "assistant", "content": answer_content(answer, page_lang)}]
            yield history, None, tag, answer_html(answer.text, answer.span, page_lang)
            return
        if answer.entities is not None:
            said = answer.record.get("reply")
            content = f"{said}\n\n→ {answer.label}" if said is not None else answer.label
            history = history + [{"role": "user", "content": answer.text}, {"role": "assistant", "content": content}]
            yield history, None, tag, entity_html(answer.text, answer.entities)
            return
        summary = f"{answer.label} ({answer.probabilities[answer.label]:.2f}, {text('by_scoring', page_lang)})"
        history = history + [{"role": "user", "content": answer.text},
                             {"role": "assistant", "content": summary}]
        yield history, answer.probabilities, tag, ""
        if choice.decoder:
            reply = ""
            for reply in service.reply(choice, task_name, lang, text_in):
                history[-1] = {"role": "assistant", "content": reply}
                yield history, answer.probabilities, tag, ""
            implied = service.implied_label(task_name, lang, reply)
            said = f"{text('implies', page_lang)}: **{implied}**" if implied else text("no_label", page_lang)
            history[-1] = {"role": "assistant", "content": f"{reply}\n\n→ {said} · {summary}"}
            yield history, answer.probabilities, tag, ""

    def check_message(text_in, page_lang, asked: str | None = None):
        return text("empty", page_lang) if not (text_in or "").strip() else "", text_in, asked or ""

    # the question is the last input: the endpoints take it after what they took before it was added
    for trigger in (send.click, message.submit, question.submit):
        checked = trigger(check_message, [message, ui_language, question], [notice, last_message, last_question],
                          queue=False)
        for i in range(COLUMNS):
            checked.then(column_answer, [base, task, message_language, selectors[i], message, chats[i],
                                         ui_language, question], [chats[i], labels[i], tags[i], views[i]],
                         concurrency_id="models", concurrency_limit=MODEL_CONCURRENCY,
                         api_name=f"answer_{i + 1}" if trigger == send.click else False)
    for i in range(COLUMNS):
        regenerate.click(lambda h: (h or [])[:-2], [chats[i]], [chats[i]], queue=False).then(
            column_answer, [base, task, message_language, selectors[i], last_message, chats[i], ui_language,
                            last_question],
            [chats[i], labels[i], tags[i], views[i]], concurrency_id="models", api_name=False)
        selectors[i].change(lambda: ([], None, "", ""), None, [chats[i], labels[i], tags[i], views[i]], queue=False)
    clear.click(lambda: [[]] * COLUMNS + [None] * COLUMNS + [""] * COLUMNS + [""] * COLUMNS + ["", "", ""], None,
                chats + labels + tags + views + [message, question, notice], queue=False)

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

    def task_in(lang, current):
        return next((pair[lang] for pair in PAIRED if current in pair.values()), current)

    message_language.change(task_in, [message_language, task], [task], queue=False)

    def task_kind(task_name: str) -> str:
        """The kind of the task (classification, entities, answers)."""
        try:
            return service.task(task_name).kind
        except InputError:  # a task file that cannot be read: the answer will say why
            return "classification"

    def label_boxes(task_name):
        """The probability boxes are hidden on an entity or answer task (it has no labels to weigh: its entities,
        or its answer, are marked in the text)."""
        return [gr.update(visible=task_kind(task_name) == "classification")] * COLUMNS

    task.change(label_boxes, [task], labels, queue=False)
    # the question box is an answer task's only (its own event: the label boxes' endpoint keeps its outputs)
    task.change(lambda name: gr.update(visible=task_kind(name) == "answers"), [task], [question], queue=False,
                api_name=False)

    return Side(base, selectors, switch_base)
