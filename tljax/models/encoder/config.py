"""Config of the BERT encoder family (BERT, MiniLM, multilingual-e5)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from tljax.models.config import ConfigError, HFConfig
from tljax.models.layers import ACTIVATIONS

CLASSIFIER_POOLING = ("pooler", "mean")


@dataclasses.dataclass(frozen=True)
class EncoderConfig(HFConfig):
    """Hugging Face `BertConfig` attributes that tljax implements."""

    model_type: ClassVar[str] = "bert"
    required_values: ClassVar[dict[str, tuple[Any, ...]]] = {
        "position_embedding_type": ("absolute",),
        "hidden_act": tuple(ACTIVATIONS),
    }

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    tie_word_embeddings: bool = True
    id2label: dict[int, str] | None = None
    # what a sequence classifier's linear layer reads: "pooler" (Hugging Face's tanh pooler of the first token)
    # or "mean" (the masked mean of the last hidden states, no pooler: how sentence encoders were trained)
    classifier_pooling: str = "pooler"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.classifier_pooling not in CLASSIFIER_POOLING:
            raise ConfigError(f"classifier_pooling {self.classifier_pooling!r} is unknown; valid: "
                              f"{', '.join(CLASSIFIER_POOLING)}")
        if not self.tie_word_embeddings:
            raise ConfigError("tie_word_embeddings=False is not supported for the encoder family (supported: True)")
