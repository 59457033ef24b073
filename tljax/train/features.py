"""Feature extraction's fast path: run the frozen backbone once per example, then train only the head
on the cached features. It trains the same head as running the whole model every step (same seed, same
batches), because the frozen backbone is deterministic and the head draws the same dropout keys."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from tljax.methods.base import Adaptation
from tljax.train.losses import head_loss
from tljax.train.optim import OptimizerConfig, build_optimizer
from tljax.train.step import make_train_step, split

Array = jax.Array


def extract_features(model: nnx.Module, batches: Iterable[dict[str, Array]]) -> list[Array]:
    """The head's input for every batch: a list of [B, H] arrays (one compiled call per batch shape)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def features(state, input_ids, attention_mask):
        return nnx.merge(graphdef, state).features(input_ids, attention_mask)

    return [features(state, b["input_ids"], b["attention_mask"]) for b in batches]


def train_head_on_features(adaptation: Adaptation, features: Sequence[Array], labels: Sequence[Array], *,
                           steps: int, optimizer: OptimizerConfig, seed: int = 0) -> nnx.Module:
    """Trains the adaptation's trainable parameters (the head) on cached features, cycling through the
    batches; step i uses dropout key `jax.random.key(seed + i)`, as the full-model loop does."""
    graphdef, trainable, frozen = split(adaptation.model, adaptation.trainable())
    tx = build_optimizer(optimizer, steps, adaptation.new_parameter_rules())
    opt_state = tx.init(trainable)
    step = make_train_step(graphdef, head_loss, tx)
    for i in range(steps):
        batch = {"features": features[i % len(features)], "labels": jnp.asarray(labels[i % len(labels)])}
        trainable, opt_state, _ = step(trainable, frozen, opt_state, batch, jax.random.key(seed + i))
    return nnx.merge(graphdef, trainable, frozen)
