"""Chat tuning's objective computes its loss and its reply scores from the logits of the reply's tokens only: the
same values as from the logits of every position."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tljax.data.batches import Encoded, make_batch
from tljax.data.chat import encode_pair, encode_pairs
from tljax.models import DecoderConfig, LlamaForCausalLM
from tljax.train.chat import ChatTuning, reply_labels
from tljax.train.losses import language_model_loss

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, max_position_embeddings=64, attention_dropout=0.2, initializer_range=0.2)


def full_logit_scores(model, batch) -> np.ndarray:
    """Each row's summed reply log-probability [B] from the logits of every position."""
    log_probs = jax.nn.log_softmax(model(batch["input_ids"], batch["attention_mask"])[:, :-1])
    targets = batch["labels"][:, 1:]
    token = jnp.take_along_axis(log_probs, jnp.where(targets != -100, targets, 0)[..., None], axis=-1)[..., 0]
    return np.asarray(jnp.where(targets != -100, token, 0.0).sum(-1))


@pytest.mark.parametrize("method", [None, "prompt"])
def test_the_reply_loss_and_scores_equal_those_of_every_positions_logits(rng, method):
    from tljax.methods import adapt, make_method

    model = LlamaForCausalLM.from_config(DecoderConfig.from_hf(TINY), seed=0)
    if method:  # virtual tokens before the text: the reply's positions shift in the hidden states
        model = adapt(model, [make_method(method, {"num_virtual_tokens": 3})]).model
    # prompts of 5 to 11 tokens, replies of 1 to 3 (one row fills the batch's width), and a padding row
    prompts, replies = [5, 9, 6, 13], [1, 3, 2, 3]
    rows = tuple(rng.randint(3, TINY["vocab_size"], p + r).astype(np.int32) for p, r in zip(prompts, replies))
    extras = {"reply_start": np.asarray(prompts, np.int32), "example": np.arange(4, dtype=np.int32),
              "label": np.zeros(4, np.int32), "gold": np.zeros(4, np.int32)}
    objective = ChatTuning(None, {"train": Encoded(rows, np.zeros(4, np.int32), 0, extras)}, 0, 16,
                           label_names=("a", "b"))
    assert objective.reply_width == 3
    batch = reply_labels(make_batch(objective.encoded["train"], [0, 1, 2, 3], 5, 0, 16))
    assert batch["input_ids"].shape == (5, 16) and len(rows[3]) == 16

    key = jax.random.key(3)  # with attention dropout on: the same dropout masks as the full forward's
    (loss, metrics), (reference, reference_metrics) = objective.loss(model, batch, key), \
        language_model_loss(model, batch, key)
    # the same float32 arithmetic per reply token (the projection's rows are the same dot products), summed in
    # another order over 9 tokens: a few units of float32 rounding (u = 6e-8) of a loss of about 4.6
    np.testing.assert_allclose(float(loss), float(reference), rtol=1e-6)
    assert float(metrics["accuracy"]) == float(reference_metrics["accuracy"])
    scores = np.asarray(objective.outputs(model, batch))
    np.testing.assert_allclose(scores, full_logit_scores(model, batch), rtol=1e-6)
    assert scores[4] == 0.0 and (scores[:4] < 0).all()  # the padding row scores nothing


def test_pairs_encoded_in_a_batch_split_as_lm_evaluation_harness_splits_them(tiny_decoder):
    import transformers
    from lm_eval_reference import encode_pair as reference_pair

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_decoder)
    pairs = [("the film was", " good"), ("the film was ", "bad"), ("a plot  ", " great fun"), ("user hi", "good")]
    assert encode_pairs(tokenizer, pairs) == [tuple(map(list, reference_pair(tokenizer, c, t))) for c, t in pairs]
    assert encode_pairs(tokenizer, pairs)[1] == encode_pair(tokenizer, "the film was", " bad")  # the space moves
    assert encode_pairs(tokenizer, []) == []


@pytest.mark.parametrize("method", [None, "prompt", "lora"])
def test_rows_that_share_a_start_give_the_whole_rows_loss_gradients_and_scores(rng, method):
    """The shared start is kept once and run once per batch (`split_shared_start`); without dropout, the loss, its
    gradients and the reply scores are those of the whole rows."""
    from flax import nnx

    from tljax.methods import adapt, make_method
    from tljax.train.chat import split_shared_start

    model = LlamaForCausalLM.from_config(DecoderConfig.from_hf({**TINY, "attention_dropout": 0.0}), seed=0)
    trainable = nnx.Param  # every parameter without a method, else what the method trains
    if method:
        settings = {"num_virtual_tokens": 3} if method == "prompt" else {"rank": 4, "dropout": 0.0}
        adaptation = adapt(model, [make_method(method, settings)])
        model, trainable = adaptation.model, adaptation.trainable()
    start = rng.randint(3, TINY["vocab_size"], 20).astype(np.int32)  # 20 tokens every prompt starts with
    prompts, replies = [3, 9, 1, 12], [1, 3, 2, 3]  # each prompt's own tokens after the start
    rows = tuple(np.concatenate([start, rng.randint(3, TINY["vocab_size"], p + r)]).astype(np.int32)
                 for p, r in zip(prompts, replies))
    extras = {"reply_start": np.asarray(prompts, np.int32) + 20, "example": np.arange(4, dtype=np.int32),
              "label": np.zeros(4, np.int32), "gold": np.zeros(4, np.int32)}
    whole = {"train": Encoded(rows, np.zeros(4, np.int32), 0, extras)}
    shared, rest = split_shared_start(whole)
    np.testing.assert_array_equal(shared, start)
    assert [len(ids) for ids in rest["train"].ids] == [p + r for p, r in zip(prompts, replies)]
    objectives = {"whole": ChatTuning(None, whole, 0, 40, label_names=("a", "b")),
                  "shared": ChatTuning(None, rest, 0, 40, label_names=("a", "b"), shared=shared)}
    results = {}
    for name, objective in objectives.items():
        batch = reply_labels(make_batch(objective.encoded["train"], [0, 1, 2, 3], 5, 0, 40))
        graphdef, params, rest_state = nnx.split(model, trainable, ...)

        def loss_of(params, batch=batch, objective=objective):
            return objective.loss(nnx.merge(graphdef, params, rest_state), batch, jax.random.key(0))[0]

        loss, grads = jax.jit(jax.value_and_grad(loss_of))(params)
        results[name] = (float(loss), grads, np.asarray(objective.outputs(model, batch)))
    (loss, grads, scores), (reference, reference_grads, reference_scores) = results["shared"], results["whole"]
    # the same arithmetic over keys and values of the same tokens, summed in another order: float32 rounding
    np.testing.assert_allclose(loss, reference, rtol=1e-5)
    np.testing.assert_allclose(scores, reference_scores, rtol=1e-5)
    expected = dict(nnx.to_flat_state(reference_grads))
    assert expected  # compared leaf by leaf below
    for path, value in nnx.to_flat_state(grads):
        np.testing.assert_allclose(np.asarray(value[...]), np.asarray(expected[path][...]), rtol=1e-4, atol=1e-6,
                                   err_msg=str(path))
