"""The blind comparison tab: two variants of one base model, drawn at random and shown as A and B, answer the
same message (a review's sentiment, the named entities of a text, marked in it, or a question about a passage,
each side's answer marked in the passage); the user votes for the better answer, and only then are the names
shown. Below, each variant's rating from the votes on that base and kind of task (Bradley-Terry, with a 95%
interval) beside the harness's English score (accuracy; entity F1; SQuAD F1 on qa-en). The votes and ratings
themselves are `harness.app.arena`'s.
"""

from __future__ import annotations

import random
from pathlib import Path

import gradio as gr

from harness.app import arena
from harness.app.catalogue import find_results
from harness.app.highlight import answer_html, entity_html
from harness.app.service import Choice, Service
from harness.app.tabs.common import DEFAULT_BASE, Settings, Translated
from harness.app.texts import text
from tljax.errors import InputError


def build(service: Service, settings: Settings, tr: Translated, ui_language: gr.State,
          bases: list[str]) -> gr.Dropdown:
    """The tab, inside the open page; returns its base chooser (the page's refresh lists the bases again)."""
    with tr(gr.Tab(tr.t("tab_arena"), id="arena"), label="tab_arena"):
        tr(gr.Markdown(tr.t("arena_help")), value="arena_help")
        pair_state = gr.State(None)
        with gr.Row():
            arena_base = tr(gr.Dropdown(bases, value=DEFAULT_BASE, label=tr.t("base"), elem_id="arena-base",
                                 allow_custom_value=True),
                            label="base")
            # a kind names its tasks: <kind>-en and <kind>-pt
            arena_kind = tr(gr.Radio([(tr.t("kind_sentiment"), "sentiment"), (tr.t("kind_entities"), "ner"),
                                      (tr.t("kind_answers"), "qa")],
                                     value="sentiment", label=tr.t("arena_kind"), elem_id="arena-kind"),
                            label="arena_kind")
            new_pair = tr(gr.Button(tr.t("new_pair"), elem_id="new-pair"), value="new_pair")
        with gr.Row():
            arena_chats, arena_labels, arena_views = [], [], []
            for side in ("model_a", "model_b"):
                with gr.Column():
                    arena_chats.append(tr(gr.Chatbot(label=tr.t(side), height=220, elem_id=f"arena-{side}"),
                                          label=side))
                    arena_labels.append(tr(gr.Label(label=tr.t("probabilities")), label="probabilities"))
                    arena_views.append(tr(gr.HTML(label=tr.t("entities"), elem_id=f"arena-entities-{side[-1]}"),
                                          label="entities"))
        arena_message = tr(gr.Textbox(label=tr.t("message"), placeholder=tr.t("placeholder"),
                                      elem_id="arena-message"), label="message", placeholder="placeholder")
        arena_question = tr(gr.Textbox(label=tr.t("question"), placeholder=tr.t("question_placeholder"),
                                       visible=False, elem_id="arena-question"), label="question",
                            placeholder="question_placeholder")  # question answering only
        with gr.Row():
            vote_buttons = [tr(gr.Button(tr.t(key), elem_id=f"vote-{outcome}"), value=key)
                            for key, outcome in (("a_better", "a"), ("b_better", "b"), ("tie", "tie"))]
        arena_notice = gr.Markdown(elem_id="arena-notice")
        tr(gr.Markdown(f"### {tr.t('ratings')}"), fmt="### {}", value="ratings")
        ratings_table = gr.Dataframe(headers=["variant", "rating", "95% CI", "votes", "wins", "harness score"],
                                     interactive=False, elem_id="ratings")

    def draw(base_name, kind="sentiment", page_lang="en"):
        # variants that can answer the kind of task the comparison asks (a run for other labels cannot)
        try:
            choices = service.choices(base_name)
        except InputError as error:
            return None, [], [], None, None, "", "", f"⚠️ {error}"
        usable = [c.name for c in choices if c.available and service.fits(c, f"{kind}-en")]
        try:
            pair = arena.draw_pair(usable, random.Random())
        except ValueError:
            return None, [], [], None, None, "", "", f"⚠️ {text('too_few_variants', page_lang)}: {usable}"
        return ({"base": base_name, "kind": kind, "a": pair.a, "b": pair.b, "answered": False}, [], [], None, None,
                "", "", "")

    def arena_answer(pair, base_name, kind, text_in, page_lang, asked: str | None = None):
        if not pair or pair["base"] != base_name or pair.get("kind", "sentiment") != kind:
            pair, *_, refused = draw(base_name, kind, page_lang)
            if pair is None:
                return None, gr.update(), gr.update(), None, None, "", "", refused
        if not (text_in or "").strip():
            return pair, gr.update(), gr.update(), None, None, "", "", text("empty", page_lang)
        if kind == "qa" and not (asked or "").strip():
            return pair, gr.update(), gr.update(), None, None, "", "", text("empty_question", page_lang)
        outputs = []
        lang = "pt" if _looks_portuguese(f"{text_in} {asked or ''}") else "en"
        task_name = f"{kind}-{lang}"
        for side in ("a", "b"):
            try:
                choice = service.choice(pair["base"], pair[side])
                answer = service.answer(choice, task_name, lang, text_in, asked or "")
                asked_of, reply, view = answer.text, answer.label, ""
                if answer.span is not None:  # the answer marked in the passage; a decoder's reply above
                    asked_of, view = answer.question, answer_html(answer.text, answer.span, page_lang)
                    reply = answer.record.get("reply") or answer.label
                elif answer.entities is not None:  # the entities marked in the text; a decoder's reply above
                    view = entity_html(answer.text, answer.entities)
                    reply = answer.record.get("reply") or answer.label
                elif choice.decoder:
                    reply = list(service.reply(choice, task_name, lang, text_in))[-1] or answer.label
            except InputError as error:
                return pair, gr.update(), gr.update(), None, None, "", "", f"⚠️ {error}"
            outputs.append(([{"role": "user", "content": asked_of}, {"role": "assistant", "content": reply}],
                            answer.probabilities or None, view))
        (chat_a, label_a, view_a), (chat_b, label_b, view_b) = outputs
        return {**pair, "answered": True}, chat_a, chat_b, label_a, label_b, view_a, view_b, ""

    def vote(outcome, pair, text_in, page_lang, asked: str | None = None):
        if not pair or not pair.get("answered"):
            return (pair, text("vote_first", page_lang),
                    ratings_frame(pair["base"], pair.get("kind", "sentiment")) if pair else gr.update())
        kind = pair.get("kind", "sentiment")
        arena.record_vote(settings.votes, arena.Pair(pair["a"], pair["b"]), outcome, base=pair["base"],
                          kind=kind, text=text_in, **({"question": asked} if kind == "qa" else {}))
        # the names are shown now: the next votes are on a new pair, drawn blind
        return (draw(pair["base"], kind, page_lang)[0], text("voted", page_lang).format(a=pair["a"], b=pair["b"]),
                ratings_frame(pair["base"], kind))

    def ratings_frame(base_name, kind="sentiment"):
        """The ratings of `base_name`'s variants on a kind of task (those votes only; a vote without a kind is a
        sentiment one), with the harness's English score on it (SQuAD F1 on qa-en for question answering)."""
        try:
            choices = service.choices(base_name)
        except InputError as error:
            raise gr.Error(str(error)) from None
        score = _harness_score(find_results(settings.results), base_name, choices, f"{kind}-en")
        votes = [v for v in arena.read_votes(settings.votes)
                 if v.get("base") == base_name and v.get("kind", "sentiment") == kind]
        return [[r.name, round(r.rating), f"{r.low:.0f}-{r.high:.0f}", r.votes, r.wins, score.get(r.name, "")]
                for r in arena.ratings(votes)]

    shown = [pair_state, *arena_chats, *arena_labels, *arena_views, arena_notice]
    new_pair.click(draw, [arena_base, arena_kind, ui_language], shown, queue=False)
    arena_kind.change(draw, [arena_base, arena_kind, ui_language], shown, queue=False).then(
        ratings_frame, [arena_base, arena_kind], [ratings_table], queue=False)
    arena_kind.change(lambda kind: gr.update(visible=kind == "qa"), [arena_kind], [arena_question], queue=False,
                      api_name=False)
    arena_base.change(ratings_frame, [arena_base, arena_kind], [ratings_table], queue=False)
    # the question is the last input: the endpoints take it after what they took before it was added
    answer_inputs = [pair_state, arena_base, arena_kind, arena_message, ui_language, arena_question]
    arena_message.submit(arena_answer, answer_inputs, shown, concurrency_id="models", api_name="arena_answer")
    arena_question.submit(arena_answer, answer_inputs, shown, concurrency_id="models", api_name=False)
    for button, outcome in zip(vote_buttons, arena.OUTCOMES):
        button.click(lambda p, m, lang, q=None, o=outcome: vote(o, p, m, lang, q),
                     [pair_state, arena_message, ui_language, arena_question],
                     [pair_state, arena_notice, ratings_table], queue=False, api_name=f"vote_{outcome}")

    return arena_base


def _harness_score(sets, base: str, choices: list[Choice], task: str = "sentiment-en") -> dict[str, float]:
    """The harness's score on `task` (accuracy; entity F1 on an entity task; SQuAD F1 on an answer task) of each
    of `base`'s choices that a results row describes: the same kind, model and k, or the same run directory."""
    found: dict[str, float] = {}
    for result in sets:
        for row in result.rows:
            settings = row.get("settings") or {}
            accuracy = row.get("score", (row["summary"].get("acc") or {}).get("accuracy"))
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
