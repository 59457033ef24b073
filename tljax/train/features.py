"""Feature extraction's fast path: the frozen backbone runs once per example, then only the head trains.

When nothing but the task head trains and the backbone is a deterministic feature extractor (the
`feature-extraction` method switches its dropout off), every step would recompute the same features. So
`FeatureClassification` computes each example's features once (one forward pass over the data, the first
time a split is needed) and trains and evaluates the head on them. It trains the same head as running the
whole model every step: the batches are the same (same iterator, same seed), and `head_loss` gives the
head the dropout key that `classification_loss` gives it inside the full model.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import numpy as np
from flax import nnx

from tljax.data.batches import BatchIterator, Encoded, evaluation_batches
from tljax.methods import Adaptation
from tljax.methods.base import head_pattern
from tljax.models.transforms import jit_bound
from tljax.train.losses import classification_loss, head_loss
from tljax.train.objectives import Classification, MappedBatches

TOKEN_KEYS = ("input_ids", "attention_mask")


def trains_only_the_head(adaptation: Adaptation) -> bool:
    """Whether the fast path applies: feature extraction, and every trainable parameter is the head's."""
    if "feature-extraction" not in {m.name for m in adaptation.methods}:
        return False
    pattern = head_pattern(adaptation.model)
    trained = [path for path, _, rule in adaptation.rules().report(adaptation.model) if rule.trainable]
    return pattern is not None and bool(trained) and all(re.search(pattern, path) for path in trained)


def extract_features(model: nnx.Module, encoded: Encoded, pad_id: int, max_length: int,
                     batch_size: int = 64) -> np.ndarray:
    """The head's input for every example of `encoded`, in example order: [N, H] float32."""
    features = jit_bound(model, lambda m, ids, mask: m.features(ids, mask))
    order = np.argsort([len(x) for x in encoded.ids], kind="stable")
    result = None
    for start, batch in zip(range(0, len(order), batch_size),
                            evaluation_batches(encoded, batch_size, pad_id, max_length)):
        rows = order[start: start + batch_size]
        values = np.asarray(features(batch["input_ids"], batch["attention_mask"]), np.float32)
        if result is None:
            result = np.zeros((len(encoded), values.shape[-1]), np.float32)
        result[rows] = values[: len(rows)]
    return result


@dataclasses.dataclass
class FeatureClassification(Classification):
    """Classification whose batches carry the frozen backbone's features instead of tokens."""

    _with_features: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    def featurised(self, encoded: Encoded) -> Encoded:
        """`encoded` with each example's features as an extra, computed the first time it is asked for."""
        key = id(encoded)  # the encoded sets live as long as the objective
        if key not in self._with_features:
            print(f"feature extraction: the frozen backbone encodes {len(encoded):,} examples once ...",
                  file=sys.stderr, flush=True)
            features = extract_features(self.adaptation.model, encoded, self.pad_id, self.max_length)
            self._with_features[key] = dataclasses.replace(encoded, extras={**encoded.extras, "features": features})
        return self._with_features[key]

    def loss(self, model, batch, dropout_key):
        if "features" in batch:
            return head_loss(model, batch, dropout_key)
        return classification_loss(model, batch, dropout_key)

    def outputs(self, model, batch):
        if "features" in batch:
            return model.classify(batch["features"])
        return model(batch["input_ids"], batch["attention_mask"])

    def train_batches(self, batch_size, seed, position=None):
        """The loop asks for these first: every split's features are computed now, before training starts."""
        for encoded in self.encoded.values():
            self.featurised(encoded)
        position = position or {"epoch": 0, "index": 0}
        # the token batches of the same iterator, the token arrays dropped: features [B, H], labels, weights
        return MappedBatches(BatchIterator(self.featurised(self.encoded["train"]), batch_size, self.pad_id,
                                           self.max_length, seed=seed, epoch=position["epoch"],
                                           index=position["index"]),
                             lambda batch, _: {k: v for k, v in batch.items() if k not in TOKEN_KEYS})

    def evaluation_batches(self, encoded, batch_size):
        """Feature batches for the run's own splits (other evaluation sets are read as tokens)."""
        if not any(encoded is part for part in self.encoded.values()):
            return super().evaluation_batches(encoded, batch_size)
        batches = super().evaluation_batches(self.featurised(encoded), batch_size)
        return [{k: v for k, v in b.items() if k not in TOKEN_KEYS} for b in batches]

    def title(self) -> str:
        return f"{super().title()} (cached features)"
