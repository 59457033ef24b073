"""Llama-architecture decoders in Flax NNX with Hugging Face module names (Llama, SmolLM2).

RoPE, grouped-query attention, RMSNorm, SwiGLU, optional tied embeddings, and a key/value cache that is
passed in and returned (never stored in the module), so every call stays a pure function.
Shapes: B batch, T new tokens, S cache slots, H hidden, N heads, K key/value heads, D head size, V vocab.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tljax.models.base import Layout, PretrainedModel
from tljax.models.decoder.config import DecoderConfig
from tljax.models.layers import ACTIVATIONS, Linear, attend, dropout, layer_keys, merge_heads, split_heads

Array = jax.Array

LLAMA_LAYOUT = Layout(
    layer=r"(?:^|/)layers/{i}/",
    embeddings=r"(?:^|/)embed_tokens/",
    norms=r"layernorm/weight$",
    no_decay=r"(?:^|/)bias$|layernorm/|(?:^|/)norm/",
    attention_output=r"self_attn/o_proj$",
    feed_forward_output=r"mlp/down_proj$",
    above_layers=r"(?:^|/)norm/|^lm_head/",  # an untied output layer sits above every layer too
    lora_targets=("q_proj", "v_proj"),
)


class KVCache(NamedTuple):
    """Keys and values of the tokens seen so far, in fixed-size buffers (one compiled shape)."""

    keys: tuple[Array, ...]  # per layer [B, K, S, D]
    values: tuple[Array, ...]  # per layer [B, K, S, D]
    mask: Array  # [B, S] bool: the slot holds a real (non-padding) token
    index: Array  # [] int32: the next slot to write

    @classmethod
    def empty(cls, config: DecoderConfig, batch: int, size: int, dtype: jnp.dtype = jnp.float32) -> KVCache:
        """A cache for `batch` sequences of at most `size` tokens (prompt + generated)."""
        shape = (batch, config.num_key_value_heads, size, config.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_hidden_layers))
        # the index as a NumPy value: known when tracing a call that fills a fresh cache, so that its prompt's
        # causal attention may skip the blocks above the diagonal (`attend`'s causal_from)
        return cls(zeros, zeros, jnp.zeros((batch, size), bool), np.zeros((), np.int32))

    def rows(self, batch: int) -> KVCache:
        """A cache of one sequence [1, ...] as the same start of `batch` sequences [batch, ...]."""
        rows = lambda x: jnp.broadcast_to(x, (batch, *x.shape[1:]))  # noqa: E731
        return KVCache(tuple(map(rows, self.keys)), tuple(map(rows, self.values)), rows(self.mask), self.index)


# the fewest leading tokens worth running once for a whole batch: a shorter shared start saves less than the
# extra pass (and its compiled program) costs
MIN_SHARED_TOKENS = 16


def shared_start(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every prompt (token ids, no padding) shares, leaving each at least one of its own
    (its last token's logits predict what follows); 0 below `MIN_SHARED_TOKENS` or for fewer than two prompts.
    A chat template's system prompt and a shared instruction are such a start: run once for the batch, their keys
    and values copied to every row (`KVCache.rows`), they give the same logits as each row's whole prompt."""
    if len(prompts) < 2:
        return 0
    shortest = min(len(ids) for ids in prompts)
    first = np.asarray(prompts[0][:shortest])
    same = np.ones(shortest, bool)
    for ids in prompts[1:]:
        same &= np.asarray(ids[:shortest]) == first
    count = min(shortest if same.all() else int(np.argmin(same)), shortest - 1)
    return count if count >= MIN_SHARED_TOKENS else 0


def rotary(x: Array, positions: Array, theta: float) -> Array:
    """Rotary position embedding (Hugging Face's half-split convention): [B, N, T, D], [B, T] -> same."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions.astype(jnp.float32)[:, None, :, None] * inv_freq[None, None, None]  # [B, 1, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


class LlamaRMSNorm(nnx.Module):
    def __init__(self, size: int, eps: float, *, dtype, param_dtype):
        self.weight = nnx.Param(jnp.ones((size,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        weight = self.weight[...].astype(self.dtype).reshape((1,) * (x.ndim - 1) + (-1,))
        return weight * normed.astype(self.dtype)


def _linear(din: int, dout: int, dtype, param_dtype, rngs: nnx.Rngs, bias: bool = False) -> Linear:
    return Linear(din, dout, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class LlamaAttention(nnx.Module):
    def __init__(self, config: DecoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        h, n, k, d = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        qkv_bias = config.qkv_bias
        self.q_proj = _linear(h, n * d, dtype, param_dtype, rngs, qkv_bias)
        self.k_proj = _linear(h, k * d, dtype, param_dtype, rngs, qkv_bias)
        self.v_proj = _linear(h, k * d, dtype, param_dtype, rngs, qkv_bias)
        self.o_proj = _linear(n * d, h, dtype, param_dtype, rngs, config.attention_bias)
        self.num_heads, self.num_kv_heads = n, k
        self.theta = config.rope_theta
        self.dropout_rate = config.attention_dropout
        self.prefix = nnx.data(None)  # prefix tuning puts a module here: batch -> (keys, values) [B, K, P, D]

    def __call__(self, x: Array, positions: Array, mask: Array, cache: tuple[Array, Array, Array] | None,
                 dropout_key: Array | None, causal_from: int | None = None
                 ) -> tuple[Array, tuple[Array, Array] | None]:
        """x [B, T, H]; mask [B, 1, T, S]; cache (keys, values, write index) or None -> [B, T, H].
        `causal_from`: the slot of the first query when known when tracing (see `attend`)."""
        keys = layer_keys(dropout_key, 5)
        q = rotary(split_heads(self.q_proj(x, keys[0]), self.num_heads), positions, self.theta)
        k = rotary(split_heads(self.k_proj(x, keys[1]), self.num_kv_heads), positions, self.theta)
        v = split_heads(self.v_proj(x, keys[2]), self.num_kv_heads)
        new_cache = None
        if cache is not None:
            cached_k, cached_v, index = cache
            k = jax.lax.dynamic_update_slice_in_dim(cached_k, k.astype(cached_k.dtype), index, axis=2)
            v = jax.lax.dynamic_update_slice_in_dim(cached_v, v.astype(cached_v.dtype), index, axis=2)
            new_cache = (k, v)
        if self.prefix is not None:  # learned keys and values seen by every position, never rotated
            prefix_k, prefix_v = self.prefix(x.shape[0])
            k = jnp.concatenate([prefix_k.astype(k.dtype), k], axis=2)
            v = jnp.concatenate([prefix_v.astype(v.dtype), v], axis=2)
            mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (prefix_k.shape[2],), bool), mask], axis=-1)
            causal_from = None if causal_from is None else causal_from + prefix_k.shape[2]
        out = attend(q, k.astype(q.dtype), v.astype(q.dtype), mask,
                     dropout_rate=self.dropout_rate, dropout_key=keys[3], causal_from=causal_from)
        return self.o_proj(merge_heads(out), keys[4]), new_cache


class LlamaMLP(nnx.Module):
    def __init__(self, config: DecoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        h, f = config.hidden_size, config.intermediate_size
        bias = config.mlp_bias
        self.gate_proj = _linear(h, f, dtype, param_dtype, rngs, bias)
        self.up_proj = _linear(h, f, dtype, param_dtype, rngs, bias)
        self.down_proj = _linear(f, h, dtype, param_dtype, rngs, bias)
        self.activation = ACTIVATIONS[config.hidden_act]

    def __call__(self, x: Array, dropout_key: Array | None = None) -> Array:
        k1, k2, k3 = layer_keys(dropout_key, 3)
        return self.down_proj(self.activation(self.gate_proj(x, k1)) * self.up_proj(x, k2), k3)


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, config: DecoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.self_attn = LlamaAttention(config, rngs=rngs, **kw)
        self.mlp = LlamaMLP(config, rngs=rngs, **kw)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps, **kw)

    def __call__(self, x, positions, mask, cache, dropout_key, causal_from: int | None = None):
        k1, k2 = layer_keys(dropout_key, 2)
        attended, new_cache = self.self_attn(self.input_layernorm(x), positions, mask, cache, k1, causal_from)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x), k2), new_cache


class DecoderBackbone(PretrainedModel):
    """What every decoder backbone does alike (Llama, Qwen2, Gemma 3, GPT-2): the soft prompt's slot, positions
    counted from the attention mask, the causal mask over a cache's slots, the layers run one by one or scanned,
    a shared start run once. A family says where its parts are (`input_embeddings`, `blocks`, `first_attention`,
    `final_norm`) and what its embeddings add once the positions are known (`add_positions`)."""

    prompt: nnx.Module | None  # prompt tuning / P-tuning put a module here: batch -> virtual tokens [B, P, H]

    @property
    def input_embeddings(self) -> nnx.Embed:
        """The token embedding table [V, H] (where prompt tuning starts its virtual tokens)."""
        raise NotImplementedError

    @property
    def blocks(self) -> nnx.List:
        """The decoder layers, bottom first."""
        raise NotImplementedError

    @property
    def first_attention(self) -> nnx.Module:
        """The first layer's self-attention (where a prefix's keys are kept)."""
        raise NotImplementedError

    def final_norm(self, x: Array) -> Array:
        """[B, T, H] -> [B, T, H]: the norm after the last layer."""
        raise NotImplementedError

    def add_positions(self, x: Array, positions: Array, dropout_key: Array | None) -> tuple[Array, Array | None]:
        """(token embeddings [B, T, H], positions [B, T], key) -> (the layers' input, the key left for them): the
        embeddings unchanged for a family that rotates its queries and keys instead (RoPE)."""
        return x, dropout_key

    @property
    def num_virtual_tokens(self) -> int:
        return 0 if self.prompt is None else self.prompt.num_virtual_tokens

    @property
    def num_prefix_tokens(self) -> int:
        prefix = self.first_attention.prefix
        return 0 if prefix is None else prefix.num_virtual_tokens

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        positions: Array | None = None,
        cache: KVCache | None = None,
        *,
        dropout_key: Array | None = None,
        use_prompt: bool = True,
        scan_layers: bool = False,
    ) -> tuple[Array, KVCache | None]:
        """[B, T] ids -> (hidden [B, P + T, H], updated cache or None).

        P is the number of virtual tokens a prompt method prepends (0 without one, or with
        `use_prompt=False`, as for the decoding steps after a prompt has been cached).

        `attention_mask` [B, T] is 1 for real tokens and 0 for padding (left padding for generation).
        `positions` default to each sequence's count of real tokens before the token, so padding never
        shifts them. With a cache, the T tokens are written at slots `cache.index ...` and attend to all
        earlier real slots. `scan_layers` (inference only: no dropout key) runs the layers as one `lax.scan`
        over their stacked parameters when they all have the same structure: the same arithmetic, but one layer
        to compile instead of `num_layers` (seconds per input shape for a 30-layer model instead of a minute).
        """
        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        x = self.input_embeddings(input_ids)
        k_prompt, dropout_key = layer_keys(dropout_key, 2)
        if self.prompt is not None and use_prompt:
            prompt = self.prompt(batch, dropout_key=k_prompt)
            x = jnp.concatenate([prompt.astype(x.dtype), x], axis=1)
            attention_mask = jnp.pad(attention_mask, ((0, 0), (prompt.shape[1], 0)), constant_values=1)
            if positions is not None:
                positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(prompt.shape[1]), prompt.shape[:2]),
                                             positions + prompt.shape[1]], axis=1)
        length = x.shape[1]
        real = attention_mask.astype(bool)
        seen = jnp.zeros((batch, 1), jnp.int32) if cache is None else cache.mask.sum(-1, keepdims=True, dtype=jnp.int32)
        if positions is None:
            positions = jnp.maximum(seen + jnp.cumsum(real, axis=-1) - 1, 0)
        positions = positions + self.num_prefix_tokens  # prefix keys occupy the first positions
        x, dropout_key = self.add_positions(x, positions, dropout_key)
        # the first query's slot when it is known when tracing (no cache, or a fresh one): a causal attention
        # may then skip the blocks above the diagonal
        causal_from = 0 if cache is None else (int(cache.index) if isinstance(cache.index, np.generic | np.ndarray)
                                               else None)
        if cache is None:
            key_real, query_slot = real, jnp.arange(length)
        else:
            key_real = jax.lax.dynamic_update_slice_in_dim(cache.mask, real, cache.index, axis=1)
            query_slot = cache.index + jnp.arange(length)
        key_slot = jnp.arange(key_real.shape[1])
        mask = key_real[:, None, None, :] & (key_slot[None, :] <= query_slot[:, None])[None, None]

        scanned = scan_layers and dropout_key is None and _stacked_layers(self.blocks)
        if scanned:
            x, keys, values = _scan_layers(*scanned, x, positions, mask, cache, causal_from)
        else:
            keys, values = [], []
            for i, (layer, key) in enumerate(zip(self.blocks, layer_keys(dropout_key, len(self.blocks)))):
                layer_cache = None if cache is None else (cache.keys[i], cache.values[i], cache.index)
                x, new = layer(x, positions, mask, layer_cache, key, causal_from)
                if new is not None:
                    keys.append(new[0])
                    values.append(new[1])
        if cache is not None:
            cache = KVCache(tuple(keys), tuple(values), key_real, cache.index + length)
        return self.final_norm(x), cache

    def text_states(self, input_ids: Array, attention_mask: Array | None = None, positions: Array | None = None,
                    *, dropout_key: Array | None = None) -> Array:
        """The last hidden state of the text's own positions [B, T, H] (a soft prompt's virtual tokens dropped):
        what every head on this backbone reads from."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        hidden, _ = self(input_ids, attention_mask, positions, dropout_key=dropout_key)
        return hidden[:, self.num_virtual_tokens:]

    def after_shared_start(self, shared: Array, input_ids: Array, attention_mask: Array, size: int, *,
                           dropout_key: Array | None = None, scan_layers: bool = False) -> tuple[Array, KVCache]:
        """Rows [B, T] that all start with `shared` [1, S] (not in `input_ids`; S may be 0), run into a fresh
        cache of `size` slots -> (the rows' hidden states [B, T, H], the cache). The shared start is run once, its
        keys and values copied to every row (`KVCache.rows`): the same values as each whole row, for less work
        (with dropout on, the rows share the shared tokens' dropout masks)."""
        dtype, batch = self.input_embeddings.embedding.dtype, input_ids.shape[0]
        if shared.shape[1] == 0:
            hidden, cache = self(input_ids, attention_mask, cache=KVCache.empty(self.config, batch, size, dtype),
                                 dropout_key=dropout_key, scan_layers=scan_layers)
            return hidden[:, self.num_virtual_tokens:], cache
        first_key, rest_key = layer_keys(dropout_key, 2)
        _, cache = self(shared, jnp.ones_like(shared), cache=KVCache.empty(self.config, 1, size, dtype),
                        dropout_key=first_key, scan_layers=scan_layers)
        return self(input_ids, attention_mask, cache=cache.rows(batch), use_prompt=False, dropout_key=rest_key,
                    scan_layers=scan_layers)


class LlamaModel(DecoderBackbone):
    """The decoder backbone: final normalised hidden states [B, T, H]."""

    config_class: ClassVar = DecoderConfig
    base_model_prefix: ClassVar[str] = "model"
    layout: ClassVar[Layout] = LLAMA_LAYOUT

    def __init__(self, config: DecoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                      embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.layers = nnx.List([LlamaDecoderLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.prompt = nnx.data(None)  # prompt tuning / P-tuning put a module here: batch -> virtual tokens [B, P, H]

    @property
    def input_embeddings(self) -> nnx.Embed:
        return self.embed_tokens

    @property
    def blocks(self) -> nnx.List:
        return self.layers

    @property
    def first_attention(self) -> nnx.Module:
        return self.layers[0].self_attn

    def final_norm(self, x: Array) -> Array:
        return self.norm(x)

    def keep_layers(self, indices: list[int]) -> None:
        """Keeps only the layers at `indices` (0-based, increasing), in place; the config follows."""
        self.layers = nnx.List([self.layers[i] for i in indices])
        self.config = self.config.replace(num_hidden_layers=len(indices))


def _stacked_layers(layers) -> tuple[nnx.GraphDef, nnx.State] | None:
    """(the layers' shared structure, their states stacked on a new leading axis), or None when the layers differ
    in structure (a method applied to some layers only)."""
    splits = [nnx.split(layer) for layer in layers]
    graphdef = splits[0][0]
    if any(other != graphdef for other, _ in splits[1:]):
        return None
    return graphdef, jax.tree.map(lambda *leaves: jnp.stack(leaves), *(state for _, state in splits))


def _scan_layers(graphdef, states, x, positions, mask, cache: KVCache | None, causal_from: int | None):
    """The layers (one structure, stacked states) applied in order by `lax.scan`: (x, keys, values), the last
    two the per-layer cache tuples (empty without a cache)."""
    if cache is None:
        def step(x, state):
            return nnx.merge(graphdef, state)(x, positions, mask, None, None, causal_from)[0], None

        return jax.lax.scan(step, x, states)[0], (), ()

    def step(x, layer):
        state, cached_k, cached_v = layer
        x, (k, v) = nnx.merge(graphdef, state)(x, positions, mask, (cached_k, cached_v, cache.index), None,
                                                causal_from)
        return x, (k, v)

    x, (keys, values) = jax.lax.scan(step, x, (states, jnp.stack(cache.keys), jnp.stack(cache.values)))
    return x, tuple(keys), tuple(values)


class LlamaForCausalLM(PretrainedModel):
    """Backbone + language-model head (tied to the embeddings when the config says so): logits [B, T, V]."""

    config_class: ClassVar = DecoderConfig
    base_model_prefix: ClassVar[str] = "model"
    layout: ClassVar[Layout] = LLAMA_LAYOUT
    backbone_class: ClassVar[type[LlamaModel]] = LlamaModel  # a family on these modules names its own
    predicts_next_token: ClassVar[bool] = True

    def __init__(self, config: DecoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.model = self.backbone_class(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        tied = config.tie_word_embeddings
        self.lm_head = None if tied else _linear(config.hidden_size, config.vocab_size, dtype, param_dtype, rngs)

    def tied_parameters(self) -> dict[str, str]:
        return {"lm_head.weight": "model.embed_tokens.weight"} if self.lm_head is None else {}

    def logits(self, hidden: Array) -> Array:
        """[..., H] -> float32 vocabulary logits [..., V]."""
        out = self.model.embed_tokens.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        return out.astype(jnp.float32)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, positions: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """[B, T] -> next-token logits [B, T, V] (no cache; for training and scoring).

        Virtual prompt tokens are not scored."""
        hidden, _ = self.model(input_ids, attention_mask, positions, dropout_key=dropout_key)
        return self.logits(hidden[:, self.model.num_virtual_tokens:])

    def logits_at(self, input_ids: Array, attention_mask: Array, at: Array, *, shared: Array | None = None,
                  dropout_key: Array | None = None) -> Array:
        """[B, T] ids -> next-token logits [B, R, V] at the token positions `at` [B, R] (0 <= at < T) only.

        For a loss on a few tokens of each row (a chat reply): the vocabulary projection is a small decoder's
        costliest layer (SmolLM2-135M: a fifth of its forward FLOPs), and its logits [B, T, V] its largest
        activation, so it runs on the R chosen positions instead of all T.

        `shared` [1, S]: tokens that every row starts with, before its `input_ids` (a chat template's system
        prompt and an instruction: `shared_start`). They are run once, and their keys and values copied to every
        row: the same logits as the whole rows, for less work (with dropout on, the rows share the shared
        tokens' dropout masks). `at` counts from the rows' own tokens."""
        if shared is None or shared.shape[1] == 0:  # a plain forward: no cache
            hidden, _ = self.model(input_ids, attention_mask, dropout_key=dropout_key)
            hidden = hidden[:, self.model.num_virtual_tokens:]
        else:
            size = self.model.num_virtual_tokens + shared.shape[1] + input_ids.shape[1]
            hidden, _ = self.model.after_shared_start(shared, input_ids, attention_mask, size, dropout_key=dropout_key)
        return self.logits(jnp.take_along_axis(hidden, at[..., None], axis=1))


class LlamaForSequenceClassification(PretrainedModel):
    """Backbone + linear `score` read at each sequence's last real token: logits [B, L]."""

    config_class: ClassVar = DecoderConfig
    base_model_prefix: ClassVar[str] = "model"
    layout: ClassVar[Layout] = LLAMA_LAYOUT
    backbone_class: ClassVar[type[LlamaModel]] = LlamaModel  # a family on these modules names its own
    new_parameters: ClassVar[tuple[str, ...]] = ("score.",)
    unused_tensors: ClassVar[str | None] = r"^lm_head\."
    head_pattern: ClassVar[str] = r"^score/"

    def __init__(self, config: DecoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.model = self.backbone_class(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.score = _linear(config.hidden_size, config.num_labels, dtype, param_dtype, rngs)

    def features(self, input_ids: Array, attention_mask: Array | None = None, positions: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """What the classifier reads: the hidden state of each sequence's last real token [B, H]."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        hidden = self.model.text_states(input_ids, attention_mask, positions, dropout_key=dropout_key)
        last = jnp.max(jnp.arange(input_ids.shape[1])[None] * attention_mask.astype(jnp.int32), axis=-1)
        return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]

    def token_features(self, input_ids: Array, attention_mask: Array | None = None, *,
                       token_type_ids: Array | None = None, dropout_key: Array | None = None) -> Array:
        """The last hidden state of the text's positions [B, T, H]: what a token or span head reads (a token or
        question-answering task of a multi-task run shares this backbone; token types: unused by a decoder)."""
        return self.model.text_states(input_ids, attention_mask, dropout_key=dropout_key)

    def pool(self, features: Array) -> Array:
        """Features [B, H] -> what the linear head reads [B, H]: the features themselves (no pooler)."""
        return features

    def classify(self, features: Array, *, dropout_key: Array | None = None) -> Array:
        """Features [B, H] -> logits [B, L]."""
        return self.score(features, dropout_key).astype(jnp.float32)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, positions: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """[B, T] -> logits [B, L]."""
        k1, k2 = layer_keys(dropout_key, 2)
        return self.classify(self.features(input_ids, attention_mask, positions, dropout_key=k1), dropout_key=k2)


class LlamaForTokenClassification(PretrainedModel):
    """Backbone + dropout + linear `score` on every token, as Hugging Face's class: logits [B, T, L] for the
    text's positions (a soft prompt's virtual tokens are not labelled)."""

    config_class: ClassVar = DecoderConfig
    base_model_prefix: ClassVar[str] = "model"
    layout: ClassVar[Layout] = LLAMA_LAYOUT
    backbone_class: ClassVar[type[LlamaModel]] = LlamaModel  # a family on these modules names its own
    new_parameters: ClassVar[tuple[str, ...]] = ("score.",)
    unused_tensors: ClassVar[str | None] = r"^lm_head\."
    head_pattern: ClassVar[str] = r"^score/"

    def __init__(self, config: DecoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.model = self.backbone_class(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # Hugging Face's generic token classifier: classifier_dropout, else 0.1 (Llama configs have no
        # hidden_dropout)
        self.dropout_rate = 0.1 if config.classifier_dropout is None else config.classifier_dropout
        self.score = _linear(config.hidden_size, config.num_labels, dtype, param_dtype, rngs, bias=True)

    def features(self, input_ids: Array, attention_mask: Array | None = None, positions: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """The last hidden state of the text's positions [B, T, H]."""
        return self.model.text_states(input_ids, attention_mask, positions, dropout_key=dropout_key)

    def pool(self, features: Array) -> Array:
        return features

    def classify(self, features: Array, *, dropout_key: Array | None = None) -> Array:
        """Features [B, T, H] -> logits [B, T, L]: dropout, then the linear `score`."""
        k1, k2 = layer_keys(dropout_key, 2)
        return self.score(dropout(features, self.dropout_rate, k1), k2).astype(jnp.float32)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, positions: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """[B, T] -> logits [B, T, L]."""
        k1, k2 = layer_keys(dropout_key, 2)  # as features() and classify() take them
        return self.classify(self.features(input_ids, attention_mask, positions, dropout_key=k1), dropout_key=k2)


class LlamaForQuestionAnswering(PretrainedModel):
    """Backbone + linear `qa_outputs` on every token, as Hugging Face's class (whose backbone is named
    `transformer`): span scores [B, T, 2], [..., 0] where the answer starts and [..., 1] where it ends. A causal
    model's checkpoint (`model.` names) loads into it."""

    config_class: ClassVar = DecoderConfig
    base_model_prefix: ClassVar[str] = "transformer"
    layout: ClassVar[Layout] = LLAMA_LAYOUT
    backbone_class: ClassVar[type[LlamaModel]] = LlamaModel  # a family on these modules names its own
    checkpoint_prefixes: ClassVar[tuple[str, ...]] = ("model",)  # a causal LM's backbone is `model.`
    new_parameters: ClassVar[tuple[str, ...]] = ("qa_outputs.",)
    unused_tensors: ClassVar[str | None] = r"^lm_head\."
    head_pattern: ClassVar[str] = r"^qa_outputs/"

    def __init__(self, config: DecoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.transformer = self.backbone_class(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qa_outputs = _linear(config.hidden_size, 2, dtype, param_dtype, rngs, bias=True)
        self.dropout_rate = 0.0

    def features(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """The last hidden state of the text's positions [B, T, H] (token types: unused by a decoder)."""
        return self.transformer.text_states(input_ids, attention_mask, None, dropout_key=dropout_key)

    def pool(self, features: Array) -> Array:
        return features

    def classify(self, features: Array, *, dropout_key: Array | None = None) -> Array:
        """Features [B, T, H] -> span scores [B, T, 2]."""
        return self.qa_outputs(features, layer_keys(dropout_key, 2)[1]).astype(jnp.float32)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """[B, T] -> span scores [B, T, 2]."""
        k1, k2 = layer_keys(dropout_key, 2)
        return self.classify(self.features(input_ids, attention_mask, dropout_key=k1), dropout_key=k2)
