"""Loss functions: (model, batch, dropout key) -> (scalar loss, metrics). Pure, for use in jitted steps.

A batch is a dict of arrays: `input_ids` [B, T], `attention_mask` [B, T], and `labels` ([B] class ids for
classification; [B, T] token ids with -100 where no loss is taken, for language modelling).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def _masked_mean(values: Array, weights: Array) -> Array:
    return (values * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def cross_entropy(logits: Array, labels: Array, weights: Array | None = None) -> tuple[Array, Array]:
    """Mean softmax cross-entropy and accuracy of logits [..., C] for integer labels [...]."""
    weights = jnp.ones(labels.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return _masked_mean(losses, weights), _masked_mean(correct, weights)


def classification_loss(model, batch: dict[str, Array], dropout_key: Array | None):
    """Sequence classification: model(input_ids, attention_mask) -> logits [B, L]; labels [B]."""
    logits = model(batch["input_ids"], batch["attention_mask"], dropout_key=dropout_key)
    loss, accuracy = cross_entropy(logits, batch["labels"], batch.get("weights"))
    return loss, {"accuracy": accuracy}


def head_loss(model, batch: dict[str, Array], dropout_key: Array | None):
    """The classification loss from precomputed backbone features (`features` [B, H], `labels` [B]).

    Uses the same dropout key as `classification_loss` does for the head, so both train the same head."""
    head_key = None if dropout_key is None else jax.random.split(dropout_key)[1]
    logits = model.classify(batch["features"], dropout_key=head_key)
    loss, accuracy = cross_entropy(logits, batch["labels"], batch.get("weights"))
    return loss, {"accuracy": accuracy}


def language_model_loss(model, batch: dict[str, Array], dropout_key: Array | None):
    """Token prediction: logits [B, T, V] against `labels` [B, T] (-100: ignored).

    Causal models predict the next token (labels are shifted here); masked models the token itself."""
    logits = model(batch["input_ids"], batch["attention_mask"], dropout_key=dropout_key)
    labels = batch["labels"]
    if model.predicts_next_token:
        logits, labels = logits[:, :-1], labels[:, 1:]
    weights = labels != -100
    loss, accuracy = cross_entropy(logits, jnp.where(weights, labels, 0), weights)
    return loss, {"accuracy": accuracy}


def smoothed_cross_entropy(logits: Array, labels: Array, weights: Array, smoothing: float) -> tuple[Array, Array]:
    """Mean cross-entropy of logits [..., V] against labels [...] smoothed towards the uniform distribution:
    (1 - e) * -log p(label) + e * mean over the vocabulary of -log p (the target (1 - e) one-hot + e / V, as
    Hugging Face's label_smoothing_factor); e = 0 is `cross_entropy`. Also the accuracy of the argmax."""
    if smoothing == 0.0:
        return cross_entropy(logits, labels, weights)
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    losses = (1.0 - smoothing) * nll - smoothing * log_p.mean(-1)
    weights = weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return _masked_mean(losses, weights), _masked_mean(correct, weights)
