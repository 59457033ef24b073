"""The harness on the real packaged models: SmolLM2's log-likelihoods against lm-evaluation-harness, and the
CI suite end to end with the effect each variant exists for (one-sided binomial tests on 200 items)."""

import dataclasses
import json

import matplotlib.image
import numpy as np
import pytest
import transformers

from harness.prompts import chat_messages
from harness.scoring import DecoderScorer
from tljax.data.chat import encode_pair
from harness.suite import load_suite, run_suite, sample
from harness.tasks import load_task
from harness.results import p_better
from harness.variants import Variant, decoder_prompts, parse_variant
from tljax import zoo

pytestmark = pytest.mark.real
SMOLLM2 = "smollm2-135m-instruct"


def read_records(out, variant_slug: str, task: str = "sentiment-en") -> list[dict]:
    path = out / "predictions" / f"{variant_slug}__{task}__seed0.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_smollm2_log_likelihoods_equal_lm_evaluation_harness():
    """Zero-shot and few-shot chat prompts (lm-eval's chat convention: no target delimiter) and plain prompts
    (a " " delimiter; the harness's built from lm-eval's own task code), including an answer whose first token
    merges with the end of the prompt."""
    pytest.importorskip("lm_eval")
    import tljax
    from lm_eval_reference import chat_context, encode_pair as reference_pair, loglikelihoods, plain_requests
    from harness.prompts import draw_demonstrations
    from harness.scoring import plain_pair

    directory = zoo.resolve(SMOLLM2)
    model, tokenizer = tljax.load(SMOLLM2)
    task = load_task("sentiment-en")
    items = sample(task.items, 3)
    answers = list(task.template().verbalisers)
    zero, _ = decoder_prompts(Variant(kind="zero-shot", model=SMOLLM2), task, items, tokenizer, 0)
    few, _ = decoder_prompts(Variant(kind="few-shot", model=SMOLLM2, k=2), task, items, tokenizer, 0,
                             task.demonstration_items)
    assert zero[0] == chat_context(directory, chat_messages(task.template(), items[0].text))  # lm-eval's prompt
    plain = Variant(kind="few-shot", model=SMOLLM2, k=2, prompt="plain")
    plain_few, _ = decoder_prompts(plain, task, items, tokenizer, 0, task.demonstration_items)
    template = task.template()
    for item, context in zip(items, plain_few):  # lm-eval's plain prompt of the same demonstrations
        demos = draw_demonstrations(task.demonstration_items, item, 2, 2, 0)
        assert [(context, " " + a) for a in answers] == plain_requests(
            template.plain_question(item.text), answers, [(template.plain_question(d.text), d.label) for d in demos])
    chat = [(context, answers) for context in zero + few]  # their shared start is run once per batch
    others = [("Review: a dull film\nSentiment:", [" positive", " negative"]),
              ("The review is", ["n't good", " good"])]  # "is" + "n't" merge: " isn" + "'t"
    merged = encode_pair(tokenizer, "The review is", "n't good")
    assert tokenizer("The review isn't good", add_special_tokens=False)["input_ids"][: len(merged[0])] != merged[0]
    scorer = DecoderScorer(model, tokenizer)
    requests, ours = chat + others, np.concatenate([scorer(chat).logprob, scorer(others).logprob])
    # the system prompt and the instruction (prefix, its mask, the shared start [1, S], ...)
    assert sorted(call[2].shape[1] for call in scorer.shapes.counts) == [0, 47]
    theirs = np.asarray([v for v, _ in loglikelihoods(directory, [(c, a) for c, options in requests
                                                                   for a in options])]).reshape(ours.shape)
    np.testing.assert_allclose(ours, theirs, atol=1e-3)
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    for context, options in requests:
        for answer in options:
            assert encode_pair(tokenizer, context, answer) == tuple(reference_pair(tokenizer, context, answer))
    plain_answers = [" " + a for a in answers]
    ours = DecoderScorer(model, tokenizer)([(c, plain_answers) for c in plain_few], plain=True).logprob
    theirs = np.asarray([v for v, _ in loglikelihoods(directory, [(c, a) for c in plain_few for a in plain_answers])])
    np.testing.assert_allclose(ours, theirs.reshape(ours.shape), atol=1e-3)
    for context in plain_few:
        assert plain_pair(tokenizer, context, plain_answers[0]) == tuple(
            reference_pair(tokenizer, context, plain_answers[0]))


def test_the_ci_suite_runs_every_variant_kind_with_its_effect(tmp_path, smollm2_chat_run, minilm_run):
    # and two trained runs (session fixtures): SmolLM2 chat-tuned with LoRA, scored in the same chat form as its
    # zero-shot, and MiniLM-L6 with LoRA, beside its zero-shot and few-shot
    suite = load_suite("ci")
    runs = tuple(parse_variant({"kind": "run", "run": str(run), "name": name}) for run, name in (
        (smollm2_chat_run, "chat-tuned smollm2 (LoRA)"), (minilm_run, "LoRA minilm-l6")))
    rows = run_suite(dataclasses.replace(suite, variants=suite.variants + runs), tmp_path, say=print)
    by_variant = {row["variant"]: row for row in rows}
    # above chance (one-sided binomial, p < 0.01) and with skill beyond the majority label (MCC > 0.1: the test
    # split is 60% positive)
    for name in ("zero-shot smollm2-135m-instruct", "chat smollm2-135m-instruct", "zero-shot minilm-l6",
                 "few-shot minilm-l6 k=32", "LoRA minilm-l6", "chat-tuned smollm2 (LoRA)"):
        summary = by_variant[name]["summary"]
        assert summary["items"] >= 190, name
        assert summary["acc"]["p_above_chance"] < 0.01 and summary["acc"]["mcc"] > 0.1, (name, summary["acc"])
    assert by_variant["chat smollm2-135m-instruct"]["summary"]["unread"] < 100  # a reply was read for most items
    for row in rows:  # the compiled forward's cost
        if row["kind"] != "chat":
            assert row["costs"]["flops_per_example"] > 1e7 and row["costs"]["memory_mb"] > 10, row["variant"]
    smollm2 = by_variant["zero-shot smollm2-135m-instruct"]["costs"]["flops_per_example"]
    # ~2 x (SmolLM2's ~106M parameters outside the embedding) x the padded prompt's tokens (32 to 512)
    assert 2 * 100e6 * 32 < smollm2 < 2 * 135e6 * 512, smollm2
    # decoder few-shot prompts (scored against lm-evaluation-harness in the test above; SmolLM2-135M few-shot is
    # no better than the majority label here: at k = 2 and 4 it measured 0.585 / 0.580, MCC 0.08 / 0.02):
    # demonstrations class-balanced, never the item itself, identical on a rerun with the same seed
    task = load_task("sentiment-en")
    items, tokenizer = sample(task.items, 20), transformers.AutoTokenizer.from_pretrained(zoo.resolve(SMOLLM2))
    variant = Variant(kind="few-shot", model=SMOLLM2, k=2)
    prompts, _ = decoder_prompts(variant, task, items, tokenizer, 0, task.demonstration_items)
    for item, prompt in zip(items, prompts):
        assert prompt.count("<|im_start|>assistant\n") == 3  # two demonstrations, then the item
        assert prompt.count(item.text) == 1
        assert prompt.count("\npositive<|im_end|>") == prompt.count("\nnegative<|im_end|>") == 1
    assert decoder_prompts(variant, task, items[:1], tokenizer, 0, task.demonstration_items)[0] == prompts[:1]
    # the LoRA-tuned decoder above its own zero-shot on the same items (one-sided exact McNemar, p < 0.01)
    zero_shot, chat_tuned = (read_records(tmp_path, name) for name in ("zero-shot-smollm2-135m-instruct",
                                                                        "chat-tuned-smollm2-LoRA"))
    assert p_better(chat_tuned, zero_shot) < 0.01, (by_variant["chat-tuned smollm2 (LoRA)"]["summary"]["acc"],
                                                    by_variant["zero-shot smollm2-135m-instruct"]["summary"]["acc"])
    assert chat_tuned[0]["prompt"] == zero_shot[0]["prompt"]  # the same chat form
    for name in ("results.json", "results.md"):
        assert (tmp_path / name).read_text()
    assert json.loads((tmp_path / "results.json").read_text())["rows"]
    for png in (tmp_path / "plots").glob("*.png"):
        assert matplotlib.image.imread(png).ndim == 3
    assert len(list((tmp_path / "plots").glob("*.png"))) >= 4
