"""Prefix tuning (Li & Liang 2021): trainable keys and values that every layer's attention sees first.

One `PrefixEncoder` (shared by all layers) holds the table [P, layers * 2 * kv_heads * head_dim] in the
layout PEFT saves (per virtual token: layer, then key/value, then head, then head_dim). With
`projection_size`, the table is produced during training by the re-parameterisation MLP
`Linear -> tanh -> Linear` from a [P, hidden] embedding; `freeze_prefix` replaces the MLP by its output
for inference and export. As in PEFT (and GPT-2 `past_key_values`), the real tokens' positions start at P
and the prefix keys are not rotated.

The table trains directly by default (PEFT's default, `prefix_projection=False`). Under Adam each parameter
moves by about the learning rate per step whatever its gradient's size, so a trained table entry moves by
about the learning rate, while through the MLP it moves by about the rate times the sum of `projection_size`
hidden units: at the rate a table needs (1e-2) the MLP's table grew 30-fold (root mean square 0.16 to 4.6 in
150 steps on MiniLM-L6; 6.4 in PEFT), every input came to look alike and the classifier answered one label for
all, in tljax and in PEFT alike (benchmarks/prefix_study.py). The MLP wants a rate about ten times lower.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from tljax.methods.base import Method, MethodContext
from tljax.methods.rules import MethodError, PathRules, Rule
from tljax.models.layers import Linear

Array = jax.Array


class PrefixEncoder(nnx.Module):
    """The prefix table [P, layers * 2 * kv_heads * head_dim], stored or computed by the MLP."""

    def __init__(self, num_virtual_tokens: int, num_layers: int, kv_heads: int, head_dim: int, hidden: int,
                 projection_size: int | None, *, param_dtype, rngs: nnx.Rngs):
        self.num_virtual_tokens, self.num_layers, self.kv_heads, self.head_dim = (
            num_virtual_tokens, num_layers, kv_heads, head_dim)
        width = num_layers * 2 * kv_heads * head_dim
        if projection_size:
            self.embedding = nnx.Param(jax.random.normal(rngs.params(), (num_virtual_tokens, hidden), param_dtype))
            self.mlp_in = Linear(hidden, projection_size, param_dtype=param_dtype, rngs=rngs)
            self.mlp_out = Linear(projection_size, width, param_dtype=param_dtype, rngs=rngs)
        else:
            self.embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (num_virtual_tokens, width),
                                                               param_dtype))
            self.mlp_in = self.mlp_out = None

    def table(self) -> Array:
        """[P, layers * 2 * kv_heads * head_dim]."""
        if self.mlp_in is None:
            return self.embedding[...]
        return self.mlp_out(jnp.tanh(self.mlp_in(self.embedding[...])))

    def layer(self, index: int, batch: int) -> tuple[Array, Array]:
        """Keys and values of layer `index`: each [batch, kv_heads, P, head_dim]."""
        table = self.table().reshape(self.num_virtual_tokens, self.num_layers, 2, self.kv_heads, self.head_dim)
        keys, values = (jnp.broadcast_to(table[:, index, i].transpose(1, 0, 2)[None],
                                         (batch, self.kv_heads, self.num_virtual_tokens, self.head_dim))
                        for i in (0, 1))
        return keys, values


class LayerPrefix(nnx.Module):
    """What one attention layer reads from the shared encoder."""

    def __init__(self, encoder: PrefixEncoder, index: int):
        self.encoder = encoder
        self.index = index
        self.num_virtual_tokens = encoder.num_virtual_tokens

    def __call__(self, batch: int) -> tuple[Array, Array]:
        return self.encoder.layer(self.index, batch)


def attention_modules(model: nnx.Module) -> list[nnx.Module]:
    """Every layer's self-attention module (the ones with a `prefix` slot), bottom to top within each stack (an
    encoder-decoder's two stacks in the model's graph order: T5's decoder, then its encoder)."""
    return [m for _, m in nnx.iter_modules(model) if hasattr(m, "prefix") and hasattr(m, "num_heads")]


@dataclasses.dataclass(frozen=True)
class PrefixTuning(Method):
    """`num_virtual_tokens` trainable keys/values per layer, optionally re-parameterised by an MLP
    (`projection_size` hidden units; None trains the table itself, see the module's docstring)."""

    name: ClassVar[str] = "prefix"
    num_virtual_tokens: int = 20
    projection_size: int | None = None

    def apply(self, model: nnx.Module, context: MethodContext) -> None:
        if self.num_virtual_tokens < 1:
            raise MethodError(f"prefix tuning needs at least 1 virtual token, got {self.num_virtual_tokens}")
        if self.projection_size is not None and self.projection_size < 1:
            raise MethodError(f"prefix tuning's projection_size must be at least 1 (or null: no MLP), "
                              f"got {self.projection_size}")
        layers = attention_modules(model)
        config = model.config
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = config.head_dim
        encoder = PrefixEncoder(self.num_virtual_tokens, len(layers), kv_heads, head_dim, config.hidden_size,
                                self.projection_size, param_dtype=jnp.float32, rngs=nnx.Rngs(context.seed))
        for index, attention in enumerate(layers):
            if attention.prefix is not None:
                raise MethodError("the model already has a prefix")
            attention.prefix = LayerPrefix(encoder, index)

    def rules(self, model: nnx.Module, step: int = 0) -> PathRules:
        return PathRules((Rule(r"/prefix/encoder/", True, self.name),))

    def new_parameters(self) -> tuple[str, ...]:
        return (r"/prefix/encoder/",)


def prefix_encoder(model: nnx.Module) -> PrefixEncoder | None:
    layers = attention_modules(model)
    return layers[0].prefix.encoder if layers and layers[0].prefix is not None else None


def freeze_prefix(model: nnx.Module) -> None:
    """Replaces the re-parameterisation MLP by the table it computes (for inference and export). In place."""
    encoder = prefix_encoder(model)
    if encoder is None or encoder.mlp_in is None:
        return
    table = encoder.table()
    encoder.embedding = nnx.Param(table)
    encoder.mlp_in = encoder.mlp_out = None
