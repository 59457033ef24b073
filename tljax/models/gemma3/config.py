"""Config of the Gemma 3 text decoder (`gemma3_text`: Gemma 3 270M, 1B and the text towers of the larger ones)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from tljax.models.config import ConfigError, HFConfig

LAYER_TYPES = ("sliding_attention", "full_attention")
# what Hugging Face's config builds when a config names no layer types: every 6th layer attends globally
DEFAULT_SLIDING_WINDOW_PATTERN = 6


@dataclasses.dataclass(frozen=True)
class Gemma3TextConfig(HFConfig):
    """Hugging Face `Gemma3TextConfig` attributes that tljax implements (default RoPE only, causal attention).

    `rope_theta` is the full-attention layers' RoPE base and `rope_local_base_freq` the sliding-window layers'
    (transformers 5 writes both inside `rope_parameters`, keyed by layer type; both spellings are read)."""

    model_type: ClassVar[str] = "gemma3_text"
    required_values: ClassVar[dict[str, tuple[Any, ...]]] = {
        "hidden_activation": ("gelu_pytorch_tanh",),
        "use_bidirectional_attention": (False, None),
        "rope_scaling": (None,),
        # transformers' Gemma 3 attention never applies it (it is not passed to the attention function), so
        # no reference defines what a value would compute
        "attn_logit_softcapping": (None,),
        "mlp_bias": (False,),
    }

    vocab_size: int = 262_208
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 131_072
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_local_base_freq: float = 10_000.0
    attention_bias: bool = False
    # not an attribute of transformers' Gemma 3, whose MLP has no biases: what the Llama MLP it reuses reads
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    query_pre_attn_scalar: float = 256
    sliding_window: int | None = 4096
    layer_types: tuple[str, ...] | None = None
    final_logit_softcapping: float | None = None
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 2
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = 0
    id2label: dict[int, str] | None = None
    # the dropout before a token classifier's `score` (None: Hugging Face's generic default, 0.1)
    classifier_dropout: float | None = None

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        # transformers >= 5 writes {"full_attention": {...}, "sliding_attention": {...}} as `rope_parameters`;
        # older versions write `rope_theta` and `rope_local_base_freq`
        rope = raw.pop("rope_parameters", None)
        if rope is not None:
            names = {"full_attention": "rope_theta", "sliding_attention": "rope_local_base_freq"}
            if not isinstance(rope, dict) or set(rope) - set(names):
                raise ConfigError(f"rope_parameters={rope!r} is not supported (supported: one default RoPE per "
                                  "layer type, {'full_attention': {'rope_type': 'default', 'rope_theta': ...}, "
                                  "'sliding_attention': {...}})")
            for layer_type, name in names.items():
                params = dict(rope.get(layer_type) or {})
                if params.pop("rope_type", "default") != "default" or set(params) - {"rope_theta"}:
                    raise ConfigError(f"rope_parameters[{layer_type!r}]={rope[layer_type]!r} is not supported "
                                      "(supported: the default RoPE, {'rope_type': 'default', 'rope_theta': ...})")
                if "rope_theta" in params:
                    raw.setdefault(name, params["rope_theta"])
        raw.pop("cache_implementation", None)  # which cache `generate` uses ("hybrid"): no part of the computation
        # older configs give the layer types as a period ("every 6th layer is global") instead of a list
        pattern = raw.pop("sliding_window_pattern", raw.pop("_sliding_window_pattern", None))
        if raw.get("layer_types") is None:
            pattern = pattern or DEFAULT_SLIDING_WINDOW_PATTERN
            raw["layer_types"] = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                  for i in range(raw.get("num_hidden_layers", cls.num_hidden_layers))]
        raw["layer_types"] = tuple(raw["layer_types"])
        return raw

    def __post_init__(self) -> None:
        if self.layer_types is None:
            object.__setattr__(self, "layer_types", tuple(
                "sliding_attention" if (i + 1) % DEFAULT_SLIDING_WINDOW_PATTERN else "full_attention"
                for i in range(self.num_hidden_layers)))
        object.__setattr__(self, "layer_types", tuple(self.layer_types))

    @property
    def qkv_bias(self) -> bool:
        """Whether the query, key and value projections have biases: with `attention_bias`, as o_proj (the Llama
        modules ask)."""
        return self.attention_bias

    @property
    def hidden_act(self) -> str:
        """What the Llama MLP that Gemma 3 reuses reads: the same computation under Llama's name."""
        return self.hidden_activation

    def validate(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - set(LAYER_TYPES):
            raise ConfigError(f"layer_types must name one of {', '.join(LAYER_TYPES)} for each of the "
                              f"{self.num_hidden_layers} layers, got {list(self.layer_types)}")
        if "sliding_attention" in self.layer_types and not (self.sliding_window or 0) > 0:
            raise ConfigError(f"sliding_window={self.sliding_window!r} must be a positive number of tokens when "
                              "layer_types has sliding_attention layers")
        if self.final_logit_softcapping is not None and not self.final_logit_softcapping > 0:
            raise ConfigError(f"final_logit_softcapping={self.final_logit_softcapping!r} must be positive or None")

    def to_hf(self, architecture: str) -> dict[str, Any]:
        out = super().to_hf(architecture)
        out["layer_types"] = list(out["layer_types"])
        out["rope_parameters"] = {
            "full_attention": {"rope_type": "default", "rope_theta": out.pop("rope_theta")},
            "sliding_attention": {"rope_type": "default", "rope_theta": out.pop("rope_local_base_freq")},
        }
        del out["mlp_bias"]  # tljax's, for the Llama MLP it reuses: always False
        if out["classifier_dropout"] is None:
            del out["classifier_dropout"]
        return out
