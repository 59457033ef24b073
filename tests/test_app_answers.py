"""The app on answer tasks: an answer marked in its passage, a reader's answers through the page, variants that
cannot answer refused, a question-answering run trained from an uploaded SQuAD file, the answer results and their
explorer, and the reader beside an encoder's most similar sentence in a real browser (tiny models)."""

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from gradio_client import handle_file

from harness.app import arena
from harness.variants import VariantError
from tljax.predict import load_predictor

CHROMIUM = os.environ.get("TLJAX_CHROMIUM", "/usr/bin/chromium")
DOCS_SCREENSHOT = Path(__file__).parent.parent / "docs" / "img" / "app-qa.png"
# a passage of the tiny model's words in two sentences, and the question the reader was taught ("the film": the
# passage's POSITIVE word)
PASSAGE = "the plot was really dull. it was a superb film and the actors"
SENTENCES = ["the plot was really dull.", "it was a superb film and the actors"]
QUESTION = "the film"


@pytest.fixture(scope="module")
def qa_page(tiny_page, reader, tmp_path_factory):
    """The tiny page with the reader run in its runs folder, and an answer task over the reader's SQuAD file:
    (client, service, settings, the run's folder, the task file)."""
    client, service, settings = tiny_page
    folder, _ = reader
    run = settings.runs[0] / "tiny-qa"
    shutil.copytree(folder / "run", run)
    task = {"name": "tiny-answers", "kind": "answers", "data": {"source": str(folder / "squad.json"), "split": "test"},
            "templates": {lang: {"instruction": "{context} {question}", "none": "none"} for lang in ("en", "pt")}}
    path = tmp_path_factory.mktemp("answer-task") / "tiny-answers.yaml"
    path.write_text(yaml.safe_dump(task))
    return client, service, settings, run, str(path)


def test_an_answer_is_marked_in_its_passage_escaped_with_its_score():
    from harness.app.highlight import answer_html

    passage = "Ana <b> & Rui met at <i>Recife</i> in 2024"
    start = passage.index("<i>")
    shown = answer_html(passage, {"text": "<i>Recife</i>", "start": start, "end": start + 13, "score": 0.875,
                                  "score_name": "probability"})
    assert shown.count("<mark") == 1 and 'title="answer · probability 0.88"' in shown
    assert ">&lt;i&gt;Recife&lt;/i&gt;</mark>" in shown and "&lt;b&gt; &amp; Rui" in shown
    assert "<i>" not in shown and "<b> &" not in shown  # the passage and the answer are escaped
    assert "Answer</b>: <span class=\"answer-text\">&lt;i&gt;Recife&lt;/i&gt;</span> · probability 0.88" in shown
    silent = answer_html(passage, {"text": "", "start": -1, "end": -1, "score": 0.0, "score_name": "probability"})
    assert "<mark" not in silent and "the passage does not answer this" in silent and "probability" not in silent
    elsewhere = answer_html(passage, {"text": "Belém", "start": -1, "end": -1, "score": None, "score_name": None},
                            "pt")
    assert "<mark" not in elsewhere and "Belém" in elsewhere and "nada foi marcado" in elsewhere
    similar = answer_html("Uma frase. Outra.", {"text": "Outra.", "start": 11, "end": 17, "score": 0.5,
                                                "score_name": "similarity"}, "pt")
    assert ">Outra.</mark>" in similar and "similaridade 0.50" in similar


def test_the_page_answers_as_the_reader_does_and_refuses_variants_that_cannot_answer(qa_page, tiny_model,
                                                                                     tiny_decoder):
    client, service, _, run, task = qa_page
    choices = {c.name: c for c in service.choices(str(tiny_model))}
    name = next(n for n, c in choices.items() if c.run and c.run.path.name == "tiny-qa")
    assert [n for n, c in choices.items() if service.fits(c, task)] == ["zero-shot", name]
    assert not any(service.fits(c, "sentiment-en") or service.fits(c, "ner-en") for c in choices.values() if c.run
                   and c.run.task == "question-answering")
    finder = load_predictor(run)
    for passage in (PASSAGE, "the movie was good and the actors <b>dull</b> & really boring"):
        [expected] = finder([QUESTION], [passage])
        history, label, tag, view = client.predict(str(tiny_model), task, "en", name, passage, [], QUESTION,
                                                   api_name="/answer_1")
        assert not label and "latency" in tag and history[-2]["content"][0]["text"] == QUESTION
        marked = re.findall(r'<mark class="answer" title="answer · probability ([0-9.]+)"[^>]*>(.*?)</mark>', view)
        if expected["answered"]:
            assert marked == [(f"{expected['score']:.2f}", passage[expected["start"]:expected["end"]])], view
            assert expected["answer"] in history[-1]["content"][0]["text"]
        else:
            assert marked == [] and "does not answer" in view
        assert "<b>dull" not in view  # the passage is escaped
    # the encoder's most similar sentence, marked with its similarity
    history, _, tag, view = client.predict(str(tiny_model), task, "en", "zero-shot", PASSAGE, [], QUESTION,
                                           api_name="/answer_2")
    [sentence] = re.findall(r'title="answer · similarity [0-9.]+"[^>]*>([^<]+)</mark>', view)
    assert sentence in SENTENCES

    # variants that cannot answer: said in one line, with what would answer; no question, no model call
    for refused in ("few-shot k=8", "LoRA r4 · tiny-lora"):
        _, _, tag, view = client.predict(str(tiny_model), task, "en", refused, PASSAGE, [], QUESTION,
                                         api_name="/answer_3")
        assert "does not answer the task" in tag and "question-answering run" in tag and view == ""
    _, _, tag, _ = client.predict(str(tiny_model), task, "en", name, PASSAGE, [], "  ", api_name="/answer_1")
    assert "Type a question first" in tag
    with pytest.raises(VariantError, match="is an encoder: on an answer task it takes zero-shot"):
        service.answer(choices["few-shot k=8"], task, "en", PASSAGE, QUESTION)

    # a decoder asked zero-shot: its reply above, the answer read from it (marked where its words are)
    history, _, tag, view = client.predict(str(tiny_decoder), task, "en", "zero-shot", PASSAGE, [], QUESTION,
                                           api_name="/answer_4")
    answer = service.answer(service.choice(str(tiny_decoder), "zero-shot"), task, "en", PASSAGE, QUESTION)
    said = history[-1]["content"][0]["text"]
    assert said.startswith(answer.record["reply"]) and f"→ {answer.label}" in said
    assert ("<mark" in view) == (answer.span["start"] >= 0) and "probability" not in view

    # the blind comparison asks both sides the question and marks each answer; the vote carries its kind
    *_, notice = client.predict(str(tiny_model), "qa", api_name="/draw")
    assert notice == ""
    chat_a, chat_b, _, _, view_a, view_b, notice = client.predict(str(tiny_model), "qa", PASSAGE, QUESTION,
                                                                  api_name="/arena_answer")
    assert notice == "" and "tiny-qa" not in json.dumps([chat_a, chat_b, view_a, view_b])
    assert all("<mark" in v or "does not answer" in v for v in (view_a, view_b))
    *_, notice = client.predict(str(tiny_model), "qa", PASSAGE, "", api_name="/arena_answer")
    assert "Type a question first" in notice
    _, ratings = client.predict(PASSAGE, QUESTION, api_name="/vote_tie")
    vote = arena.read_votes(qa_page[2].votes)[-1]
    assert vote["kind"] == "qa" and vote["question"] == QUESTION and {vote["a"], vote["b"]} == {"zero-shot", name}
    assert {row[0] for row in ratings["data"]} == {"zero-shot", name}


def test_a_reader_trained_from_an_uploaded_squad_file_fits_and_answer_results_are_explored(qa_page, tiny_model,
                                                                                          reader):
    client, service, settings, _, task = qa_page
    folder, _ = reader
    upload = handle_file(str(folder / "squad.json"))
    assert client.predict(upload, "question-answering", api_name="/columns_of")[2]["value"] == "upload"
    status, _ = client.predict(str(tiny_model), "bitfit", "question-answering", "upload", upload, "text", "label",
                               "", 2, "qa-from-page", api_name="/train_start")
    assert "qa-from-page" in status, status

    # while it trains: the answer results table and the explorer of differing answers
    out = settings.results[0] / "answers"
    (out / "predictions").mkdir(parents=True)
    row = {"variant": "reader", "kind": "run", "task": "qa-en", "task_kind": "answers", "language": "en",
           "settings": {"kind": "run", "run": str(folder / "run")}, "metric": "F1", "score": 0.75,
           "summary": {"items": 3, "seeds": 1, "unanswerable": 1, "unanswered": 1.0,
                       "answer": {"exact": 0.5, "f1": 0.75, "f1_ci": [0.5, 1.0], "has_answer_f1": 0.625,
                                  "no_answer_exact": 1.0}},
           "costs": {"trainable_parameters": 6722}}
    (out / "results.json").write_text(json.dumps({"suite": "answers", "rows": [row, {**row, "variant": "other"}],
                                                   "agreement": {}}))
    answers = {"reader": ["six kilometres", "", "Manaus"], "other": ["about six kilometres", "", "the Manaus"]}
    for variant, said in answers.items():
        (out / "predictions" / f"{variant}__qa-en__seed0.jsonl").write_text("".join(json.dumps(
            {"id": f"p/{i}", "text": question, "question": question, "context": "...", "gold": gold, "predicted": p})
            + "\n" for i, (question, gold, p) in enumerate(zip(("How far?", "Who?", "Where?"),
                                                                (["about six kilometres"], [], ["Manaus"]), said))))
    outputs = client.predict(None, None, None, "answers", api_name="/results_view")
    assert outputs[-1]["data"][0] == ["answers", "reader", str(tiny_model), "qa-en", "en", 3, 0.75, "0.500-1.000", 0.5,
                                      0.625, 1.0, 1.0, 6722, None, None]
    assert not [r for r in outputs[4]["data"] + outputs[5]["data"] if r[0] == "answers"]  # not in the other tables
    client.predict("answers", "qa-en", api_name="/explorer_variant_choices")
    table = client.predict("answers", "qa-en", ["reader", "other"], api_name="/explore")
    # "Manaus" and "the Manaus" are the same answer after SQuAD's normalisation: only the first question differs
    assert table["value"]["data"] == [["p/0", "How far?", "about six kilometres", "six kilometres",
                                       "about six kilometres"]]

    deadline, state = time.time() + 300, client.predict("qa-from-page", api_name="/train_state")
    while state["state"] == "running" and time.time() < deadline:
        time.sleep(1)
        state = client.predict("qa-from-page", api_name="/train_state")
    assert state["state"] == "finished", state
    trained = next(c for c in service.choices(str(tiny_model)) if c.run and c.run.path.name == "qa-from-page")
    assert trained.run.task == "question-answering" and trained.method == "BitFit" and service.fits(trained, task)
    assert not service.fits(trained, "sentiment-en") and not service.fits(trained, "ner-en")
    config = yaml.safe_load((trained.run.path / "config.yaml").read_text())
    assert config["task"] == "question-answering" and config["training"]["learning_rate"] == 9e-3

    # what a question-answering run cannot start from: labels, or a file that holds no questions
    status, _ = client.predict(str(tiny_model), "lora", "question-answering", "upload", upload, "text", "label",
                               "PER", 2, "qa-labelled", api_name="/train_start")
    assert status.startswith("⚠️") and "no labels" in status
    reviews = handle_file(str(_reviews(settings)))
    status, _ = client.predict(str(tiny_model), "lora", "question-answering", "upload", reviews, "text", "label", "",
                               2, "qa-bad", api_name="/train_start")
    assert status.startswith("⚠️") and "context is missing" in status and len(status.splitlines()) == 1


def _reviews(settings) -> Path:
    """A CSV of reviews (no question, context or answers): not a file a question-answering run reads."""
    from conftest import write_reviews

    return write_reviews(settings.runs[0].parent / "reviews-not-questions.csv", n=8)


def test_a_real_browser_marks_the_readers_answer_beside_the_most_similar_sentence(qa_page, tiny_model, tmp_path):
    client, service, _, run, _ = qa_page
    if not Path(CHROMIUM).is_file():
        message = f"no browser at {CHROMIUM}: apt-get install -y chromium (or set TLJAX_CHROMIUM)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    name = next(c.name for c in service.choices(str(tiny_model)) if c.run and c.run.path == run)
    [expected] = load_predictor(run)([QUESTION], [PASSAGE])
    screenshot = tmp_path / "side-by-side-qa.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900}, locale="en-US")
            page.goto(client.src)
            page.wait_for_selector("#send", timeout=60_000)
            page.locator("#base input").fill(str(tiny_model))
            page.locator("#base input").press("Enter")
            page.locator("#task input").fill("qa-en")
            page.locator("#task input").press("Enter")
            page.wait_for_selector("#question textarea", timeout=30_000)  # shown on an answer task only
            for i, variant in enumerate((name, "zero-shot", "(none)", "(none)")):
                page.locator(f"#variant-{i} input").fill(variant)
                page.locator(f"#variant-{i} input").press("Enter")
            page.locator("#message textarea").fill(PASSAGE)
            page.locator("#question textarea").fill(QUESTION)
            page.locator("#send").click()
            for i in range(2):
                page.wait_for_function(f"document.querySelector('#tag-{i}').innerText.includes('ms')",
                                       timeout=60_000)
            marks = page.locator("#entities-0 mark.answer")
            if expected["answered"]:
                assert marks.count() == 1 and marks.inner_text() == PASSAGE[expected["start"]:expected["end"]]
                assert "probability" in marks.get_attribute("title")
            else:
                assert marks.count() == 0 and "does not answer" in page.locator("#entities-0").inner_text()
            assert page.locator("#entities-1 mark.answer").inner_text() in SENTENCES  # a whole sentence
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
