"""Soft prompts: virtual tokens prepended to the input embeddings.

Prompt tuning (Lester et al. 2021) trains the virtual tokens' embeddings directly; P-tuning (Liu et al.
2021) produces them with a small prompt encoder (an MLP, or a bidirectional LSTM and an MLP). As in PEFT,
virtual tokens come first (before [CLS]) with positions 0..P-1, so a BERT pooler reads the first one.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tljax.methods.base import Method, MethodContext, backbone
from tljax.methods.rules import MethodError, PathRules, Rule
from tljax.models.layers import Linear, dropout

SCALE_SAMPLE = 4096  # vocabulary rows whose spread sets a random prompt's scale (a 262k-row table need not be read whole)

Array = jax.Array


class PromptEmbedding(nnx.Module):
    """Trainable virtual tokens `embedding` [P, H]."""

    def __init__(self, initial: Array):
        self.embedding = nnx.Param(initial)
        self.num_virtual_tokens = int(initial.shape[0])

    def table(self) -> Array:
        return self.embedding[...]

    def __call__(self, batch: int, dropout_key: Array | None = None) -> Array:
        """-> [batch, P, H]."""
        table = self.table()
        return jnp.broadcast_to(table[None], (batch, *table.shape))


class LSTMLayer(nnx.Module):
    """One direction of one LSTM layer over the virtual tokens: [P, in] -> [P, hidden]."""

    def __init__(self, din: int, hidden: int, rngs: nnx.Rngs):
        self.inputs = Linear(din, 4 * hidden, init_std=1 / np.sqrt(hidden), rngs=rngs)
        self.recurrent = Linear(hidden, 4 * hidden, use_bias=False, init_std=1 / np.sqrt(hidden), rngs=rngs)
        self.hidden = hidden

    def __call__(self, x: Array, reverse: bool = False) -> Array:
        projected = self.inputs(x)

        def step(carry, gates_in):
            h, c = carry
            i, f, g, o = jnp.split(gates_in + self.recurrent(h), 4)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        zeros = jnp.zeros((self.hidden,), projected.dtype)
        _, out = jax.lax.scan(step, (zeros, zeros), projected, reverse=reverse)
        return out


class PromptEncoder(PromptEmbedding):
    """P-tuning: virtual tokens = encoder(embedding), with an MLP or a 2-layer bidirectional LSTM + MLP."""

    def __init__(self, initial: Array, kind: str, hidden: int, dropout_rate: float, rngs: nnx.Rngs):
        super().__init__(initial)
        width = initial.shape[1]
        self.kind, self.dropout_rate = kind, dropout_rate
        if kind == "lstm":
            self.lstm = nnx.List([LSTMLayer(d, hidden, rngs) for d in (width, width, 2 * hidden, 2 * hidden)])
            self.mlp = nnx.List([Linear(2 * hidden, 2 * hidden, rngs=rngs), Linear(2 * hidden, width, rngs=rngs)])
        else:
            self.lstm = None
            self.mlp = nnx.List([Linear(width, hidden, rngs=rngs), Linear(hidden, hidden, rngs=rngs),
                                 Linear(hidden, width, rngs=rngs)])

    def encode(self, dropout_key: Array | None = None) -> Array:
        """The virtual tokens [P, H]."""
        x = self.embedding[...]
        if self.lstm is not None:
            for forward, backward in ((self.lstm[0], self.lstm[1]), (self.lstm[2], self.lstm[3])):
                x = jnp.concatenate([forward(x), backward(x, reverse=True)], axis=-1)
                x = dropout(x, self.dropout_rate, dropout_key)
        for i, layer in enumerate(self.mlp):
            x = layer(x)
            if i < len(self.mlp) - 1:
                x = jax.nn.relu(x)
        return x

    def table(self) -> Array:
        return self.encode()

    def __call__(self, batch: int, dropout_key: Array | None = None) -> Array:
        table = self.encode(dropout_key)
        return jnp.broadcast_to(table[None], (batch, *table.shape))


def initial_prompt(model: nnx.Module, count: int, init: str, text: str | None, context: MethodContext) -> Array:
    """[count, H] starting values, as the model reads its input embeddings (through the embedding module, which
    may scale its rows: Gemma's by sqrt(H)): "random" (at the embeddings' scale), "vocab" (random vocabulary
    rows) or "text" (the embeddings of `text`'s tokens, repeated to `count`)."""
    embed = backbone(model).input_embeddings
    table = embed.embedding[...]

    def rows(ids: Array) -> Array:
        return embed(ids).astype(table.dtype)

    key = jax.random.key(context.seed)
    if init == "random":
        scale = jnp.std(rows(jnp.arange(min(table.shape[0], SCALE_SAMPLE))))
        return jax.random.normal(key, (count, table.shape[1]), table.dtype) * scale
    if init == "vocab":
        return rows(jax.random.randint(key, (count,), 0, table.shape[0]))
    if init == "text":
        if not text or context.tokenizer is None:
            raise MethodError('prompt init "text" needs init_text and a tokenizer (e.g. the label words)')
        ids = context.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise MethodError(f"init_text {text!r} has no tokens")
        return rows(jnp.asarray(np.resize(ids, count)))
    raise MethodError(f"prompt init {init!r} is unknown; valid: random, vocab, text")


def _install(model: nnx.Module, prompt: PromptEmbedding) -> None:
    body = backbone(model)
    if body.prompt is not None:
        raise MethodError("the model already has a soft prompt (prompt tuning and P-tuning do not combine)")
    body.prompt = prompt


@dataclasses.dataclass(frozen=True)
class PromptTuning(Method):
    """`num_virtual_tokens` trainable input embeddings, prepended to every input."""

    name: ClassVar[str] = "prompt"
    num_virtual_tokens: int = 20
    init: str = "vocab"
    init_text: str | None = None

    def apply(self, model: nnx.Module, context: MethodContext) -> None:
        if self.num_virtual_tokens < 1:
            raise MethodError(f"prompt tuning needs at least 1 virtual token, got {self.num_virtual_tokens}")
        initial = initial_prompt(model, self.num_virtual_tokens, self.init, self.init_text, context)
        _install(model, PromptEmbedding(initial.astype(jnp.float32)))

    def rules(self, model: nnx.Module, step: int = 0) -> PathRules:
        return PathRules((Rule(r"(?:^|/)prompt/", True, self.name),))

    def new_parameters(self) -> tuple[str, ...]:
        return (r"(?:^|/)prompt/",)


@dataclasses.dataclass(frozen=True)
class PTuning(PromptTuning):
    """Virtual tokens produced by a trainable prompt encoder ("mlp" or "lstm") of width `encoder_hidden_size`."""

    name: ClassVar[str] = "p-tuning"
    encoder: str = "mlp"
    encoder_hidden_size: int | None = None
    encoder_dropout: float = 0.0

    def apply(self, model: nnx.Module, context: MethodContext) -> None:
        if self.encoder not in ("mlp", "lstm"):
            raise MethodError(f"P-tuning encoder {self.encoder!r} is unknown; valid: mlp, lstm")
        initial = initial_prompt(model, self.num_virtual_tokens, self.init, self.init_text, context)
        hidden = self.encoder_hidden_size or model.config.hidden_size
        _install(model, PromptEncoder(initial.astype(jnp.float32), self.encoder, hidden, self.encoder_dropout,
                                      nnx.Rngs(context.seed)))


def freeze_prompt(model: nnx.Module) -> None:
    """Replaces a P-tuning encoder by the virtual tokens it computes (for inference and export). In place."""
    body = backbone(model)
    if isinstance(body.prompt, PromptEncoder):
        body.prompt = PromptEmbedding(body.prompt.encode())
