"""The pure, compiled train step over a (trainable, frozen) parameter split.

Gradients are taken with respect to `trainable` only, and the optimiser state holds only trainable
leaves: frozen parameters get neither gradient memory nor optimiser state.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

Array = jax.Array
LossFn = Callable[[nnx.Module, dict[str, Array], Array | None], tuple[Array, dict[str, Array]]]


def split(model: nnx.Module, trainable: nnx.filterlib.Filter) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, trainable parameters, everything else) of `model`."""
    return nnx.split(model, trainable, ...)


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation):
    """train_step(trainable, frozen, opt_state, batch, key[, mask]) -> (trainable, opt_state, metrics), jitted.

    `trainable` and `opt_state` are donated: callers keep the returned ones. An optional `mask` (a tree
    like `trainable` of 0.0 / 1.0) zeroes the updates of leaves a schedule keeps frozen for now."""

    def train_step(trainable, frozen, opt_state, batch, key, mask=None):
        def loss_of(params):
            return loss_fn(nnx.merge(graphdef, params, frozen), batch, key)

        (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
        if mask is not None:  # held-frozen leaves count in no gradient norm (clipping) and get no update
            grads = jax.tree.map(lambda g, m: jnp.where(m > 0, g, 0).astype(g.dtype), grads, mask)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32 step counters
            updates, opt_state = tx.update(grads, opt_state, trainable)
            if mask is not None:
                updates = jax.tree.map(lambda u, m: jnp.where(m > 0, u, 0).astype(u.dtype), updates, mask)
            trainable = optax.apply_updates(trainable, updates)
        finite = jnp.all(jnp.asarray([jnp.isfinite(x).all() for x in jax.tree.leaves(trainable)]))
        return trainable, opt_state, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
                                      "parameters_finite": finite}

    return jax.jit(train_step, donate_argnums=(0, 2))
