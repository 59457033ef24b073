"""Config of the GPT-2 family (GPT-2, DistilGPT2 and other checkpoints of model_type "gpt2")."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from tljax.models.config import ConfigError, HFConfig
from tljax.models.layers import ACTIVATIONS

# Attributes that change what GPT-2 computes, with the one value tljax implements and what that value means.
REFUSED: dict[str, tuple[Any, str]] = {
    "scale_attn_weights": (True, "attention scores are scaled by 1/sqrt(head_dim)"),
    "scale_attn_by_inverse_layer_idx": (False, "no extra 1/(layer + 1) scaling of the attention scores"),
    "reorder_and_upcast_attn": (False, "the plain attention, not its reordered and upcast variant"),
    "add_cross_attention": (False, "no cross-attention: GPT-2 is a decoder-only model here"),
}

# Attributes Hugging Face's GPT2Config carries that none of our GPT-2 classes reads: the multiple-choice head of
# GPT2DoubleHeadsModel (summary_*), and legacy spellings (n_ctx: the context, which n_positions sets)
NOT_READ = ("summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
            "summary_first_dropout", "n_ctx", "_num_labels")


@dataclasses.dataclass(frozen=True)
class GPT2Config(HFConfig):
    """Hugging Face `GPT2Config` attributes that tljax implements, under their GPT-2 names (`n_embd`, `n_layer`,
    ...); the generic names other code reads (`hidden_size`, `num_hidden_layers`, ...) are properties."""

    model_type: ClassVar[str] = "gpt2"
    required_values: ClassVar[dict[str, tuple[Any, ...]]] = {key: (value,) for key, (value, _) in REFUSED.items()}

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # the feed-forward width; None: 4 * n_embd
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    id2label: dict[int, str] | None = None
    # the dropout before a token classifier's `classifier` (None: Hugging Face's default, 0.1)
    classifier_dropout: float | None = None

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        # one line per refusal, before the generic check lists every supported attribute
        for key, (supported, meaning) in REFUSED.items():
            if key in raw and raw[key] != supported:
                raise ConfigError(f"{key}={raw[key]!r} is not supported by tljax's GPT-2 (supported: {supported!r}, "
                                  f"{meaning})")
        for key in NOT_READ:
            raw.pop(key, None)
        return raw

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(f"activation_function {self.activation_function!r} is not supported; supported: "
                              f"{', '.join(ACTIVATIONS)}")

    # the generic names (Hugging Face's GPT2Config.attribute_map, and what the cache and the methods read)
    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def num_attention_heads(self) -> int:
        return self.n_head

    @property
    def num_key_value_heads(self) -> int:
        return self.n_head  # every head has its own keys and values

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def max_position_embeddings(self) -> int:
        return self.n_positions

    @property
    def intermediate_size(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def to_hf(self, architecture: str) -> dict[str, Any]:
        out = super().to_hf(architecture)
        if out["classifier_dropout"] is None:
            del out["classifier_dropout"]
        return out
