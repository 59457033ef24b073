"""The encoder family against the PyTorch reference (`transformers` BERT) on tiny random configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from conftest import padded_batch
from tljax.models import (BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification, BertModel,
                          from_pretrained, mean_pool)

TINY = dict(vocab_size=211, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2)
CLASSES = [
    (transformers.BertModel, BertModel),
    (transformers.BertForSequenceClassification, BertForSequenceClassification),
    (transformers.BertForMaskedLM, BertForMaskedLM),
    (transformers.BertForTokenClassification, BertForTokenClassification),
]


def torch_model(cls, **changes):
    torch.manual_seed(0)
    return cls(transformers.BertConfig(**TINY, **changes)).eval()


def torch_output(model, ids, mask, token_types=None) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=None if token_types is None else torch.tensor(token_types))
    return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits).float().numpy()


def assert_rounds_like_pytorch(ours: np.ndarray, pytorch_low: np.ndarray, exact: np.ndarray) -> None:
    """`ours` [N, D] and `pytorch_low` are one model's outputs computed in a 16-bit float, `exact` the same model
    in float32 on the same weights; ours must be no further from `exact` than 1.5x PyTorch's own distance (root
    mean square over every value).

    Why this bound: bfloat16 keeps an 8-bit significand (relative rounding 2^-8 per operation), float16 11 bits
    (2^-11). Both implementations round at about as many points (every matmul, activation and residual output;
    both keep LayerNorm / RMSNorm statistics and softmax in float32), not all at the same ones, so each is off
    from `exact` by a sum of roundings of the same size and independent signs: the expected ratio of the two
    distances is 1. Measured on the tiny BERT and Llama of these tests with 8 seeds each, in both dtypes (32
    models), the ratio lies in 0.70-1.28 (the maximum absolute error is noisier: 0.54-1.65). A checkpoint cast
    to a coarser dtype than PyTorch's (float16 through bfloat16: 8x the rounding) or a weight loaded wrongly is
    several times over; PyTorch's distance itself is checked to be a rounding error, neither zero nor large."""
    ours, pytorch_low, exact = (np.asarray(a, np.float32) for a in (ours, pytorch_low, exact))
    ours_error, pytorch_error = (float(np.sqrt(np.mean((a - exact) ** 2))) for a in (ours, pytorch_low))
    assert 0 < pytorch_error < 0.05 * float(np.sqrt(np.mean(exact**2)))
    assert ours_error <= 1.5 * pytorch_error, f"ours is off by {ours_error:.2e} (RMS), PyTorch by {pytorch_error:.2e}"


@pytest.mark.parametrize("torch_cls, ours", CLASSES, ids=lambda c: getattr(c, "__name__", ""))
def test_outputs_match_pytorch_on_a_padded_batch(tmp_path, rng, torch_cls, ours):
    reference = torch_model(torch_cls, hidden_act="gelu")
    reference.save_pretrained(tmp_path)
    ids, mask = padded_batch(rng, TINY["vocab_size"], [9, 4, 1])
    token_types = (np.arange(9)[None] >= 5).astype(np.int64).repeat(3, 0) * mask
    model = ours.from_pretrained(tmp_path)
    forward = nnx.jit(lambda m, *a: m(*a))
    out = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(token_types)))
    np.testing.assert_allclose(out, torch_output(reference, ids, mask, token_types), atol=1e-5, rtol=0)


@pytest.mark.parametrize("torch_cls, ours", CLASSES, ids=lambda c: getattr(c, "__name__", ""))
def test_saved_directory_loads_in_pytorch_with_the_same_outputs(tmp_path, rng, torch_cls, ours):
    config = transformers.BertConfig(**TINY)
    from tljax.models import EncoderConfig

    model = ours.from_config(EncoderConfig.from_hf(config.to_dict() | {"id2label": {0: "neg", 1: "pos", 2: "mix"}}),
                             seed=3)
    model.save_pretrained(tmp_path / "saved")
    reloaded = torch_cls.from_pretrained(tmp_path / "saved").eval()
    ids, mask = padded_batch(rng, TINY["vocab_size"], [7, 3])
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))),
                               torch_output(reloaded, ids, mask), atol=1e-5, rtol=0)
    again = ours.from_pretrained(tmp_path / "saved")
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(again))):
        np.testing.assert_array_equal(a, b)


def test_backbone_checkpoint_gets_a_fresh_classifier_and_keeps_every_backbone_weight(tmp_path):
    reference = torch_model(transformers.BertModel)
    reference.save_pretrained(tmp_path)
    model = BertForSequenceClassification.from_pretrained(tmp_path, id2label={0: "a", 1: "b", 2: "c"})
    assert model.classifier.kernel.shape == (32, 3)
    np.testing.assert_array_equal(np.asarray(model.bert.encoder.layer[1].output.dense.kernel[...]),
                                  reference.encoder.layer[1].output.dense.weight.detach().numpy().T)
    assert 0.001 < float(jnp.std(model.classifier.kernel[...])) < 0.1  # initialised, not zeros


def test_classifier_checkpoint_loads_as_a_backbone(tmp_path, rng):
    reference = torch_model(transformers.BertForSequenceClassification)
    reference.save_pretrained(tmp_path)
    ids, mask = padded_batch(rng, TINY["vocab_size"], [5, 2])
    backbone = from_pretrained(tmp_path)  # task "base"
    assert isinstance(backbone, BertModel)
    with torch.no_grad():
        expected = reference.bert(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(backbone(jnp.asarray(ids), jnp.asarray(mask))), expected, atol=1e-5)


def test_bfloat16_runs_jitted_and_rounds_as_pytorch_does(tmp_path, rng):
    reference = torch_model(transformers.BertModel)
    reference.save_pretrained(tmp_path)
    ids, mask = padded_batch(rng, TINY["vocab_size"], [8, 5, 3])
    half = BertModel.from_pretrained(tmp_path, dtype=jnp.bfloat16)  # float32 weights rounded to bfloat16
    low = nnx.jit(lambda m, i, a: m(i, a))(half, jnp.asarray(ids), jnp.asarray(mask))
    assert low.dtype == jnp.bfloat16 and half.encoder.layer[0].attention.self.query.kernel.dtype == jnp.bfloat16
    assert mean_pool(low, jnp.asarray(mask)).dtype == jnp.bfloat16
    # PyTorch rounds the float32 weights to bfloat16 as we do (to nearest, ties to even): the same model
    pytorch_low = torch_output(reference.to(torch.bfloat16), ids, mask)
    exact = torch_output(reference.float(), ids, mask)
    real = mask.astype(bool)
    assert_rounds_like_pytorch(np.asarray(low)[real], pytorch_low[real], exact[real])


def test_mixed_precision_keeps_float32_parameters(tmp_path, rng):
    torch_model(transformers.BertModel).save_pretrained(tmp_path)
    model = BertModel.from_pretrained(tmp_path, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    ids, mask = padded_batch(rng, TINY["vocab_size"], [4])
    assert model.embeddings.word_embeddings.embedding.dtype == jnp.float32
    assert model(jnp.asarray(ids), jnp.asarray(mask)).dtype == jnp.bfloat16


def test_padding_does_not_change_real_tokens(tmp_path, rng):
    torch_model(transformers.BertModel).save_pretrained(tmp_path)
    model = BertModel.from_pretrained(tmp_path)
    ids, mask = padded_batch(rng, TINY["vocab_size"], [6, 3])
    batched = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    alone = np.asarray(model(jnp.asarray(ids[1:, :3]), jnp.asarray(mask[1:, :3])))
    np.testing.assert_allclose(batched[1, :3], alone[0], atol=1e-5)


def test_dropout_key_switches_dropout_on(tmp_path, rng):
    torch_model(transformers.BertForSequenceClassification).save_pretrained(tmp_path)
    model = BertForSequenceClassification.from_pretrained(tmp_path)
    ids, mask = padded_batch(rng, TINY["vocab_size"], [6, 3])
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    a = model(ids, mask, dropout_key=jax.random.key(0))
    b = model(ids, mask, dropout_key=jax.random.key(1))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model(ids, mask), model(ids, mask))


def test_dropout_drops_at_its_rate_independently_and_reproducibly():
    from tljax.models.layers import dropout, hash_bits

    x = jnp.ones((400, 500))
    for rate in (0.1, 0.5):
        out = np.asarray(dropout(x, rate, jax.random.key(3)))
        dropped = out == 0
        # 200,000 Bernoulli(rate) draws: the share lies within 5 standard deviations of the rate
        assert abs(dropped.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / dropped.size)
        np.testing.assert_allclose(out[~dropped], 1 / (1 - rate), rtol=1e-6)  # inverted: the mean is kept
        assert abs(out.mean() - 1) < 0.01
    np.testing.assert_array_equal(dropout(x, 0.1, jax.random.key(3)), dropout(x, 0.1, jax.random.key(3)))
    a, b = (np.asarray(hash_bits(jax.random.key(k), (400, 500)), np.float64) for k in (0, 1))
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01  # another key, other bits
    assert abs(np.corrcoef(a.ravel()[:-1], a.ravel()[1:])[0, 1]) < 0.01  # neighbours uncorrelated
    assert abs(np.corrcoef(a[:-1].ravel(), a[1:].ravel())[0, 1]) < 0.01  # rows too
    both = (np.asarray(dropout(x, 0.5, jax.random.key(0))) == 0) & (np.asarray(dropout(x, 0.5, jax.random.key(1))) == 0)
    assert abs(both.mean() - 0.25) < 0.01  # two keys' masks are independent
    np.testing.assert_array_equal(dropout(x, 0.1, None), x)
