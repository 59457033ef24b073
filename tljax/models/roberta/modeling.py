"""RoBERTa and XLM-RoBERTa encoders in Flax NNX with Hugging Face module names.

The layers are BERT's (`tljax.models.encoder.modeling`) under the name `roberta`; what RoBERTa does otherwise:
positions are numbered after the padding index (`position_ids`), the sequence classifier has its own head on the
<s> token (`classifier.dense`, tanh, `classifier.out_proj`; no pooler), and the masked-LM head is `lm_head`.
The XLM-RoBERTa classes compute the same under their own names, so that `save_pretrained` writes the
architecture `transformers` builds for them.

Shapes: B batch, T sequence length, P virtual tokens, H hidden size, V vocabulary, L labels.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from tljax.models.base import Layout
from tljax.models.encoder.modeling import (
    BERT_LAYOUT,
    BertEmbeddings,
    BertEncoder,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertPooler,
    EncoderTaskModel,
)
from tljax.models.layers import ACTIVATIONS, LayerNorm, Linear, dropout, layer_keys
from tljax.models.roberta.config import RobertaConfig, XLMRobertaConfig

Array = jax.Array

# BERT's names, and the masked-LM head's `layer_norm` spelt in lower case (weight decay skips it too)
ROBERTA_LAYOUT = dataclasses.replace(BERT_LAYOUT, no_decay=r"(?:^|/)bias$|LayerNorm/|(?:^|/)layer_norm/")


def position_ids(input_ids: Array, padding_idx: int, num_virtual: int = 0, past_length: int = 0) -> Array:
    """The position of every input as Hugging Face's RoBERTa numbers it: ids [B, T] -> positions [B, P + T].

    Without virtual tokens (`create_position_ids_from_input_ids`): each real token counts the real tokens up to
    itself from padding_idx + 1, after the `past_length` prefix-tuning keys; a padding token gets padding_idx.
    With P virtual tokens (prompt tuning, P-tuning), PEFT hands the model the virtual tokens' and the text's
    embeddings (`inputs_embeds`), which RoBERTa numbers in order from padding_idx + 1, padding included
    (`create_position_ids_from_inputs_embeds`, which ignores past keys): so do we, so that an exported prompt
    computes the same in PyTorch."""
    batch, length = input_ids.shape
    if num_virtual:
        return jnp.broadcast_to(padding_idx + 1 + jnp.arange(num_virtual + length), (batch, num_virtual + length))
    real = (input_ids != padding_idx).astype(jnp.int32)
    return padding_idx + (jnp.cumsum(real, axis=1) + past_length) * real


class RobertaEmbeddings(BertEmbeddings):
    """BERT's embeddings with positions numbered by `position_ids`."""

    def __init__(self, config: RobertaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        super().__init__(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.padding_idx = config.pad_token_id

    def __call__(self, input_ids: Array, token_type_ids: Array, dropout_key: Array | None,
                 prompt: Array | None = None, position_offset: int = 0) -> Array:
        """[B, T] ids -> [B, T, H]; with `prompt` [B, P, H] (virtual tokens prepended) -> [B, P + T, H].

        `position_offset` is the number of prefix-tuning keys (Hugging Face's past key values length)."""
        words = self.word_embeddings(input_ids)
        virtual = 0 if prompt is None else prompt.shape[1]
        if prompt is not None:
            words = jnp.concatenate([prompt.astype(words.dtype), words], axis=1)
            token_type_ids = jnp.pad(token_type_ids, ((0, 0), (virtual, 0)))
        positions = position_ids(input_ids, self.padding_idx, virtual, position_offset)
        x = words + self.token_type_embeddings(token_type_ids) + self.position_embeddings(positions)
        return dropout(self.LayerNorm(x), self.dropout_rate, dropout_key)


class RobertaModel(BertModel):
    """The encoder backbone: `last_hidden_state` [B, T, H] and the tanh `pooler` output [B, H]. BERT's model
    with RoBERTa's embeddings; everything it computes from them is BERT's."""

    config_class: ClassVar = RobertaConfig
    base_model_prefix: ClassVar[str] = "roberta"
    layout: ClassVar[Layout] = ROBERTA_LAYOUT

    def __init__(self, config: RobertaConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs, add_pooling_layer: bool = True):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = config
        self.embeddings = RobertaEmbeddings(config, **kw)
        self.encoder = BertEncoder(config, **kw)
        self.pooler = BertPooler(config, **kw) if add_pooling_layer else None
        self.prompt = nnx.data(None)  # prompt tuning / P-tuning put a module here: batch -> virtual tokens [B, P, H]


class XLMRobertaModel(RobertaModel):
    """XLM-RoBERTa's backbone: RoBERTa's computation under its own name."""

    config_class: ClassVar = XLMRobertaConfig


# the checkpoint tensors of other heads: a masked-LM model's `lm_head`, a backbone's pooler
OTHER_HEADS = r"^(?:lm_head\.|(?:roberta\.)?pooler\.)"


class _RobertaTaskModel(EncoderTaskModel):
    """What the RoBERTa task models share: the backbone `roberta` (no pooler) of the family's class. Put first
    among a task model's bases, its attributes come before the BERT task model's it computes as."""

    config_class: ClassVar = RobertaConfig
    base_model_prefix: ClassVar[str] = "roberta"
    layout: ClassVar[Layout] = ROBERTA_LAYOUT
    backbone_class: ClassVar[type[RobertaModel]] = RobertaModel
    unused_tensors: ClassVar[str | None] = OTHER_HEADS


class RobertaClassificationHead(nnx.Module):
    """The sequence classifier's head (Hugging Face's): `dense` [H, H] then `out_proj` [H, L]; its computation,
    with the dropouts around it, is `RobertaForSequenceClassification.classify`."""

    def __init__(self, config: RobertaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dense = Linear(config.hidden_size, config.hidden_size, **kw)
        self.out_proj = Linear(config.hidden_size, config.num_labels, **kw)


class RobertaForSequenceClassification(_RobertaTaskModel, BertForSequenceClassification):
    """Backbone (no pooler) + Hugging Face's head on the first token: dropout, dense, tanh, dropout, out_proj:
    logits [B, L]. The features (the first position's last hidden state: <s>, or the first virtual token under a
    soft prompt, as in PEFT), token features and layers are BERT's classifier's; the head is RoBERTa's.

    The whole head is new for each task (`task_head_pattern`): its dense layer plays the part of BERT's pooler,
    and no checkpoint has one trained for the task. `head_pattern` is the layer that maps onto the labels."""

    new_parameters: ClassVar[tuple[str, ...]] = ("classifier.",)
    head_pattern: ClassVar[str] = r"^classifier/out_proj/"
    task_head_pattern: ClassVar[str] = r"^classifier/"

    def __init__(self, config: RobertaConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self._add_backbone(config, dtype, param_dtype, rngs)
        self.classifier = RobertaClassificationHead(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        rate = config.classifier_dropout
        self.dropout_rate = config.hidden_dropout_prob if rate is None else rate

    def pool(self, features: Array, dropout_key: Array | None = None) -> Array:
        """Features [B, H] -> what `out_proj`'s dropout reads [B, H]: dropout (given a key), dense, tanh."""
        k1, k2 = layer_keys(dropout_key, 2)
        return jnp.tanh(self.classifier.dense(dropout(features, self.dropout_rate, k1), k2))

    def classify(self, features: Array, *, dropout_key: Array | None = None) -> Array:
        """Features [B, H] -> logits [B, L]: `pool`, dropout, out_proj."""
        k1, k2, k3 = layer_keys(dropout_key, 3)
        return self.classifier.out_proj(dropout(self.pool(features, k1), self.dropout_rate, k2), k3)


class RobertaForTokenClassification(_RobertaTaskModel, BertForTokenClassification):
    """Backbone (no pooler) + dropout + linear classifier on every token, as Hugging Face's class: logits
    [B, T, L] for the text's positions (a soft prompt's virtual tokens are not labelled)."""


class RobertaForQuestionAnswering(_RobertaTaskModel, BertForQuestionAnswering):
    """Backbone (no pooler) + linear `qa_outputs` on every token, as Hugging Face's class: span scores [B, T, 2]
    for the text's positions ([..., 0] start, [..., 1] end). No dropout before the head, as in Hugging Face's."""


class RobertaLMHead(nnx.Module):
    """`dense`, `layer_norm` and the vocabulary `bias` of the masked-LM head; its output layer is the word
    embeddings (tied), its computation `RobertaForMaskedLM.__call__`."""

    def __init__(self, config: RobertaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dense = Linear(config.hidden_size, config.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), param_dtype))


class RobertaForMaskedLM(_RobertaTaskModel):
    """Backbone + masked-LM head whose output layer is tied to the word embeddings: logits [B, T, V]."""

    new_parameters: ClassVar[tuple[str, ...]] = ("lm_head.",)
    unused_tensors: ClassVar[str | None] = r"^(?:roberta\.)?pooler\."
    head_pattern: ClassVar[str] = r"^lm_head/"

    def __init__(self, config: RobertaConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self._add_backbone(config, dtype, param_dtype, rngs)
        self.lm_head = RobertaLMHead(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def tied_parameters(self) -> dict[str, str]:
        return {"lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
                "lm_head.decoder.bias": "lm_head.bias"}

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                 *, dropout_key: Array | None = None, positions: Array | None = None) -> Array:
        """[B, T] -> vocabulary logits [B, T, V] (virtual prompt tokens are not scored).

        `positions` [B, M] scores only those token positions: logits [B, M, V] (training predicts only the masked
        tokens, and the vocabulary projection is most of a small model's cost)."""
        k1, k2 = layer_keys(dropout_key, 2)
        hidden = self.body(input_ids, attention_mask, token_type_ids, dropout_key=k1)
        hidden = hidden[:, self.body.num_virtual_tokens:]
        if positions is not None:
            hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)
        head = self.lm_head
        # Hugging Face's head applies the exact GELU whatever the layers' `hidden_act`
        x = head.layer_norm(ACTIVATIONS["gelu"](head.dense(hidden, k2)))
        return self.body.embeddings.word_embeddings.attend(x) + head.bias[...].astype(self.dtype)[None, None]


class XLMRobertaForSequenceClassification(RobertaForSequenceClassification):
    """XLM-RoBERTa's name for `RobertaForSequenceClassification` (the architecture `save_pretrained` writes)."""

    config_class: ClassVar = XLMRobertaConfig
    backbone_class: ClassVar[type[RobertaModel]] = XLMRobertaModel


class XLMRobertaForTokenClassification(RobertaForTokenClassification):
    """XLM-RoBERTa's name for `RobertaForTokenClassification` (the architecture `save_pretrained` writes)."""

    config_class: ClassVar = XLMRobertaConfig
    backbone_class: ClassVar[type[RobertaModel]] = XLMRobertaModel


class XLMRobertaForQuestionAnswering(RobertaForQuestionAnswering):
    """XLM-RoBERTa's name for `RobertaForQuestionAnswering` (the architecture `save_pretrained` writes)."""

    config_class: ClassVar = XLMRobertaConfig
    backbone_class: ClassVar[type[RobertaModel]] = XLMRobertaModel


class XLMRobertaForMaskedLM(RobertaForMaskedLM):
    """XLM-RoBERTa's name for `RobertaForMaskedLM` (the architecture `save_pretrained` writes)."""

    config_class: ClassVar = XLMRobertaConfig
    backbone_class: ClassVar[type[RobertaModel]] = XLMRobertaModel
