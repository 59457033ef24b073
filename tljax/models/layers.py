"""Pieces shared by the model families: attention, dropout, activations."""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from tljax.errors import InputError

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


class Linear(nnx.Module):
    """y = x @ kernel + bias, with `kernel` [in, out] (Hugging Face stores `weight` [out, in]).

    Takes a dropout key like every layer, so that methods which wrap a projection (LoRA, adapters) can use
    dropout inside it; the plain projection ignores it.
    """

    def __init__(self, din: int, dout: int, *, use_bias: bool = True, dtype: jnp.dtype = jnp.float32,
                 param_dtype: jnp.dtype = jnp.float32, init_std: float = 0.02, rngs: nnx.Rngs):
        self.kernel = nnx.Param(init_std * jax.random.normal(rngs.params(), (din, dout), param_dtype))
        self.bias = nnx.data(nnx.Param(jnp.zeros((dout,), param_dtype)) if use_bias else None)
        self.in_features, self.out_features = din, dout
        self.dtype = dtype

    @classmethod
    def from_variables(cls, kernel: nnx.Param, bias: nnx.Param | None, dtype: jnp.dtype) -> Linear:
        """A projection around existing parameters (e.g. when a wrapper is removed)."""
        din, dout = kernel.shape
        linear = nnx.eval_shape(lambda: cls(din, dout, use_bias=False, rngs=nnx.Rngs(0)))  # nothing computed
        linear.kernel, linear.bias, linear.dtype = kernel, bias, dtype
        return linear

    def __call__(self, x: Array, dropout_key: Array | None = None) -> Array:
        """[..., in] -> [..., out] in `dtype`."""
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
        return y


def _mix(h: Array) -> Array:
    """MurmurHash3's 32-bit finaliser: every input bit flips each output bit with probability ~1/2."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hash_bits(key: Array, shape: tuple[int, ...]) -> Array:
    """Uniform uint32 bits of `shape`, a counter-based hash of each element's index and `key`'s words.

    Dropout's masks come from here rather than `jax.random.bits`: XLA fuses the hash into the op that uses
    the mask, so no random buffer is materialised, and it costs a few integer operations per element where
    threefry costs dozens (on a CPU, dropout with threefry made a MiniLM training step 25% slower, its
    compilation 40% longer and its peak memory 600 MB higher). Statistically uniform and independent enough
    for dropout; not for sampling or anything cryptographic.
    """
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):  # the element's row-major index (sizes below 2**32)
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    h = index * jnp.uint32(0x9E3779B9)  # spread consecutive indices before mixing in the key
    for word in jax.random.key_data(key).reshape(-1).astype(jnp.uint32):
        h = _mix(h ^ word)
    return h


def dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout; the identity when `key` is None (evaluation) or the rate is 0.

    An element is kept when its `hash_bits` are at least rate * 2**32 (the rate exact to 2**-32)."""
    if key is None or rate == 0.0:
        return x
    keep = hash_bits(key, x.shape) >= jnp.uint32(min(round(rate * 2.0**32), 2**32 - 1))
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def split_heads(x: Array, num_heads: int) -> Array:
    """[batch, seq, heads * head_dim] -> [batch, heads, seq, head_dim]."""
    batch, seq, _ = x.shape
    return x.reshape(batch, seq, num_heads, -1).transpose(0, 2, 1, 3)


def merge_heads(x: Array) -> Array:
    """[batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim]."""
    batch, heads, seq, head_dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, seq, heads * head_dim)


ATTENTION_ENVIRONMENT = "TLJAX_ATTENTION"
ATTENTION_PATHS = ("auto", "fused", "einsum")
FUSED_BACKENDS = ("gpu", "cuda", "rocm")  # `jax.default_backend()` names of the accelerators given the fused path
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)  # cuDNN's fused attention takes half precision only


class AttentionSettingError(InputError):
    """TLJAX_ATTENTION names no attention path."""


def attention_path() -> str:
    """Which attention `attend` traces when dropout is off: "fused" or "einsum".

    TLJAX_ATTENTION=auto (the default) is the fused `jax.nn.dot_product_attention` on a GPU and the heads-first
    einsums elsewhere: on XLA:CPU the two agree to float32 rounding (and the fused one is closer to float32 in
    bfloat16), but the fused one's token-major layout made a grouped-head (SmolLM2-shaped) attention's gradient
    about 30% slower. `fused` or `einsum` force one path on any backend (to compare them).
    """
    chosen = os.environ.get(ATTENTION_ENVIRONMENT, "auto")
    if chosen not in ATTENTION_PATHS:
        raise AttentionSettingError(f"{ATTENTION_ENVIRONMENT}={chosen!r} is not an attention path; "
                                    f"use one of {', '.join(ATTENTION_PATHS)}")
    if chosen == "auto":
        return "fused" if jax.default_backend() in FUSED_BACKENDS else "einsum"
    return chosen


def fused_implementation(dtype: jnp.dtype, head_dim: int, q_len: int, kv_len: int) -> str | None:
    """`implementation` for `jax.nn.dot_product_attention`: "cudnn" where cuDNN's flash attention takes the
    call, else None (XLA's; `implementation=None` never picks cuDNN by itself).

    cuDNN refuses, when tracing, float32, head sizes that are not a multiple of 8 or above 128 (256 from
    Hopper on; 128 holds everywhere), and odd lengths when a mask (turned into a bias) is differentiated;
    those calls go to XLA instead of failing. A decoding step (one query) is such an odd length.
    """
    if jax.default_backend() not in ("gpu", "cuda") or jnp.dtype(dtype) not in [jnp.dtype(d) for d in CUDNN_DTYPES]:
        return None
    if head_dim % 8 or head_dim > 128 or q_len % 2 or kv_len % 2:
        return None
    return "cudnn"


CAUSAL_BLOCK = 128  # query rows per block of a causal attention that skips the keys after each block


def attend(
    query: Array,
    key: Array,
    value: Array,
    mask: Array,
    *,
    dropout_rate: float = 0.0,
    dropout_key: Array | None = None,
    causal_from: int | None = None,
) -> Array:
    """Scaled dot-product attention in the heads-first layout, with grouped key/value heads.

    Scores, their softmax and the products' accumulation are float32 whatever the inputs' dtype; the softmax
    weights are cast to the inputs' dtype before they multiply the values (as PyTorch's SDPA does).

    Args:
      query: [batch, heads, q_len, head_dim].
      key, value: [batch, kv_heads, kv_len, head_dim]; `heads` must be a multiple of `kv_heads`.
      mask: boolean, broadcastable to [batch, 1, q_len, kv_len]; True where a query may attend.
      causal_from: known when tracing for a causal attention: query i sits at key position `causal_from + i`
        and `mask` lets it see no later key. Without dropout, a long one is then computed block by block of
        `CAUSAL_BLOCK` queries, each against the keys up to its block's last query only: the scores above the
        diagonal, masked anyway, are never computed (the same result for every query that sees a key; about 3x
        faster at 1,024 tokens on XLA:CPU, where the full scores' softmax is memory-bound).
    Returns:
      [batch, heads, q_len, head_dim], in the dtype of `query`.
    """
    dropping = dropout_key is not None and dropout_rate > 0.0
    if dropping or attention_path() == "einsum":  # dropout needs the softmax weights materialised
        if not dropping and causal_from is not None and query.shape[2] > CAUSAL_BLOCK:
            return _attend_causal_blocks(query, key, value, mask, causal_from)
        return _attend_einsum(query, key, value, mask, dropout_rate, dropout_key if dropping else None)
    return _attend_fused(query, key, value, mask)


def _attend_causal_blocks(query: Array, key: Array, value: Array, mask: Array, causal_from: int) -> Array:
    """`_attend_einsum` one block of queries at a time, against the keys up to the block's last position; same
    shapes as `attend`. A query that sees no key at all (a padding row) averages fewer keys than in one block."""
    q_len, kv_len = query.shape[2], key.shape[2]
    mask = jnp.broadcast_to(mask, mask.shape[:2] + (q_len, kv_len))
    blocks = []
    for start in range(0, q_len, CAUSAL_BLOCK):
        stop = min(start + CAUSAL_BLOCK, q_len)
        seen = min(causal_from + stop, kv_len)
        blocks.append(_attend_einsum(query[:, :, start:stop], key[:, :, :seen], value[:, :, :seen],
                                     mask[:, :, start:stop, :seen], 0.0, None))
    return jnp.concatenate(blocks, axis=2)


def _attend_fused(query: Array, key: Array, value: Array, mask: Array) -> Array:
    """`jax.nn.dot_product_attention` (token-major [B, T, N, D]); same shapes as `attend`."""
    batch, heads, q_len, head_dim = query.shape
    kv_len = key.shape[2]
    # cuDNN wants the mask's query axis in full; a mask given per key ([B, 1, 1, S]) is broadcast.
    mask = jnp.broadcast_to(mask, (mask.shape[0], 1, q_len, kv_len))
    with jax.numpy_dtype_promotion("standard"):  # its XLA path promotes bfloat16 logits with float32 itself
        out = jax.nn.dot_product_attention(
            query.transpose(0, 2, 1, 3), key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3), mask=mask,
            implementation=fused_implementation(query.dtype, head_dim, q_len, kv_len))
    return out.transpose(0, 2, 1, 3)


def _attend_einsum(query: Array, key: Array, value: Array, mask: Array, dropout_rate: float,
                   dropout_key: Array | None) -> Array:
    """Attention as two einsums around a float32 softmax; same shapes as `attend`."""
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    # Heads-first matmuls: XLA:CPU fuses a "bqhd" einsum into one slow kernel.
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, q_len, head_dim)
    # Scores accumulate and stay in float32 (a bfloat16 score is off by up to 2**-8 of itself before softmax).
    scores = jnp.einsum("bkgqd,bksd->bkgqs", grouped, key, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(head_dim))
    # A large finite negative (not -inf) keeps fully masked rows (padding queries) finite, as PyTorch does.
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(query.dtype)
    weights = dropout(weights, dropout_rate, dropout_key)
    out = jnp.einsum("bkgqs,bksd->bkgqd", weights, value, preferred_element_type=jnp.float32)
    return out.astype(query.dtype).reshape(batch, heads, q_len, head_dim)


def layer_keys(key: Array | None, count: int) -> list[Array | None]:
    """One dropout key per layer (or None for all when evaluating)."""
    if key is None:
        return [None] * count
    return list(jax.random.split(key, count))


class LayerNorm(nnx.Module):
    """LayerNorm with float32 statistics whatever the activation dtype (`scale`, `bias`: [features])."""

    def __init__(self, features: int, eps: float, *, dtype: jnp.dtype, param_dtype: jnp.dtype):
        self.scale = nnx.Param(jnp.ones((features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        """[..., features] -> same shape, in `dtype`."""
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        centred = x32 - mean
        normed = centred * jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + self.eps)
        shape = (1,) * (x.ndim - 1) + (-1,)
        scale = self.scale[...].astype(jnp.float32).reshape(shape)
        bias = self.bias[...].astype(jnp.float32).reshape(shape)
        return (normed * scale + bias).astype(self.dtype)
