"""BERT-style encoders in Flax NNX with Hugging Face module names (BERT, MiniLM, multilingual-e5).

Shapes: B batch, T sequence length, H hidden size, V vocabulary, L labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from tljax.models.base import Layout, PretrainedModel, read_config_dict
from tljax.models.checkpoint import atomic_directory, model_to_hf_tensors, write_model_directory
from tljax.models.encoder.config import EncoderConfig
from tljax.models.layers import ACTIVATIONS, LayerNorm, Linear, attend, dropout, layer_keys, merge_heads, split_heads

Array = jax.Array

BERT_LAYOUT = Layout(
    layer=r"(?:^|/)encoder/layer/{i}/",
    embeddings=r"(?:^|/)embeddings/",
    norms=r"LayerNorm/(?:scale|bias)$",
    no_decay=r"(?:^|/)bias$|LayerNorm/",
    attention_output=r"attention/output/dense$",
    feed_forward_output=r"layer/\d+/output/dense$",
    above_layers=r"(?:^|/)pooler/",
    lora_targets=("query", "value"),
)


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

    def __call__(self, first: Array, dropout_key: Array | None = None) -> Array:
        """The first token's state [B, H] -> [B, H]: its tanh projection."""
        return jnp.tanh(self.dense(first, dropout_key))


class BertModel(PretrainedModel):
    """The encoder backbone: `last_hidden_state` [B, T, H] and the tanh `pooler` output [B, H]."""

    config_class: ClassVar = EncoderConfig
    base_model_prefix: ClassVar[str] = "bert"
    layout: ClassVar[Layout] = BERT_LAYOUT
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
    def input_embeddings(self) -> nnx.Embed:
        """The token embedding table [V, H] (where prompt tuning starts its virtual tokens)."""
        return self.embeddings.word_embeddings

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

    def text_states(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                    *, dropout_key: Array | None = None) -> Array:
        """The last hidden state of the text's own positions [B, T, H] (a soft prompt's virtual tokens dropped):
        what a token head reads."""
        last = self(input_ids, attention_mask, token_type_ids, dropout_key=dropout_key)
        return last[:, self.num_virtual_tokens:]

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


class EncoderTaskModel(PretrainedModel):
    """What an encoder's task models share: the backbone (a `backbone_class`), kept under the name of the class's
    `base_model_prefix` (`bert`, `roberta`) as in Hugging Face's checkpoints, and read through `body`."""

    backbone_class: ClassVar[type[BertModel]] = BertModel

    @property
    def body(self) -> BertModel:
        """The backbone."""
        return getattr(self, self.base_model_prefix)

    def _add_backbone(self, config: EncoderConfig, dtype, param_dtype, rngs: nnx.Rngs, pooler: bool = False) -> None:
        setattr(self, self.base_model_prefix, self.backbone_class(config, dtype=dtype, param_dtype=param_dtype,
                                                                  rngs=rngs, add_pooling_layer=pooler))


class BertForSequenceClassification(EncoderTaskModel):
    """Backbone + pooler + dropout + linear classifier, as Hugging Face's class: logits [B, L].

    With `config.classifier_pooling == "mean"` the classifier reads the masked mean of the last hidden states
    instead and there is no pooler; `save_pretrained` then writes the PyTorch class that computes the same
    (`MEAN_POOLED_MODELING`, loaded with `trust_remote_code=True`).

    The head that is new for each task is the classifier and the pooler (`task_head_pattern`): sentence
    encoders are trained for mean pooling, and several ship no pooler (the zoo gives them a random one), so a
    pooler left frozen would feed the classifier a projection nobody trained.
    """

    config_class: ClassVar = EncoderConfig
    base_model_prefix: ClassVar[str] = "bert"
    layout: ClassVar[Layout] = BERT_LAYOUT
    new_parameters: ClassVar[tuple[str, ...]] = ("classifier.", "bert.pooler.")
    # a masked-LM checkpoint (e.g. after continued pre-training) carries its prediction head
    unused_tensors: ClassVar[str | None] = r"^cls\."
    # the layer that maps onto the task's labels (replaced per task by multi-task heads)
    head_pattern: ClassVar[str] = r"^classifier/"
    # everything new for the task: the output layer and the pooler before it
    task_head_pattern: ClassVar[str] = r"^(?:classifier|bert/pooler)/"
    returns_hidden_states: ClassVar[bool] = True

    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self._add_backbone(config, dtype, param_dtype, rngs, pooler=config.classifier_pooling == "pooler")
        self.classifier = _linear(config, config.hidden_size, config.num_labels, dtype, param_dtype, rngs)
        rate = config.classifier_dropout
        self.dropout_rate = config.hidden_dropout_prob if rate is None else rate

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: Any) -> BertForSequenceClassification:
        """As `PretrainedModel.from_pretrained`; a mean-pooled classifier (`classifier_pooling="mean"`, given or in
        config.json) drops the pooler a checkpoint may hold."""
        pooling = kwargs.get("classifier_pooling", read_config_dict(Path(directory)).get("classifier_pooling"))
        if pooling != "mean":
            return super().from_pretrained(directory, **kwargs)
        # loaded with a pooler (a checkpoint's or a fresh one: either is allowed), which is then taken out
        model = super().from_pretrained(directory, **{**kwargs, "classifier_pooling": "pooler"})
        model.body.pooler = None
        model.config = model.body.config = model.config.replace(classifier_pooling="mean")
        return model

    def summary(self, last: Array, attention_mask: Array | None = None) -> Array:
        """The last hidden states [B, P + T, H] -> what the head reads [B, H]: the first position's state (a
        virtual token's under a soft prompt, as in PEFT) for the pooler, or the mean of the text's real tokens."""
        if self.config.classifier_pooling == "pooler":
            return cls_pool(last)
        text = last[:, self.body.num_virtual_tokens:]
        mask = jnp.ones(text.shape[:2], jnp.int32) if attention_mask is None else attention_mask
        return mean_pool(text, mask)

    def features(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """What the pre-trained backbone gives the head [B, H] (`summary`): the head itself is in `classify`, so
        that a frozen backbone's features can be computed once while the whole head trains."""
        body_key = layer_keys(dropout_key, 2)[0]  # as __call__ derives it: the same dropout masks as ever
        last = self.body(input_ids, attention_mask, token_type_ids, dropout_key=body_key)
        return self.summary(last, attention_mask)

    def token_features(self, input_ids: Array, attention_mask: Array | None = None, *,
                       token_type_ids: Array | None = None, dropout_key: Array | None = None) -> Array:
        """The last hidden state of the text's positions [B, T, H]: what a token or span head reads (a token or
        question-answering task of a multi-task run shares this backbone; a question / context pair has its
        `token_type_ids` [B, T])."""
        return self.body.text_states(input_ids, attention_mask, token_type_ids, dropout_key=dropout_key)

    def pool(self, features: Array) -> Array:
        """Features [B, H] -> what the linear classifier's dropout reads [B, H]: the pooler's output, or the
        features themselves under mean pooling."""
        return features if self.body.pooler is None else self.body.pooler(features)

    def classify(self, features: Array, *, dropout_key: Array | None = None) -> Array:
        """Features [B, H] -> logits [B, L]: the pooler (if any), dropout, then the linear classifier."""
        k1, k2 = layer_keys(dropout_key, 2)
        return self.classifier(dropout(self.pool(features), self.dropout_rate, k1), k2)

    def logits_from_layer(self, hidden: Array, attention_mask: Array, layer: int, *,
                          dropout_key: Array | None = None) -> Array:
        """Logits [B, L] from the input of layer `layer` [B, T, H] (`BertModel.hidden_before`): only the top of
        the model runs, with the dropout keys the whole model's pass gives it."""
        k1, k2 = layer_keys(dropout_key, 2)  # as __call__ splits its key
        last = self.body.from_layer(hidden, attention_mask, layer, layer_keys(k1, 2)[0])
        return self.classify(self.summary(last, attention_mask), dropout_key=k2)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                 *, dropout_key: Array | None = None,
                 output_hidden_states: bool = False) -> Array | tuple[Array, tuple[Array, ...]]:
        """[B, T] -> logits [B, L] (and, with `output_hidden_states`, the backbone's L + 1 hidden states)."""
        k1, k2 = layer_keys(dropout_key, 2)  # as features() and classify() take them
        last, states = self.body(input_ids, attention_mask, token_type_ids, dropout_key=layer_keys(k1, 2)[0],
                                 output_hidden_states=True)
        logits = self.classify(self.summary(last, attention_mask), dropout_key=k2)
        return (logits, states) if output_hidden_states else logits

    def save_pretrained(self, directory: str | Path, *, tokenizer_source: str | Path | None = None) -> None:
        """As `PretrainedModel.save_pretrained`; a mean-pooled classifier also writes `MEAN_POOLED_FILE`, the
        PyTorch class that computes it, named in config.json's `auto_map` (so that
        `AutoModelForSequenceClassification.from_pretrained(directory, trust_remote_code=True)` loads it)."""
        if self.config.classifier_pooling == "pooler":
            super().save_pretrained(directory, tokenizer_source=tokenizer_source)
            return
        config = self.config.to_hf(MEAN_POOLED_CLASS)
        config["auto_map"] = {"AutoModelForSequenceClassification": f"{MEAN_POOLED_FILE[:-3]}.{MEAN_POOLED_CLASS}"}
        with atomic_directory(Path(directory)) as staging:  # the modeling file with the rest, or nothing
            write_model_directory(staging, model_to_hf_tensors(self), config,
                                  Path(tokenizer_source) if tokenizer_source else None)
            (staging / MEAN_POOLED_FILE).write_text(MEAN_POOLED_MODELING)


MEAN_POOLED_CLASS = "BertForMeanPooledSequenceClassification"
MEAN_POOLED_FILE = "modeling_mean_pooled_bert.py"
# What a mean-pooled classifier computes, for PyTorch: BERT without a pooler, the masked mean of the last hidden
# states, dropout and the linear classifier (the parameter names are those of BertForSequenceClassification).
MEAN_POOLED_MODELING = '''"""A BERT sequence classifier that reads the masked mean of the last hidden states (no
pooler), as sentence encoders were trained. Written by tljax beside the weights; load the directory with
AutoModelForSequenceClassification.from_pretrained(directory, trust_remote_code=True)."""

import torch
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class BertForMeanPooledSequenceClassification(BertPreTrainedModel):
    config_class = BertConfig

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        rate = config.classifier_dropout
        self.dropout = torch.nn.Dropout(config.hidden_dropout_prob if rate is None else rate)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)
'''


class BertForTokenClassification(EncoderTaskModel):
    """Backbone (no pooler) + dropout + linear classifier on every token, as Hugging Face's class: logits
    [B, T, L] for the text's positions (a soft prompt's virtual tokens are not labelled)."""

    config_class: ClassVar = EncoderConfig
    base_model_prefix: ClassVar[str] = "bert"
    layout: ClassVar[Layout] = BERT_LAYOUT
    new_parameters: ClassVar[tuple[str, ...]] = ("classifier.",)
    # a checkpoint's pooler or masked-LM head: a token classifier reads neither
    unused_tensors: ClassVar[str | None] = r"^(?:cls\.|(?:bert\.)?pooler\.)"
    head_pattern: ClassVar[str] = r"^classifier/"
    returns_hidden_states: ClassVar[bool] = True

    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self._add_backbone(config, dtype, param_dtype, rngs)
        self.classifier = _linear(config, config.hidden_size, config.num_labels, dtype, param_dtype, rngs)
        rate = config.classifier_dropout
        self.dropout_rate = config.hidden_dropout_prob if rate is None else rate

    def features(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                 *, dropout_key: Array | None = None) -> Array:
        """The last hidden state of the text's positions [B, T, H]: what the classifier reads (`classify`)."""
        return self.body.text_states(input_ids, attention_mask, token_type_ids, dropout_key=dropout_key)

    def pool(self, features: Array) -> Array:
        """Features [B, T, H] -> what the classifier's dropout reads: the features themselves."""
        return features

    def classify(self, features: Array, *, dropout_key: Array | None = None) -> Array:
        """Features [B, T, H] -> logits [B, T, L]: dropout, then the linear classifier."""
        k1, k2 = layer_keys(dropout_key, 2)
        return self.classifier(dropout(features, self.dropout_rate, k1), k2)

    def logits_from_layer(self, hidden: Array, attention_mask: Array, layer: int, *,
                          dropout_key: Array | None = None) -> Array:
        """Logits [B, T, L] from the input of layer `layer` [B, T, H] (`BertModel.hidden_before`)."""
        k1, k2 = layer_keys(dropout_key, 2)
        last = self.body.from_layer(hidden, attention_mask, layer, k1)
        return self.classify(last, dropout_key=k2)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                 *, dropout_key: Array | None = None,
                 output_hidden_states: bool = False) -> Array | tuple[Array, tuple[Array, ...]]:
        """[B, T] -> logits [B, T, L] (and, with `output_hidden_states`, the backbone's L + 1 hidden states)."""
        k1, k2 = layer_keys(dropout_key, 2)  # as features() and classify() take them
        last, states = self.body(input_ids, attention_mask, token_type_ids, dropout_key=k1, output_hidden_states=True)
        logits = self.classify(last[:, self.body.num_virtual_tokens:], dropout_key=k2)
        return (logits, states) if output_hidden_states else logits


class BertForQuestionAnswering(BertForTokenClassification):
    """Backbone (no pooler) + linear `qa_outputs` on every token, as Hugging Face's class: span scores [B, T, 2]
    for the text's positions, [..., 0] where the answer starts and [..., 1] where it ends (Hugging Face's
    `start_logits` and `end_logits`). No dropout before the head, as in Hugging Face's."""

    new_parameters: ClassVar[tuple[str, ...]] = ("qa_outputs.",)
    head_pattern: ClassVar[str] = r"^qa_outputs/"

    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self._add_backbone(config, dtype, param_dtype, rngs)
        self.qa_outputs = _linear(config, config.hidden_size, config.num_labels, dtype, param_dtype, rngs)
        self.dropout_rate = 0.0

    def classify(self, features: Array, *, dropout_key: Array | None = None) -> Array:
        """Features [B, T, H] -> span scores [B, T, 2]."""
        return self.qa_outputs(features, layer_keys(dropout_key, 2)[1])


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


class BertForMaskedLM(EncoderTaskModel):
    """Backbone + masked-LM head whose output layer is tied to the word embeddings: logits [B, T, V]."""

    config_class: ClassVar = EncoderConfig
    base_model_prefix: ClassVar[str] = "bert"
    layout: ClassVar[Layout] = BERT_LAYOUT
    new_parameters: ClassVar[tuple[str, ...]] = ("cls.",)
    unused_tensors: ClassVar[str | None] = r"^(bert\.)?pooler\."
    # the prediction head trains with every method: the packaged encoders ship without one (it starts fresh)
    head_pattern: ClassVar[str] = r"^cls/"

    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self._add_backbone(config, dtype, param_dtype, rngs)
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
        hidden = self.body(input_ids, attention_mask, token_type_ids, dropout_key=k1)
        hidden = hidden[:, self.body.num_virtual_tokens:]
        if positions is not None:
            hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)
        head = self.cls.predictions
        x = head.transform(hidden, k2)
        return self.body.embeddings.word_embeddings.attend(x) + head.bias[...].astype(self.dtype)[None, None]
