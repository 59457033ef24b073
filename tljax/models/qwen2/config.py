"""Config of the Qwen2 decoder family (Qwen2, Qwen2.5): a Llama with biases on the query, key and value
projections."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from tljax.models.config import ConfigError
from tljax.models.decoder.config import DecoderConfig


@dataclasses.dataclass(frozen=True)
class Qwen2Config(DecoderConfig):
    """Hugging Face `Qwen2Config` attributes that tljax implements: full attention in every layer (no sliding
    window), default RoPE.

    The query, key and value projections always have biases. `attention_bias` (o_proj) and `mlp_bias` are no
    attributes of Hugging Face's Qwen2, which has neither bias: they stay False when read from a config.json,
    and only BitFit sets them (adding zero biases). A model with them saves as the Llama it then computes as
    (`to_hf`), the one architecture of `transformers` with biases on every projection."""

    model_type: ClassVar[str] = "qwen2"

    # Hugging Face's defaults for Qwen2 (a config.json may leave out what equals them)
    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 32
    max_position_embeddings: int = 32768

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        # sliding-window attention is not implemented: refuse every config that turns it on, in one line each
        if raw.pop("use_sliding_window", False):
            raise ConfigError("use_sliding_window=True is not supported: tljax's Qwen2 attends to every earlier "
                              "token (no sliding-window attention); use a config with use_sliding_window=false")
        layer_types = raw.pop("layer_types", None)
        if layer_types is not None and any(kind != "full_attention" for kind in layer_types):
            raise ConfigError(f"layer_types={layer_types!r} is not supported: every layer must be 'full_attention' "
                              "(tljax's Qwen2 has no sliding-window attention)")
        scaling = raw.get("rope_scaling")
        if scaling not in (None, {"rope_type": "default"}):
            raise ConfigError(f"rope_scaling={scaling!r} is not supported (supported: the default RoPE, "
                              "rope_scaling=null)")
        # without a sliding window, Hugging Face ignores its size and the layers it would start from; its Qwen2
        # has no o_proj or MLP biases, whatever attention_bias / mlp_bias say
        for ignored in ("sliding_window", "max_window_layers", "attention_bias", "mlp_bias"):
            raw.pop(ignored, None)
        return super()._normalise(raw)

    @property
    def qkv_bias(self) -> bool:
        return True

    def validate(self) -> None:
        super().validate()
        if self.mlp_bias and not self.attention_bias:
            raise ConfigError("mlp_bias=True needs attention_bias=True: a Qwen2 with MLP biases is saved as a Llama, "
                              "whose attention has biases on all of q/k/v/o_proj or on none")

    def to_hf(self, architecture: str) -> dict[str, Any]:
        if self.attention_bias or self.mlp_bias:
            # Hugging Face's Qwen2 would drop these biases; a Llama with attention_bias (q/k/v/o_proj) computes
            # what this model computes, under the same parameter names
            llama = DecoderConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DecoderConfig)})
            return llama.to_hf(architecture.replace("Qwen2", "Llama", 1))
        out = super().to_hf(architecture)
        del out["attention_bias"], out["mlp_bias"]
        out["use_sliding_window"] = False
        return out
