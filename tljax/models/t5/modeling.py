"""T5 encoder-decoders in Flax NNX with Hugging Face module names (T5 v1.0, T5 v1.1, Flan-T5).

Pre-norm blocks with T5's LayerNorm (a scale, no mean, no bias), attention without the 1/sqrt(d) scaling whose
scores get a learned bias per head and bucket of relative position (the first block of each stack holds the
table, every block reuses it), a ReLU or gated-GELU feed-forward, no biases anywhere. The decoder's self-attention
cache and the cross-attention keys and values (computed once per source) are passed in and returned (`T5Cache`),
never stored in the module, so every call stays a pure function.

Layers: the layout's "{i}" matches block i of both stacks (`encoder/block/i/` and `decoder/block/i/`), so "the
bottom k layers" of partial fine-tuning are the bottom k blocks of each stack, and gradual unfreezing unfreezes the
encoder's and the decoder's top blocks together; `num_layers` is the deeper stack's count.

Methods: a soft prompt (prompt tuning, P-tuning) goes before the source's embeddings, as PEFT feeds a seq2seq
model; prefix tuning's keys and values come first in the self-attention of every block of both stacks (the
cross-attention has no slot: it reads the encoder's output, which the encoder's prefix already shaped), at
positions 0..P-1 with the tokens after them, as a PyTorch T5 places past keys and values.

Shapes: B batch, T tokens (decoder: target tokens), S source tokens (with virtual prompt tokens), C cache slots,
H hidden (d_model), N heads, D head size (d_kv), F feed-forward width (d_ff), V vocab.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Self

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from tljax.models.base import Layout, PretrainedModel, read_config_dict
from tljax.models.checkpoint import read_tensors
from tljax.models.config import ConfigError
from tljax.models.layers import ACTIVATIONS, Linear, dropout, layer_keys, merge_heads, split_heads
from tljax.models.t5.config import T5Config
from tljax.models.t5.generate import sample

Array = jax.Array

T5_LAYOUT = Layout(
    layer=r"(?:^|/)(?:encoder|decoder)/block/{i}/",
    embeddings=r"(?:^|/)shared/",
    norms=r"/layer/\d+/layer_norm/weight$",
    # as Hugging Face's Trainer: names with "bias" (the relative position table too) and the norms
    no_decay=r"(?:^|/)bias$|relative_attention_bias/|layer_norm/",
    attention_output=r"SelfAttention/o$",
    feed_forward_output=r"DenseReluDense/wo$",
    above_layers=r"(?:^|/)(?:encoder|decoder)/final_layer_norm/|(?:^|/)lm_head/",
    # every projection of every attention, self and cross, in both stacks (PEFT's default for T5 is q and v)
    lora_targets=("q", "k", "v", "o"),
)

# a cross-attention position table that old checkpoints carry and no T5 reads (Hugging Face ignores it too)
UNUSED_CROSS_BIAS = r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\."


class T5Cache(NamedTuple):
    """What decoding reuses: the decoder's self-attention keys and values in fixed-size buffers (one compiled
    shape), and the cross-attention keys and values of the source, computed once."""

    keys: tuple[Array, ...]  # per decoder block [B, N, C, D]
    values: tuple[Array, ...]  # per decoder block [B, N, C, D]
    cross_keys: tuple[Array, ...]  # per decoder block [B, N, S, D]
    cross_values: tuple[Array, ...]  # per decoder block [B, N, S, D]
    source_mask: Array  # [B, S] bool: the source position holds a real token
    index: Array  # [] int32: the next slot to write

    def take(self, rows: Array) -> T5Cache:
        """The cache of rows `rows` [R] (beam search continues some beams twice and drops others)."""
        pick = lambda x: jnp.take(x, rows, axis=0)  # noqa: E731
        return T5Cache(tuple(map(pick, self.keys)), tuple(map(pick, self.values)), tuple(map(pick, self.cross_keys)),
                       tuple(map(pick, self.cross_values)), pick(self.source_mask), self.index)


def relative_position_bucket(relative: Array, *, bidirectional: bool, num_buckets: int, max_distance: int) -> Array:
    """T5's bucket of each relative position (key position - query position), int32 [...] -> int32 [...] in
    [0, num_buckets): exact buckets for the nearest half, logarithmic ones up to `max_distance`, one for beyond.
    Bidirectional (the encoder): half the buckets for keys after the query; else later keys share bucket 0."""
    buckets = jnp.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).astype(relative.dtype) * num_buckets
        distance = jnp.abs(relative)
    else:
        distance = -jnp.minimum(relative, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # float32 as PyTorch computes it (the truncation to an integer must round the same way); distance 0 is
    # small, and the maximum keeps its logarithm finite
    scaled = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
              / np.float32(math.log(max_distance / max_exact)) * (num_buckets - max_exact))
    large = jnp.minimum(max_exact + scaled.astype(relative.dtype), num_buckets - 1)
    return buckets + jnp.where(is_small, distance, large)


def attend_with_bias(query: Array, key: Array, value: Array, bias: Array | None, mask: Array, *,
                     dropout_rate: float = 0.0, dropout_key: Array | None = None) -> Array:
    """T5's attention: unscaled dot products plus a position bias, a float32 softmax over the allowed keys.

    Args:
      query: [B, N, T, D]; key, value: [B, N, K, D].
      bias: float32, broadcastable to [B, N, T, K], or None.
      mask: bool, broadcastable to [B, 1, T, K]; True where a query may attend.
    Returns:
      [B, N, T, D] in the dtype of `query`.
    """
    scores = jnp.einsum("bnqd,bnkd->bnqk", query, key, preferred_element_type=jnp.float32)
    if bias is not None:
        scores = scores + bias
    # a large finite negative (not -inf) keeps fully masked rows (padding queries) finite, as PyTorch does
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = dropout(jax.nn.softmax(scores, axis=-1).astype(query.dtype), dropout_rate, dropout_key)
    return jnp.einsum("bnqk,bnkd->bnqd", weights, value, preferred_element_type=jnp.float32).astype(query.dtype)


class T5LayerNorm(nnx.Module):
    """x / sqrt(mean(x^2) + eps) * weight: no mean subtracted, no bias; statistics in float32."""

    def __init__(self, size: int, eps: float, *, dtype, param_dtype):
        self.weight = nnx.Param(jnp.ones((size,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        """[..., H] -> same shape, in `dtype`."""
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        weight = self.weight[...].astype(self.dtype).reshape((1,) * (x.ndim - 1) + (-1,))
        return weight * normed.astype(self.dtype)


def _linear(din: int, dout: int, std: float, dtype, param_dtype, rngs: nnx.Rngs) -> Linear:
    return Linear(din, dout, use_bias=False, dtype=dtype, param_dtype=param_dtype, init_std=std, rngs=rngs)


class T5Attention(nnx.Module):
    """Projections `q`, `k`, `v`, `o` (no biases), and in a stack's first block the relative position table
    `relative_attention_bias` [buckets, N] that every block of the stack adds to its scores. A self-attention has a
    `prefix` slot (prefix tuning: keys and values [B, N, P, D] before its own); a cross-attention has none."""

    def __init__(self, config: T5Config, *, has_relative_attention_bias: bool, bidirectional: bool, dtype,
                 param_dtype, rngs: nnx.Rngs, takes_prefix: bool = False):
        h, n, d, factor = config.d_model, config.num_heads, config.d_kv, config.initializer_factor
        # Hugging Face's T5 initialisation: the query absorbs the 1/sqrt(d) the scores are not scaled by
        self.q = _linear(h, n * d, factor * (h * d) ** -0.5, dtype, param_dtype, rngs)
        self.k = _linear(h, n * d, factor * h ** -0.5, dtype, param_dtype, rngs)
        self.v = _linear(h, n * d, factor * h ** -0.5, dtype, param_dtype, rngs)
        self.o = _linear(n * d, h, factor * (n * d) ** -0.5, dtype, param_dtype, rngs)
        self.relative_attention_bias = nnx.data(
            nnx.Embed(config.relative_attention_num_buckets, n, dtype=dtype, param_dtype=param_dtype,
                      embedding_init=nnx.initializers.normal(factor * h ** -0.5), rngs=rngs)
            if has_relative_attention_bias else None)
        self.num_heads = n
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.dropout_rate = config.dropout_rate
        if takes_prefix:  # the slot prefix tuning finds (`tljax.methods.prefix.attention_modules`)
            self.prefix = nnx.data(None)

    def position_bias(self, query_positions: Array, key_positions: Array) -> Array:
        """The relative position bias of queries at [T] and keys at [K] -> float32 [1, N, T, K]."""
        buckets = relative_position_bucket(key_positions[None, :] - query_positions[:, None],
                                           bidirectional=self.bidirectional, num_buckets=self.num_buckets,
                                           max_distance=self.max_distance)
        return self.relative_attention_bias(buckets).astype(jnp.float32).transpose(2, 0, 1)[None]

    def keys_values(self, source: Array, dropout_key: Array | None = None) -> tuple[Array, Array]:
        """Hidden states [B, K, H] -> their keys and values [B, N, K, D] each."""
        k1, k2 = layer_keys(dropout_key, 2)
        return split_heads(self.k(source, k1), self.num_heads), split_heads(self.v(source, k2), self.num_heads)

    def __call__(self, x: Array, bias: Array | None, mask: Array, *, source: Array | None = None,
                 keys_values: tuple[Array, Array] | None = None, cache: tuple[Array, Array, Array] | None = None,
                 dropout_key: Array | None = None) -> tuple[Array, tuple[Array, Array] | None]:
        """x [B, T, H] -> ([B, T, H], the updated (keys, values) buffers when `cache` is given).

        Keys and values come from `keys_values` (already projected, [B, N, K, D]), else from `source` [B, K, H]
        (cross-attention), else from x itself (self-attention). `cache` (keys, values [B, N, C, D], write index):
        x's keys and values are written at the index and the queries attend to the whole buffer.
        `bias`: float32 broadcastable to [B, N, T, K]; `mask`: bool broadcastable to [B, 1, T, K]."""
        k_query, k_kv, k_weights, k_out = layer_keys(dropout_key, 4)
        q = split_heads(self.q(x, k_query), self.num_heads)
        k, v = keys_values if keys_values is not None else self.keys_values(x if source is None else source, k_kv)
        prefix = getattr(self, "prefix", None)
        if prefix is not None and cache is None:  # (a decoding cache holds the prefix in its first slots)
            prefix_k, prefix_v = prefix(x.shape[0])
            k = jnp.concatenate([prefix_k.astype(k.dtype), k], axis=2)
            v = jnp.concatenate([prefix_v.astype(v.dtype), v], axis=2)
        new_cache = None
        if cache is not None:
            cached_k, cached_v, index = cache
            k = jax.lax.dynamic_update_slice_in_dim(cached_k, k.astype(cached_k.dtype), index, axis=2)
            v = jax.lax.dynamic_update_slice_in_dim(cached_v, v.astype(cached_v.dtype), index, axis=2)
            new_cache = (k, v)
        out = attend_with_bias(q, k.astype(q.dtype), v.astype(q.dtype), bias, mask, dropout_rate=self.dropout_rate,
                               dropout_key=k_weights)
        return self.o(merge_heads(out), k_out), new_cache


class T5LayerSelfAttention(nnx.Module):
    def __init__(self, config: T5Config, *, has_relative_attention_bias: bool, bidirectional: bool, dtype,
                 param_dtype, rngs: nnx.Rngs):
        self.SelfAttention = T5Attention(config, has_relative_attention_bias=has_relative_attention_bias,
                                         bidirectional=bidirectional, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                         takes_prefix=True)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype)
        self.dropout_rate = config.dropout_rate

    def __call__(self, x, bias, mask, cache=None, dropout_key=None):
        k1, k2 = layer_keys(dropout_key, 2)
        out, new_cache = self.SelfAttention(self.layer_norm(x), bias, mask, cache=cache, dropout_key=k1)
        return x + dropout(out, self.dropout_rate, k2), new_cache


class T5LayerCrossAttention(nnx.Module):
    def __init__(self, config: T5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.EncDecAttention = T5Attention(config, has_relative_attention_bias=False, bidirectional=True,
                                           dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype)
        self.dropout_rate = config.dropout_rate

    def __call__(self, x, mask, source=None, keys_values=None, dropout_key=None):
        k1, k2 = layer_keys(dropout_key, 2)
        # no position bias across the two sequences
        out, _ = self.EncDecAttention(self.layer_norm(x), None, mask, source=source, keys_values=keys_values,
                                      dropout_key=k1)
        return x + dropout(out, self.dropout_rate, k2)


class T5DenseActDense(nnx.Module):
    """T5 v1.0's feed-forward: wo(act(wi(x)))."""

    def __init__(self, config: T5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        h, f, factor = config.d_model, config.d_ff, config.initializer_factor
        self.wi = _linear(h, f, factor * h ** -0.5, dtype, param_dtype, rngs)
        self.wo = _linear(f, h, factor * f ** -0.5, dtype, param_dtype, rngs)
        self.activation = ACTIVATIONS[config.activation]
        self.dropout_rate = config.dropout_rate

    def __call__(self, x: Array, dropout_key: Array | None = None) -> Array:
        k1, k2, k3 = layer_keys(dropout_key, 3)
        return self.wo(dropout(self.activation(self.wi(x, k1)), self.dropout_rate, k2), k3)


class T5DenseGatedActDense(nnx.Module):
    """T5 v1.1's feed-forward: wo(act(wi_0(x)) * wi_1(x))."""

    def __init__(self, config: T5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        h, f, factor = config.d_model, config.d_ff, config.initializer_factor
        self.wi_0 = _linear(h, f, factor * h ** -0.5, dtype, param_dtype, rngs)
        self.wi_1 = _linear(h, f, factor * h ** -0.5, dtype, param_dtype, rngs)
        self.wo = _linear(f, h, factor * f ** -0.5, dtype, param_dtype, rngs)
        self.activation = ACTIVATIONS[config.activation]
        self.dropout_rate = config.dropout_rate

    def __call__(self, x: Array, dropout_key: Array | None = None) -> Array:
        k1, k2, k3, k4 = layer_keys(dropout_key, 4)
        gated = self.activation(self.wi_0(x, k1)) * self.wi_1(x, k2)
        return self.wo(dropout(gated, self.dropout_rate, k3), k4)


class T5LayerFF(nnx.Module):
    def __init__(self, config: T5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        dense = T5DenseGatedActDense if config.is_gated_act else T5DenseActDense
        self.DenseReluDense = dense(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype)
        self.dropout_rate = config.dropout_rate

    def __call__(self, x: Array, dropout_key: Array | None = None) -> Array:
        k1, k2 = layer_keys(dropout_key, 2)
        return x + dropout(self.DenseReluDense(self.layer_norm(x), k1), self.dropout_rate, k2)


class T5Block(nnx.Module):
    """`layer`: [self-attention, feed-forward] in the encoder, [self-attention, cross-attention, feed-forward] in
    the decoder."""

    def __init__(self, config: T5Config, *, is_decoder: bool, has_relative_attention_bias: bool, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        attention = T5LayerSelfAttention(config, has_relative_attention_bias=has_relative_attention_bias,
                                         bidirectional=not is_decoder, **kw)
        layers: list[nnx.Module] = [attention]
        if is_decoder:
            layers.append(T5LayerCrossAttention(config, **kw))
        layers.append(T5LayerFF(config, **kw))
        self.layer = nnx.List(layers)
        self.is_decoder = is_decoder

    def __call__(self, x, bias, mask, *, source_mask=None, source=None, keys_values=None, cache=None,
                 dropout_key=None):
        k1, k2, k3 = layer_keys(dropout_key, 3)
        x, new_cache = self.layer[0](x, bias, mask, cache, k1)
        if self.is_decoder:
            x = self.layer[1](x, source_mask, source, keys_values, k2)
        return self.layer[-1](x, k3), new_cache


class T5Stack(nnx.Module):
    """The encoder's or the decoder's blocks and `final_layer_norm` (the embeddings are the model's `shared`)."""

    def __init__(self, config: T5Config, *, is_decoder: bool, dtype, param_dtype, rngs: nnx.Rngs):
        count = config.num_decoder_layers if is_decoder else config.num_layers
        self.block = nnx.List([T5Block(config, is_decoder=is_decoder, has_relative_attention_bias=i == 0,
                                       dtype=dtype, param_dtype=param_dtype, rngs=rngs) for i in range(count)])
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype,
                                            param_dtype=param_dtype)
        self.dropout_rate = config.dropout_rate
        self.is_decoder = is_decoder

    def position_bias(self, query_positions: Array, key_positions: Array) -> Array:
        """The stack's relative position bias (its first block's table) -> float32 [1, N, T, K]."""
        return self.block[0].layer[0].SelfAttention.position_bias(query_positions, key_positions)

    @property
    def num_prefix_tokens(self) -> int:
        """The keys and values prefix tuning puts before every block's own (P; 0 without a prefix)."""
        prefix = self.block[0].layer[0].SelfAttention.prefix
        return 0 if prefix is None else prefix.num_virtual_tokens

    def self_attention_positions(self, length: int) -> tuple[Array, Array]:
        """(the positions [T] of `length` tokens, those of the keys they attend to [P + T]): a prefix's P keys take
        positions 0..P-1 and the tokens follow, as past keys and values in a PyTorch T5."""
        prefix = self.num_prefix_tokens
        return prefix + jnp.arange(length), jnp.arange(prefix + length)

    def keep_blocks(self, indices: list[int]) -> None:
        """Keeps the blocks at `indices` (increasing; those past the stack's end are skipped), in place. The
        position table moves to the new first block when the first is dropped: every block reads it there."""
        table = self.block[0].layer[0].SelfAttention.relative_attention_bias
        kept = [self.block[i] for i in indices if i < len(self.block)]
        if kept[0].layer[0].SelfAttention.relative_attention_bias is None:
            kept[0].layer[0].SelfAttention.relative_attention_bias = table
        self.block = nnx.List(kept)

    def __call__(self, x: Array, bias: Array, mask: Array, *, source_mask: Array | None = None,
                 source: Array | None = None, cache: T5Cache | None = None,
                 dropout_key: Array | None = None) -> tuple[Array, T5Cache | None]:
        """Embedded tokens x [B, T, H] -> (final hidden states [B, T, H], the updated cache or None).

        `bias` [1, N, T, K] and `mask` [B | 1, 1, T, K] of the self-attention. The decoder attends to `source`
        [B, S, H] (the encoder's output) under `source_mask` [B, 1, 1, S], or with a `cache`, to its keys and
        values, and writes its self-attention keys and values into the cache."""
        k_in, k_out, k_blocks = layer_keys(dropout_key, 3)
        x = dropout(x, self.dropout_rate, k_in)
        keys, values = [], []
        for i, (block, key) in enumerate(zip(self.block, layer_keys(k_blocks, len(self.block)))):
            if cache is None:
                x, _ = block(x, bias, mask, source_mask=source_mask, source=source, dropout_key=key)
                continue
            x, (k, v) = block(x, bias, mask, source_mask=source_mask,
                              keys_values=(cache.cross_keys[i], cache.cross_values[i]),
                              cache=(cache.keys[i], cache.values[i], cache.index), dropout_key=key)
            keys.append(k)
            values.append(v)
        if cache is not None:
            cache = cache._replace(keys=tuple(keys), values=tuple(values), index=cache.index + x.shape[1])
        return dropout(self.final_layer_norm(x), self.dropout_rate, k_out), cache


class T5PreTrainedModel(PretrainedModel):
    """What every T5 class shares: the embeddings `shared`, the `encoder` (and the `decoder` of the classes with
    one), a soft prompt's slot on the encoder's input, and the layout."""

    config_class: ClassVar = T5Config
    # Hugging Face's name for a T5 inside another model (T5ForSequenceClassification's `transformer.`); our
    # classes have none, so the backbone is the whole model and checkpoints load under their own names
    base_model_prefix: ClassVar[str] = "transformer"
    layout: ClassVar[Layout] = T5_LAYOUT
    unused_tensors: ClassVar[str | None] = UNUSED_CROSS_BIAS
    hf_biases: ClassVar[bool] = False  # no projection of a PyTorch T5 has a bias
    has_decoder: ClassVar[bool] = False  # the classes below build a `decoder` stack too

    def __init__(self, config: T5Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.shared = nnx.Embed(config.vocab_size, config.d_model, dtype=dtype, param_dtype=param_dtype,
                                embedding_init=nnx.initializers.normal(config.initializer_factor), rngs=rngs)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.encoder = T5Stack(config, is_decoder=False, **kw)
        if self.has_decoder:
            self.decoder = T5Stack(config, is_decoder=True, **kw)
        # prompt tuning / P-tuning put a module here: batch -> virtual tokens [B, P, H] before the source's
        self.prompt = nnx.data(None)

    def tied_parameters(self) -> dict[str, str]:
        stacks = ("encoder", "decoder") if self.has_decoder else ("encoder",)
        return {f"{stack}.embed_tokens.weight": "shared.weight" for stack in stacks}

    @property
    def num_virtual_tokens(self) -> int:
        return 0 if self.prompt is None else self.prompt.num_virtual_tokens

    @property
    def num_prefix_tokens(self) -> int:
        """The encoder's prefix keys (prefix tuning puts as many before the decoder's)."""
        return self.encoder.num_prefix_tokens

    @property
    def input_embeddings(self) -> nnx.Embed:
        """The token embedding table [V, H] (where prompt tuning starts its virtual tokens)."""
        return self.shared

    @property
    def num_layers(self) -> int:
        """Blocks of the deeper stack (the layout's layer i is block i of both)."""
        return max(len(self.encoder.block), len(self.decoder.block) if self.has_decoder else 0)

    def keep_layers(self, indices: list[int]) -> None:
        """Keeps the blocks at `indices` (0-based, increasing) of both stacks, in place; the config follows."""
        self.encoder.keep_blocks(indices)
        changes = {"num_layers": len(self.encoder.block)}
        if self.has_decoder:
            self.decoder.keep_blocks(indices)
            changes["num_decoder_layers"] = len(self.decoder.block)
        self.config = self.config.replace(**changes)

    def encode(self, input_ids: Array, attention_mask: Array | None = None, *, dropout_key: Array | None = None,
               use_prompt: bool = True) -> tuple[Array, Array]:
        """Source ids [B, T] (any padding: T5's positions are relative) -> (the encoder's output [B, S, H], the
        source mask [B, S] bool), S = P + T with a soft prompt's P virtual tokens first."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        x = self.shared(input_ids)
        k_prompt, k_encoder = layer_keys(dropout_key, 2)
        real = attention_mask.astype(bool)
        if self.prompt is not None and use_prompt:
            prompt = self.prompt(input_ids.shape[0], dropout_key=k_prompt)
            x = jnp.concatenate([prompt.astype(x.dtype), x], axis=1)
            real = jnp.pad(real, ((0, 0), (prompt.shape[1], 0)), constant_values=True)
        queries, keys = self.encoder.self_attention_positions(x.shape[1])
        keys_real = jnp.pad(real, ((0, 0), (self.encoder.num_prefix_tokens, 0)), constant_values=True)
        hidden, _ = self.encoder(x, self.encoder.position_bias(queries, keys), keys_real[:, None, None, :],
                                 dropout_key=k_encoder)
        return hidden, real


class T5EncoderModel(T5PreTrainedModel):
    """The encoder alone: its output [B, S, H]. Loads the encoder of any T5 checkpoint."""

    unused_tensors: ClassVar[str | None] = r"^decoder\.|^lm_head\."

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, *,
                 dropout_key: Array | None = None) -> Array:
        """[B, T] -> the encoder's last hidden states [B, S, H] (S = P + T with a soft prompt)."""
        return self.encode(input_ids, attention_mask, dropout_key=dropout_key)[0]


class T5EncoderDecoder(T5PreTrainedModel):
    """What the classes with a decoder share: decoding a whole target, and step by step through a `T5Cache`."""

    has_decoder: ClassVar[bool] = True

    def decode(self, decoder_input_ids: Array, encoder_hidden: Array, source_mask: Array,
               decoder_attention_mask: Array | None = None, *, dropout_key: Array | None = None) -> Array:
        """Target ids [B, T] (starting with `decoder_start_token_id`) attending causally to each other and to the
        encoder's output [B, S, H] under `source_mask` [B, S] -> the decoder's output [B, T, H].
        `decoder_attention_mask` [B, T]: 0 for padding (positions count from the first slot, as Hugging Face's)."""
        queries, keys = self.decoder.self_attention_positions(decoder_input_ids.shape[1])
        mask = (keys[None, :] <= queries[:, None])[None, None]
        if decoder_attention_mask is not None:
            real = jnp.pad(decoder_attention_mask.astype(bool), ((0, 0), (self.decoder.num_prefix_tokens, 0)),
                           constant_values=True)
            mask = mask & real[:, None, None, :]
        hidden, _ = self.decoder(self.shared(decoder_input_ids), self.decoder.position_bias(queries, keys),
                                 mask, source_mask=source_mask[:, None, None, :], source=encoder_hidden,
                                 dropout_key=dropout_key)
        return hidden

    def start_cache(self, encoder_hidden: Array, source_mask: Array, size: int) -> T5Cache:
        """A decoding cache for the encoder's output [B, S, H] (its cross-attention keys and values, computed once)
        with room for `size` target tokens (the start token and the generated tokens but the last); a prefix's P keys
        and values fill the first P slots, and the targets' positions start after them."""
        batch = encoder_hidden.shape[0]
        cross = [block.layer[1].EncDecAttention.keys_values(encoder_hidden) for block in self.decoder.block]
        config = self.config
        dtype = self.shared.embedding.dtype
        prefix = self.decoder.num_prefix_tokens
        keys, values = [], []
        for block in self.decoder.block:
            k = v = jnp.zeros((batch, config.num_heads, prefix + size, config.d_kv), dtype)
            if prefix:
                prefix_k, prefix_v = block.layer[0].SelfAttention.prefix(batch)
                k, v = k.at[:, :, :prefix].set(prefix_k.astype(dtype)), v.at[:, :, :prefix].set(prefix_v.astype(dtype))
            keys.append(k)
            values.append(v)
        return T5Cache(tuple(keys), tuple(values), tuple(k for k, _ in cross), tuple(v for _, v in cross), source_mask,
                       jnp.asarray(prefix, jnp.int32))

    def decode_step(self, decoder_input_ids: Array, cache: T5Cache) -> tuple[Array, T5Cache]:
        """The next target tokens [B, T] (no padding) through the cache -> (their decoder output [B, T, H], the
        updated cache): they sit at slots `cache.index ...` and attend to every earlier slot."""
        length, slots = decoder_input_ids.shape[1], cache.keys[0].shape[2]
        query_positions = cache.index + jnp.arange(length)
        key_positions = jnp.arange(slots)
        mask = (key_positions[None, :] <= query_positions[:, None])[None, None]
        return self.decoder(self.shared(decoder_input_ids), self.decoder.position_bias(query_positions, key_positions),
                            mask, source_mask=cache.source_mask[:, None, None, :], cache=cache)


class T5Model(T5EncoderDecoder):
    """The encoder-decoder without an output layer: the decoder's last hidden states [B, T, H]."""

    unused_tensors: ClassVar[str | None] = rf"{UNUSED_CROSS_BIAS}|^lm_head\."

    def __call__(self, input_ids: Array, attention_mask: Array | None, decoder_input_ids: Array,
                 decoder_attention_mask: Array | None = None, *, dropout_key: Array | None = None) -> Array:
        """Source [B, S'] and target [B, T] ids -> the decoder's output [B, T, H]."""
        k1, k2 = layer_keys(dropout_key, 2)
        hidden, source_mask = self.encode(input_ids, attention_mask, dropout_key=k1)
        return self.decode(decoder_input_ids, hidden, source_mask, decoder_attention_mask, dropout_key=k2)


class T5ForConditionalGeneration(T5EncoderDecoder):
    """The encoder-decoder with its output layer: logits [B, T, V] of each target token's successor. The output
    layer is `shared` (tied, T5 v1.0) or its own `lm_head` (T5 v1.1, Flan-T5).

    Trained as text to text by `tljax.train.seq2seq` through `target_logits` and `generate_targets` (its
    `EncoderDecoder` protocol)."""

    is_encoder_decoder: ClassVar[bool] = True

    def __init__(self, config: T5Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.lm_head = nnx.data(None if config.tie_word_embeddings else
                                _linear(config.d_model, config.vocab_size, config.initializer_factor, dtype,
                                        param_dtype, rngs))

    def tied_parameters(self) -> dict[str, str]:
        tied = super().tied_parameters()
        return tied | {"lm_head.weight": "shared.weight"} if self.lm_head is None else tied

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: Any) -> Self:
        """As `PretrainedModel.from_pretrained`; a checkpoint whose `lm_head` differs from `shared` keeps its own
        output layer whatever its config says (transformers >= 5 writes tie_word_embeddings=true for every T5 and
        unties the output layer in the same way), with the scaling its config states."""
        if "tie_word_embeddings" not in kwargs:
            config = T5Config.from_hf(read_config_dict(Path(directory)))
            if config.tie_word_embeddings and _own_output_layer(Path(directory)):
                kwargs |= {"tie_word_embeddings": False, "scale_decoder_outputs": config.scales_logits}
        return super().from_pretrained(directory, **kwargs)

    def logits(self, hidden: Array) -> Array:
        """The decoder's output [..., H] -> float32 vocabulary logits [..., V]."""
        if self.config.scales_logits:  # T5 v1.0 was trained with its tied output layer scaled so
            hidden = hidden * (self.config.d_model ** -0.5)
        out = self.shared.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        return out.astype(jnp.float32)

    def shift_right(self, labels: Array) -> Array:
        """Target ids [B, T] -> the decoder's input [B, T]: `decoder_start_token_id`, then the targets but the
        last (ignored labels, -100, read as padding), as Hugging Face's `_shift_right`."""
        start = jnp.full(labels[:, :1].shape, self.config.decoder_start_token_id, labels.dtype)
        shifted = jnp.concatenate([start, labels[:, :-1]], axis=1)
        return jnp.where(shifted == -100, self.config.pad_token_id, shifted)

    def __call__(self, input_ids: Array, attention_mask: Array | None, decoder_input_ids: Array,
                 decoder_attention_mask: Array | None = None, *, dropout_key: Array | None = None) -> Array:
        """Source [B, S'] and target [B, T] ids -> logits [B, T, V] (float32)."""
        k1, k2 = layer_keys(dropout_key, 2)
        hidden, source_mask = self.encode(input_ids, attention_mask, dropout_key=k1)
        return self.logits(self.decode(decoder_input_ids, hidden, source_mask, decoder_attention_mask,
                                       dropout_key=k2))

    def target_logits(self, input_ids: Array, attention_mask: Array, targets: Array, *,
                      dropout_key: Array | None = None) -> Array:
        """Teacher forcing: the sources [B, S'] encoded, the targets [B, R] (-100 after a row's end) shifted right
        into the decoder -> float32 logits [B, R, V], position j predicting `targets[:, j]`. A padded target
        position sees only the positions before it (the decoder is causal), so no target mask is needed."""
        return self(input_ids, attention_mask, self.shift_right(targets), dropout_key=dropout_key)

    def generate_targets(self, input_ids: Array, attention_mask: Array, *, max_new_tokens: int,
                         eos: tuple[int, ...], pad: int) -> Array:
        """Greedy targets [B, max_new_tokens] of the sources [B, S'], `pad` after a row's end token; traceable."""
        if self.config.decoder_start_token_id is None:
            raise ConfigError("the config has no decoder_start_token_id, so the decoder cannot start: set it (T5's is 0)")
        tokens, _ = sample(self, input_ids, attention_mask, jax.random.key(0), max_new_tokens=max_new_tokens,
                           eos=eos, pad=pad, start=int(self.config.decoder_start_token_id))
        return tokens


def _own_output_layer(directory: Path) -> bool:
    """Whether a checkpoint holds an `lm_head.weight` that differs from its `shared.weight`. Reads only those two
    tensors from safetensors files; a PyTorch .bin is read whole."""
    names = ("lm_head.weight", "shared.weight")
    index = directory / "model.safetensors.index.json"
    files = {}
    if (directory / "model.safetensors").is_file():
        files = {name: directory / "model.safetensors" for name in names}
    elif index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = {name: directory / weight_map[name] for name in names if name in weight_map}
    if files:
        if set(files) != set(names):
            return False
        tensors = {}
        for name, path in files.items():
            with safe_open(path, "numpy") as handle:
                if name not in handle.keys():
                    return False
                tensors[name] = handle.get_tensor(name)
    else:
        tensors = read_tensors(directory)
        if not set(names) <= set(tensors):
            return False
    return tensors["lm_head.weight"].shape != tensors["shared.weight"].shape or \
        not np.array_equal(tensors["lm_head.weight"], tensors["shared.weight"])
