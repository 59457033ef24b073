"""The comparison app on tiny models: its answers are the harness's, its ratings, its catalogue of runs and
results, its training starts, and its HTTP endpoints (gradio_client against a locally launched page)."""

import collections
import concurrent.futures
import json
import random
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from gradio_client import Client, handle_file

from harness.app import arena
from harness.app.access import AccessError, check_corpus, check_upload, is_public
from harness.app.catalogue import describe_method, disagreements, find_results, find_runs, read_run, table_rows
from harness.app.service import AppError, Service, item_for
from harness.app.trainer import Trainer, TrainError, check_data
from harness.app.ui import Settings, build
from harness.variants import Models, Variant, evaluate


# -- ratings ---------------------------------------------------------------------------------------------------
def votes_from(results):
    return [{"a": a, "b": b, "outcome": outcome} for a, b, outcome in results]


def test_bradley_terry_orders_by_strength_counts_ties_half_and_brackets_the_estimate():
    rng = random.Random(0)
    strength = {"strong": 2.0, "middle": 0.0, "weak": -2.0}
    results = []
    for _ in range(300):
        a, b = rng.sample(list(strength), 2)
        p = 1 / (1 + np.exp(strength[b] - strength[a]))
        results.append((a, b, "a" if rng.random() < p else "b"))
    from sklearn.linear_model import LogisticRegression

    def reference(votes):
        """The same fit by scikit-learn: a logistic regression without intercept on the pairwise design (+1 for
        side a, -1 for side b; y: a won; a tie is half a win each way), whose L2 term |w|^2 / (2C) equals our
        PRIOR |s|^2 at C = 1 / (2 PRIOR); rows alternate in sign (the same likelihood) so both classes occur."""
        names = sorted({v["a"] for v in votes} | {v["b"] for v in votes})
        design, won, weight = [], [], []
        for k, vote in enumerate(votes):
            row = np.zeros(len(names))
            row[names.index(vote["a"])], row[names.index(vote["b"])] = 1, -1
            sign = 1 if k % 2 else -1
            for a_won, share in ((1, {"a": 1, "tie": 0.5}.get(vote["outcome"], 0)),
                                 (0, {"b": 1, "tie": 0.5}.get(vote["outcome"], 0))):
                if share:
                    design.append(sign * row)
                    won.append(a_won if sign > 0 else 1 - a_won)
                    weight.append(share)
        fit = LogisticRegression(C=1 / (2 * arena.PRIOR), fit_intercept=False, solver="newton-cholesky", tol=1e-12,
                                 max_iter=1000).fit(np.asarray(design), won, sample_weight=weight)
        strengths = fit.coef_[0] - fit.coef_[0].mean()
        return dict(zip(names, 1000 + arena.SCALE * strengths))

    votes = votes_from(results)
    table = arena.ratings(votes, rounds=30)
    assert [r.name for r in table] == ["strong", "middle", "weak"]
    for r in table:
        assert r.low <= r.rating <= r.high
    # the maximum of the same penalised likelihood, found by another solver: equal to 1e-3 Elo points
    expected = reference(votes)
    assert {r.name: r.rating for r in table} == {name: pytest.approx(value, abs=1e-3) for name, value in expected.items()}
    ties = arena.ratings(votes_from([("x", "y", "tie")] * 10), rounds=5)
    assert abs(ties[0].rating - ties[1].rating) < 1e-6 and ties[0].wins == 5
    # one side never won: its rating stays finite (the prior), where the same penalised fit puts it
    lopsided_votes = votes_from([("x", "y", "a")] * 5 + [("y", "z", "tie"), ("z", "x", "b")])
    lopsided = arena.ratings(lopsided_votes, rounds=5)
    assert np.isfinite([r.rating for r in lopsided]).all() and lopsided[0].name == "x"
    assert {r.name: r.rating for r in lopsided} == {name: pytest.approx(value, abs=1e-3)
                                                    for name, value in reference(lopsided_votes).items()}


def test_votes_are_appended_as_json_lines_and_damaged_lines_skipped(tmp_path):
    path = tmp_path / "votes.jsonl"
    pair = arena.draw_pair(["a1", "b1", "c1"], random.Random(1))
    assert pair.a != pair.b
    arena.record_vote(path, pair, "tie", base="minilm-l6")
    with path.open("a") as handle:
        handle.write("{not json\n")
    arena.record_vote(path, pair, "a")
    votes = arena.read_votes(path)
    assert [v["outcome"] for v in votes] == ["tie", "a"] and votes[0]["base"] == "minilm-l6"
    with pytest.raises(ValueError, match="a, b, tie"):
        arena.record_vote(path, pair, "both")
    with pytest.raises(ValueError, match="two variants"):
        arena.draw_pair(["only"], random.Random(0))


def test_the_catalogue_lists_runs_with_their_state_and_a_deleted_one_as_unavailable(tiny_runs, tmp_path):
    [run] = find_runs([tiny_runs / "runs"])
    assert run.status == "finished" and run.method == "LoRA r4" and run.labels == ("neg", "pos")
    assert run.trainable and run.test["accuracy"] >= 0
    copy = tmp_path / "runs" / "copy"
    shutil.copytree(run.path, copy)
    shutil.rmtree(copy / "export")
    assert read_run(copy).status == "unavailable" and "export" in read_run(copy).reason
    shutil.rmtree(copy)
    gone = read_run(copy)
    assert gone.status == "unavailable" and "no longer exists" in gone.reason
    assert describe_method({"method": [{"name": "houlsby"}], "distillation": {"teacher": "x"}}) == \
        "distilled + Houlsby adapters"


def write_results(out: Path) -> None:
    """A harness results folder of suite "demo": two variants on sentiment-en that disagree on item i0."""
    (out / "predictions").mkdir(parents=True)
    rows = [{"variant": name, "kind": "zero-shot", "task": "sentiment-en", "language": "en",
             "settings": {"kind": "zero-shot", "model": "minilm-l6"},
             "summary": {"items": 2, "acc": {"accuracy": acc, "f1": acc, "mcc": 0.0, "accuracy_ci": [0.1, 0.9]}},
             "costs": {"trainable_parameters": 0}} for name, acc in (("zero-shot minilm-l6", 0.5), ("other", 1.0))]
    (out / "results.json").write_text(json.dumps({"suite": "demo", "rows": rows, "agreement": {}}))
    for name, predictions in (("zero-shot-minilm-l6", [0, 1]), ("other", [1, 1])):
        (out / "predictions" / f"{name}__sentiment-en__seed0.jsonl").write_text("".join(
            json.dumps({"id": f"i{i}", "text": f"text {i}", "gold": 1, "prediction": {"acc": p}}) + "\n"
            for i, p in enumerate(predictions)))


def test_the_catalogue_reads_a_harness_results_folder(tmp_path):
    write_results(tmp_path / "results" / "demo")
    [result] = find_results([tmp_path / "results"])
    assert result.name == "demo" and len(table_rows([result])) == 2
    assert table_rows([result], language="pt") == [] and table_rows([result], base="minilm-l6")[0][6] == 0.5
    [item] = disagreements(result, "sentiment-en", ["zero-shot minilm-l6", "other"])
    assert item["id"] == "i0" and item["labels"] == ["negative", "positive"]


# -- answers: the harness's own records -------------------------------------------------------------------------
def test_an_answer_is_the_harness_record_for_the_same_text(tiny_runs, tiny_model):
    service = Service([tiny_runs / "runs"])
    task = str(tiny_runs / "tiny-reviews.yaml")
    names = [c.name for c in service.choices(str(tiny_model))]
    assert names[:2] == ["zero-shot", "few-shot k=8"] and any("tiny-lora" in n for n in names)
    for choice in service.choices(str(tiny_model)):
        answer = service.answer(choice, task, "en", "great lovely film")
        variant = Variant(**{**choice.variant.settings(), "language": "en"})
        direct = evaluate(variant, service.task(task), [item_for("great lovely film", "en")], 0, Models())
        np.testing.assert_allclose(list(answer.probabilities.values()), direct.records[0]["probabilities"], atol=1e-6)
        assert answer.label == ["neg", "pos"][direct.records[0]["prediction"]["acc"]]


def test_bad_messages_and_vanished_runs_are_told_not_crashed(tiny_runs, tiny_model, tmp_path):
    service = Service([tiny_runs / "runs"])
    task = str(tiny_runs / "tiny-reviews.yaml")
    zero = service.choice(str(tiny_model), "zero-shot")
    with pytest.raises(AppError, match="empty"):
        service.answer(zero, task, "en", "   ")
    long = service.answer(zero, task, "en", "great " * 2000)
    # the tiny model has 64 positions: 62 words and its two special tokens
    assert "11,999 characters (2,000 tokens)" in long.notice() and "reads 62 tokens" in long.notice()
    assert "11.999 caracteres" in long.notice("pt") or "11,999 caracteres" in long.notice("pt")
    assert long.text == ("great " * 62).strip() and np.isfinite(list(long.probabilities.values())).all()
    with pytest.raises(AppError, match="not a variant"):
        service.choice(str(tiny_model), "no such variant")
    moved = tmp_path / "runs"
    shutil.copytree(tiny_runs / "runs", moved)
    service = Service([moved])
    [run] = [c for c in service.choices(str(tiny_model)) if c.run]
    shutil.rmtree(moved / "tiny-lora")
    [gone] = [c for c in service.choices(str(tiny_model)) if c.run] or [None]
    assert gone is None or not gone.available  # a deleted folder is no longer listed
    with pytest.raises(AppError, match="unavailable"):
        service.answer(type(run)(**{**run.__dict__, "run": read_run(moved / "tiny-lora")}), task, "en", "good")


# -- training from the page --------------------------------------------------------------------------------------
def test_training_refuses_bad_data_and_a_second_start_into_a_folder_in_use(tiny_runs, tiny_model, tmp_path):
    data = tiny_runs / "reviews.csv"
    with pytest.raises(TrainError, match="review"):  # what was found is named
        check_data(str(data), "text", "sentiment", None)
    with pytest.raises(TrainError, match="outside the declared set"):
        check_data(str(data), "review", "sentiment", ["neg", "neutral"])
    trainer = Trainer(tmp_path / "runs")
    with pytest.raises(TrainError, match="unknown method"):
        trainer.start(model=str(tiny_model), method="magic", source=str(data), steps=2, name="x")
    with pytest.raises(TrainError, match="already holds a run"):
        Trainer(tiny_runs / "runs").start(model=str(tiny_model), method="lora", source=str(data), steps=2,
                                          name="tiny-lora", text_column="review", label_column="sentiment")
    job = trainer.start(model=str(tiny_model), method="bitfit", source=str(data), steps=200, name="busy",
                        text_column="review", label_column="sentiment")
    with pytest.raises(TrainError, match="already training|another run is using"):
        trainer.start(model=str(tiny_model), method="bitfit", source=str(data), steps=2, name="busy",
                      text_column="review", label_column="sentiment")
    deadline = time.time() + 120
    while job.progress()[0] == 0 and job.state == "running" and time.time() < deadline:
        time.sleep(0.5)
    job.stop()  # saves a checkpoint and exits: resumable
    job.process.wait(timeout=120)
    assert job.state == "stopped", job.message()
    resumed = trainer.start(model=str(tiny_model), method="bitfit", source=str(data), steps=200, name="busy",
                            text_column="review", label_column="sentiment", resume=True)
    resumed.process.wait(timeout=300)
    assert resumed.state == "finished", resumed.message()
    assert read_run(resumed.run_dir).status == "finished"


# -- the page's HTTP endpoints ------------------------------------------------------------------------------------
def test_the_side_by_side_endpoint_returns_the_harness_probabilities(tiny_page, tiny_model, tiny_runs):
    client, service, _ = tiny_page
    task = str(tiny_runs / "tiny-reviews.yaml")
    for i, name in enumerate(("zero-shot", "LoRA r4 · tiny-lora")):
        history, label, tag, view = client.predict(str(tiny_model), task, "en", name, "great lovely film", [],
                                                   api_name=f"/answer_{i + 1}")
        choice = service.choice(str(tiny_model), name)
        direct = evaluate(Variant(**{**choice.variant.settings(), "language": "en"}), service.task(task),
                          [item_for("great lovely film", "en")], 0, Models())
        shown = {c["label"]: c["confidence"] for c in label["confidences"]}
        np.testing.assert_allclose([shown["neg"], shown["pos"]], direct.records[0]["probabilities"], atol=1e-6)
        assert "trainable parameters" in tag and "latency" in tag and history[-1]["role"] == "assistant"
        assert view == ""  # entities are marked only on an entity task


def test_an_empty_message_gets_a_notice_and_no_model_call(tiny_page, tiny_model, monkeypatch):
    client, service, _ = tiny_page
    calls = []
    monkeypatch.setattr(service, "answer", lambda *a, **k: calls.append(a))
    history, label, tag, _ = client.predict(str(tiny_model), "sentiment-en", "en", "zero-shot", "  ", [],
                                            api_name="/answer_1")
    assert "empty message" in tag and not label and calls == []
    assert "empty message" in client.predict("", api_name="/check_message")


def test_the_train_endpoint_starts_a_run_that_finishes_and_becomes_a_variant(tiny_page, tiny_model, tiny_runs):
    client, service, settings = tiny_page
    status, _ = client.predict(str(tiny_model), "lora", "sequence-classification", str(tiny_runs / "reviews.csv"), None, "review", "sentiment",
                               "", 4, "from-page", api_name="/train_start")
    assert "from-page" in status
    again, _ = client.predict(str(tiny_model), "lora", "sequence-classification", str(tiny_runs / "reviews.csv"), None, "review", "sentiment",
                              "", 4, "from-page", api_name="/train_start")
    assert "already training" in again or "another run is using" in again
    deadline = time.time() + 300
    state = client.predict("from-page", api_name="/train_state")
    while state["state"] == "running" and time.time() < deadline:
        time.sleep(1)
        state = client.predict("from-page", api_name="/train_state")
    assert state["state"] == "finished", state
    assert any("from-page" in c.name and c.available for c in service.choices(str(tiny_model)))
    bad, _ = client.predict(str(tiny_model), "lora", "sequence-classification", str(tiny_runs / "reviews.csv"), None, "text", "sentiment",
                            "", 4, "bad-columns", api_name="/train_start")
    assert "review" in bad and "⚠️" in bad


def test_the_page_cuts_a_long_message_says_so_and_shows_a_deleted_run_as_unavailable(tiny_page, tiny_model,
                                                                                       tiny_runs):
    client, service, settings = tiny_page
    task = str(tiny_runs / "tiny-reviews.yaml")
    _, label, tag, _ = client.predict(str(tiny_model), task, "en", "zero-shot", "great " * 2000, [],
                                      api_name="/answer_1")
    assert "reads 62 tokens" in tag and label["confidences"]
    copy = settings.runs[0] / "doomed"
    shutil.copytree(settings.runs[0] / "tiny-lora", copy)
    name = next(c.name for c in service.choices(str(tiny_model)) if c.run and c.run.path == copy)
    shutil.rmtree(copy / "export")  # deleted while listed: its summary is still there
    _, label, tag, _ = client.predict(str(tiny_model), task, "en", name, "good", [], api_name="/answer_2")
    assert not label and "unavailable" in tag.lower() and "export" in tag
    shutil.rmtree(copy)
    _, label, tag, _ = client.predict(str(tiny_model), task, "en", name, "good", [], api_name="/answer_2")
    assert not label and "not a variant" in tag


def test_the_blind_comparison_hides_names_until_the_vote_and_rates_from_the_votes(tiny_page, tiny_model):
    client, service, settings = tiny_page
    before = len(arena.read_votes(settings.votes))
    notice, _ = client.predict("", api_name="/vote_a")  # nothing answered yet: no vote
    assert "before voting" in notice and len(arena.read_votes(settings.votes)) == before
    client.predict(str(tiny_model), "sentiment", api_name="/draw")
    a, b, label_a, label_b, view_a, view_b, _ = client.predict(str(tiny_model), "sentiment", "great lovely film",
                                                               api_name="/arena_answer")
    assert view_a == view_b == ""
    assert label_a["confidences"] and label_b["confidences"]
    shown = json.dumps([a, b])
    assert not any(c.name in shown for c in service.choices(str(tiny_model)) if c.name != "zero-shot")
    notice, ratings = client.predict("great lovely film", api_name="/vote_b")
    [vote] = arena.read_votes(settings.votes)[before:]
    assert vote["outcome"] == "b" and vote["a"] in notice and vote["b"] in notice and vote["base"] == str(tiny_model)
    assert {row[0] for row in ratings["data"]} == {vote["a"], vote["b"]}


def test_the_results_and_runs_endpoints_show_what_the_files_hold(tiny_page, tiny_runs):
    client, _, settings = tiny_page
    out = settings.results[0] / "demo"
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    row = {"variant": "zero-shot tiny", "kind": "zero-shot", "task": "sentiment-en", "language": "en",
           "settings": {"kind": "zero-shot", "model": "tiny"},
           "summary": {"items": 9, "acc": {"accuracy": 0.777, "f1": 0.7, "mcc": 0.5, "accuracy_ci": [0.6, 0.9]}},
           "costs": {"trainable_parameters": 0}}
    (out / "results.json").write_text(json.dumps({"suite": "demo", "rows": [row], "agreement": {}}))
    outputs = client.predict(None, None, None, None, api_name="/results_view")
    table = outputs[4]
    assert table["data"][0][:7] == ["demo", "zero-shot tiny", "tiny", "sentiment-en", "en", 9, 0.777]
    run_dir = str(settings.runs[0] / "tiny-lora")
    head, _, metrics, _, config, exports = client.predict(run_dir, api_name="/run_view")
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    assert "LoRA r4" in head and metrics["accuracy"] == summary["test"]["accuracy"]
    assert yaml.safe_load(config)["method"]["name"] == "lora" and exports == summary["export"]


# -- concurrent requests (tiny_decoder: tests/conftest.py) -------------------------------------------------------
def watch_tokenizers(monkeypatch) -> list[str]:
    """Every tokenizer call (encode, decode, chat template) made to take a few milliseconds, and the moment between
    an encode's setting of the tokenizer's padding and truncation and its use of them too, so that two threads in
    one tokenizer at once race every time rather than once in a while; returns the calls made while another thread
    was inside the same tokenizer (filled as calls happen)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    inside: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    overlaps: list[str] = []
    books = threading.Lock()

    def watched(name, original):
        def call(self, *args, **kwargs):
            me = threading.get_ident()
            with books:
                inside[id(self)][me] += 1
                if any(count for thread, count in inside[id(self)].items() if thread != me):
                    overlaps.append(name)
            try:
                time.sleep(0.002)
                return original(self, *args, **kwargs)
            finally:
                with books:
                    inside[id(self)][me] -= 1
        return call

    configure = PreTrainedTokenizerFast.set_truncation_and_padding

    def configured(self, *args, **kwargs):
        configure(self, *args, **kwargs)
        time.sleep(0.002)  # set, not yet used: another thread may set it otherwise now

    for name in ("__call__", "decode", "apply_chat_template"):
        monkeypatch.setattr(PreTrainedTokenizerBase, name, watched(name, getattr(PreTrainedTokenizerBase, name)))
    monkeypatch.setattr(PreTrainedTokenizerFast, "set_truncation_and_padding", configured)
    return overlaps


def test_concurrent_requests_of_mixed_variants_get_the_answers_they_get_alone(tiny_runs, tiny_model, tiny_decoder,
                                                                                monkeypatch):
    service = Service([tiny_runs / "runs"])
    task = str(tiny_runs / "tiny-reviews.yaml")
    texts = ["great lovely film", "the plot was dull and boring and the actors were quite poor"]
    answered = [(str(tiny_model), "zero-shot"), (str(tiny_model), "few-shot k=8"),
                (str(tiny_model), "LoRA r4 · tiny-lora"), (str(tiny_decoder), "zero-shot"),
                (str(tiny_decoder), "few-shot k=2")]
    # the harness's chat variant on the same shared models: both texts in one batch, the shorter padded
    requests = [(base, name, (text,)) for base, name in answered for text in texts]
    requests += [(str(tiny_decoder), "chat", tuple(texts)), (str(tiny_decoder), "chat", tuple(reversed(texts)))]

    def ask(request):
        base, name, asked = request
        if name == "chat":
            chat = Variant(kind="chat", model=base, language="en", max_new_tokens=4)
            items = [item_for(text, "en") for text in asked]
            return [r["reply"] for r in evaluate(chat, service.task(task), items, 0, service.models).records]
        choice = service.choice(base, name)
        answer = service.answer(choice, task, "en", asked[0])
        reply = list(service.reply(choice, task, "en", asked[0], max_new_tokens=4)) if choice.decoder else None
        return answer.label, answer.probabilities, reply

    def ask_among_others(request):
        try:
            return ask(request)
        except Exception as error:  # noqa: BLE001 (a request that fails only among others is a wrong answer)
            return f"{type(error).__name__}: {error}"

    alone = {request: ask(request) for request in requests}  # one at a time (and every program compiled)
    overlaps = watch_tokenizers(monkeypatch)
    mixed = requests * 2
    random.Random(0).shuffle(mixed)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask_among_others, mixed))
    wrong = [(request, answer) for request, answer in zip(mixed, together) if answer != alone[request]]
    assert not wrong, f"{len(wrong)} of {len(mixed)} answers differ from the same request alone: {wrong[:2]}"
    # each model's one tokenizer is shared by every request thread: never two calls in it at once
    assert overlaps == [], f"{len(overlaps)} tokenizer calls overlapped another thread's: {sorted(set(overlaps))}"


def test_chat_pads_each_call_on_the_left_without_changing_the_shared_tokenizer(tiny_decoder):
    import tljax
    from tljax import models

    model, tokenizer = tljax.load(str(tiny_decoder))
    written = []

    class Watched(type(tokenizer)):
        def __setattr__(self, name, value):
            written.append(name)
            super().__setattr__(name, value)

    tokenizer.__class__ = Watched
    conversations = [[{"role": "user", "content": "good"}],
                     [{"role": "user", "content": "the film was a really dull and boring story"}]]
    together = models.chat(model, tokenizer, conversations, max_new_tokens=3)
    # a conversation padded on the left of a longer one replies as it does alone
    assert together == [models.chat(model, tokenizer, [c], max_new_tokens=3)[0] for c in conversations]
    assert written == [] and tokenizer.padding_side == "right"


# -- what the page opens -----------------------------------------------------------------------------------------
def test_only_loopback_addresses_keep_the_page_private():
    private = ("127.0.0.1", "localhost", "::1", "[::1]", "LOCALHOST", "127.0.0.2")
    assert [is_public(host) for host in private] == [False] * len(private)
    public = ("0.0.0.0", "192.168.1.20", "10.0.0.5", "::", "example.org")
    assert [is_public(host) for host in public] == [True] * len(public)


def test_a_public_service_opens_only_listed_bases_and_tasks(tiny_runs, tiny_model, tmp_path):
    public, private = Service([tiny_runs / "runs"], public=True), Service([tiny_runs / "runs"])
    task_file = str(tiny_runs / "tiny-reviews.yaml")
    with pytest.raises(AccessError, match="opens only the tasks it lists, not .*tiny-reviews.yaml.*sentiment-en"):
        public.task(task_file)
    assert private.task(task_file).name == "tiny-reviews" and public.task("sentiment-en").name == "sentiment-en"
    elsewhere = tmp_path / "copy-of-base"
    shutil.copytree(tiny_model, elsewhere)
    for ask in (lambda: public.choices(str(elsewhere)), lambda: public.choice(str(elsewhere), "zero-shot")):
        with pytest.raises(AccessError, match="opens only the base models it lists.*minilm-l6"):
            ask()
    assert [c.name for c in private.choices(str(elsewhere))][:1] == ["zero-shot"]
    # a packaged model and the base of a run it found are listed (the page offers them), so they open
    assert [c.name for c in public.choices("minilm-l6")][:1] == ["zero-shot"]
    assert any(c.run for c in public.choices(str(tiny_model)))


def test_a_variant_name_never_reaches_a_run_outside_the_runs_folders(tiny_runs, tiny_model, tmp_path):
    shutil.copytree(tiny_runs / "runs" / "tiny-lora", tmp_path / "runs" / "tiny-lora")
    shutil.copytree(tiny_runs / "runs" / "tiny-lora", tmp_path / "elsewhere" / "hidden")
    service = Service([tmp_path / "runs"])
    assert service.choice(str(tiny_model), "LoRA r4 · tiny-lora").run.path == tmp_path / "runs" / "tiny-lora"
    for name in ("LoRA r4 · ../elsewhere/hidden", f"LoRA r4 · {tmp_path / 'elsewhere' / 'hidden'}"):
        with pytest.raises(AppError, match="not a variant"):
            service.choice(str(tiny_model), name)


def test_run_names_stay_inside_the_runs_folder_and_a_public_trainer_opens_only_what_it_lists(tiny_runs, tiny_model,
                                                                                            tmp_path, monkeypatch):
    data = str(tiny_runs / "reviews.csv")
    trainer = Trainer(tmp_path / "runs")
    for name in ("..", ".", "../escaped", "/tmp/absolute", "a/b", "a\\b", ""):
        with pytest.raises(AccessError, match="must be letters, digits.*not only dots"):
            trainer.start(model=str(tiny_model), method="lora", source=data, steps=2, name=name,
                          text_column="review", label_column="sentiment")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "runs").exists()
    public = Trainer(tmp_path / "runs", public=True)
    with pytest.raises(AccessError, match="opens only the models it lists, not .*tiny-bert"):
        public.start(model=str(tiny_model), method="lora", source="rotten-tomatoes", steps=2, name="x")
    with pytest.raises(AccessError, match="trains only on a packaged corpus .*rotten-tomatoes.* or a file uploaded"):
        public.start(model="minilm-l6", method="lora", source=data, steps=2, name="x")
    # an uploaded file passes the page's rules: only the data check (the columns it has) stops this start
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    uploaded = tmp_path / "uploads" / "3f2a" / "reviews.csv"
    uploaded.parent.mkdir(parents=True)
    shutil.copy(data, uploaded)
    with pytest.raises(TrainError, match="review"):
        public.start(model="minilm-l6", method="lora", source=str(uploaded), steps=2, name="x", text_column="text",
                     label_column="sentiment")
    assert check_upload(True, uploaded) == uploaded and check_upload(False, data) == Path(data)
    for outside in (data, tmp_path / "uploads" / ".." / "elsewhere.csv"):
        with pytest.raises(AccessError, match="reads only files uploaded to it"):
            check_upload(True, outside)
    assert check_corpus(True, "rotten-tomatoes", ["rotten-tomatoes"]) == "rotten-tomatoes"
    assert check_corpus(False, data, ["rotten-tomatoes"]) == data
    assert not (tmp_path / "runs" / "x").exists()


def test_a_loopback_page_opens_local_paths_but_keeps_run_names_in_the_runs_folder(tiny_page, tiny_model, tiny_runs):
    client, _, settings = tiny_page
    head, *_ = client.predict(str(tiny_runs / "runs" / "tiny-lora"), api_name="/run_view")  # not a listed run
    assert "LoRA r4" in head
    for name in ("..", "../escaped"):
        status, _ = client.predict(str(tiny_model), "lora", "sequence-classification", str(tiny_runs / "reviews.csv"),
                                   None, "review", "sentiment", "", 4, name, api_name="/train_start")
        assert status.startswith(f"⚠️ the run's name {name!r} must be letters") and "\n" not in status
    assert not (settings.runs[0].parent / "escaped").exists()


@pytest.fixture(scope="module")
def public_page(tiny_runs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("public-page")
    shutil.copytree(tiny_runs / "runs", folder / "runs")
    write_results(folder / "results" / "demo")
    settings = Settings([folder / "runs"], [folder / "results"], folder / "votes.jsonl")
    page = build(Service(settings.runs, public=True), settings)
    page.launch(prevent_thread_lock=True, quiet=True, server_port=None)
    yield Client(page.local_url, verbose=False), settings
    page.close()


def test_the_public_page_says_in_one_line_what_it_does_not_open(public_page, tiny_model, tiny_runs):
    client, settings = public_page
    task = str(tiny_runs / "tiny-reviews.yaml")
    _, label, tag, _ = client.predict("/etc", "sentiment-en", "en", "zero-shot", "good", [], api_name="/answer_1")
    assert not label and tag.startswith("⚠️ this page opens only the base models it lists, not '/etc'")
    _, label, tag, _ = client.predict(str(tiny_model), task, "en", "zero-shot", "good", [], api_name="/answer_1")
    assert not label and "opens only the tasks it lists" in tag and "\n" not in tag
    status, _ = client.predict(str(tiny_model), "lora", "sequence-classification", "rotten-tomatoes", None, "text",
                               "label", "", 4, "x", api_name="/train_start")
    assert status.startswith("⚠️ this page opens only the models it lists")
    status, _ = client.predict("minilm-l6", "lora", "sequence-classification", str(tiny_runs / "reviews.csv"), None,
                               "review", "sentiment", "", 4, "x", api_name="/train_start")
    assert status.startswith("⚠️ this page trains only on a packaged corpus")
    status, _ = client.predict("minilm-l6", "lora", "sequence-classification", "rotten-tomatoes", None, "text",
                               "label", "", 4, "..", api_name="/train_start")
    assert status.startswith("⚠️ the run's name '..' must be letters")
    head, *_ = client.predict(str(tiny_runs / "runs" / "tiny-lora"), api_name="/run_view")  # not this page's runs
    assert head.startswith("⚠️ this page opens only the runs it lists")
    assert "opens only the models it lists" in client.predict(str(tiny_model), "lora", api_name="/trains")
    with pytest.raises(Exception, match="opens only the models it lists"):
        client.predict(str(tiny_model), api_name="/method_rows")
    client.predict("demo", "sentiment-en", api_name="/explorer_variant_choices")  # the variants it may choose
    with pytest.raises(Exception, match="demo has no results of .* on .*tiny-reviews.yaml"):
        client.predict("demo", task, ["zero-shot minilm-l6", "other"], api_name="/explore")
    assert not list((settings.runs[0]).glob("x*")) and not (settings.runs[0].parent / "x").exists()


def test_the_public_page_opens_what_it_lists_and_the_files_uploaded_to_it(public_page, tiny_model, tiny_runs):
    client, settings = public_page
    _, label, tag, _ = client.predict("minilm-l6", "sentiment-en", "en", "no such variant", "good", [],
                                      api_name="/answer_1")  # a packaged base opens (and says what is not its variant)
    assert not label and "not a variant of minilm-l6" in tag
    _, label, _, _ = client.predict(str(tiny_model), "sentiment-en", "en", "zero-shot", "great lovely film", [],
                                    api_name="/answer_1")  # a listed run's base, a listed task
    assert set(c["label"] for c in label["confidences"]) == {"negative", "positive"}
    head, *_ = client.predict(str(settings.runs[0] / "tiny-lora"), api_name="/run_view")
    assert "LoRA r4" in head
    client.predict("demo", "sentiment-en", api_name="/explorer_variant_choices")
    table = client.predict("demo", "sentiment-en", ["zero-shot minilm-l6", "other"], api_name="/explore")
    assert [row[0] for row in table["value"]["data"]] == ["i0"]  # the item the two variants disagree on
    csv_file = handle_file(str(tiny_runs / "reviews.csv"))
    text_column, label_column, _ = client.predict(csv_file, "sequence-classification", api_name="/columns_of")
    assert text_column["value"] == "review" and label_column["value"] == "sentiment"
    # the uploaded file passes the page's rules: the data check names its columns instead
    status, _ = client.predict("minilm-l6", "lora", "sequence-classification", "upload", csv_file, "text",
                               "sentiment", "", 4, "from-upload", api_name="/train_start")
    assert status.startswith("⚠️") and "review" in status and "only" not in status
