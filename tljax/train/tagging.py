"""Token classification: a tag per word (named entities), trained on sub-word tokens and judged on entities.

The data (`tljax.data.tagged`) is read as words with IOB2 tags; `tljax.data.windows` aligns the tags to the
model's tokens (the first sub-token of each word carries its tag) and reads long texts in overlapping windows.
Evaluation takes the model's scores back to words, and judges the words' tags as entities (`tljax.tagging`: the
CoNLL definition, exact type and boundaries): micro and per-type precision / recall / F1 (`f1` is the micro
entity F1, the metric to pick checkpoints on), word accuracy, the loss on the words' tags, and a confusion
table of types. The run's report adds the baseline every tagger must beat: each word tagged with its most
frequent tag in the training data (an untrained model, or a majority tag, scores 0 entity F1), and the extra
evaluation sets (e.g. the Portuguese test set of a model trained on English).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tljax.data import DataError, split_dataset
from tljax.data.batches import BatchIterator
from tljax.data.sources import load_tagged
from tljax.data.tagged import TaggedDataset, describe_tagged_splits
from tljax.data.windows import WordWindows, continuation_tags, encode_words, score_words, word_tags
from tljax.tagging import OUTSIDE, entity_metrics, type_confusion
from tljax.train.config import ConfigKeyError, RunConfig
from tljax.train.losses import cross_entropy
from tljax.train.objectives import Objective
from tljax.train.tasks import Setup, build, split_budgets

Array = jax.Array
TAGGING_METRICS = ("f1", "precision", "recall", "accuracy", "loss")
EVALUATION_KEYS = ("source", "split", "max_examples")


def token_classification_loss(model, batch: dict[str, Array], dropout_key: Array | None):
    """model(input_ids, attention_mask) -> logits [B, T, L]; `labels` [B, T] (-100: no loss); `weights` [B]."""
    logits = model(batch["input_ids"], batch["attention_mask"], dropout_key=dropout_key)
    labels = batch["labels"]
    weights = (labels != -100).astype(jnp.float32)
    if "weights" in batch:
        weights = weights * batch["weights"][:, None]
    loss, accuracy = cross_entropy(logits, jnp.where(labels == -100, 0, labels), weights)
    return loss, {"accuracy": accuracy}


@dataclasses.dataclass(frozen=True)
class TaggedSplit:
    """One split of tagged text, encoded: the windows the model reads, and the words' gold tags."""

    dataset: TaggedDataset
    windows: WordWindows


def encode_tagged(dataset: TaggedDataset, tokenizer, max_length: int, config: RunConfig,
                  label_names: tuple[str, ...]) -> TaggedSplit:
    index = {name: i for i, name in enumerate(label_names)}
    tag_ids = [[index[tag] for tag in tags] for tags in dataset.tags]
    data = config.data
    continuation = continuation_tags(label_names) if data.label_all_subtokens else None
    windows = encode_words(dataset.texts, dataset.words, tag_ids, tokenizer, max_length, prefix=data.text_prefix,
                           stride=data.stride, continuation=continuation)
    return TaggedSplit(dataset, windows)


def tag_metrics(split: TaggedSplit, scores: list[np.ndarray], label_names: tuple[str, ...]) -> dict[str, Any]:
    """Entity metrics, word accuracy, the loss on the words that have a token of their own, and the confusion
    table of types, of the words' `scores` against the split's gold tags."""
    index = {name: i for i, name in enumerate(label_names)}
    predicted, losses = [], []
    for k, word_scores in enumerate(scores):
        follow = split.windows.followers[k]
        predicted.append(word_tags(word_scores, follow, label_names))
        own = np.flatnonzero(follow == -1)
        gold = np.asarray([index[split.dataset.tags[k][w]] for w in own], np.int64)
        losses.append(-word_scores[own, gold])
    gold_tags = [list(tags) for tags in split.dataset.tags]
    metrics = entity_metrics(gold_tags, predicted)
    losses = np.concatenate(losses) if losses else np.zeros(0)
    types = sorted({label.split("-", 1)[1] for label in label_names if label != OUTSIDE})
    return {"loss": float(losses.mean()) if losses.size else 0.0, **metrics,
            "confusion_matrix": type_confusion(gold_tags, predicted, types), "confusion_labels": [*types, OUTSIDE]}


def most_frequent_tags(train: TaggedDataset) -> dict[str, str]:
    """Each training word (case-folded) -> its most frequent tag in the training data."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for k in range(len(train)):
        for word, tag in zip(train.word_texts(k), train.tags[k]):
            counts[word.casefold()][tag] += 1
    return {word: tags.most_common(1)[0][0] for word, tags in counts.items()}


def baseline_metrics(train: TaggedDataset, test: TaggedDataset) -> dict[str, Any]:
    """The entity metrics of tagging each word with its most frequent training tag (O for unseen words), B- made
    I- where it continues an entity of its type."""
    memory = most_frequent_tags(train)
    predicted = []
    for k in range(len(test)):
        tags = [memory.get(word.casefold(), OUTSIDE) for word in test.word_texts(k)]
        predicted.append(tags)
    metrics = entity_metrics([list(t) for t in test.tags], predicted)
    return {name: metrics[name] for name in ("f1", "precision", "recall", "accuracy", "macro_f1")}


@dataclasses.dataclass
class TokenClassification(Objective):
    """A tag per word of one tagged task; `encoded` maps each split to its `TaggedSplit`."""

    label_names: tuple[str, ...] = ()
    evaluation_sets: tuple[tuple[str, str, TaggedSplit], ...] = ()  # (name, source, split)

    def __post_init__(self) -> None:
        self.metrics = TAGGING_METRICS

    def loss(self, model, batch, dropout_key):
        return token_classification_loss(model, batch, dropout_key)

    def outputs(self, model, batch):
        return model(batch["input_ids"], batch["attention_mask"])

    def train_batches(self, batch_size, seed, position=None, share=(0, 1)):
        position = position or {"epoch": 0, "index": 0}
        return BatchIterator(self.encoded["train"].windows.encoded, batch_size, self.pad_id, self.max_length,
                             seed=seed, epoch=position["epoch"], index=position["index"], share=share)

    def _evaluate(self, forward, split: TaggedSplit, batch_size: int) -> dict[str, Any]:
        batches = self.evaluation_batches(split.windows.encoded, batch_size)
        return tag_metrics(split, score_words(forward, batches, split.windows), self.label_names)

    def evaluate(self, forward, split, batch_size):
        return self._evaluate(forward, self.encoded[split], batch_size)

    def title(self) -> str:
        return f"{super().title()} (token classification)"

    def report(self, forward, batch_size, model, test):
        """The most-frequent-tag baseline on the test split, and the test metrics of each extra evaluation set."""
        result: dict[str, Any] = {"baseline": {"what": "each word tagged with its most frequent training tag",
                                               **baseline_metrics(self.encoded["train"].dataset,
                                                                  self.encoded["test"].dataset)}}
        evaluation = {}
        for name, source, split in self.evaluation_sets:
            metrics = self._evaluate(forward, split, batch_size)
            evaluation[name] = {"source": source, "language": split.dataset.language, "examples": len(split.dataset),
                                "baseline": baseline_metrics(self.encoded["train"].dataset, split.dataset)["f1"],
                                **metrics}
        if evaluation:
            result["evaluation"] = evaluation
        return result


def _tagged_split(dataset: TaggedDataset, config: RunConfig):
    data = config.data
    splits = split_dataset(dataset, validation=data.validation, test=data.test, seed=config.training.seed)
    return split_budgets(splits, data)


def _evaluation_sets(config: RunConfig, tokenizer, max_length: int, train_types: tuple[str, ...],
                     label_names: tuple[str, ...]) -> tuple[tuple[str, str, TaggedSplit], ...]:
    """The config's extra evaluation sets: {name: source} or {name: {source, split: all | test, max_examples}}."""
    sets = []
    for name, spec in config.evaluation.items():
        spec = {"source": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or "source" not in spec or set(spec) - set(EVALUATION_KEYS):
            raise ConfigKeyError(f"evaluation.{name} must be a source name or a mapping with a source (keys: "
                                 f"{', '.join(EVALUATION_KEYS)}); got {spec!r}")
        dataset = load_tagged(spec["source"], scheme=config.data.tag_scheme, types=train_types)
        split = spec.get("split", "all")
        if split == "test":
            dataset = _tagged_split(dataset, dataclasses.replace(config, data=dataclasses.replace(
                config.data, max_train_examples=None, max_eval_examples=None)))["test"]
        elif split != "all":
            raise ConfigKeyError(f"evaluation.{name}.split {split!r} is unknown; valid: all, test")
        limit = spec.get("max_examples")
        if limit is not None:
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise ConfigKeyError(f"evaluation.{name}.max_examples must be a whole number >= 1, got {limit!r}")
            dataset = dataset.subset(range(min(limit, len(dataset))))
        sets.append((name, spec["source"], encode_tagged(dataset, tokenizer, max_length, config, label_names)))
    return tuple(sets)


def prepare_token_classification(config: RunConfig, model_dir: Path, tokenizer) -> Setup:
    data = config.data
    dataset = load_tagged(data.source, scheme=data.tag_scheme, types=data.labels)
    splits = _tagged_split(dataset, config)
    if not any(splits["train"].entity_counts().values()):
        raise DataError(f"{data.source}: the training split has no entities; a tagger needs examples of what it "
                        "should find")
    label_names = dataset.label_names
    adaptation, info = build(config, model_dir, tokenizer, label_names)
    encoded = {name: encode_tagged(part, tokenizer, info.max_length, config, label_names)
               for name, part in splits.items()}
    evaluation_sets = _evaluation_sets(config, tokenizer, info.max_length, dataset.types, label_names)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    objective = TokenClassification(adaptation, encoded, pad_id, info.max_length, label_names=label_names,
                                    evaluation_sets=evaluation_sets)
    report = describe_tagged_splits(splits)
    longer = {name: int((np.bincount(part.windows.window_of) > 1).sum()) for name, part in encoded.items()}
    if any(longer.values()):
        report += "\n" + f"texts longer than {info.max_length} tokens (read whole, in overlapping windows): " + \
            ", ".join(f"{n} in {name}" for name, n in longer.items())
    return Setup(objective, info, report)
