"""The comparison app on the packaged models and the session's shared runs: a classifier's probabilities and a
decoder's label scores equal PyTorch's for the same model and prompt, a column shows what a suite recorded, a
streamed reply is `tljax.models.chat`'s token for token, users under load get their own answers, and a real
browser (Debian's chromium, driven by Playwright) uses the page."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
import yaml
from gradio_client import Client

from harness.app.load import Column, run_load
from harness.app.service import REPLY_TOKENS, Service, item_for
from harness.app.ui import Settings, build
from harness.suite import load_suite, run_suite
from harness.variants import SIMILARITY_TEMPERATURE, Variant, conversation, demonstration_pool
from tljax import models, zoo
from tljax.runs import find_export

CHROMIUM = os.environ.get("TLJAX_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("TLJAX_SCREENSHOTS", Path(__file__).parent.parent / "harness-results" / "screenshots"))
REVIEW_PT = "Um filme emocionante e muito bem atuado, adorei cada minuto."
NEWS_EN = "Maria Souza left Petrobras in March 2024 to teach at the Federal University of Pernambuco in Recife."


@pytest.fixture(scope="module")
def real_page(tmp_path_factory, minilm_run, smollm2_chat_run, minilm_ner_run):
    """The page over a runs folder holding the shared MiniLM LoRA, chat-tuned SmolLM2 and MiniLM NER runs, and a
    small harness result (MiniLM zero-shot and its LoRA run, 40 items per language)."""
    folder = tmp_path_factory.mktemp("real-page")
    (folder / "runs").mkdir()
    (folder / "runs" / "minilm-lora").symlink_to(minilm_run)
    (folder / "runs" / "smollm2-chat").symlink_to(smollm2_chat_run)
    (folder / "runs" / "minilm-ner").symlink_to(minilm_ner_run)
    suite = {"name": "app-demo", "tasks": ["sentiment-en", "sentiment-pt"],
             "variants": [{"kind": "zero-shot", "model": "minilm-l6"}, {"kind": "run", "run": str(minilm_run)}]}
    (folder / "suite.yaml").write_text(yaml.safe_dump(suite))
    run_suite(load_suite(folder / "suite.yaml"), folder / "results" / "app-demo", limit=40, say=lambda _: None)
    settings = Settings([folder / "runs"], [folder / "results"], folder / "votes.jsonl")
    service = Service(settings.runs)
    page = build(service, settings)
    page.launch(prevent_thread_lock=True, quiet=True)
    yield page.local_url, service, folder / "results" / "app-demo"
    page.close()


def pytorch_probabilities(service: Service, base: str, name: str, task_name: str, language: str,
                          text: str) -> dict[str, float]:
    """The variant's probability of each label for `text`, computed again in float64 by PyTorch `transformers`
    from the model's files (a run's merged `export/model/`), without the harness's batching or scoring code:
    a zero-shot encoder's softmax(cosine(text, description) / temperature) of mean-pooled embeddings, a
    classifier's softmax of its logits, a decoder's softmax of each answer's summed log-probability after the
    chat prompt (its prompt, with any demonstrations, is the harness's `conversation`)."""
    choice = service.choice(base, name)
    task = service.task(task_name)
    template = task.template(language)
    tokenizer = transformers.AutoTokenizer.from_pretrained(zoo.resolve(base))
    directory = find_export(choice.variant.run) / "model" if choice.run else zoo.resolve(base)
    with torch.no_grad():
        if choice.decoder:
            variant = Variant(**{**choice.variant.settings(), "language": language})
            pool = demonstration_pool(variant, task) if variant.kind == "few-shot" else []
            prompt = tokenizer.apply_chat_template(conversation(variant, task, item_for(text, language), 0, pool),
                                                   add_generation_prompt=True, tokenize=False)
            model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float64).eval()
            context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            scores = []
            for answer in template.verbalisers:
                whole = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
                assert whole[: len(context)] == context  # the answer's own tokens follow the prompt's
                logprob = torch.log_softmax(model(torch.tensor([whole])).logits[0], -1)
                scores.append(sum(logprob[i - 1, whole[i]] for i in range(len(context), len(whole))))
            return dict(zip(task.labels, torch.softmax(torch.stack(scores), -1).tolist()))
        if choice.run:
            model = transformers.AutoModelForSequenceClassification.from_pretrained(directory, dtype=torch.float64)
            probabilities = torch.softmax(model.eval()(**tokenizer([text], return_tensors="pt")).logits[0], -1)
            return {model.config.id2label[i]: float(p) for i, p in enumerate(probabilities)}
        model = transformers.AutoModel.from_pretrained(directory, dtype=torch.float64).eval()

        def embedding(sentence: str) -> torch.Tensor:
            encoded = tokenizer([sentence], return_tensors="pt")
            mask = encoded["attention_mask"][..., None].to(torch.float64)
            pooled = (model(**encoded).last_hidden_state * mask).sum(1)[0] / mask.sum()
            return pooled / pooled.norm()

        similarities = torch.stack([embedding(text) @ embedding(d) for d in template.descriptions])
        return dict(zip(task.labels, torch.softmax(similarities / SIMILARITY_TEMPERATURE, -1).tolist()))


def test_a_column_shows_what_the_suite_recorded_for_the_same_review(real_page):
    url, _, results = real_page
    client = Client(url, verbose=False)
    for name, variant in (("zero-shot", "zero-shot-minilm-l6"), ("LoRA r8 · minilm-lora", "run-minilm-lora")):
        record = json.loads((results / "predictions" / f"{variant}__sentiment-pt__seed0.jsonl").read_text()
                            .splitlines()[0])
        _, label, _, _ = client.predict("minilm-l6", "sentiment-pt", "pt", name, record["text"], [], api_name="/answer_2")
        shown = {c["label"]: c["confidence"] for c in label["confidences"]}
        # The suite scored the review inside a padded batch, the page alone: the same float32 function on
        # other shapes, whose sums XLA blocks (so rounds) differently. Each of the model's ~25 matmul and norm
        # stages sums up to 1,536 terms; a reordered float32 sum moves by about sqrt(n) ulps (4e-6 relative),
        # so the logits by ~1e-4 relative at most over the stages and a probability by p(1 - p) times that:
        # below 3e-5 for logits of a few units (measured: 2e-6 on one processor, 1e-6 on another).
        np.testing.assert_allclose([shown["negative"], shown["positive"]], record["probabilities"], atol=3e-5)


def test_classifier_and_decoder_answers_equal_the_harness_and_the_reply_streams_as_chat(real_page):
    url, service, _ = real_page
    client = Client(url, verbose=False)
    for base, name in (("minilm-l6", "zero-shot"), ("minilm-l6", "LoRA r8 · minilm-lora"),
                       ("smollm2-135m-instruct", "zero-shot"), ("smollm2-135m-instruct", "few-shot k=2"),
                       ("smollm2-135m-instruct", "chat-tuned LoRA r8 · smollm2-chat")):
        job = client.submit(base, "sentiment-pt", "pt", name, REVIEW_PT, [], api_name="/answer_1")
        job.result(timeout=600)
        outputs = job.outputs()  # every update the page streamed
        history, label, tag, _ = outputs[-1]
        expected = pytorch_probabilities(service, base, name, "sentiment-pt", "pt", REVIEW_PT)
        shown = {c["label"]: c["confidence"] for c in label["confidences"]}
        # The page computes in float32 (JAX), the reference in float64: they differ by the page's float32
        # rounding (u = 2^-24 = 6e-8) and its 6-decimal record (5e-7). MiniLM: below 3e-5, as derived in the
        # test above. SmolLM2: p = softmax of two answers' log-probability sums S, so p moves by p(1 - p) times
        # the error of S_pos - S_neg, at most a quarter of it. Each S comes out of 30 layers of about 7 sum stages
        # (norms, projections, attention, MLP) of up to n = 1,536 terms; a float32 sum is off by about
        # sqrt(n) u = 2.4e-6 of its magnitude (random rounding), and 210 independent stage errors add to
        # sqrt(210) x 2.4e-6 = 3.5e-5 of a log-probability, |S| < 12 here: 4e-4 for each S, 8e-4 for their
        # difference, 2e-4 for p (measured on one processor: at most 7e-6).
        tolerance = 2e-4 if base.startswith("smollm2") else 3e-5
        np.testing.assert_allclose([shown["negative"], shown["positive"]],
                                   [expected["negative"], expected["positive"]], atol=tolerance)
        assert "latency" in tag, tag
        if base.startswith("smollm2"):  # the streamed reply: tljax's generation, one token per update
            growing = [said(o[0][-1]) for o in outputs if o and o[0] and o[0][-1]["role"] == "assistant"][1:-1]
            tokens = reply_tokens(service, base, name, REVIEW_PT)
            # (the chatbot drops a message's trailing whitespace, so a token that is only a newline shows later)
            # (and waits for the rest of a character split over two tokens)
            decoded = [tokens[1].decode(tokens[0][: i + 1], skip_special_tokens=True) for i in range(len(tokens[0]))]
            expected_growth = [d.rstrip() for d in decoded if not d.endswith("\ufffd")]
            assert growing == expected_growth, [(a, b) for a, b in zip(growing, expected_growth) if a != b][:3]
            [whole] = models.chat(*reply_model(service, base, name), [reply_messages(service, base, name, REVIEW_PT)],
                                  max_new_tokens=REPLY_TOKENS)
            assert growing[-1] == whole.rstrip() and said(history[-1]).startswith(whole.rstrip())


def said(message: dict) -> str:
    """A chat message's text (Gradio sends the content as a list of parts)."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def reply_model(service: Service, base: str, name: str):
    choice = service.choice(base, name)
    if choice.run:
        loaded = service.models.run(choice.variant.run)
        return loaded.model, loaded.tokenizer
    return service.models.get(base)[:2]


def reply_messages(service: Service, base: str, name: str, text: str) -> list[dict]:
    choice = service.choice(base, name)
    task = service.task("sentiment-pt")
    variant = Variant(**{**choice.variant.settings(), "language": "pt"})
    pool = demonstration_pool(variant, task) if variant.kind == "few-shot" else []
    return conversation(variant, task, item_for(text, "pt"), 0, pool)


def reply_tokens(service: Service, base: str, name: str, text: str) -> tuple[list[int], object]:
    """The greedy reply's tokens (up to and with the end token) by `tljax.models.generate`, and the tokenizer."""
    model, tokenizer = reply_model(service, base, name)
    prompt = tokenizer.apply_chat_template(reply_messages(service, base, name, text), add_generation_prompt=True,
                                           tokenize=False)
    encoded = tokenizer([prompt], return_tensors="np", add_special_tokens=False)
    tokens = np.asarray(models.generate(model, encoded["input_ids"], encoded["attention_mask"],
                                        max_new_tokens=REPLY_TOKENS, pad_token_id=tokenizer.pad_token_id))[0].tolist()
    ends = [i for i, t in enumerate(tokens) if t in model.config.eos_token_ids]
    return tokens[: ends[0] + 1] if ends else tokens, tokenizer


def test_users_under_load_get_their_own_answers(real_page):
    url, _, _ = real_page
    columns = [Column("/answer_1", "minilm-l6", "zero-shot"), Column("/answer_2", "minilm-l6", "LoRA r8 · minilm-lora"),
               Column("/answer_3", "smollm2-135m-instruct", "zero-shot")]
    report = run_load(url, columns, users=4, seconds=8)
    assert not report.errors and not report.mismatches, report.summary()
    assert report.requests >= 4, report.summary()


def test_ner_variants_answer_side_by_side_and_blind(real_page):
    url, service, _ = real_page
    client = Client(url, verbose=False)
    names = [c.name for c in service.choices("minilm-l6") if service.fits(c, "ner-en")]
    assert names == ["few-shot k=8", "LoRA r8 · minilm-ner"]
    history, _, tag, view = client.predict("minilm-l6", "ner-en", "en", "LoRA r8 · minilm-ner", NEWS_EN, [],
                                           api_name="/answer_1")
    marked = {(m.group(2), m.group(1)) for m in re.finditer(r'data-type="(\w+)"[^>]*>([^<]+?) <small', view)}
    assert {("Maria Souza", "PER"), ("Recife", "LOC")} <= marked, view  # the MiniLM run finds these at 100 steps
    client.predict("minilm-l6", "ner", api_name="/draw")
    chat_a, chat_b, _, _, view_a, view_b, notice = client.predict("minilm-l6", "ner", NEWS_EN,
                                                                  api_name="/arena_answer")
    assert notice == "" and "<mark" in view_a + view_b and "minilm-ner" not in json.dumps([chat_a, chat_b])


def test_a_real_browser_sends_a_portuguese_review_switches_language_and_opens_the_results(real_page):
    url, _, _ = real_page
    if not Path(CHROMIUM).is_file():
        message = f"no browser at {CHROMIUM}: apt-get install -y chromium (or set TLJAX_CHROMIUM)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="en-US")
            page.goto(url)
            page.wait_for_selector("#send", timeout=60_000)
            page.locator("#variant-2 input").fill("LoRA r8 · minilm-lora")
            page.locator("#variant-2 input").press("Enter")
            page.locator("#message-language").get_by_text("Português").click()
            page.locator("#message textarea").fill(REVIEW_PT)
            page.locator("#send").click()
            for i in range(3):
                page.wait_for_function(f"document.querySelector('#tag-{i}').innerText.includes('ms')",
                                       timeout=120_000)
                assert page.locator(f"#label-{i}").inner_text().strip(), f"column {i + 1} shows no label"
            page.screenshot(path=str(SCREENSHOTS / "side-by-side.png"), full_page=True)
            page.locator("#page-language").get_by_text("Português").click()
            page.wait_for_function("document.querySelector('#send').innerText.includes('Enviar')", timeout=30_000)
            page.screenshot(path=str(SCREENSHOTS / "side-by-side-pt.png"), full_page=True)
            page.get_by_role("tab", name="Resultados").click()
            page.wait_for_selector("#results-table", timeout=30_000)
            page.wait_for_function("document.querySelector('#results-table').innerText.includes('zero-shot')",
                                   timeout=30_000)
            page.screenshot(path=str(SCREENSHOTS / "results-pt.png"), full_page=True)

            # named entities: the NER run and the few-shot tagger mark what they found in the message
            page.locator("#page-language").get_by_text("English").click()
            page.get_by_role("tab", name="Side by side").click()
            page.locator("#message-language").get_by_text("English").click()
            page.locator("#task input").fill("ner-en")
            page.locator("#task input").press("Enter")
            for i, name in enumerate(("LoRA r8 · minilm-ner", "few-shot k=8")):
                page.locator(f"#variant-{i} input").fill(name)
                page.locator(f"#variant-{i} input").press("Enter")
            for i in (2, 3):
                page.locator(f"#variant-{i} input").fill("(none)")
                page.locator(f"#variant-{i} input").press("Enter")
            page.locator("#message textarea").fill(NEWS_EN)
            page.locator("#send").click()
            for i in range(2):
                page.wait_for_function(f"document.querySelector('#tag-{i}').innerText.includes('ms')",
                                       timeout=120_000)
            assert page.locator("#entities-0 mark").count() >= 3, page.locator("#entities-0").inner_html()
            assert "score" in page.locator("#entities-0 mark").first.get_attribute("title")
            page.screenshot(path=str(SCREENSHOTS / "side-by-side-ner.png"), full_page=True)
        finally:
            browser.close()
    for name in ("side-by-side.png", "side-by-side-pt.png", "results-pt.png", "side-by-side-ner.png"):
        assert (SCREENSHOTS / name).stat().st_size > 10_000
