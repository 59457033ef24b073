"""`from_pretrained` / `save_pretrained` shared by every model class."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any, ClassVar, Self

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from tljax.models.checkpoint import (
    CheckpointError,
    fill_parameters,
    hf_name,
    model_to_hf_tensors,
    read_tensors,
    resolve_dtype,
    write_model_directory,
)
from tljax.models.config import HFConfig

log = logging.getLogger(__name__)


def read_config_dict(directory: Path) -> dict[str, Any]:
    """The parsed `config.json` of a model directory, with a clear error when there is none."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"model directory {directory} does not exist")
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} is not a Hugging Face model directory: it has no config.json")
    return json.loads((directory / "config.json").read_text())


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a family keeps what parameter-selecting code looks for (the methods, the optimiser), as regular
    expressions searched in "/"-joined paths, e.g. "bert/encoder/layer/3/attention/self/query/kernel".

    Each family states its own, so that no generic code assumes another family's names."""

    layer: str  # a layer's parameters, "{i}" standing for its index: r"(?:^|/)encoder/layer/{i}/"
    embeddings: str  # the input embeddings' parameters (words, positions, token types)
    norms: str  # the layers' norm parameters (Houlsby adapters train them)
    no_decay: str  # what weight decay leaves alone: biases and norms, as Hugging Face's Trainer
    attention_output: str  # the module path of the projection that ends the attention block (adapters)
    feed_forward_output: str  # ... and the one that ends the feed-forward block
    above_layers: str  # what sits above every layer (an encoder's pooler, a decoder's final norm)
    lora_targets: tuple[str, ...]  # LoRA's default target projections (PEFT's default for the family)
    # the layers' projections BitFit gives a bias where they have none (a pattern over module paths; all by
    # default), and the config flags that then say so, for the Hugging Face class to build them on loading
    bitfit_biases: str = ""
    bitfit_flags: tuple[str, ...] = ("attention_bias", "mlp_bias")

    def layer_pattern(self, index: int) -> str:
        """The pattern of layer `index`'s parameters."""
        return self.layer.replace("{i}", str(index))

    def layer_index(self, path: str) -> int | None:
        """The index of the layer `path` belongs to, or None (embeddings, final norm, head)."""
        match = re.search(self.layer.replace("{i}", r"(\d+)"), path)
        return int(match.group(1)) if match else None


class PretrainedModel(nnx.Module):
    """A model whose parameters carry Hugging Face names (see `checkpoint.py`).

    Subclasses set the class attributes below and take `(config, *, dtype, param_dtype, rngs)`.
    """

    config_class: ClassVar[type[HFConfig]]
    base_model_prefix: ClassVar[str]
    layout: ClassVar[Layout]  # the family's parameter names, for code that selects parameters
    # parameters a backbone checkpoint does not have: the new head, initialised fresh
    new_parameters: ClassVar[tuple[str, ...]] = ()
    # checkpoint tensors of other heads that this class does not have (regular expression)
    unused_tensors: ClassVar[str | None] = None
    # what generic code may ask of a model, instead of checking its family
    predicts_next_token: ClassVar[bool] = False  # logits at t score token t + 1 (causal LM)
    returns_hidden_states: ClassVar[bool] = False  # __call__ takes output_hidden_states=True
    # whether the Hugging Face class can hold biases BitFit gives a family without them (Llama's can, its config
    # saying so; T5's cannot): where it cannot, a model with biases is not saved in the Hugging Face form
    hf_biases: ClassVar[bool] = True
    config: HFConfig

    def tied_parameters(self) -> dict[str, str]:
        """Checkpoint tensors that repeat another one (e.g. an output layer tied to the embeddings)."""
        return {}

    @classmethod
    def from_config(
        cls,
        config: HFConfig,
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype | None = None,
        seed: int = 0,
    ) -> Self:
        """A randomly initialised model (as Hugging Face initialises it: normal(0, 0.02) weights)."""
        return cls(config, dtype=dtype, param_dtype=param_dtype or dtype, rngs=nnx.Rngs(seed))

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        dtype: DTypeLike | None = "auto",
        param_dtype: DTypeLike | None = None,
        seed: int = 0,
        **config_changes: Any,
    ) -> Self:
        """Loads a Hugging Face model directory (config.json + safetensors, sharded or not, or PyTorch .bin).

        `dtype` is what the model computes in: "auto" (the default) or None keeps the dtype the checkpoint was
        saved in (config.json's `dtype` / `torch_dtype`, else its tensors'), as `transformers` 5 does, so a
        bfloat16 checkpoint loads as bfloat16 and a float32 one as float32; "float32", "bfloat16", "float16" (or
        the jnp dtype) casts every tensor to it. `param_dtype` is what the parameters are stored in (default:
        `dtype`; "auto" too keeps the checkpoint's). Training asks for float32 parameters explicitly
        (`tljax.runs.build_model`), whatever the checkpoint's dtype.
        `config_changes` override config fields, e.g. `id2label={0: "neg", 1: "pos"}` for a new head.
        Every missing, unexpected or mis-shaped tensor is reported at once in a `CheckpointError`.
        """
        directory = Path(directory)
        config_dict = read_config_dict(directory)
        config = cls.config_class.from_hf(config_dict)
        if config_changes:
            config = config.replace(**config_changes)
            config.validate()
        tensors = read_tensors(directory)
        dtype = resolve_dtype(dtype, config_dict, tensors)
        param_dtype = dtype if param_dtype is None else resolve_dtype(param_dtype, config_dict, tensors,
                                                                      argument="param_dtype")
        # Build the model without computing its random initial values, except the new head's.
        abstract = nnx.eval_shape(lambda: cls(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed)))
        model, kept = fill_parameters(
            abstract,
            tensors,
            base_prefix=cls.base_model_prefix,
            prefix_aliases=getattr(cls, "checkpoint_prefixes", ()),
            new_parameters=cls.new_parameters,
            tied=abstract.tied_parameters(),
            unused=cls.unused_tensors,
        )
        if kept:
            log.info("%s: new parameters, initialised fresh: %s", cls.__name__, ", ".join(kept))
            _initialise(model, kept, seed)
        return model

    def save_pretrained(self, directory: str | Path, *, tokenizer_source: str | Path | None = None) -> None:
        """Writes a directory that PyTorch `transformers` (and `from_pretrained`) loads as this model.

        Tokenizer files are copied from `tokenizer_source` when given. The write is atomic. Raises
        `CheckpointError`, before writing anything, for biases the Hugging Face class has no place for.
        """
        if not self.hf_biases:
            biases = [hf_name(p) for p, _ in nnx.to_flat_state(nnx.state(self, nnx.Param)) if str(p[-1]) == "bias"]
            if biases:
                raise CheckpointError(
                    f"a Hugging Face {type(self).__name__} has no biases, so the {len(biases)} this model holds (BitFit's, "
                    f"e.g. {biases[0]}) cannot be saved in its directory; load the run with tljax instead (its export's "
                    "trainable.safetensors: tljax.predict, tljax.runs.load_exported)")
        write_model_directory(
            Path(directory),
            model_to_hf_tensors(self),
            self.config.to_hf(type(self).__name__),
            Path(tokenizer_source) if tokenizer_source else None,
        )


def _initialise(abstract_filled: nnx.Module, names: list[str], seed: int) -> None:
    """Gives the still-abstract parameters in `names` their random initial values, in place.

    The whole model's initialiser runs under `jax.jit`, so XLA computes only the values asked for.
    """
    cls, config = type(abstract_filled), abstract_filled.config
    dtypes = {hf_name(p): v.dtype for p, v in nnx.to_flat_state(nnx.state(abstract_filled, nnx.Param))}

    @jax.jit
    def init():
        fresh = cls(config, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(seed))
        flat = {hf_name(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(fresh, nnx.Param))}
        return {name: flat[name].astype(dtypes[name]) for name in names}

    values = init()
    for path, variable in nnx.to_flat_state(nnx.state(abstract_filled, nnx.Param)):
        if hf_name(path) in values:
            variable.set_value(values[hf_name(path)])
