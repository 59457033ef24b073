"""Fast paths for frozen parts: what does not change is computed once per example, not at every step.

Feature extraction: the frozen backbone runs once per example, then only the head trains.

When nothing but the task head trains and the backbone is a deterministic feature extractor (the
`feature-extraction` method switches its dropout off), every step would recompute the same features. So
`FeatureClassification` computes each example's features once (one forward pass over the data, the first
time a split is needed) and trains and evaluates the head on them. It trains the same head as running the
whole model every step: the batches are the same (same iterator, same seed), and `head_loss` gives the
head the dropout key that `classification_loss` gives it inside the full model.

Partial fine-tuning with frozen embeddings and bottom layers (`FrozenBottomClassification`): the input of
the first trained layer is computed once per example, dropout off in the frozen layers, and each step runs
only the layers above it; they get the dropout keys the whole model's pass would give them.
"""

from __future__ import annotations

import dataclasses
import re
import sys

import numpy as np
from flax import nnx

from tljax.data.batches import BatchIterator, Encoded, evaluation_batches
from tljax.methods import Adaptation
from tljax.methods.base import layout, task_head_pattern
from tljax.models.transforms import backbone, jit_bound
from tljax.train.losses import classification_loss, cross_entropy, head_loss
from tljax.train.objectives import Classification, MappedBatches

TOKEN_KEYS = ("input_ids", "attention_mask")


def trains_only_the_head(adaptation: Adaptation) -> bool:
    """Whether the fast path applies: feature extraction, and every trainable parameter is the head's (with
    an encoder's pooler, and what internal methods add on top of it, e.g. a CRF)."""
    if "feature-extraction" not in {m.name for m in adaptation.methods}:
        return False
    pattern = task_head_pattern(adaptation.model)
    if pattern is None:
        return False
    internal = [p for m in adaptation.methods if m.name.startswith("_") for p in m.new_parameters()]
    head = re.compile("|".join(f"(?:{p})" for p in (pattern, *internal)))
    trained = [path for path, _, rule in adaptation.rules().report(adaptation.model) if rule.trainable]
    return bool(trained) and all(head.search(path) for path in trained)


def per_example(call, encoded: Encoded, pad_id: int, max_length: int, batch_size: int = 64) -> np.ndarray:
    """`call(input_ids, attention_mask)` (a compiled function) for every example of `encoded`, in example order,
    float32: [N, H] for one output per example ([B, H]), [N, max_length, H] for one per token ([B, T, H]: zeros
    beyond each batch's width)."""
    order = np.argsort([len(x) for x in encoded.ids], kind="stable")  # as evaluation_batches takes them
    result = None
    for start, batch in zip(range(0, len(order), batch_size),
                            evaluation_batches(encoded, batch_size, pad_id, max_length)):
        rows = order[start: start + batch_size]
        values = np.asarray(call(batch["input_ids"], batch["attention_mask"]), np.float32)
        if result is None:
            per_token = (max_length,) if values.ndim == 3 else ()
            result = np.zeros((len(encoded), *per_token, values.shape[-1]), np.float32)
        if values.ndim == 3:
            result[rows, : values.shape[1]] = values[: len(rows)]
        else:
            result[rows] = values[: len(rows)]
    return result


def extract_features(model: nnx.Module, encoded: Encoded, pad_id: int, max_length: int) -> np.ndarray:
    """The head's input for every example of `encoded`, in example order: [N, H] float32 (a token classifier's:
    [N, max_length, H], zeros beyond each example)."""
    return per_example(jit_bound(model, lambda m, ids, mask: m.features(ids, mask)), encoded, pad_id, max_length)


@dataclasses.dataclass
class _CachedClassification(Classification):
    """Classification whose own splits carry, per example, what a frozen part of the model computes: computed
    once (the first time a split is asked for) by `_compute`, shaped into each batch by `_shaped`."""

    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    def _compute(self, encoded: Encoded) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _shaped(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def cached(self, encoded: Encoded) -> Encoded:
        key = id(encoded)  # the encoded sets live as long as the objective
        if key not in self._cache:
            self._cache[key] = dataclasses.replace(encoded, extras={**encoded.extras, **self._compute(encoded)})
        return self._cache[key]

    def train_batches(self, batch_size, seed, position=None, share=(0, 1)):
        """The loop asks for these first: every split is computed now, before training starts. The batches are
        those of the same iterator and seed as without the cache."""
        for encoded in self.encoded.values():
            self.cached(encoded)
        position = position or {"epoch": 0, "index": 0}
        return MappedBatches(BatchIterator(self.cached(self.encoded["train"]), batch_size, self.pad_id,
                                           self.max_length, seed=seed, epoch=position["epoch"],
                                           index=position["index"], share=share),
                             lambda batch, _: self._shaped(batch))

    def evaluation_batches(self, encoded, batch_size):
        """Cached batches for the run's own splits (other evaluation sets are read as tokens)."""
        if not any(encoded is part for part in self.encoded.values()):
            return super().evaluation_batches(encoded, batch_size)
        return [self._shaped(b) for b in super().evaluation_batches(self.cached(encoded), batch_size)]


@dataclasses.dataclass
class FeatureClassification(_CachedClassification):
    """Classification whose batches carry the frozen backbone's features instead of tokens."""

    def _compute(self, encoded):
        print(f"feature extraction: the frozen backbone encodes {len(encoded):,} examples once ...",
              file=sys.stderr, flush=True)
        return {"features": extract_features(self.adaptation.model, encoded, self.pad_id, self.max_length)}

    def _shaped(self, batch):  # features [B, H], labels, weights: the token arrays dropped
        return {k: v for k, v in batch.items() if k not in TOKEN_KEYS}

    def loss(self, model, batch, dropout_key):
        if "features" in batch:
            return head_loss(model, batch, dropout_key)
        return classification_loss(model, batch, dropout_key)

    def outputs(self, model, batch):
        if "features" in batch:
            return model.classify(batch["features"])
        return model(batch["input_ids"], batch["attention_mask"])

    def title(self) -> str:
        return f"{super().title()} (cached features)"


# Above this many bytes of cached hidden states (train, validation and test together), a partial run computes
# its frozen layers every step instead.
FROZEN_CACHE_LIMIT = 4 * 2**30


def frozen_bottom(adaptation: Adaptation) -> int:
    """How many bottom layers (with the embeddings) a run can compute once per example: partial fine-tuning's
    `freeze_layers` where `cache_frozen` is on, the embeddings are frozen, the model is an encoder classifier
    with neither prompt nor prefix, and nothing below that layer trains; 0 where this does not apply."""
    methods = [m for m in adaptation.methods if not m.name.startswith("_")]
    if len(methods) != 1 or methods[0].name != "partial":
        return 0
    method, model = methods[0], adaptation.model
    if not method.cache_frozen or method.path_rules is not None or not method.freeze_embeddings \
            or method.freeze_layers < 1 or not hasattr(model, "logits_from_layer"):
        return 0
    if backbone(model).num_virtual_tokens or backbone(model).num_prefix_tokens:
        return 0
    facts = layout(model)
    below = [facts.embeddings, *(facts.layer_pattern(i) for i in range(method.freeze_layers))]
    trained = [path for path, _, rule in adaptation.rules().report(model) if rule.trainable]
    return 0 if any(re.search(pattern, path) for path in trained for pattern in below) else method.freeze_layers


def cached_bytes(adaptation: Adaptation, encoded: dict[str, Encoded], max_length: int) -> int:
    """The memory the frozen bottom's outputs of every split take: examples x max_length x hidden x 4."""
    return sum(len(e) for e in encoded.values()) * max_length * adaptation.model.config.hidden_size * 4


def extract_hidden(model: nnx.Module, encoded: Encoded, pad_id: int, max_length: int, layer: int) -> np.ndarray:
    """The input of layer `layer` for every example of `encoded` (dropout off), in example order, padded with
    zeros: [N, max_length, H] float32."""
    hidden = jit_bound(model, lambda m, ids, mask: backbone(m).hidden_before(ids, mask, layer))
    return per_example(hidden, encoded, pad_id, max_length)


@dataclasses.dataclass
class FrozenBottomClassification(_CachedClassification):
    """Classification whose batches carry the frozen bottom's output (`hidden`): each step runs the top only."""

    layers: int = 0  # the frozen bottom layers (with the embeddings)

    def _compute(self, encoded):
        print(f"partial fine-tuning: the frozen embeddings and bottom {self.layers} layers encode "
              f"{len(encoded):,} examples once ...", file=sys.stderr, flush=True)
        return {"hidden": extract_hidden(self.adaptation.model, encoded, self.pad_id, self.max_length, self.layers)}

    def _shaped(self, batch):  # the cached hidden [B, max_length, H] cut to the tokens' width [B, T, H]
        return {**batch, "hidden": batch["hidden"][:, : batch["input_ids"].shape[1]]}

    def loss(self, model, batch, dropout_key):
        if "hidden" not in batch:
            return classification_loss(model, batch, dropout_key)
        logits = model.logits_from_layer(batch["hidden"], batch["attention_mask"], self.layers, dropout_key=dropout_key)
        loss, accuracy = cross_entropy(logits, batch["labels"], batch.get("weights"))
        return loss, {"accuracy": accuracy}

    def outputs(self, model, batch):
        if "hidden" in batch:
            return model.logits_from_layer(batch["hidden"], batch["attention_mask"], self.layers)
        return model(batch["input_ids"], batch["attention_mask"])

    def title(self) -> str:
        return f"{super().title()} (bottom {self.layers} layers cached)"
