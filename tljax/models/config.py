"""Typed model configs read from and written to Hugging Face `config.json` dictionaries.

Reading is strict: an attribute that would change what the model computes and that the code does not
implement is refused with a message, never silently ignored (a wrong model that runs is worse than an
error).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from tljax.errors import InputError

# Attributes Hugging Face writes that do not change the forward computation.
METADATA_KEYS = frozenset(
    {
        "_name_or_path", "architectures", "model_type", "transformers_version", "dtype", "torch_dtype",
        "use_cache", "gradient_checkpointing", "initializer_range", "bos_token_id", "eos_token_id",
        "sep_token_id", "decoder_start_token_id", "problem_type", "label2id", "num_labels", "return_dict",
        "output_hidden_states", "output_attentions", "torchscript", "tie_encoder_decoder",
        "finetuning_task", "tokenizer_class", "prefix", "task_specific_params", "max_length", "min_length",
        "do_sample", "early_stopping", "num_beams", "num_beam_groups", "temperature", "top_k", "top_p",
        "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "bad_words_ids",
        "num_return_sequences", "diversity_penalty", "output_scores", "return_dict_in_generate",
        "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
        "suppress_tokens", "begin_suppress_tokens", "encoder_no_repeat_ngram_size", "cross_attention_hidden_size",
        "add_pooling_layer", "use_return_dict", "_attn_implementation", "_attn_implementation_autoset",
        "attn_implementation", "auto_map", "pad_token_id", "chunk_size_feed_forward", "tf_legacy_loss", "use_bfloat16",
    }
)

# Attributes that are only supported with these values (anything else changes the model).
GENERIC_REQUIRED: dict[str, tuple[Any, ...]] = {
    "is_decoder": (False,),
    "add_cross_attention": (False,),
    "is_encoder_decoder": (False,),
    "pruned_heads": ({},),
    "chunk_size_feed_forward": (0,),
}


class ConfigError(InputError):
    """A config attribute the model code does not implement, or an invalid value."""


@dataclasses.dataclass(frozen=True)
class HFConfig:
    """Base of the family configs: field names are the Hugging Face attribute names."""

    model_type: ClassVar[str]
    # family-specific attributes that are only supported with the given values
    required_values: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @classmethod
    def _normalise(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Hook for a family to translate legacy spellings before checking."""
        return raw

    @classmethod
    def from_hf(cls, raw: Mapping[str, Any]) -> Self:
        """Reads a Hugging Face config dict, refusing attributes this code does not implement."""
        raw = cls._normalise(dict(raw))
        if raw.get("model_type", cls.model_type) != cls.model_type:
            raise ConfigError(f"model_type {raw['model_type']!r} is not {cls.model_type!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        required = GENERIC_REQUIRED | cls.required_values
        values, problems = {}, []
        for key, value in raw.items():
            if key in required:
                if value not in required[key]:
                    allowed = " or ".join(repr(v) for v in required[key])
                    problems.append(f"{key}={value!r} is not supported (supported: {allowed})")
                if key not in fields:
                    continue
            if key in fields:
                values[key] = value
            elif key not in METADATA_KEYS:
                problems.append(f"{key}={value!r} is not an attribute tljax implements")
        if problems:
            raise ConfigError(
                f"cannot build a faithful {cls.model_type} model from this config:\n  " + "\n  ".join(problems)
                + f"\nsupported attributes: {', '.join(sorted(fields | set(required)))}"
            )
        if "id2label" in values and values["id2label"] is not None:
            values["id2label"] = {int(k): str(v) for k, v in values["id2label"].items()}
        config = cls(**values)
        config.validate()
        return config

    @property
    def max_text_positions(self) -> int | None:
        """The most tokens one input may have: the positions the model has embeddings for (a family whose first
        positions are taken says so), or None for a model with relative positions only (T5: any length)."""
        return getattr(self, "max_position_embeddings", None)

    @property
    def num_labels(self) -> int:
        """The head's number of labels: its `id2label`'s, else Hugging Face's default of 2."""
        return len(self.id2label) if getattr(self, "id2label", None) else 2

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The end-of-sequence ids (config.json gives one id or a list)."""
        eos = getattr(self, "eos_token_id", None)
        return () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)

    def validate(self) -> None:
        """Raises ConfigError for inconsistent values; families extend it."""

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (e.g. `num_labels` for a new head)."""
        return dataclasses.replace(self, **changes)

    def to_hf(self, architecture: str) -> dict[str, Any]:
        """The `config.json` dict that PyTorch `transformers` loads as this model."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if out.get("id2label") is not None:
            out["id2label"] = {str(k): v for k, v in out["id2label"].items()}
            out["label2id"] = {v: int(k) for k, v in out["id2label"].items()}
        else:
            out.pop("id2label", None)
        # config.json's `dtype` is that of the tensors written beside it: `write_model_directory` sets it
        return {"architectures": [architecture], "model_type": self.model_type, **out}
