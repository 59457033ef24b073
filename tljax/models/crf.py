"""A linear-chain conditional random field over a tagger's scores: transition scores between tags, the sequence
log-likelihood (the forward algorithm) as the training objective; Viterbi decoding is `tljax.tagging.viterbi`.

Parameters and their meaning are pytorch-crf's (`torchcrf.CRF`): `transitions[i, j]` scores tag j after tag i,
`start_transitions` / `end_transitions` score the first and last tag. Sequences are rows of a batch whose real
positions come first (`mask` [B, T] ones then zeros, at least one real position per row).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array


class CRF(nnx.Module):
    """Transition scores over `num_tags` tags, initialised uniform in [-0.1, 0.1] as pytorch-crf does."""

    def __init__(self, num_tags: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        k1, k2, k3 = jax.random.split(rngs.params(), 3)
        uniform = lambda key, shape: jax.random.uniform(key, shape, param_dtype, -0.1, 0.1)  # noqa: E731
        self.start_transitions = nnx.Param(uniform(k1, (num_tags,)))
        self.end_transitions = nnx.Param(uniform(k2, (num_tags,)))
        self.transitions = nnx.Param(uniform(k3, (num_tags, num_tags)))

    def log_likelihood(self, emissions: Array, tags: Array, mask: Array) -> Array:
        """log p(tags | emissions) of each row: emissions [B, T, L], tags [B, T] (any value where masked),
        mask [B, T] -> [B]."""
        emissions = emissions.astype(jnp.float32)
        mask = mask.astype(jnp.float32)
        tags = jnp.where(mask > 0, tags, 0)
        start, end, transitions = (p[...].astype(jnp.float32) for p in
                                   (self.start_transitions, self.end_transitions, self.transitions))
        # the score of the given path
        emitted = jnp.take_along_axis(emissions, tags[..., None], -1)[..., 0]  # [B, T]
        moved = transitions[tags[:, :-1], tags[:, 1:]]  # [B, T - 1]
        last = jnp.take_along_axis(tags, (mask.sum(1).astype(jnp.int32) - 1)[:, None], 1)[:, 0]
        score = start[tags[:, 0]] + (emitted * mask).sum(1) + (moved * mask[:, 1:]).sum(1) + end[last]

        # the log-sum over every path (the forward algorithm)
        def step(alpha, inputs):
            emission, real = inputs  # [B, L], [B]
            nxt = jax.nn.logsumexp(alpha[:, :, None] + transitions[None] + emission[:, None, :], axis=1)
            return jnp.where(real[:, None] > 0, nxt, alpha), None

        alpha = start[None] + emissions[:, 0]
        alpha, _ = jax.lax.scan(step, alpha, (jnp.swapaxes(emissions[:, 1:], 0, 1), jnp.swapaxes(mask[:, 1:], 0, 1)))
        return score - jax.nn.logsumexp(alpha + end[None], axis=-1)

    def numpy_parameters(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start [L], end [L], transitions [L, L]) as float64 arrays, for decoding on the host
        (`tljax.tagging.viterbi`)."""
        return tuple(np.asarray(p[...], np.float64) for p in
                     (self.start_transitions, self.end_transitions, self.transitions))


def compact(values: Array, mask: Array) -> tuple[Array, Array]:
    """Moves each row's masked-in positions to its front, in order: values [B, T, ...], mask [B, T] ->
    (values, mask) of the same shapes (a CRF reads a row's labelled positions as one sequence)."""
    order = jnp.argsort(jnp.logical_not(mask.astype(bool)), axis=1, stable=True)
    gathered = jnp.take_along_axis(values, order.reshape(order.shape + (1,) * (values.ndim - 2)), axis=1)
    return gathered, jnp.take_along_axis(mask, order, axis=1)
