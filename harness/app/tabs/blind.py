"""The blind comparison tab: two variants of one base model, drawn at random and shown as A and B, answer the
same review; the user votes for the better answer, and only then are the names shown. Below, each variant's
rating from the votes on that base (Bradley-Terry, with a 95% interval) beside the harness's English accuracy.
The votes and ratings themselves are `harness.app.arena`'s.
"""

from __future__ import annotations

import random
from pathlib import Path

import gradio as gr

from harness.app import arena
from harness.app.catalogue import find_results
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

    return arena_base


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
