"""Config of the Llama decoder family (Llama, SmolLM2)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from tljax.models.config import ConfigError, HFConfig


@dataclasses.dataclass(frozen=True)
class DecoderConfig(HFConfig):
    """Hugging Face `LlamaConfig` attributes that tljax implements (default RoPE only)."""

    model_type: ClassVar[str] = "llama"
    required_values: ClassVar[dict[str, tuple[Any, ...]]] = {
        "hidden_act": ("silu",),
        "pretraining_tp": (1,),
        "rope_scaling": (None,),
    }

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_dropout: float = 0.0
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    id2label: dict[int, str] | None = None
    # the dropout before a token classifier's `score` (None: Hugging Face's generic default, 0.1)
    classifier_dropout: float | None = None

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        # transformers >= 5 writes the RoPE settings as `rope_parameters`; older versions as `rope_theta`.
        given = raw.pop("rope_parameters", None)
        if given is not None:
            rope = dict(given)
            if rope.pop("rope_type", "default") != "default" or set(rope) - {"rope_theta"}:
                raise ConfigError(f"rope_parameters={given!r} is not supported "
                                  "(supported: the default RoPE, {'rope_type': 'default', 'rope_theta': ...})")
            raw.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
        if raw.get("rope_scaling") == {"rope_type": "default"}:
            raw["rope_scaling"] = None
        return raw

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @property
    def qkv_bias(self) -> bool:
        """Whether the query, key and value projections have biases (Llama: with `attention_bias`, as o_proj;
        a family whose q/k/v always have biases says so here)."""
        return self.attention_bias

    def validate(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even for rotary embeddings")

    def to_hf(self, architecture: str) -> dict[str, Any]:
        out = super().to_hf(architecture)
        out["rope_parameters"] = {"rope_type": "default", "rope_theta": out.pop("rope_theta")}
        if out["classifier_dropout"] is None:  # as before the token classifier existed
            del out["classifier_dropout"]
        return out
