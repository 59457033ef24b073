"""The pure, compiled train step over a (trainable, frozen) parameter split.

Gradients are taken with respect to `trainable` only, and the optimiser state holds only trainable
leaves: frozen parameters get neither gradient memory nor optimiser state. `make_sweep_step` trains several
variants of the trainable parameters (a learning-rate sweep) over the same frozen ones in one program.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from tljax.train.sharding import StepShardings

Array = jax.Array
LossFn = Callable[[nnx.Module, dict[str, Array], Array | None], tuple[Array, dict[str, Array]]]


def split(model: nnx.Module, trainable: nnx.filterlib.Filter) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, trainable parameters, everything else) of `model`."""
    return nnx.split(model, trainable, ...)


def _step(graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation, trainable, frozen, opt_state,
          batch, key, mask=None, scale=None):
    """One optimiser step; `scale` (a scalar) multiplies the update, i.e. every learning rate of `tx`."""

    def loss_of(params):
        return loss_fn(nnx.merge(graphdef, params, frozen), batch, key)

    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
    if mask is not None:  # held-frozen leaves count in no gradient norm (clipping) and get no update
        grads = jax.tree.map(lambda g, m: jnp.where(m > 0, g, 0).astype(g.dtype), grads, mask)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32 step counters
        updates, opt_state = tx.update(grads, opt_state, trainable)
        if mask is not None:
            updates = jax.tree.map(lambda u, m: jnp.where(m > 0, u, 0).astype(u.dtype), updates, mask)
        if scale is not None:
            updates = jax.tree.map(lambda u: (u * scale).astype(u.dtype), updates)
        trainable = optax.apply_updates(trainable, updates)
    finite = jnp.all(jnp.asarray([jnp.isfinite(x).all() for x in jax.tree.leaves(trainable)]))
    return trainable, opt_state, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
                                  "parameters_finite": finite}


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation,
                    shardings: StepShardings | None = None, *, masked: bool = False):
    """train_step(trainable, frozen, opt_state, batch, key[, mask]) -> (trainable, opt_state, metrics), jitted.

    `trainable` and `opt_state` are donated: callers keep the returned ones. An optional `mask` (a tree
    like `trainable` of 0.0 / 1.0, given when `masked`) zeroes the updates of leaves a schedule keeps frozen
    for now. With `shardings` the step is compiled for them (inputs and outputs stay where they are: the
    parameters and optimiser state sharded by their rules, batches split by rows, metrics replicated);
    without, where its arguments are."""

    def train_step(trainable, frozen, opt_state, batch, key, mask=None):
        return _step(graphdef, loss_fn, tx, trainable, frozen, opt_state, batch, key, mask)

    if shardings is None:
        return jax.jit(train_step, donate_argnums=(0, 2))
    s = shardings
    inputs = (s.trainable, s.frozen, s.opt_state, s.batch, s.replicated) + ((s.trainable,) if masked else ())
    return jax.jit(train_step, in_shardings=inputs, out_shardings=(s.trainable, s.opt_state, s.replicated),
                   donate_argnums=(0, 2))


def make_sweep_step(graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation):
    """sweep_step(trainables, frozen, opt_states, batch, key, scales) -> (trainables, opt_states, metrics), jitted:
    N variants of one run trained at once, each with every learning rate of `tx` multiplied by its scale.

    `trainables` and `opt_states` are N stacked copies (a leading axis of N on every leaf, e.g. from
    `stack_variants`), `scales` is [N]; the frozen parameters, the batch and the dropout key are shared, as
    they are between separate runs with the same seed. The variants' parameters and metrics come back
    stacked. Scaling the update is scaling the learning rate: AdamW's update is the learning rate times a
    term that does not depend on it (clipping acts on gradients, before). One compiled program replaces N
    runs' programs, data pipelines and frozen-weight reads; on an accelerator that a small model leaves
    mostly idle, the N variants' work also runs side by side."""

    def one(trainable, opt_state, scale, frozen, batch, key):
        return _step(graphdef, loss_fn, tx, trainable, frozen, opt_state, batch, key, scale=scale)

    swept = jax.vmap(one, in_axes=(0, 0, 0, None, None, None))
    return jax.jit(lambda trainables, frozen, opt_states, batch, key, scales:
                   swept(trainables, opt_states, scales, frozen, batch, key), donate_argnums=(0, 2))


def stack_variants(tree, count: int):
    """`count` copies of every leaf of `tree`, stacked on a new leading axis (the sweep step's layout)."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (count, *x.shape)).copy(), tree)


def variant(tree, index: int):
    """Variant `index` of a stacked tree."""
    return jax.tree.map(lambda x: x[index], tree)
