"""Qwen2 decoders in Flax NNX under Hugging Face's class names (Qwen2, Qwen2.5).

Qwen2 is the Llama architecture with biases on the query, key and value projections (`Qwen2Config.qkv_bias`),
so its classes are the Llama ones built from a `Qwen2Config`: the same modules, parameter names, key/value
cache, generation and heads. Shapes as in `tljax.models.decoder.modeling`.
"""

from __future__ import annotations

from typing import ClassVar

from tljax.models.base import Layout
from tljax.models.decoder.modeling import (
    LLAMA_LAYOUT,
    LlamaForCausalLM,
    LlamaForQuestionAnswering,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    LlamaModel,
)
from tljax.models.qwen2.config import Qwen2Config

# Hugging Face names Qwen2's parameters as Llama's (model.layers.N.self_attn.q_proj, mlp.down_proj, ...)
QWEN2_LAYOUT = LLAMA_LAYOUT


class Qwen2Model(LlamaModel):
    """The decoder backbone: final normalised hidden states [B, T, H]."""

    config_class: ClassVar = Qwen2Config
    layout: ClassVar[Layout] = QWEN2_LAYOUT


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Backbone + language-model head (tied to the embeddings when the config says so, as in the small
    sizes): logits [B, T, V]."""

    config_class: ClassVar = Qwen2Config
    layout: ClassVar[Layout] = QWEN2_LAYOUT
    backbone_class: ClassVar[type[LlamaModel]] = Qwen2Model


class Qwen2ForSequenceClassification(LlamaForSequenceClassification):
    """Backbone + linear `score` read at each sequence's last real token: logits [B, L]."""

    config_class: ClassVar = Qwen2Config
    layout: ClassVar[Layout] = QWEN2_LAYOUT
    backbone_class: ClassVar[type[LlamaModel]] = Qwen2Model


class Qwen2ForTokenClassification(LlamaForTokenClassification):
    """Backbone + dropout + linear `score` on every token: logits [B, T, L]."""

    config_class: ClassVar = Qwen2Config
    layout: ClassVar[Layout] = QWEN2_LAYOUT
    backbone_class: ClassVar[type[LlamaModel]] = Qwen2Model


class Qwen2ForQuestionAnswering(LlamaForQuestionAnswering):
    """Backbone (named `transformer`, as in Hugging Face's class; a causal LM's `model.` loads into it) + linear
    `qa_outputs` on every token: span scores [B, T, 2]."""

    config_class: ClassVar = Qwen2Config
    layout: ClassVar[Layout] = QWEN2_LAYOUT
    backbone_class: ClassVar[type[LlamaModel]] = Qwen2Model
