"""GPT-2 in Flax NNX with Hugging Face module names (GPT-2, DistilGPT2).

Learned absolute positions (`wpe`), pre-norm blocks with LayerNorm, one fused query/key/value projection
(`c_attn`), a GELU feed-forward block, the language-model head tied to the token embeddings. The projections are
Hugging Face's `Conv1D`: a Linear whose weight is stored [in, out]. The key/value cache is the Llama family's
`KVCache`, passed in and returned, so every call stays a pure function.
Shapes: B batch, T new tokens, S cache slots, H hidden, N heads, D head size, V vocab, L labels.
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from tljax.models.base import Layout, PretrainedModel
from tljax.models.checkpoint import STORED_IN_OUT
from tljax.models.decoder.modeling import DecoderBackbone
from tljax.models.gpt2.config import GPT2Config
from tljax.models.layers import ACTIVATIONS, LayerNorm, Linear, attend, dropout, layer_keys, merge_heads, split_heads

Array = jax.Array

GPT2_LAYOUT = Layout(
    layer=r"(?:^|/)h/{i}/",
    embeddings=r"(?:^|/)(?:wte|wpe)/",
    norms=r"(?:^|/)ln_[12]/(?:scale|bias)$",
    no_decay=r"(?:^|/)bias$|(?:^|/)ln_(?:1|2|f)/",
    attention_output=r"attn/c_proj$",
    feed_forward_output=r"mlp/c_proj$",
    above_layers=r"(?:^|/)ln_f/",
    lora_targets=("c_attn",),  # PEFT's default for GPT-2
)

# the causal-mask buffers older GPT-2 checkpoints carry ("h.0.attn.bias", "h.0.attn.masked_bias"): not parameters
MASK_BUFFERS = r"(?:^|\.)attn\.(?:masked_)?bias$"


class Conv1D(Linear):
    """Hugging Face's GPT-2 projection: a Linear (kernel [in, out]) whose checkpoint tensor is stored [in, out]
    too, so it converts without a transposition (its kernel carries `STORED_IN_OUT`)."""

    def __init__(self, din: int, dout: int, *, dtype, param_dtype, init_std: float = 0.02, rngs: nnx.Rngs):
        super().__init__(din, dout, dtype=dtype, param_dtype=param_dtype, init_std=init_std, rngs=rngs)
        self.kernel = nnx.Param(self.kernel.get_value(), **{STORED_IN_OUT: True})


def _embed(count: int, config: GPT2Config, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(count, config.n_embd, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=nnx.initializers.normal(0.02), rngs=rngs)


def _output_std(config: GPT2Config) -> float:
    """The initial scale of a residual branch's output projection (`c_proj`), as Hugging Face initialises GPT-2:
    0.02 / sqrt(2 * layers), so that the residual stream's variance does not grow with depth."""
    return 0.02 / math.sqrt(2 * config.n_layer)


class GPT2Attention(nnx.Module):
    def __init__(self, config: GPT2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        h = config.n_embd
        self.c_attn = Conv1D(h, 3 * h, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.c_proj = Conv1D(h, h, dtype=dtype, param_dtype=param_dtype, init_std=_output_std(config), rngs=rngs)
        self.num_heads = config.n_head
        self.dropout_rate = config.attn_pdrop  # on the attention weights (the block drops out c_proj's output)
        self.prefix = nnx.data(None)  # prefix tuning puts a module here: batch -> (keys, values) [B, N, P, D]

    def __call__(self, x: Array, mask: Array, cache: tuple[Array, Array, Array] | None, dropout_key: Array | None,
                 causal_from: int | None = None) -> tuple[Array, tuple[Array, Array] | None]:
        """x [B, T, H]; mask [B, 1, T, S]; cache (keys, values, write index) or None -> ([B, T, H], the cache's
        new keys and values or None). `causal_from`: the slot of the first query when known when tracing."""
        keys = layer_keys(dropout_key, 3)
        q, k, v = (split_heads(part, self.num_heads) for part in jnp.split(self.c_attn(x, keys[0]), 3, axis=-1))
        new_cache = None
        if cache is not None:
            cached_k, cached_v, index = cache
            k = jax.lax.dynamic_update_slice_in_dim(cached_k, k.astype(cached_k.dtype), index, axis=2)
            v = jax.lax.dynamic_update_slice_in_dim(cached_v, v.astype(cached_v.dtype), index, axis=2)
            new_cache = (k, v)
        if self.prefix is not None:  # learned keys and values that every position sees first
            prefix_k, prefix_v = self.prefix(x.shape[0])
            k = jnp.concatenate([prefix_k.astype(k.dtype), k], axis=2)
            v = jnp.concatenate([prefix_v.astype(v.dtype), v], axis=2)
            mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (prefix_k.shape[2],), bool), mask], axis=-1)
            causal_from = None if causal_from is None else causal_from + prefix_k.shape[2]
        out = attend(q, k.astype(q.dtype), v.astype(q.dtype), mask,
                     dropout_rate=self.dropout_rate, dropout_key=keys[1], causal_from=causal_from)
        return self.c_proj(merge_heads(out), keys[2]), new_cache


class GPT2MLP(nnx.Module):
    def __init__(self, config: GPT2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        h, f = config.n_embd, config.intermediate_size
        self.c_fc = Conv1D(h, f, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.c_proj = Conv1D(f, h, dtype=dtype, param_dtype=param_dtype, init_std=_output_std(config), rngs=rngs)
        self.activation = ACTIVATIONS[config.activation_function]
        self.dropout_rate = config.resid_pdrop

    def __call__(self, x: Array, dropout_key: Array | None = None) -> Array:
        """[B, T, H] -> [B, T, H]."""
        k1, k2, k3 = layer_keys(dropout_key, 3)
        return dropout(self.c_proj(self.activation(self.c_fc(x, k1)), k2), self.dropout_rate, k3)


class GPT2Block(nnx.Module):
    def __init__(self, config: GPT2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.ln_1 = LayerNorm(config.n_embd, config.layer_norm_epsilon, **kw)
        self.attn = GPT2Attention(config, rngs=rngs, **kw)
        self.ln_2 = LayerNorm(config.n_embd, config.layer_norm_epsilon, **kw)
        self.mlp = GPT2MLP(config, rngs=rngs, **kw)
        # Hugging Face's attention drops out its output (resid_dropout); here the block does, so that every module
        # has one `dropout_rate` (which `set_dropout` finds)
        self.dropout_rate = config.resid_pdrop

    def __call__(self, x, positions, mask, cache, dropout_key, causal_from: int | None = None):
        """x [B, T, H] -> (x [B, T, H], new cache entries). `positions` are unused (they entered with the
        embeddings); the signature is the Llama layer's, so that both scan over their layers alike."""
        k1, k2, k3 = layer_keys(dropout_key, 3)
        attended, new_cache = self.attn(self.ln_1(x), mask, cache, k1, causal_from)
        x = x + dropout(attended, self.dropout_rate, k2)
        return x + self.mlp(self.ln_2(x), k3), new_cache


class GPT2Model(DecoderBackbone):
    """The GPT-2 backbone: final normalised hidden states [B, T, H]."""

    config_class: ClassVar = GPT2Config
    base_model_prefix: ClassVar[str] = "transformer"
    layout: ClassVar[Layout] = GPT2_LAYOUT
    unused_tensors: ClassVar[str | None] = MASK_BUFFERS

    def __init__(self, config: GPT2Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.wte = _embed(config.vocab_size, config, dtype, param_dtype, rngs)
        self.wpe = _embed(config.n_positions, config, dtype, param_dtype, rngs)
        self.h = nnx.List([GPT2Block(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                           for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, config.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype)
        self.dropout_rate = config.embd_pdrop
        self.prompt = nnx.data(None)  # prompt tuning / P-tuning put a module here: batch -> virtual tokens [B, P, H]

    @property
    def input_embeddings(self) -> nnx.Embed:
        return self.wte

    @property
    def blocks(self) -> nnx.List:
        return self.h

    @property
    def first_attention(self) -> nnx.Module:
        return self.h[0].attn

    def final_norm(self, x: Array) -> Array:
        return self.ln_f(x)

    def add_positions(self, x: Array, positions: Array, dropout_key: Array | None) -> tuple[Array, Array | None]:
        """The learned position embeddings added (and the embeddings' dropout). `positions` count each sequence's
        real tokens before the token, as Hugging Face's `generate` derives GPT-2's position ids from the attention
        mask (its plain forward counts padding too: the two agree on right-padded and unpadded batches); a
        prefix's P keys take the first P positions, as PEFT's past key values do."""
        k_embed, dropout_key = layer_keys(dropout_key, 2)
        return dropout(x + self.wpe(positions), self.dropout_rate, k_embed), dropout_key

    def keep_layers(self, indices: list[int]) -> None:
        """Keeps only the layers at `indices` (0-based, increasing), in place; the config follows."""
        self.h = nnx.List([self.h[i] for i in indices])
        self.config = self.config.replace(n_layer=len(indices))


def _head(din: int, dout: int, dtype, param_dtype, rngs: nnx.Rngs, bias: bool = True) -> Linear:
    """A task head: PyTorch's nn.Linear (its weight stored [out, in], unlike the backbone's Conv1D)."""
    return Linear(din, dout, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class GPT2LMHeadModel(PretrainedModel):
    """Backbone + language-model head (tied to `wte` unless the config unties it): logits [B, T, V]."""

    config_class: ClassVar = GPT2Config
    base_model_prefix: ClassVar[str] = "transformer"
    layout: ClassVar[Layout] = GPT2_LAYOUT
    unused_tensors: ClassVar[str | None] = MASK_BUFFERS
    predicts_next_token: ClassVar[bool] = True

    def __init__(self, config: GPT2Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        tied = config.tie_word_embeddings
        self.lm_head = None if tied else _head(config.n_embd, config.vocab_size, dtype, param_dtype, rngs, bias=False)

    def tied_parameters(self) -> dict[str, str]:
        return {"lm_head.weight": "transformer.wte.weight"} if self.lm_head is None else {}

    def logits(self, hidden: Array) -> Array:
        """[..., H] -> float32 vocabulary logits [..., V]."""
        out = self.transformer.wte.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        return out.astype(jnp.float32)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, positions: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """[B, T] -> next-token logits [B, T, V] (no cache; for training and scoring). Virtual prompt tokens are
        not scored."""
        hidden, _ = self.transformer(input_ids, attention_mask, positions, dropout_key=dropout_key)
        return self.logits(hidden[:, self.transformer.num_virtual_tokens:])

    def logits_at(self, input_ids: Array, attention_mask: Array, at: Array, *, shared: Array | None = None,
                  dropout_key: Array | None = None) -> Array:
        """[B, T] ids -> next-token logits [B, R, V] at the token positions `at` [B, R] only, after the tokens
        `shared` [1, S] that every row starts with (run once): as `LlamaForCausalLM.logits_at`."""
        body = self.transformer
        if shared is None or shared.shape[1] == 0:
            hidden = body.text_states(input_ids, attention_mask, dropout_key=dropout_key)
        else:
            size = body.num_virtual_tokens + shared.shape[1] + input_ids.shape[1]
            hidden, _ = body.after_shared_start(shared, input_ids, attention_mask, size, dropout_key=dropout_key)
        return self.logits(jnp.take_along_axis(hidden, at[..., None], axis=1))


class GPT2ForSequenceClassification(PretrainedModel):
    """Backbone + linear `score` (no bias) read at each sequence's last real token: logits [B, L]."""

    config_class: ClassVar = GPT2Config
    base_model_prefix: ClassVar[str] = "transformer"
    layout: ClassVar[Layout] = GPT2_LAYOUT
    new_parameters: ClassVar[tuple[str, ...]] = ("score.",)
    unused_tensors: ClassVar[str | None] = r"^lm_head\.|" + MASK_BUFFERS
    head_pattern: ClassVar[str] = r"^score/"

    def __init__(self, config: GPT2Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.score = _head(config.n_embd, config.num_labels, dtype, param_dtype, rngs, bias=False)

    def features(self, input_ids: Array, attention_mask: Array | None = None, positions: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """What the classifier reads: the hidden state of each sequence's last real token [B, H].

        As Hugging Face's class, the rightmost token that is not `config.pad_token_id` (when the config names one);
        and, here, one the attention mask marks real, so that padding of another id is never read."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        hidden = self.transformer.text_states(input_ids, attention_mask, positions, dropout_key=dropout_key)
        real = attention_mask.astype(bool)
        if self.config.pad_token_id is not None:
            real = real & (input_ids != self.config.pad_token_id)
        last = jnp.max(jnp.arange(input_ids.shape[1])[None] * real.astype(jnp.int32), axis=-1)
        return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]

    def token_features(self, input_ids: Array, attention_mask: Array | None = None, *,
                       token_type_ids: Array | None = None, dropout_key: Array | None = None) -> Array:
        """The last hidden state of the text's positions [B, T, H]: what a token or span head of a multi-task run
        reads (token types: unused, see `GPT2ForQuestionAnswering.features`)."""
        return self.transformer.text_states(input_ids, attention_mask, dropout_key=dropout_key)

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


class GPT2ForTokenClassification(PretrainedModel):
    """Backbone + dropout + linear `classifier` on every token, as Hugging Face's class: logits [B, T, L] for the
    text's positions (a soft prompt's virtual tokens are not labelled)."""

    config_class: ClassVar = GPT2Config
    base_model_prefix: ClassVar[str] = "transformer"
    layout: ClassVar[Layout] = GPT2_LAYOUT
    new_parameters: ClassVar[tuple[str, ...]] = ("classifier.",)
    unused_tensors: ClassVar[str | None] = r"^lm_head\.|" + MASK_BUFFERS
    head_pattern: ClassVar[str] = r"^classifier/"

    def __init__(self, config: GPT2Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # Hugging Face's: classifier_dropout, else 0.1 (GPT-2 configs have no hidden_dropout)
        self.dropout_rate = 0.1 if config.classifier_dropout is None else config.classifier_dropout
        self.classifier = _head(config.n_embd, config.num_labels, dtype, param_dtype, rngs)

    def features(self, input_ids: Array, attention_mask: Array | None = None, positions: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """The last hidden state of the text's positions [B, T, H]."""
        return self.transformer.text_states(input_ids, attention_mask, positions, dropout_key=dropout_key)

    def pool(self, features: Array) -> Array:
        return features

    def classify(self, features: Array, *, dropout_key: Array | None = None) -> Array:
        """Features [B, T, H] -> logits [B, T, L]: dropout, then the linear `classifier`."""
        k1, k2 = layer_keys(dropout_key, 2)
        return self.classifier(dropout(features, self.dropout_rate, k1), k2).astype(jnp.float32)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, positions: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """[B, T] -> logits [B, T, L]."""
        k1, k2 = layer_keys(dropout_key, 2)
        return self.classify(self.features(input_ids, attention_mask, positions, dropout_key=k1), dropout_key=k2)


class GPT2ForQuestionAnswering(PretrainedModel):
    """Backbone + linear `qa_outputs` on every token, as Hugging Face's class: span scores [B, T, 2], [..., 0]
    where the answer starts and [..., 1] where it ends."""

    config_class: ClassVar = GPT2Config
    base_model_prefix: ClassVar[str] = "transformer"
    layout: ClassVar[Layout] = GPT2_LAYOUT
    new_parameters: ClassVar[tuple[str, ...]] = ("qa_outputs.",)
    unused_tensors: ClassVar[str | None] = r"^lm_head\.|" + MASK_BUFFERS
    head_pattern: ClassVar[str] = r"^qa_outputs/"

    def __init__(self, config: GPT2Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qa_outputs = _head(config.n_embd, 2, dtype, param_dtype, rngs)
        self.dropout_rate = 0.0

    def features(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """The last hidden state of the text's positions [B, T, H]. Token types are not read: Hugging Face's GPT-2
        would add their *token* embeddings (`wte`), which a tokenizer's 0/1 segment ids are not meant to be, and
        GPT-2's tokenizer gives none."""
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
