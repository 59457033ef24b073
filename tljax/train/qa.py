"""Extractive question answering: the answer is a span of the passage, found by a score for where it starts and
one for where it ends at every token (SQuAD v1.1; with unanswerable questions, v2.0).

The data (`tljax.data.qa`) is read as questions with their contexts and answers' character spans;
`tljax.data.answer_windows` reads each question with its context in overlapping windows and labels the answer's
first and last tokens (position 0, the null answer, where a window lacks it). The loss is the mean of the start
and end positions' cross-entropies over each window's real tokens. Evaluation gathers each question's windows
into its best span (`best_answers`) and scores it by the official SQuAD exact match and token F1
(`tljax.squad`; `f1` is the metric to pick checkpoints on), with the answerable / unanswerable split where the
set has unanswerable questions. The report adds the baseline every reader must beat, the passage sentence
that shares the most words with the question, with the bootstrap interval of the model's F1 lead over it, and
the extra evaluation sets (e.g. the Portuguese test set of a model trained on English).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tljax.data import DataError, split_dataset
from tljax.data.answer_windows import (AnswerSettings, QuestionWindows, answer_questions, choose_null_threshold,
                                       encode_questions, window_outputs)
from tljax.data.batches import BatchIterator, Encoded
from tljax.data.qa import QADataset
from tljax.data.sources import load_questions
from tljax.models.layers import layer_keys
from tljax.models.transforms import jit_bound
from tljax.squad import f1_difference_interval, question_scores, squad_metrics
from tljax.train.config import DataConfig, RunConfig
from tljax.train.features import trains_only_the_head
from tljax.train.objectives import MappedBatches, Objective
from tljax.train.tasks import Setup, build, evaluation_part, evaluation_specs, split_budgets

Array = jax.Array
QA_METRICS = ("f1", "exact", "loss")
SPAN_LABELS = ("start", "end")  # what a span head scores at each token


def span_loss(logits: Array, batch: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
    """Span scores [B, T, 2] against `start_positions` / `end_positions` [B]: the mean of the two positions'
    cross-entropies over each row's real tokens (`attention_mask`), weighted by `weights` [B]; `accuracy`: both
    positions right."""
    real = batch["attention_mask"].astype(bool)
    scores = jnp.where(real[..., None], logits.astype(jnp.float32), -1e9)
    log_p = jax.nn.log_softmax(scores, axis=1)  # over positions, for start and end apart
    start = jnp.take_along_axis(log_p[..., 0], batch["start_positions"][:, None], axis=1)[:, 0]
    end = jnp.take_along_axis(log_p[..., 1], batch["end_positions"][:, None], axis=1)[:, 0]
    weights = batch["weights"].astype(jnp.float32)
    total = jnp.maximum(weights.sum(), 1.0)
    loss = -((start + end) / 2 * weights).sum() / total
    best = jnp.argmax(scores, axis=1)  # [B, 2]
    right = (best[:, 0] == batch["start_positions"]) & (best[:, 1] == batch["end_positions"])
    return loss, {"accuracy": (right.astype(jnp.float32) * weights).sum() / total}


def question_answering_loss(model, batch: dict[str, Array], dropout_key: Array | None):
    """model(input_ids, attention_mask, token_type_ids) -> span scores [B, T, 2]; see `span_loss`."""
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], dropout_key=dropout_key)
    return span_loss(logits, batch)


@dataclasses.dataclass(frozen=True)
class QASplit:
    """One split of questions, encoded in windows."""

    dataset: QADataset
    windows: QuestionWindows


def encode_qa(dataset: QADataset, tokenizer, max_length: int, stride: int, prefix: str = "") -> QASplit:
    return QASplit(dataset, encode_questions(dataset.questions, dataset.contexts, dataset.answers, tokenizer,
                                             max_length, stride=stride, prefix=prefix))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(0)
    return shifted - np.log(np.exp(shifted).sum(0))


def qa_metrics(split: QASplit, scores: list[np.ndarray], settings: AnswerSettings) -> dict[str, Any]:
    """SQuAD exact match and F1 of the answers the scores give, and the loss of the windows' labelled positions."""
    extras = split.windows.encoded.extras
    losses = [-(_log_softmax(s)[extras["start_positions"][w], 0] + _log_softmax(s)[extras["end_positions"][w], 1]) / 2
              for w, s in enumerate(scores)]
    predictions = answer_questions(split.windows, split.dataset.contexts, scores, settings)
    golds = [split.dataset.gold_texts(k) for k in range(len(split.dataset))]
    return {"loss": float(np.mean(losses)) if losses else 0.0,
            **squad_metrics([p.text for p in predictions], golds)}


def tuned_threshold(validation: QASplit, scores: list[np.ndarray], settings: AnswerSettings) -> AnswerSettings:
    """`settings` with the null threshold that maximises F1 on `validation`, given its windows' span scores."""
    spans = answer_questions(validation.windows, validation.dataset.contexts, scores,
                             dataclasses.replace(settings, allow_null=False))
    golds = [validation.dataset.gold_texts(k) for k in range(len(validation.dataset))]
    threshold, _ = choose_null_threshold(spans, golds)
    return dataclasses.replace(settings, null_score_diff_threshold=threshold)


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
WORD = re.compile(r"\w+")


def sentence_spans(context: str) -> list[tuple[int, int]]:
    """The (start, end) of each sentence of `context` (cut after . ! ? and spaces)."""
    spans, start = [], 0
    for match in SENTENCE_END.finditer(context):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(context.rstrip())))
    return [(a, b) for a, b in spans if b > a]


def most_similar_sentence(question: str, context: str) -> str:
    """The sentence of `context` that shares the most (case-folded) words with `question`; the first on ties."""
    asked = set(WORD.findall(question.casefold()))
    sentences = [context[a:b] for a, b in sentence_spans(context)]
    overlap = [len(asked & set(WORD.findall(s.casefold()))) for s in sentences]
    return sentences[int(np.argmax(overlap))] if sentences else ""


def against_baseline(dataset: QADataset, predictions: list[str]) -> dict[str, Any]:
    """The most-similar-sentence baseline's exact match and F1 on `dataset`, and the paired bootstrap interval of
    the model's F1 minus the baseline's (over questions)."""
    baseline = [most_similar_sentence(q, c) for q, c in zip(dataset.questions, dataset.contexts)]
    golds = [dataset.gold_texts(k) for k in range(len(dataset))]
    ours = np.asarray([question_scores(p, g)[1] for p, g in zip(predictions, golds)])
    theirs = np.asarray([question_scores(p, g)[1] for p, g in zip(baseline, golds)])
    low, high = f1_difference_interval(ours, theirs)
    metrics = squad_metrics(baseline, golds)
    return {"what": "the passage sentence sharing the most words with the question",
            "exact": metrics["exact"], "f1": metrics["f1"], "f1_difference_interval": [round(low, 4), round(high, 4)]}


@dataclasses.dataclass
class QuestionAnswering(Objective):
    """Extractive question answering; `encoded` maps each split to its `QASplit`."""

    settings: AnswerSettings = AnswerSettings()
    evaluation_sets: tuple[tuple[str, str, QASplit], ...] = ()  # (name, source, split)
    _test_scores: list | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.metrics = QA_METRICS

    def loss(self, model, batch, dropout_key):
        return question_answering_loss(model, batch, dropout_key)

    def outputs(self, model, batch):
        if "features" in batch:
            return model.classify(batch["features"])
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    def train_batches(self, batch_size, seed, position=None, share=(0, 1)):
        position = position or {"epoch": 0, "index": 0}
        return BatchIterator(self.encoded["train"].windows.encoded, batch_size, self.pad_id, self.max_length,
                             seed=seed, epoch=position["epoch"], index=position["index"], share=share)

    def scores(self, forward, split: QASplit, batch_size: int) -> list[np.ndarray]:
        """The span scores of every window of `split` ([len, 2] each)."""
        encoded = split.windows.encoded
        return window_outputs(forward, self.evaluation_batches(encoded, batch_size), encoded)

    def evaluate(self, forward, split, batch_size):
        part = self.encoded[split]
        scores = self.scores(forward, part, batch_size)
        if self.settings.threshold_source == "validation":  # auto: this model's threshold, chosen on validation
            chosen = scores if split == "validation" else \
                self.scores(forward, self.encoded["validation"], batch_size)
            self.choose_threshold(chosen)
        if split == "test":  # the loop's last evaluation, of the model `report` and `export` are then asked about
            self._test_scores = scores
        metrics = qa_metrics(part, scores, self.settings)
        if self.settings.allow_null:
            metrics["null_threshold"] = self.settings.null_score_diff_threshold
        return metrics

    def choose_threshold(self, validation_scores: list[np.ndarray]) -> None:
        """Sets the null threshold that maximises F1 on the validation split, from its windows' span scores."""
        self.settings = tuned_threshold(self.encoded["validation"], validation_scores, self.settings)

    def export(self, model, info, directory, *, model_dir, tokenizer):
        """The export records the answer settings the test was scored with (an `auto` threshold as chosen)."""
        info = dataclasses.replace(info, answers=dataclasses.asdict(self.settings))
        return super().export(model, info, directory, model_dir=model_dir, tokenizer=tokenizer)

    def title(self) -> str:
        return f"{super().title()} (question answering)"

    def report(self, forward, batch_size, model, test):
        """The most-similar-sentence baseline on the test split (with the bootstrap interval of the model's lead),
        and the test metrics of each extra evaluation set against the same baseline."""
        test_split = self.encoded["test"]
        scores = self._test_scores or self.scores(forward, test_split, batch_size)
        answers = [p.text for p in answer_questions(test_split.windows, test_split.dataset.contexts, scores,
                                                    self.settings)]
        result: dict[str, Any] = {"baseline": against_baseline(test_split.dataset, answers)}
        evaluation = {}
        for name, source, split in self.evaluation_sets:
            scores = self.scores(forward, split, batch_size)
            answers = [p.text for p in answer_questions(split.windows, split.dataset.contexts, scores,
                                                        self.settings)]
            evaluation[name] = {"source": source, "language": split.dataset.language, "examples": len(split.dataset),
                                "baseline": against_baseline(split.dataset, answers),
                                **qa_metrics(split, scores, self.settings)}
        if evaluation:
            result["evaluation"] = evaluation
        return result


@dataclasses.dataclass
class QAFeatureAnswering(QuestionAnswering):
    """Feature extraction: the frozen backbone's per-token features computed once per window (the first time a
    split is needed); each step trains the span head on them (the same training as the whole model's pass: the
    head has no dropout)."""

    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    def _cached(self, encoded: Encoded) -> Encoded:
        key = id(encoded)  # the encoded sets live as long as the objective
        if key not in self._cache:
            print(f"feature extraction: the frozen backbone encodes {len(encoded):,} windows once ...",
                  file=sys.stderr, flush=True)
            call = jit_bound(self.adaptation.model, lambda m, ids, mask, types: m.features(ids, mask, types))
            batches = super().evaluation_batches(encoded, 64)
            features = window_outputs(lambda b: call(b["input_ids"], b["attention_mask"], b["token_type_ids"]),
                                      batches, encoded)
            padded = np.zeros((len(encoded), self.max_length, features[0].shape[-1]), np.float32)
            for w, values in enumerate(features):
                padded[w, : len(values)] = values
            self._cache[key] = dataclasses.replace(encoded, extras={**encoded.extras, "features": padded})
        return self._cache[key]

    @staticmethod
    def _shaped(batch: dict) -> dict:  # features cut to the batch's width [B, T, H]
        return {**batch, "features": batch["features"][:, : batch["input_ids"].shape[1]]}

    def loss(self, model, batch, dropout_key):
        if "features" not in batch:
            return question_answering_loss(model, batch, dropout_key)
        return span_loss(model.classify(batch["features"], dropout_key=layer_keys(dropout_key, 2)[1]), batch)

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


def describe_qa_splits(splits: dict[str, QADataset], encoded: dict[str, QASplit], max_length: int) -> str:
    """A table: per split, its passages, questions, unanswerable questions and windows."""
    names = list(splits)
    rows = [["", *names]]
    for field in ("passages", "questions", "unanswerable"):
        rows.append([field, *(f"{splits[n].counts()[field]:,}" for n in names)])
    rows.append([f"windows of {max_length} tokens", *(f"{len(encoded[n].windows.encoded):,}" for n in names)])
    rows.append(["duplicates dropped", *(f"{getattr(splits, 'dropped', {}).get(n, 0):,}" for n in names)])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if c == 0 else cell.rjust(w)
                               for c, (cell, w) in enumerate(zip(row, widths))) for row in rows)


def answer_settings(data: DataConfig, train: QADataset) -> AnswerSettings:
    """How span scores become answers, as `data` says; a null answer is allowed when `train` has unanswerable
    questions (SQuAD v2), and `auto` chooses its threshold on the validation split."""
    auto = data.null_score_diff_threshold == "auto"
    allow_null = not all(train.answerable)
    return AnswerSettings(stride=data.stride, n_best_size=data.n_best_size, max_answer_length=data.max_answer_length,
                          allow_null=allow_null, null_score_diff_threshold=0.0 if auto else
                          float(data.null_score_diff_threshold),
                          threshold_source="validation" if auto and allow_null else "config")


def qa_splits(data: DataConfig, seed: int) -> dict[str, QADataset]:
    """The questions of `data.source` split into train / validation / test (a passage's questions in one split),
    cut to the example budgets; refused when the training split has no answer to learn from."""
    dataset = load_questions(data.source)
    splits = split_budgets(split_dataset(dataset, validation=data.validation, test=data.test, seed=seed), data)
    if not any(splits["train"].answerable):
        raise DataError(f"{data.source}: the training split has no answerable question; a reader needs examples of "
                        "answers to learn where they are")
    return splits


def prepare_question_answering(config: RunConfig, model_dir: Path, tokenizer) -> Setup:
    data = config.data
    splits = qa_splits(data, config.training.seed)
    settings = answer_settings(data, splits["train"])
    adaptation, info = build(config, model_dir, tokenizer, SPAN_LABELS)
    info = dataclasses.replace(info, answers=dataclasses.asdict(settings))
    encoded = {name: encode_qa(part, tokenizer, info.max_length, data.stride, data.text_prefix)
               for name, part in splits.items()}
    evaluation_sets = tuple((spec.name, spec.source, encode_qa(
        evaluation_part(load_questions(spec.source), spec, config), tokenizer, info.max_length, data.stride,
        data.text_prefix)) for spec in evaluation_specs(config))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    kind = QAFeatureAnswering if trains_only_the_head(adaptation) else QuestionAnswering
    objective = kind(adaptation, encoded, pad_id, info.max_length, settings=settings,
                     evaluation_sets=evaluation_sets)
    report = describe_qa_splits(splits, encoded, info.max_length)
    cut = sum(part.windows.questions_cut for part in encoded.values())
    if cut:
        report += f"\n{cut} questions longer than 64 tokens were cut to 64"
    return Setup(objective, info, report)
