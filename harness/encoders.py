"""Encoders without a task head: sentence embeddings, zero-shot by label descriptions, few-shot classifiers.

Embeddings are the mean of the backbone's token states (as sentence-transformers and e5 pool), L2-normalised.
Zero-shot: the label whose description's embedding is closest (cosine) to the text's. Few-shot: a classifier
on the frozen embeddings of k labelled examples per class: nearest centroid, or multinomial logistic
regression (L2-regularised, full-batch gradient descent on the few examples).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tljax.data.batches import encode, evaluation_batches
from tljax.models import mean_pool
from tljax.models.transforms import backbone, jit_bound

CLASSIFIERS = ("logistic", "centroid")


class Embedder:
    """texts -> L2-normalised sentence embeddings [N, H] of an encoder (its backbone, mean-pooled)."""

    def __init__(self, model: nnx.Module, tokenizer, max_length: int = 128, batch_size: int = 64):
        # never past the model's positions (a small model may have fewer than max_length)
        max_length = min(max_length, getattr(backbone(model).config, "max_position_embeddings", max_length))
        self.tokenizer, self.max_length, self.batch_size = tokenizer, max_length, batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.embed_batch = jit_bound(backbone(model), lambda m, ids, mask: mean_pool(m(ids, mask), mask))

    def __call__(self, texts: Sequence[str], prefix: str = "") -> np.ndarray:
        encoded = encode(list(texts), [0] * len(texts), self.tokenizer, self.max_length, prefix)
        order = np.argsort([len(x) for x in encoded.ids], kind="stable")
        result = None
        for start, batch in zip(range(0, len(order), self.batch_size),
                                evaluation_batches(encoded, self.batch_size, self.pad_id, self.max_length)):
            rows = order[start: start + self.batch_size]
            values = np.asarray(self.embed_batch(batch["input_ids"], batch["attention_mask"]), np.float32)
            if result is None:
                result = np.zeros((len(texts), values.shape[-1]), np.float32)
            result[rows] = values[: len(rows)]
        return result / np.maximum(np.linalg.norm(result, axis=-1, keepdims=True), 1e-12)


def nearest_centroid(train: np.ndarray, labels: np.ndarray, num_labels: int) -> np.ndarray:
    """[C, H] normalised class centroids (the score of x for class c is x . centroid_c)."""
    centroids = np.stack([train[labels == c].mean(0) for c in range(num_labels)])
    return centroids / np.maximum(np.linalg.norm(centroids, axis=-1, keepdims=True), 1e-12)


def logistic_regression(train: np.ndarray, labels: np.ndarray, num_labels: int, *, l2: float = 1e-3,
                        steps: int = 500, learning_rate: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(weights [H, C], bias [C]) of multinomial logistic regression on `train` [N, H] (L2 on the weights)."""
    x, y = jnp.asarray(train), jax.nn.one_hot(jnp.asarray(labels), num_labels)
    scale = 10.0  # normalised embeddings have small dot products: a larger input scale speeds convergence

    def loss(params):
        w, b = params
        logits = scale * x @ w + b[None, :]
        return -(y * jax.nn.log_softmax(logits)).sum(-1).mean() + l2 * (w ** 2).sum()

    @jax.jit
    def fit(params):
        def step(params, _):
            grads = jax.grad(loss)(params)
            return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads), None

        return jax.lax.scan(step, params, None, length=steps)[0]

    w, b = fit((jnp.zeros((train.shape[1], num_labels)), jnp.zeros(num_labels)))
    return np.asarray(w) * scale, np.asarray(b)
