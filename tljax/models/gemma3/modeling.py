"""The Gemma 3 text decoder in Flax NNX with Hugging Face module names (`gemma3_text`).

What differs from the Llama family it builds on (`tljax.models.decoder`: the KV cache, prompt and prefix slots,
the heads): embeddings scaled by sqrt(hidden_size), RMSNorm computing x * (1 + w) in float32, four norms per
layer (before and after attention and feed-forward), RMSNorm on each head's queries and keys, GeGLU, attention
scaled by `query_pre_attn_scalar`, layers that attend to a sliding window of recent tokens or to all of them
(`layer_types`), each kind with its own RoPE base, and optionally soft-capped logits.
Shapes: B batch, T new tokens, S cache slots, P prefix tokens, H hidden, N heads, K key/value heads, D head
size, V vocab, L labels.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from tljax.models.base import Layout
from tljax.models.decoder.modeling import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaForQuestionAnswering,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    LlamaMLP,
    LlamaModel,
    rotary,
)
from tljax.models.gemma3.config import Gemma3TextConfig
from tljax.models.layers import Linear, attend, layer_keys, merge_heads, split_heads

Array = jax.Array

GEMMA3_LAYOUT = Layout(
    layer=r"(?:^|/)layers/{i}/",
    embeddings=r"(?:^|/)embed_tokens/",
    norms=r"(?:layernorm|q_norm|k_norm)/weight$",
    no_decay=r"(?:^|/)bias$|layernorm/|(?:^|/)(?:q_|k_)?norm/",
    attention_output=r"self_attn/o_proj$",
    feed_forward_output=r"mlp/down_proj$",
    above_layers=r"(?:^|/)norm/",
    lora_targets=("q_proj", "v_proj"),  # PEFT's default for gemma3_text
    # transformers' Gemma 3 has attention biases (`attention_bias`) but no MLP biases: BitFit adds only those it
    # can save
    bitfit_biases=r"self_attn/[qkvo]_proj$",
    bitfit_flags=("attention_bias",),
)


class Gemma3RMSNorm(nnx.Module):
    """x / rms(x) * (1 + weight), all in float32, then cast to `dtype` (the weight starts at zero)."""

    def __init__(self, size: int, eps: float, *, dtype, param_dtype):
        self.weight = nnx.Param(jnp.zeros((size,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        """[..., size] -> same shape, in `dtype`."""
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # Gemma multiplies before casting (Llama casts first): the 1 + w of a bfloat16 model stays exact
        scale = 1.0 + self.weight[...].astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
        return (normed * scale).astype(self.dtype)


class Gemma3TextScaledWordEmbedding(nnx.Embed):
    """Token embeddings times sqrt(hidden_size), the factor rounded to the model's dtype first as transformers
    does (sqrt(640) is 25.25 in bfloat16). `attend` (the tied output layer) reads the table unscaled."""

    def __init__(self, num_embeddings: int, features: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        super().__init__(num_embeddings, features, dtype=dtype, param_dtype=param_dtype,
                         embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.embed_scale = features ** 0.5

    def __call__(self, inputs: Array) -> Array:
        """[...] ids -> [..., H] scaled embeddings."""
        embedded = super().__call__(inputs)
        return embedded * jnp.asarray(self.embed_scale, embedded.dtype)


class Gemma3Attention(LlamaAttention):
    """Llama's attention (grouped key/value heads, prefix slot, cache) with RMSNorm on queries and keys before
    RoPE, scores scaled by 1 / sqrt(query_pre_attn_scalar), and, in a sliding-window layer, each query seeing the
    `sliding_window` slots up to its own only."""

    def __init__(self, config: Gemma3TextConfig, layer_type: str, *, dtype, param_dtype, rngs: nnx.Rngs):
        super().__init__(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm = dict(dtype=dtype, param_dtype=param_dtype)
        self.q_norm = Gemma3RMSNorm(config.head_dim, config.rms_norm_eps, **norm)
        self.k_norm = Gemma3RMSNorm(config.head_dim, config.rms_norm_eps, **norm)
        self.sliding = layer_type == "sliding_attention"
        self.theta = config.rope_local_base_freq if self.sliding else config.rope_theta
        self.window = config.sliding_window if self.sliding else None
        # `attend` divides the scores by sqrt(head_dim); Gemma divides by sqrt(query_pre_attn_scalar)
        self.query_scale = (config.head_dim / config.query_pre_attn_scalar) ** 0.5

    def __call__(self, x: Array, positions: Array, mask: Array, cache: tuple[Array, Array, Array] | None,
                 dropout_key: Array | None, causal_from: int | None = None
                 ) -> tuple[Array, tuple[Array, Array] | None]:
        """x [B, T, H]; positions [B, T]; mask [B, 1, T, S] (real and causal); cache (keys [B, K, S, D], values,
        write index) or None -> (out [B, T, H], the updated (keys, values) or None)."""
        keys = layer_keys(dropout_key, 5)
        q = rotary(self.q_norm(split_heads(self.q_proj(x, keys[0]), self.num_heads)), positions, self.theta)
        k = rotary(self.k_norm(split_heads(self.k_proj(x, keys[1]), self.num_kv_heads)), positions, self.theta)
        v = split_heads(self.v_proj(x, keys[2]), self.num_kv_heads)
        if self.query_scale != 1.0:
            q = q * jnp.asarray(self.query_scale, q.dtype)
        new_cache, first_slot = None, 0
        if cache is not None:
            cached_k, cached_v, first_slot = cache
            k = jax.lax.dynamic_update_slice_in_dim(cached_k, k.astype(cached_k.dtype), first_slot, axis=2)
            v = jax.lax.dynamic_update_slice_in_dim(cached_v, v.astype(cached_v.dtype), first_slot, axis=2)
            new_cache = (k, v)
        # slots as transformers numbers cache positions: a prefix's P keys come first (-P .. -1), then the text's
        key_slot = jnp.arange(k.shape[2])
        if self.prefix is not None:  # learned keys and values seen by every position, never rotated
            prefix_k, prefix_v = self.prefix(x.shape[0])
            k = jnp.concatenate([prefix_k.astype(k.dtype), k], axis=2)
            v = jnp.concatenate([prefix_v.astype(v.dtype), v], axis=2)
            mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (prefix_k.shape[2],), bool), mask], axis=-1)
            key_slot = jnp.arange(-prefix_k.shape[2], k.shape[2] - prefix_k.shape[2])
            causal_from = None if causal_from is None else causal_from + prefix_k.shape[2]
        if self.sliding:
            query_slot = first_slot + jnp.arange(x.shape[1])
            mask = mask & (key_slot[None, :] > query_slot[:, None] - self.window)[None, None]
        out = attend(q, k.astype(q.dtype), v.astype(q.dtype), mask,
                     dropout_rate=self.dropout_rate, dropout_key=keys[3], causal_from=causal_from)
        return self.o_proj(merge_heads(out), keys[4]), new_cache


class Gemma3DecoderLayer(nnx.Module):
    """Attention and GeGLU feed-forward, each between a norm before it and a norm after it, then added."""

    def __init__(self, config: Gemma3TextConfig, layer_type: str, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.self_attn = Gemma3Attention(config, layer_type, rngs=rngs, **kw)
        self.mlp = LlamaMLP(config, rngs=rngs, **kw)  # gate * up, with gelu_pytorch_tanh: GeGLU
        h, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = Gemma3RMSNorm(h, eps, **kw)
        self.post_attention_layernorm = Gemma3RMSNorm(h, eps, **kw)
        self.pre_feedforward_layernorm = Gemma3RMSNorm(h, eps, **kw)
        self.post_feedforward_layernorm = Gemma3RMSNorm(h, eps, **kw)

    def __call__(self, x: Array, positions: Array, mask: Array, cache: tuple[Array, Array, Array] | None,
                 dropout_key: Array | None, causal_from: int | None = None
                 ) -> tuple[Array, tuple[Array, Array] | None]:
        """x [B, T, H] -> (x [B, T, H], the layer's updated cache or None); arguments as `Gemma3Attention`'s."""
        k1, k2 = layer_keys(dropout_key, 2)
        attended, new_cache = self.self_attn(self.input_layernorm(x), positions, mask, cache, k1, causal_from)
        x = x + self.post_attention_layernorm(attended)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x), k2)), new_cache


class Gemma3TextModel(LlamaModel):
    """The decoder backbone: final normalised hidden states [B, T, H].

    It runs as the Llama backbone does (`LlamaModel.__call__`: prompt and prefix slots, positions, the cache);
    its layers decide their own attention window. Layers of both kinds differ in structure, so `scan_layers`
    runs them one by one unless they are all of one kind."""

    config_class: ClassVar = Gemma3TextConfig
    layout: ClassVar[Layout] = GEMMA3_LAYOUT

    def __init__(self, config: Gemma3TextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.embed_tokens = Gemma3TextScaledWordEmbedding(config.vocab_size, config.hidden_size, rngs=rngs, **kw)
        self.layers = nnx.List([Gemma3DecoderLayer(config, layer_type, rngs=rngs, **kw)
                                for layer_type in config.layer_types])
        self.norm = Gemma3RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.prompt = nnx.data(None)  # prompt tuning / P-tuning put a module here: batch -> virtual tokens [B, P, H]

    def keep_layers(self, indices: list[int]) -> None:
        """Keeps only the layers at `indices` (0-based, increasing), in place; the config (and its layer types)
        follows."""
        self.layers = nnx.List([self.layers[i] for i in indices])
        self.config = self.config.replace(num_hidden_layers=len(indices),
                                          layer_types=tuple(self.config.layer_types[i] for i in indices))


class Gemma3ForCausalLM(LlamaForCausalLM):
    """Backbone + language-model head (tied to the embeddings unless the config unties it): logits [B, T, V],
    soft-capped to (-c, c) by c * tanh(logits / c) when the config sets `final_logit_softcapping` c."""

    config_class: ClassVar = Gemma3TextConfig
    layout: ClassVar[Layout] = GEMMA3_LAYOUT

    def __init__(self, config: Gemma3TextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.model = Gemma3TextModel(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        tied = config.tie_word_embeddings
        self.lm_head = None if tied else Linear(config.hidden_size, config.vocab_size, use_bias=False, dtype=dtype,
                                                param_dtype=param_dtype, rngs=rngs)

    def logits(self, hidden: Array) -> Array:
        """[..., H] -> float32 vocabulary logits [..., V]."""
        logits = super().logits(hidden)
        cap = self.config.final_logit_softcapping
        return logits if cap is None else jnp.tanh(logits / cap) * cap


class Gemma3TextForSequenceClassification(LlamaForSequenceClassification):
    """Backbone + linear `score` read at each sequence's last real token: logits [B, L] (transformers'
    class of the same name)."""

    config_class: ClassVar = Gemma3TextConfig
    layout: ClassVar[Layout] = GEMMA3_LAYOUT

    def __init__(self, config: Gemma3TextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.model = Gemma3TextModel(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.score = Linear(config.hidden_size, config.num_labels, use_bias=False, dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)


class Gemma3TextForTokenClassification(LlamaForTokenClassification):
    """Backbone + dropout + linear `score` on every token: logits [B, T, L]. transformers has no Gemma 3 token
    classifier: this one has the Llama one's names (`model.`, `score.` with a bias) and computation."""

    config_class: ClassVar = Gemma3TextConfig
    layout: ClassVar[Layout] = GEMMA3_LAYOUT

    def __init__(self, config: Gemma3TextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.model = Gemma3TextModel(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dropout_rate = 0.1 if config.classifier_dropout is None else config.classifier_dropout
        self.score = Linear(config.hidden_size, config.num_labels, use_bias=True, dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)


class Gemma3TextForQuestionAnswering(LlamaForQuestionAnswering):
    """Backbone + linear `qa_outputs` on every token: span scores [B, T, 2]. transformers has no Gemma 3
    question-answering class: this one has the Llama one's names (backbone `transformer.`, a causal model's
    `model.` loading into it) and computation."""

    config_class: ClassVar = Gemma3TextConfig
    layout: ClassVar[Layout] = GEMMA3_LAYOUT

    def __init__(self, config: Gemma3TextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.transformer = Gemma3TextModel(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qa_outputs = Linear(config.hidden_size, 2, use_bias=True, dtype=dtype, param_dtype=param_dtype,
                                 rngs=rngs)
        self.dropout_rate = 0.0
