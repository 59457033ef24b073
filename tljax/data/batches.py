"""Tokenised examples -> fixed-shape batches, padded to length buckets so that few shapes compile.

Training batches come from a deterministic, resumable order: epoch e's order depends only on (seed, e),
and the iterator's position is two integers, saved in checkpoints. Examples of similar length are batched
together (shuffled chunks sorted by length), and every batch has exactly `batch_size` rows: the rows a
last batch lacks are padding with weight 0, so that they count in no loss or metric.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Token ids of every example (variable lengths) and their labels: one class per example ([N]), or one label
    per token (a tuple of [len] arrays, -100 where no loss is taken: token classification)."""

    ids: tuple[np.ndarray, ...]
    labels: np.ndarray | tuple[np.ndarray, ...]  # [N] int32, or per example [len] int32
    truncated: int  # how many examples were cut to max_length
    # per-example arrays [N, ...] that batches carry along (e.g. a teacher's logits, a task index), or a tuple of
    # [len] arrays: a value per token (e.g. token types), padded as the ids are
    extras: dict[str, np.ndarray | tuple[np.ndarray, ...]] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def encode(texts: Sequence[str], labels: Sequence[int], tokenizer, max_length: int, prefix: str = "") -> Encoded:
    """Tokenises `prefix + text` with the model's tokenizer (special tokens added), cutting at `max_length`.

    Truncation is counted and logged, never silent."""
    ids = tokenizer([prefix + t for t in texts], add_special_tokens=True, truncation=False)["input_ids"]
    truncated = sum(len(x) > max_length for x in ids)
    if truncated:
        log.warning("%d of %d examples are longer than %d tokens and were truncated", truncated, len(ids), max_length)
    kept = []
    for x in ids:
        if len(x) > max_length:  # keep the final special token (e.g. [SEP]) in place
            x = x[: max_length - 1] + x[-1:]
        kept.append(np.asarray(x, np.int32))
    return Encoded(tuple(kept), np.asarray(labels, np.int32), truncated)


def bucket(length: int, limit: int) -> int:
    """The smallest bucket length >= `length` (never above `limit`)."""
    return min(next((b for b in BUCKETS if b >= length), limit), limit)


def make_batch(encoded: Encoded, indices: Sequence[int], batch_size: int, pad_id: int, max_length: int,
               *, left_pad: bool = False, width: int | None = None) -> dict[str, np.ndarray]:
    """Rows `indices` (at most `batch_size`) as arrays [batch_size, width]: input_ids, attention_mask,
    labels ([batch_size], or [batch_size, width] padded with -100 for per-token labels), weights (0 for padding
    rows), and the rows of each of `encoded.extras`. `width` defaults to the bucket of the longest row."""
    width = width or batch_width(encoded, indices, max_length)
    ids = np.full((batch_size, width), pad_id, np.int32)
    mask = np.zeros((batch_size, width), np.int32)
    for row, index in enumerate(indices):
        tokens = encoded.ids[index]
        if left_pad:
            ids[row, width - len(tokens):], mask[row, width - len(tokens):] = tokens, 1
        else:
            ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
    if isinstance(encoded.labels, tuple):  # a label per token, aligned with the ids
        labels = np.full((batch_size, width), -100, np.int32)
        for row, index in enumerate(indices):
            values = encoded.labels[index]
            if left_pad:
                labels[row, width - len(values):] = values
            else:
                labels[row, : len(values)] = values
    else:
        labels = np.zeros((batch_size,), np.int32)
        labels[: len(indices)] = encoded.labels[list(indices)]
    weights = np.zeros((batch_size,), np.float32)
    weights[: len(indices)] = 1.0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}
    for name, values in encoded.extras.items():
        if isinstance(values, tuple):  # a value per token (e.g. token types), aligned with the ids, padded with 0
            rows = np.zeros((batch_size, width), values[0].dtype if values else np.int32)
            for row, index in enumerate(indices):
                if left_pad:
                    rows[row, width - len(values[index]):] = values[index]
                else:
                    rows[row, : len(values[index])] = values[index]
        else:
            rows = np.zeros((batch_size, *values.shape[1:]), values.dtype)
            rows[: len(indices)] = values[list(indices)]
        batch[name] = rows
    return batch


def batch_width(encoded: Encoded, indices: Sequence[int], max_length: int) -> int:
    """The padded length of a batch of rows `indices`: the bucket of the longest."""
    return bucket(max((len(encoded.ids[i]) for i in indices), default=1), max_length)


def epoch_order(encoded: Encoded, batch_size: int, seed: int, epoch: int, chunk_batches: int = 50) -> list[list[int]]:
    """The batches (lists of example indices) of one epoch: shuffled, length-grouped, deterministic."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(encoded))
    lengths = np.asarray([len(x) for x in encoded.ids])
    chunk = batch_size * chunk_batches
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start: start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i: i + batch_size].tolist() for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


@dataclasses.dataclass
class BatchIterator:
    """Endless training batches; `position` (epoch, batch within it) is all a checkpoint needs.

    `share` (i, n): this iterator reads only the i-th of n equal blocks of rows of every batch of
    `batch_size` rows (process i of a run of n processes), padded to the whole batch's width: the n shares
    together are exactly the unshared batches. The order of batches is the same in every share."""

    encoded: Encoded
    batch_size: int
    pad_id: int
    max_length: int
    seed: int = 0
    epoch: int = 0
    index: int = 0
    left_pad: bool = False
    share: tuple[int, int] = (0, 1)

    def __post_init__(self) -> None:
        part, parts = self.share
        if self.batch_size % parts or not 0 <= part < parts:
            raise ValueError(f"a batch of {self.batch_size} rows does not split into {parts} equal shares")
        self._order = epoch_order(self.encoded, self.batch_size, self.seed, self.epoch)

    @property
    def batches_per_epoch(self) -> int:
        return len(self._order)

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.index >= len(self._order):
            self.epoch, self.index = self.epoch + 1, 0
            self._order = epoch_order(self.encoded, self.batch_size, self.seed, self.epoch)
        indices = self._order[self.index]
        part, parts = self.share
        rows = self.batch_size // parts
        batch = make_batch(self.encoded, indices[part * rows: (part + 1) * rows], rows, self.pad_id, self.max_length,
                           left_pad=self.left_pad, width=batch_width(self.encoded, indices, self.max_length))
        self.index += 1
        return batch


def evaluation_batches(encoded: Encoded, batch_size: int, pad_id: int, max_length: int,
                       *, left_pad: bool = False) -> list[dict[str, np.ndarray]]:
    """Every example once, in length order (few shapes, little padding); padding rows have weight 0."""
    order = np.argsort([len(x) for x in encoded.ids], kind="stable")
    return [make_batch(encoded, order[i: i + batch_size].tolist(), batch_size, pad_id, max_length, left_pad=left_pad)
            for i in range(0, len(order), batch_size)]
