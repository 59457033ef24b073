"""BERT-style encoders in Flax NNX with Hugging Face module names (BERT, MiniLM, multilingual-e5).

Shapes: B batch, T sequence length, H hidden size, V vocabulary, L labels.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from tljax.models.base import PretrainedModel
from tljax.models.encoder.config import EncoderConfig
from tljax.models.layers import ACTIVATIONS, LayerNorm, Linear, attend, dropout, layer_keys, merge_heads, split_heads

Array = jax.Array


def _normal(config: EncoderConfig) -> nnx.Initializer:
    return nnx.initializers.normal(0.02)


def _linear(config: EncoderConfig, din: int, dout: int, dtype, param_dtype, rngs: nnx.Rngs) -> Linear:
    return Linear(din, dout, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _layer_norm(config: EncoderConfig, dtype, param_dtype, rngs: nnx.Rngs) -> LayerNorm:
    return LayerNorm(config.hidden_size, config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype)


class BertEmbeddings(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        def embed(n: int) -> nnx.Embed:
            return nnx.Embed(n, config.hidden_size, dtype=dtype, param_dtype=param_dtype,
                             embedding_init=_normal(config), rngs=rngs)

        self.word_embeddings = embed(config.vocab_size)
        self.position_embeddings = embed(config.max_position_embeddings)
        self.token_type_embeddings = embed(config.type_vocab_size)
        self.LayerNorm = _layer_norm(config, dtype, param_dtype, rngs)
        self.dropout_rate = config.hidden_dropout_prob

    def __call__(self, input_ids: Array, token_type_ids: Array, dropout_key: Array | None,
                 prompt: Array | None = None, position_offset: int = 0) -> Array:
        """[B, T] ids -> [B, T, H]; with `prompt` [B, P, H] (virtual tokens prepended) -> [B, P + T, H].

        Positions start at `position_offset` (the number of prefix-tuning keys, as PEFT counts them)."""
        words = self.word_embeddings(input_ids)
        if prompt is not None:
            words = jnp.concatenate([prompt.astype(words.dtype), words], axis=1)
            token_type_ids = jnp.pad(token_type_ids, ((0, 0), (prompt.shape[1], 0)))
        positions = position_offset + jnp.arange(words.shape[1])[None, :]
        x = words + self.token_type_embeddings(token_type_ids) + self.position_embeddings(positions)
        return dropout(self.LayerNorm(x), self.dropout_rate, dropout_key)


class BertSelfAttention(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        h = config.hidden_size
        self.query = _linear(config, h, h, dtype, param_dtype, rngs)
        self.key = _linear(config, h, h, dtype, param_dtype, rngs)
        self.value = _linear(config, h, h, dtype, param_dtype, rngs)
        self.num_heads = config.num_attention_heads
        self.dropout_rate = config.attention_probs_dropout_prob
        self.prefix = nnx.data(None)  # prefix tuning puts a module here: batch -> (keys, values) [B, N, P, D]

    def __call__(self, x: Array, mask: Array, dropout_key: Array | None) -> Array:
        """[B, T, H], mask [B, 1, 1, T] -> [B, T, H]."""
        keys = layer_keys(dropout_key, 4)
        q, k, v = (split_heads(proj(x, key), self.num_heads)
                   for proj, key in zip((self.query, self.key, self.value), keys))
        if self.prefix is not None:
            prefix_k, prefix_v = self.prefix(x.shape[0])
            k = jnp.concatenate([prefix_k.astype(k.dtype), k], axis=2)
            v = jnp.concatenate([prefix_v.astype(v.dtype), v], axis=2)
            mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (prefix_k.shape[2],), bool), mask], axis=-1)
        out = attend(q, k, v, mask, dropout_rate=self.dropout_rate, dropout_key=keys[3])
        return merge_heads(out)


class BertSelfOutput(nnx.Module):
    """Projection, dropout, residual and LayerNorm after attention (`output`) or the feed-forward block."""

    def __init__(self, config: EncoderConfig, din: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dense = _linear(config, din, config.hidden_size, dtype, param_dtype, rngs)
        self.LayerNorm = _layer_norm(config, dtype, param_dtype, rngs)
        self.dropout_rate = config.hidden_dropout_prob

    def __call__(self, x: Array, residual: Array, dropout_key: Array | None) -> Array:
        k1, k2 = layer_keys(dropout_key, 2)
        return self.LayerNorm(dropout(self.dense(x, k1), self.dropout_rate, k2) + residual)


class BertAttention(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.self = BertSelfAttention(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.output = BertSelfOutput(config, config.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: Array, mask: Array, dropout_key: Array | None) -> Array:
        k1, k2 = layer_keys(dropout_key, 2)
        return self.output(self.self(x, mask, k1), x, k2)


class BertIntermediate(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dense = _linear(config, config.hidden_size, config.intermediate_size, dtype, param_dtype, rngs)
        self.activation = ACTIVATIONS[config.hidden_act]

    def __call__(self, x: Array, dropout_key: Array | None = None) -> Array:
        return self.activation(self.dense(x, dropout_key))


class BertLayer(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attention = BertAttention(config, **kw)
        self.intermediate = BertIntermediate(config, **kw)
        self.output = BertSelfOutput(config, config.intermediate_size, **kw)

    def __call__(self, x: Array, mask: Array, dropout_key: Array | None) -> Array:
        """[B, T, H] -> [B, T, H]."""
        k1, k2, k3 = layer_keys(dropout_key, 3)
        x = self.attention(x, mask, k1)
        return self.output(self.intermediate(x, k2), x, k3)


class BertEncoder(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.layer = nnx.List(
            [BertLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs) for _ in range(config.num_hidden_layers)]
        )

    def __call__(self, x: Array, mask: Array, dropout_key: Array | None) -> tuple[Array, ...]:
        """The embeddings' output [B, T, H], then each layer's: (x_0, x_1, ..., x_L)."""
        states = [x]
        for layer, key in zip(self.layer, layer_keys(dropout_key, len(self.layer))):
            states.append(layer(states[-1], mask, key))
        return tuple(states)


class BertPooler(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dense = _linear(config, config.hidden_size, config.hidden_size, dtype, param_dtype, rngs)

    def __call__(self, hidden: Array, dropout_key: Array | None = None) -> Array:
        """[B, T, H] -> [B, H]: tanh projection of the first token."""
        return jnp.tanh(self.dense(hidden[:, 0], dropout_key))


class BertModel(PretrainedModel):
    """The encoder backbone: `last_hidden_state` [B, T, H] and the tanh `pooler` output [B, H]."""

    config_class: ClassVar = EncoderConfig
    base_model_prefix: ClassVar[str] = "bert"
    returns_hidden_states: ClassVar[bool] = True
    # checkpoints of masked-LM models have no pooler
    new_parameters: ClassVar[tuple[str, ...]] = ("pooler.",)

    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs, add_pooling_layer: bool = True):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = config
        self.embeddings = BertEmbeddings(config, **kw)
        self.encoder = BertEncoder(config, **kw)
        self.pooler = BertPooler(config, **kw) if add_pooling_layer else None
        self.prompt = nnx.data(None)  # prompt tuning / P-tuning put a module here: batch -> virtual tokens [B, P, H]

    @property
    def num_virtual_tokens(self) -> int:
        return 0 if self.prompt is None else self.prompt.num_virtual_tokens

    @property
    def num_prefix_tokens(self) -> int:
        prefix = self.encoder.layer[0].attention.self.prefix
        return 0 if prefix is None else prefix.num_virtual_tokens

    @property
    def num_layers(self) -> int:
        return len(self.encoder.layer)

    def keep_layers(self, indices: list[int]) -> None:
        """Keeps only the layers at `indices` (0-based, increasing), in place; the config follows."""
        self.encoder.layer = nnx.List([self.encoder.layer[i] for i in indices])
        self.config = self.config.replace(num_hidden_layers=len(indices))

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        *,
        dropout_key: Array | None = None,
        output_hidden_states: bool = False,
    ) -> Array | tuple[Array, tuple[Array, ...]]:
        """[B, T] token ids (mask 1 for real tokens, 0 for padding) -> last hidden state [B, P + T, H].

        P is the number of virtual tokens a prompt method prepends (0 without one). `dropout_key` switches
        dropout on (training); None evaluates deterministically. `output_hidden_states` also returns every
        layer's output (the embeddings' first: L + 1 arrays [B, P + T, H]), as Hugging Face's `hidden_states`.
        """
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        k1, k2, k3 = layer_keys(dropout_key, 3)
        prompt = None
        if self.prompt is not None:
            prompt = self.prompt(input_ids.shape[0], dropout_key=k3)
            attention_mask = jnp.pad(attention_mask, ((0, 0), (prompt.shape[1], 0)), constant_values=1)
        x = self.embeddings(input_ids, token_type_ids, k1, prompt, self.num_prefix_tokens)
        mask = attention_mask.astype(bool)[:, None, None, :]
        states = self.encoder(x, mask, k2)
        return (states[-1], states) if output_hidden_states else states[-1]

    def hidden_before(self, input_ids: Array, attention_mask: Array, layer: int) -> Array:
        """The input of layer `layer` [B, T, H] (the embeddings, then layers 0 .. layer - 1), dropout off: what
        a frozen bottom of the model computes, the same at every step."""
        x = self.embeddings(input_ids, jnp.zeros_like(input_ids), None)
        mask = attention_mask.astype(bool)[:, None, None, :]
        for block in self.encoder.layer[:layer]:
            x = block(x, mask, None)
        return x

    def from_layer(self, x: Array, attention_mask: Array, layer: int, dropout_key: Array | None = None) -> Array:
        """Layers `layer` .. L - 1 on their input `x` [B, T, H] -> the last hidden state [B, T, H], with the
        dropout keys that the whole model's pass (`__call__`) gives those layers."""
        encoder_key = layer_keys(dropout_key, 3)[1]
        keys = layer_keys(encoder_key, len(self.encoder.layer))[layer:]
        mask = attention_mask.astype(bool)[:, None, None, :]
        for block, key in zip(self.encoder.layer[layer:], keys):
            x = block(x, mask, key)
        return x


def mean_pool(hidden: Array, attention_mask: Array) -> Array:
    """Average of the real tokens' states (sentence-transformers' pooling): [B, T, H], [B, T] -> [B, H]."""
    weights = attention_mask.astype(hidden.dtype)[..., None]
    return (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1e-9)


def cls_pool(hidden: Array, attention_mask: Array | None = None) -> Array:
    """The first ([CLS]) token's state: [B, T, H] -> [B, H]."""
    return hidden[:, 0]


class BertForSequenceClassification(PretrainedModel):
    """Backbone + pooler + dropout + linear classifier, as Hugging Face's class: logits [B, L]."""

    config_class: ClassVar = EncoderConfig
    base_model_prefix: ClassVar[str] = "bert"
    new_parameters: ClassVar[tuple[str, ...]] = ("classifier.", "bert.pooler.")
    # a masked-LM checkpoint (e.g. after continued pre-training) carries its prediction head
    unused_tensors: ClassVar[str | None] = r"^cls\."
    head_pattern: ClassVar[str] = r"^classifier/"
    returns_hidden_states: ClassVar[bool] = True

    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.bert = BertModel(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.classifier = _linear(config, config.hidden_size, config.num_labels, dtype, param_dtype, rngs)
        rate = config.classifier_dropout
        self.dropout_rate = config.hidden_dropout_prob if rate is None else rate

    def features(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """What the classifier reads: the pooled output [B, H]."""
        k1, k2 = layer_keys(dropout_key, 2)
        return self.bert.pooler(self.bert(input_ids, attention_mask, token_type_ids, dropout_key=k1), k2)

    def classify(self, features: Array, *, dropout_key: Array | None = None) -> Array:
        """Pooled features [B, H] -> logits [B, L] (dropout, then the linear classifier)."""
        k1, k2 = layer_keys(dropout_key, 2)
        return self.classifier(dropout(features, self.dropout_rate, k1), k2)

    def logits_from_layer(self, hidden: Array, attention_mask: Array, layer: int, *,
                          dropout_key: Array | None = None) -> Array:
        """Logits [B, L] from the input of layer `layer` [B, T, H] (`BertModel.hidden_before`): only the top of
        the model runs, with the dropout keys the whole model's pass gives it."""
        k1, k2 = layer_keys(dropout_key, 2)
        k_body, k_pool = layer_keys(k1, 2)  # as __call__ splits its key
        last = self.bert.from_layer(hidden, attention_mask, layer, k_body)
        return self.classify(self.bert.pooler(last, k_pool), dropout_key=k2)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                 *, dropout_key: Array | None = None,
                 output_hidden_states: bool = False) -> Array | tuple[Array, tuple[Array, ...]]:
        """[B, T] -> logits [B, L] (and, with `output_hidden_states`, the backbone's L + 1 hidden states)."""
        k1, k2 = layer_keys(dropout_key, 2)
        k_body, k_pool = layer_keys(k1, 2)  # as features() splits its key
        last, states = self.bert(input_ids, attention_mask, token_type_ids, dropout_key=k_body,
                                 output_hidden_states=True)
        logits = self.classify(self.bert.pooler(last, k_pool), dropout_key=k2)
        return (logits, states) if output_hidden_states else logits


class BertPredictionHeadTransform(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dense = _linear(config, config.hidden_size, config.hidden_size, dtype, param_dtype, rngs)
        self.LayerNorm = _layer_norm(config, dtype, param_dtype, rngs)
        self.activation = ACTIVATIONS[config.hidden_act]

    def __call__(self, x: Array, dropout_key: Array | None = None) -> Array:
        return self.LayerNorm(self.activation(self.dense(x, dropout_key)))


class BertLMPredictionHead(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.transform = BertPredictionHeadTransform(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), param_dtype))


class BertOnlyMLMHead(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.predictions = BertLMPredictionHead(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class BertForMaskedLM(PretrainedModel):
    """Backbone + masked-LM head whose output layer is tied to the word embeddings: logits [B, T, V]."""

    config_class: ClassVar = EncoderConfig
    base_model_prefix: ClassVar[str] = "bert"
    new_parameters: ClassVar[tuple[str, ...]] = ("cls.",)
    unused_tensors: ClassVar[str | None] = r"^(bert\.)?pooler\."
    # the prediction head trains with every method: the packaged encoders ship without one (it starts fresh)
    head_pattern: ClassVar[str] = r"^cls/"

    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.bert = BertModel(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def tied_parameters(self) -> dict[str, str]:
        return {
            "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias",
        }

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                 *, dropout_key: Array | None = None, positions: Array | None = None) -> Array:
        """[B, T] -> vocabulary logits [B, T, V] (virtual prompt tokens are not scored).

        `positions` [B, M] scores only those token positions: logits [B, M, V]. Training predicts only the
        masked tokens, and the vocabulary projection is most of a small model's cost."""
        k1, k2 = layer_keys(dropout_key, 2)
        hidden = self.bert(input_ids, attention_mask, token_type_ids, dropout_key=k1)
        hidden = hidden[:, self.bert.num_virtual_tokens:]
        if positions is not None:
            hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)
        head = self.cls.predictions
        x = head.transform(hidden, k2)
        return self.bert.embeddings.word_embeddings.attend(x) + head.bias[...].astype(self.dtype)[None, None]
