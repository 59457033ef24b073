"""Config of the T5 encoder-decoder family: T5 v1.0 (ReLU feed-forward, output layer tied to the embeddings and
scaled by d_model**-0.5) and T5 v1.1 / Flan-T5 (gated-GELU feed-forward, separate output layer)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from tljax.models.config import ConfigError, HFConfig
from tljax.models.layers import ACTIVATIONS

# Attributes that change what T5 computes, with the one value tljax implements and what that value means.
REFUSED: dict[str, tuple[Any, str]] = {
    "is_encoder_decoder": (True, "T5 is an encoder and a decoder"),
    "is_decoder": (False, "the whole encoder-decoder, not one of its stacks alone"),
}

# Attributes Hugging Face's T5 configs carry that none of our T5 classes reads: the context size of old configs
# (relative positions have no limit), a flag of old generation code, and what only T5's classification heads read
NOT_READ = ("n_positions", "output_past", "classifier_dropout", "id2label")


def parse_feed_forward(feed_forward_proj: str) -> tuple[str, bool]:
    """"relu" -> ("relu", False); "gated-gelu" -> ("gelu_new", True), as Hugging Face's T5Config reads it."""
    parts = feed_forward_proj.split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise ConfigError(f"feed_forward_proj={feed_forward_proj!r} is not '<activation>' or 'gated-<activation>', "
                          "e.g. 'relu' or 'gated-gelu'")
    activation = "gelu_new" if feed_forward_proj == "gated-gelu" else parts[-1]
    if activation not in ACTIVATIONS:
        raise ConfigError(f"feed_forward_proj={feed_forward_proj!r}: activation {activation!r} is not supported; "
                          f"supported: {', '.join(ACTIVATIONS)}")
    return activation, gated


@dataclasses.dataclass(frozen=True)
class T5Config(HFConfig):
    """Hugging Face `T5Config` attributes that tljax implements, under their T5 names (`d_model`, `num_heads`, ...);
    the generic names other code reads (`hidden_size`, `num_attention_heads`, ...) are properties.

    `num_layers` counts the encoder's blocks, `num_decoder_layers` the decoder's (None: as many).
    `tie_word_embeddings`: the output layer is the embedding table `shared` (T5 v1.0), else its own `lm_head`.
    `scale_decoder_outputs` (transformers >= 5 writes it): whether the decoder's output is multiplied by
    d_model**-0.5 before the output layer; None: exactly when the output layer is tied, as T5 was trained."""

    model_type: ClassVar[str] = "t5"
    required_values: ClassVar[dict[str, tuple[Any, ...]]] = {key: (value,) for key, (value, _) in REFUSED.items()}

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0  # scales the random initialisation (Hugging Face's T5 init)
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool | None = None
    decoder_start_token_id: int | None = 0
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        # one line per refusal, before the generic check lists every supported attribute
        for key, (supported, meaning) in REFUSED.items():
            if key in raw and raw[key] != supported:
                raise ConfigError(f"{key}={raw[key]!r} is not supported by tljax's T5 (supported: {supported!r}, "
                                  f"{meaning})")
        # transformers writes what it derives from feed_forward_proj: it must agree
        activation, gated = parse_feed_forward(raw.get("feed_forward_proj", "relu"))
        for key, derived in (("dense_act_fn", activation), ("is_gated_act", gated)):
            if key in raw and raw.pop(key) != derived:
                raise ConfigError(f"{key} contradicts feed_forward_proj={raw.get('feed_forward_proj', 'relu')!r} "
                                  f"(which means {key}={derived!r}); tljax's T5 reads feed_forward_proj only")
        for key in NOT_READ:
            raw.pop(key, None)
        return raw

    def __post_init__(self) -> None:
        if self.num_decoder_layers is None:
            object.__setattr__(self, "num_decoder_layers", self.num_layers)

    def validate(self) -> None:
        parse_feed_forward(self.feed_forward_proj)
        if self.relative_attention_num_buckets < 4 or self.relative_attention_max_distance < 2:
            raise ConfigError("relative_attention_num_buckets must be at least 4 and relative_attention_max_distance "
                              f"at least 2, got {self.relative_attention_num_buckets} and "
                              f"{self.relative_attention_max_distance}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ConfigError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")

    # the generic names (Hugging Face's T5Config.attribute_map, and what the methods read)
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_attention_heads(self) -> int:
        return self.num_heads

    @property
    def num_key_value_heads(self) -> int:
        return self.num_heads

    @property
    def num_hidden_layers(self) -> int:
        return self.num_layers

    @property
    def head_dim(self) -> int:
        return self.d_kv

    @property
    def activation(self) -> str:
        """The feed-forward activation's name in `tljax.models.layers.ACTIVATIONS`."""
        return parse_feed_forward(self.feed_forward_proj)[0]

    @property
    def is_gated_act(self) -> bool:
        return parse_feed_forward(self.feed_forward_proj)[1]

    @property
    def scales_logits(self) -> bool:
        """Whether the decoder's output is multiplied by d_model**-0.5 before the output layer."""
        return self.tie_word_embeddings if self.scale_decoder_outputs is None else self.scale_decoder_outputs

    def to_hf(self, architecture: str) -> dict[str, Any]:
        out = super().to_hf(architecture)
        out["is_encoder_decoder"] = True
        if out["scale_decoder_outputs"] is None:  # what every version of transformers derives from the tying
            del out["scale_decoder_outputs"]
        return out
