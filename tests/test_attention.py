"""Attention's two paths (heads-first einsums, `jax.nn.dot_product_attention`) on the masks the models build."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tljax.methods import adapt, make_method
from tljax.models import DecoderConfig, LlamaForCausalLM, generate
from tljax.models import layers
from tljax.models.layers import AttentionSettingError, attend, fused_implementation

PATHS = ("einsum", "fused")
TINY = DecoderConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                     num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)


def qkv(seed: int, batch: int, heads: int, kv_heads: int, q_len: int, kv_len: int, dim: int, scale: float = 1.0):
    """Random query [B, N, T, D] and key, value [B, K, S, D], exactly representable in bfloat16."""
    r = np.random.default_rng(seed)
    shapes = ((batch, heads, q_len, dim), (batch, kv_heads, kv_len, dim), (batch, kv_heads, kv_len, dim))
    return [jnp.asarray(r.normal(size=s) * scale, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32)
            for s in shapes]


def traced(fn):
    """`fn` jitted afresh: the attention path is read when tracing, and `jax.jit(fn)` reuses `fn`'s traces."""
    return jax.jit(lambda *args: fn(*args))


def padding_and_causal_masks() -> dict[str, np.ndarray]:
    """The masks the models build: [B, 1, T or 1, S], True where a query may see a key."""
    lengths = np.array([8, 5, 2])
    right = np.arange(8)[None] < lengths[:, None]
    left = right[:, ::-1]
    causal = np.tril(np.ones((8, 8), bool))
    prefix = np.ones((3, 1, 8, 3), bool)  # prefix tuning's keys, seen by every query
    return {
        "encoder padding": right[:, None, None, :],
        "left-padded causal": left[:, None, None, :] & causal[None, None],
        "prefix keys": np.concatenate([prefix, left[:, None, None, :] & causal[None, None]], -1),
        # one decoding step after 5 cached slots of a 12-slot cache: later slots are empty
        "KV cache step": np.broadcast_to(np.arange(12) <= 5, (3, 1, 1, 12)) & np.pad(left, ((0, 0), (0, 4)),
                                                                                      constant_values=True)[:, None, None],
    }


@pytest.mark.parametrize("name", list(padding_and_causal_masks()))
def test_the_fused_path_equals_the_einsums_on_every_mask(monkeypatch, name):
    mask = jnp.asarray(padding_and_causal_masks()[name])
    q, k, v = qkv(0, 3, 6, 2, mask.shape[2], mask.shape[3], 16)
    outputs = {}
    for path in PATHS:
        monkeypatch.setenv("TLJAX_ATTENTION", path)
        outputs[path] = np.asarray(traced(attend)(q, k, v, mask))
    # Both are the same float32 sums in another order: a few units of float32 rounding on outputs of order 1.
    np.testing.assert_allclose(outputs["fused"], outputs["einsum"], atol=2e-6)


@pytest.mark.parametrize("path", PATHS)
def test_bfloat16_attention_keeps_float32_scores(monkeypatch, path):
    """Large scores (|q.k|/sqrt(d) up to ~60) rounded to bfloat16 move by up to 0.25, which reweights the
    softmax by up to e^0.25; with float32 scores the only roundings left are the weights' and the output's
    cast to bfloat16, each at most 2**-9 relative, so the output is within 2**-8 * max|v| of float32's."""
    monkeypatch.setenv("TLJAX_ATTENTION", path)
    q, k, v = qkv(1, 2, 4, 4, 8, 8, 32, scale=2.0)
    mask = jnp.ones((2, 1, 8, 8), bool)
    low = traced(attend)(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask)
    exact = np.asarray(traced(attend)(q, k, v, mask))
    assert low.dtype == jnp.bfloat16
    bound = 2.0**-8 * float(jnp.abs(v).max()) + 1e-6
    assert np.abs(np.asarray(low, np.float32) - exact).max() <= bound


def test_cached_generation_with_a_prefix_is_the_same_on_both_paths(monkeypatch):
    model = LlamaForCausalLM.from_config(TINY, seed=3)
    adaptation = adapt(model, [make_method("prefix", {"num_virtual_tokens": 3})])
    ids = np.random.default_rng(0).integers(3, 97, (2, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # left padding
    tokens, logits = {}, {}
    for path in PATHS:
        monkeypatch.setenv("TLJAX_ATTENTION", path)
        tokens[path] = np.asarray(generate(adaptation.model, ids, mask, max_new_tokens=6, eos_token_ids=()))
        logits[path] = np.asarray(adaptation.model(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_array_equal(tokens["fused"], tokens["einsum"])
    np.testing.assert_allclose(logits["fused"], logits["einsum"], atol=1e-5)  # float32 rounding, logits ~ 1


def test_an_unknown_attention_path_is_refused(monkeypatch):
    monkeypatch.setenv("TLJAX_ATTENTION", "flash")
    q, k, v = qkv(0, 1, 2, 2, 4, 4, 8)
    with pytest.raises(AttentionSettingError, match="TLJAX_ATTENTION='flash'.*auto, fused, einsum"):
        attend(q, k, v, jnp.ones((1, 1, 4, 4), bool))


def test_cudnn_is_asked_for_only_where_it_takes_the_call(monkeypatch):
    # The backend is set either way: the GPU check runs this file on a GPU.
    monkeypatch.setattr(layers.jax, "default_backend", lambda: "cpu")
    assert fused_implementation(jnp.bfloat16, 64, 128, 128) is None  # not on a CPU
    monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
    assert fused_implementation(jnp.bfloat16, 64, 128, 128) == "cudnn"
    assert fused_implementation(jnp.float16, 32, 8, 10) == "cudnn"
    assert fused_implementation(jnp.float32, 64, 128, 128) is None  # cuDNN: half precision only
    assert fused_implementation(jnp.bfloat16, 36, 128, 128) is None  # head size not a multiple of 8
    assert fused_implementation(jnp.bfloat16, 64, 1, 128) is None  # a decoding step: odd query length
