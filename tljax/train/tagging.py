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
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tljax.data import DataError, split_dataset
from tljax.data.batches import BatchIterator, Encoded
from tljax.data.sources import load_tagged
from tljax.data.tagged import TaggedDataset, describe_tagged_splits
from tljax.data.windows import WordWindows, continuation_tags, encode_words, score_words, word_tags
from tljax.tagging import OUTSIDE, entity_metrics, f1_difference_interval, sentence_counts, type_confusion
from tljax.train.config import DataConfig, RunConfig
from tljax.models.crf import compact
from tljax.models.layers import layer_keys
from tljax.train.losses import cross_entropy
from tljax.train.features import extract_features, trains_only_the_head
from tljax.train.objectives import MappedBatches, Objective
from tljax.train.tasks import Setup, build, evaluation_part, evaluation_specs, split_budgets

Array = jax.Array
TAGGING_METRICS = ("f1", "precision", "recall", "accuracy", "loss")


def token_classification_loss(model, batch: dict[str, Array], dropout_key: Array | None):
    """model(input_ids, attention_mask) -> tag scores [B, T, L]; `labels` [B, T] (-100: no loss); `weights` [B].

    Softmax cross-entropy per labelled token; with a CRF (`model.crf`), the negative log-likelihood of each row's
    tag sequence over its labelled tokens, per labelled token (the same scale). `accuracy`: of the best tag per
    token (the scores' argmax)."""
    logits = model(batch["input_ids"], batch["attention_mask"], dropout_key=dropout_key)
    return tag_loss(model, logits, batch)


def tag_loss(model, logits: Array, batch: dict[str, Array]):
    """`token_classification_loss` of given tag scores `logits` [B, T, L]."""
    labels = batch["labels"]
    labelled = labels != -100
    weights = labelled.astype(jnp.float32)
    if "weights" in batch:
        weights = weights * batch["weights"][:, None]
    loss, accuracy = cross_entropy(logits, jnp.where(labelled, labels, 0), weights)
    crf = getattr(model, "crf", None)
    if crf is not None:
        emissions, real = compact(logits, labelled)
        tags, _ = compact(labels[..., None], labelled)
        rows = weights.sum(1) > 0  # padding rows and windows without a labelled token take no part
        likelihood = crf.log_likelihood(emissions, tags[..., 0], jnp.where(rows[:, None], real, False))
        loss = -(likelihood * rows.astype(jnp.float32)).sum() / jnp.maximum(weights.sum(), 1.0)
    return loss, {"accuracy": accuracy}


@dataclasses.dataclass(frozen=True)
class TaggedSplit:
    """One split of tagged text, encoded: the windows the model reads, and the words' gold tags."""

    dataset: TaggedDataset
    windows: WordWindows


def encode_tagged(dataset: TaggedDataset, tokenizer, max_length: int, data: DataConfig,
                  label_names: tuple[str, ...]) -> TaggedSplit:
    """`dataset` tokenised in windows as `data` (the run's data section) says, its tags as `label_names` ids."""
    index = {name: i for i, name in enumerate(label_names)}
    tag_ids = [[index[tag] for tag in tags] for tags in dataset.tags]
    continuation = continuation_tags(label_names) if data.label_all_subtokens else None
    windows = encode_words(dataset.texts, dataset.words, tag_ids, tokenizer, max_length, prefix=data.text_prefix,
                           stride=data.stride, continuation=continuation)
    return TaggedSplit(dataset, windows)


def predicted_tags(split: TaggedSplit, scores: list[np.ndarray], label_names: tuple[str, ...],
                   crf: tuple[np.ndarray, ...] | None = None) -> list[list[str]]:
    """The tag of every word of every text, from the words' `scores` (decoded with the CRF's `crf` = (start,
    end, transitions) when there is one)."""
    return [word_tags(word_scores, split.windows.followers[k], label_names, crf)
            for k, word_scores in enumerate(scores)]


def tag_metrics(split: TaggedSplit, scores: list[np.ndarray], label_names: tuple[str, ...],
                crf: tuple[np.ndarray, ...] | None = None) -> dict[str, Any]:
    """Entity metrics, word accuracy, the loss on the words that have a token of their own (each word's tag
    alone, also under a CRF: comparable across runs), and the confusion table of types, of the words' `scores`
    against the split's gold tags."""
    index = {name: i for i, name in enumerate(label_names)}
    predicted, losses = predicted_tags(split, scores, label_names, crf), []
    for k, word_scores in enumerate(scores):
        own = np.flatnonzero(split.windows.followers[k] == -1)
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


def baseline_tags(train: TaggedDataset, test: TaggedDataset) -> list[list[str]]:
    """Each word of `test` tagged with its most frequent tag in `train` (O for unseen words)."""
    memory = most_frequent_tags(train)
    return [[memory.get(word.casefold(), OUTSIDE) for word in test.word_texts(k)] for k in range(len(test))]


def against_baseline(train: TaggedDataset, test: TaggedDataset, predicted: list[list[str]]) -> dict[str, Any]:
    """The most-frequent-tag baseline's entity metrics on `test`, and the paired bootstrap interval of the
    model's micro entity F1 minus the baseline's (over test sentences)."""
    gold = [list(t) for t in test.tags]
    baseline = baseline_tags(train, test)
    metrics = entity_metrics(gold, baseline)
    low, high = f1_difference_interval(sentence_counts(gold, predicted), sentence_counts(gold, baseline))
    return {"what": "each word tagged with its most frequent training tag",
            **{name: metrics[name] for name in ("f1", "precision", "recall", "accuracy", "macro_f1")},
            "f1_difference_interval": [round(low, 4), round(high, 4)]}


@dataclasses.dataclass
class TokenClassification(Objective):
    """A tag per word of one tagged task; `encoded` maps each split to its `TaggedSplit`."""

    label_names: tuple[str, ...] = ()
    evaluation_sets: tuple[tuple[str, str, TaggedSplit], ...] = ()  # (name, source, split)
    _test_scores: tuple | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.metrics = TAGGING_METRICS

    def loss(self, model, batch, dropout_key):
        return token_classification_loss(model, batch, dropout_key)

    def outputs(self, model, batch):
        """The tag scores [B, T, L], and with a CRF its (start, end, transitions) for decoding."""
        logits = model.classify(batch["features"]) if "features" in batch else \
            model(batch["input_ids"], batch["attention_mask"])
        crf = getattr(model, "crf", None)
        if crf is None:
            return logits
        return logits, crf.start_transitions[...], crf.end_transitions[...], crf.transitions[...]

    def train_batches(self, batch_size, seed, position=None, share=(0, 1)):
        position = position or {"epoch": 0, "index": 0}
        return BatchIterator(self.encoded["train"].windows.encoded, batch_size, self.pad_id, self.max_length,
                             seed=seed, epoch=position["epoch"], index=position["index"], share=share)

    def _scores(self, forward, split: TaggedSplit, batch_size: int):
        """The words' tag log-probabilities ([words, L] per text), and the CRF's parameters (None without one)."""
        crf = []

        def scores_of(batch):
            output = forward(batch)
            if isinstance(output, tuple):  # (logits, start, end, transitions)
                crf[:] = [np.asarray(x, np.float64) for x in output[1:]]
                return output[0]
            return output

        scores = score_words(scores_of, self.evaluation_batches(split.windows.encoded, batch_size), split.windows)
        return scores, (tuple(crf) or None)

    def evaluate(self, forward, split, batch_size):
        part = self.encoded[split]
        scores, crf = self._scores(forward, part, batch_size)
        if split == "test":  # the loop's last evaluation, of the model `report` is then asked about
            self._test_scores = (scores, crf)
        return tag_metrics(part, scores, self.label_names, crf)

    def title(self) -> str:
        return f"{super().title()} (token classification)"

    def report(self, forward, batch_size, model, test):
        """The most-frequent-tag baseline on the test split (with the bootstrap interval of the model's lead over
        it), and the test metrics of each extra evaluation set."""
        train, test_split = self.encoded["train"].dataset, self.encoded["test"]
        scores, crf = self._test_scores or self._scores(forward, test_split, batch_size)
        predicted = predicted_tags(test_split, scores, self.label_names, crf)
        result: dict[str, Any] = {"baseline": against_baseline(train, test_split.dataset, predicted)}
        evaluation = {}
        for name, source, split in self.evaluation_sets:
            scores, crf = self._scores(forward, split, batch_size)
            versus = against_baseline(train, split.dataset, predicted_tags(split, scores, self.label_names, crf))
            evaluation[name] = {"source": source, "language": split.dataset.language, "examples": len(split.dataset),
                                "baseline": versus, **tag_metrics(split, scores, self.label_names, crf)}
        if evaluation:
            result["evaluation"] = evaluation
        return result


@dataclasses.dataclass
class TokenFeatureClassification(TokenClassification):
    """Feature extraction: the frozen backbone's per-token features computed once per window (the first time a
    split is needed); each step trains the head (and a CRF) on them, with the dropout key the whole model's
    pass gives the head: the same training as running the whole model every step."""

    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    def _cached(self, encoded: Encoded) -> Encoded:
        key = id(encoded)  # the encoded sets live as long as the objective
        if key not in self._cache:
            print(f"feature extraction: the frozen backbone encodes {len(encoded):,} windows once ...",
                  file=sys.stderr, flush=True)
            features = extract_features(self.adaptation.model, encoded, self.pad_id, self.max_length)
            self._cache[key] = dataclasses.replace(encoded, extras={**encoded.extras, "features": features})
        return self._cache[key]

    @staticmethod
    def _shaped(batch: dict) -> dict:  # features cut to the batch's width [B, T, H]; the token arrays dropped
        width = batch["input_ids"].shape[1]
        return {**{k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")},
                "features": batch["features"][:, :width]}

    def loss(self, model, batch, dropout_key):
        if "features" not in batch:
            return token_classification_loss(model, batch, dropout_key)
        return tag_loss(model, model.classify(batch["features"], dropout_key=layer_keys(dropout_key, 2)[1]), batch)

    def train_batches(self, batch_size, seed, position=None, share=(0, 1)):
        for part in (*self.encoded.values(), *(split for _, _, split in self.evaluation_sets)):
            self._cached(part.windows.encoded)  # every split now, before training starts
        position = position or {"epoch": 0, "index": 0}
        return MappedBatches(BatchIterator(self._cached(self.encoded["train"].windows.encoded), batch_size,
                                           self.pad_id, self.max_length, seed=seed, epoch=position["epoch"],
                                           index=position["index"], share=share),
                             lambda batch, _: self._shaped(batch))

    def evaluation_batches(self, encoded, batch_size):
        return [self._shaped(b) for b in super().evaluation_batches(self._cached(encoded), batch_size)]

    def title(self) -> str:
        return f"{super().title()} (cached features)"


def tagged_splits(dataset: TaggedDataset, data: DataConfig, seed: int):
    """Train / validation / test of `dataset` (its own fixed splits where it has them), cut to the budgets."""
    return split_budgets(split_dataset(dataset, validation=data.validation, test=data.test, seed=seed), data)


def _evaluation_sets(config: RunConfig, tokenizer, max_length: int, train_types: tuple[str, ...],
                     label_names: tuple[str, ...]) -> tuple[tuple[str, str, TaggedSplit], ...]:
    """The config's extra evaluation sets (`tasks.evaluation_specs`), read as tagged text with the run's types."""
    return tuple((spec.name, spec.source, encode_tagged(
        evaluation_part(load_tagged(spec.source, scheme=config.data.tag_scheme, types=train_types), spec, config),
        tokenizer, max_length, config.data, label_names)) for spec in evaluation_specs(config))


def prepare_token_classification(config: RunConfig, model_dir: Path, tokenizer) -> Setup:
    data = config.data
    dataset = load_tagged(data.source, scheme=data.tag_scheme, types=data.labels)
    splits = tagged_splits(dataset, data, config.training.seed)
    if not any(splits["train"].entity_counts().values()):
        raise DataError(f"{data.source}: the training split has no entities; a tagger needs examples of what it "
                        "should find")
    label_names = dataset.label_names
    adaptation, info = build(config, model_dir, tokenizer, label_names)
    encoded = {name: encode_tagged(part, tokenizer, info.max_length, data, label_names)
               for name, part in splits.items()}
    evaluation_sets = _evaluation_sets(config, tokenizer, info.max_length, dataset.types, label_names)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    kind = TokenFeatureClassification if trains_only_the_head(adaptation) else TokenClassification
    objective = kind(adaptation, encoded, pad_id, info.max_length, label_names=label_names,
                     evaluation_sets=evaluation_sets)
    report = describe_tagged_splits(splits)
    longer = {name: int((np.bincount(part.windows.window_of) > 1).sum()) for name, part in encoded.items()}
    if any(longer.values()):
        report += "\n" + f"texts longer than {info.max_length} tokens (read whole, in overlapping windows): " + \
            ", ".join(f"{n} in {name}" for name, n in longer.items())
    return Setup(objective, info, report)
