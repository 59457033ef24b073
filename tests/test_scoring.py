"""Decoder scoring on a tiny model: each answer's log-likelihood after its prompt, against a direct computation
and against lm-evaluation-harness, and batches bounded by their prompt tokens."""

import jax
import numpy as np
import pytest
from flax import nnx

from harness.scoring import DecoderScorer
from tljax.data.chat import encode_pair


REQUESTS = [("the film was good and", [" great", " awful boring dull"]),
            ("it was a movie", [" fine", " poor really"]),
            ("the plot the actors the story was quite ", ["lovely", "bad"])]  # a trailing space moves
# contexts that start with the same 19 words (as prompts share a chat template's system prompt and an instruction):
# those are run once per batch and shared by its rows, the rest of each context on its own
START = "the film was a movie and the plot the actors the story was really quite a film and it "
SHARING = [(START + "was good", [" great", " awful boring"]),
           (START + "was bad and dull and the story was poor", [" fine", " poor really"]),
           (START + "really", [" lovely", " bad"])]


@pytest.mark.parametrize("method", [None, "prompt", "prefix"])
@pytest.mark.parametrize("requests", [REQUESTS, SHARING], ids=["own", "shared-start"])
def test_decoder_scoring_equals_a_full_recomputation(tiny_decoder, method, requests):
    import tljax
    from tljax.models.decoder.modeling import MIN_SHARED_TOKENS
    from tljax.methods import adapt, make_method

    model, tokenizer = tljax.load(str(tiny_decoder))
    if method:  # virtual tokens take cache slots too; prefix keys sit in front of the cache's
        model = adapt(model, [make_method(method, {"num_virtual_tokens": 3})]).model
    scorer = DecoderScorer(model, tokenizer)
    scores = scorer(requests)
    (call,) = scorer.shapes.counts  # prefix, its mask, the shared start [1, S], answers, their mask
    assert call[2].shape[1] == (19 if requests is SHARING else 0) and 19 >= MIN_SHARED_TOKENS
    # the reference: every whole sequence (context + answer) in one right-padded batch through the plain forward
    # (no cache; the padding after a sequence is never attended to by its own tokens)
    pairs = [encode_pair(tokenizer, context, answer) for context, answers in requests for answer in answers]
    width = max(len(c) + len(a) for c, a in pairs)
    ids, mask = np.zeros((len(pairs), width), np.int32), np.zeros((len(pairs), width), np.int32)
    for row, (context_ids, answer_ids) in enumerate(pairs):
        ids[row, : len(context_ids) + len(answer_ids)], mask[row, : len(context_ids) + len(answer_ids)] = \
            context_ids + answer_ids, 1
    log_probs = np.asarray(nnx.jit(lambda m, i, k: jax.nn.log_softmax(m(i, k)))(model, ids, mask))
    expected = [sum(log_probs[row, len(c) - 1 + k, t] for k, t in enumerate(a)) for row, (c, a) in enumerate(pairs)]
    np.testing.assert_allclose(scores.logprob.ravel(), expected, atol=1e-5)


def test_long_prompts_are_scored_in_fewer_rows_within_the_token_budget(tiny_decoder, monkeypatch):
    import harness.scoring
    import tljax

    model, tokenizer = tljax.load(str(tiny_decoder))
    words = "the film was good and the plot the actors the story was quite".split()
    requests = [(" ".join(words[: 1 + i % 12] * (1 + i // 3)), [" great", " bad"]) for i in range(12)]
    expected = DecoderScorer(model, tokenizer)(requests).logprob  # the default budget: one batch of 16 rows
    monkeypatch.setattr(harness.scoring, "PROMPT_TOKENS_PER_BATCH", 64)
    scorer = DecoderScorer(model, tokenizer)
    scores = scorer(requests).logprob
    shapes = [call[0].shape for call in scorer.shapes.counts]  # prefix [rows, padded length] of each batch
    assert all(rows * length <= 64 or rows == 1 for rows, length in shapes), shapes
    assert len({rows for rows, _ in shapes}) > 1 and sum(scorer.shapes.counts.values()) > 1  # it did split
    # the same log-likelihoods from other batch shapes: float32 sums in another order (as the test above)
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_decoder_scoring_equals_lm_evaluation_harness(tiny_decoder):
    pytest.importorskip("lm_eval")
    import tljax
    from lm_eval_reference import encode_pair as reference_pair
    from lm_eval_reference import loglikelihoods

    model, tokenizer = tljax.load(str(tiny_decoder))
    ours = DecoderScorer(model, tokenizer)(REQUESTS).logprob
    theirs = loglikelihoods(tiny_decoder, [(c, a) for c, answers in REQUESTS for a in answers])
    np.testing.assert_allclose(ours.ravel(), [value for value, _ in theirs], atol=1e-4)
    for context, answers in REQUESTS:
        for answer in answers:
            assert encode_pair(tokenizer, context, answer) == tuple(reference_pair(tokenizer, context, answer))


def test_the_scored_flops_count_every_layer(tiny_decoder):
    """The scorer runs its layers as one scan, whose body XLA's cost analysis counts once: its FLOPs are taken
    from the unrolled twin, and equal what compiling that twin counts."""
    import tljax
    from tljax.models.transforms import program_cost

    model, tokenizer = tljax.load(str(tiny_decoder))
    scorer = DecoderScorer(model, tokenizer)
    scorer(REQUESTS)
    cost, _ = scorer.typical_cost()
    call = scorer.shapes.typical()
    unrolled = program_cost(scorer._unrolled, scorer._state, *call).flops
    scanned = program_cost(scorer._score, scorer._state, *call).flops
    assert abs(cost.flops / unrolled - 1) < 0.05, (cost.flops, unrolled)
    assert scanned < 0.8 * unrolled  # one of the two layers counted: why the twin is needed
