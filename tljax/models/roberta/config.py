"""Configs of the RoBERTa family (RoBERTa, XLM-RoBERTa): BERT's attributes with RoBERTa's defaults."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from tljax.models.config import ConfigError
from tljax.models.encoder.config import EncoderConfig

# Attributes old RoBERTa configs carry that change nothing in the forward pass (`output_past` asked
# transformers 2 to return the attention cache; XLM-RoBERTa's published configs still say it).
LEGACY_KEYS = ("output_past",)


@dataclasses.dataclass(frozen=True)
class RobertaConfig(EncoderConfig):
    """Hugging Face `RobertaConfig` attributes that tljax implements.

    The defaults are Hugging Face's (published checkpoints set `type_vocab_size` 1, `layer_norm_eps` 1e-5 and
    `max_position_embeddings` = 2 + their longest text, since positions start after the padding index).
    The sequence classifier reads the first token (`<s>`) through its own head, so `classifier_pooling` is
    "pooler" only."""

    model_type: ClassVar[str] = "roberta"

    vocab_size: int = 50265
    pad_token_id: int = 1

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        for key in LEGACY_KEYS:
            raw.pop(key, None)
        return raw

    def validate(self) -> None:
        super().validate()
        if self.classifier_pooling != "pooler":
            raise ConfigError(f"classifier_pooling {self.classifier_pooling!r} is not supported for {self.model_type} "
                              "models (their classification head reads the <s> token; supported: 'pooler')")
        pad = self.pad_token_id
        if not isinstance(pad, int) or not 0 <= pad < min(self.vocab_size, self.max_position_embeddings - 1):
            raise ConfigError(f"pad_token_id {pad!r} must be a token id below vocab_size {self.vocab_size} and "
                              f"max_position_embeddings - 1 ({self.max_position_embeddings - 1}): positions start "
                              "after it")

    @property
    def max_text_positions(self) -> int:
        """Positions are numbered from pad_token_id + 1 (514 embeddings read 512 tokens): a longer input would
        index past the table, which JAX clamps silently."""
        return self.max_position_embeddings - self.pad_token_id - 1

    def to_hf(self, architecture: str) -> dict[str, Any]:
        out = super().to_hf(architecture)
        del out["classifier_pooling"]  # not a Hugging Face attribute; the only value is what transformers does
        return out


@dataclasses.dataclass(frozen=True)
class XLMRobertaConfig(RobertaConfig):
    """Hugging Face `XLMRobertaConfig`: RoBERTa's attributes (a larger, multilingual vocabulary)."""

    model_type: ClassVar[str] = "xlm-roberta"

    vocab_size: int = 30522  # Hugging Face's default (the published checkpoints: 250002)
