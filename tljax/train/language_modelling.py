"""Continued (domain-adaptive) pre-training on unlabelled text: masked LM for encoders, causal LM for decoders.

Documents are split into train / validation / test first (so held-out text is never seen), then cut into
windows of `max_length` tokens (with the tokenizer's special tokens around each window), so that long
documents are used whole instead of truncated. Masked-LM batches follow BERT: 15% of the real, non-special
tokens are chosen; of those 80% become [MASK], 10% a random token, 10% stay; the loss is taken on the chosen
tokens only. Masks are drawn on the host from the batch's position in the data, so a resumed run draws the
same masks, and evaluation uses fixed masks, so that losses before and after training compare.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax

from tljax.data import DataError, TextDataset, load_source
from tljax.data.bundled.ner_corpus import NER_CORPORA, load_ner
from tljax.data.bundled.qa_corpus import QA_CORPORA, load_qa
from tljax.data.qa import QADataset
from tljax.data.batches import BatchIterator, Encoded
from tljax.train.config import ConfigKeyError
from tljax.train.losses import cross_entropy, language_model_loss
from tljax.train.objectives import MappedBatches, Objective

MASK_FRACTION, MASK_TOKEN_SHARE, RANDOM_TOKEN_SHARE = 0.15, 0.8, 0.1


def load_texts(source: str, text_column: str = "text", label_column: str = "label") -> TextDataset:
    """Unlabelled documents: a .txt file (one document per non-empty line) or any labelled source with its
    labels dropped (a packaged corpus, CSV / JSON Lines, hf:, tfds:, a bundled NER set's sentences, a bundled
    QA set's passages)."""
    path = Path(str(source)).expanduser()
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise DataError(f"text file {path} does not exist")
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        texts = [line for line in lines if line]
        if not texts:
            raise DataError(f"text file {path} has no text (it is empty or blank); put one document per line")
        return TextDataset(path.stem, tuple(texts), (0,) * len(texts), ("text",))
    if source in NER_CORPORA:  # a tagged corpus's text, with its fixed splits: the held-out documents stay out
        tagged = load_ner(source)
        return TextDataset(tagged.name, tagged.texts, (0,) * len(tagged), ("text",), groups=tagged.groups,
                           predefined_split=tagged.predefined_split, language=tagged.language)
    if source in QA_CORPORA:  # a QA set's passages, with its fixed splits: the held-out passages stay out
        return passages(load_qa(source))
    dataset = load_source(source, text_column=text_column, label_column=label_column)
    return TextDataset(dataset.name, dataset.texts, (0,) * len(dataset), ("text",), groups=dataset.groups,
                       language=dataset.language)


def passages(dataset: QADataset) -> TextDataset:
    """The distinct passages (contexts) of a question-answering set, one document each, in first-asked order,
    each with its passage group and (where the set has one) its split: a passage's questions never straddle
    splits, so neither does the passage."""
    first = {}
    for index, group in enumerate(dataset.groups):
        first.setdefault(group, index)
    kept = list(first.values())
    split = None if dataset.predefined_split is None else tuple(dataset.predefined_split[i] for i in kept)
    return TextDataset(dataset.name, tuple(dataset.contexts[i] for i in kept), (0,) * len(kept), ("text",),
                       groups=tuple(first), predefined_split=split, language=dataset.language)


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (e.g. [CLS] ... [SEP])."""
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    start = next(i for i in range(len(full) - len(plain) + 1) if full[i: i + len(plain)] == plain)
    return full[:start], full[start + len(plain):]


def encode_windows(texts: tuple[str, ...], tokenizer, max_length: int) -> Encoded:
    """Every document cut into windows of at most `max_length` tokens, special tokens included."""
    head, tail = special_frame(tokenizer)
    width = max_length - len(head) - len(tail)
    if width < 4:
        raise ConfigKeyError(f"data.max_length {max_length} leaves no room for text between the special tokens")
    windows = []
    # documents are read whole, however long (verbose=False: no warning about the model's length; they are cut here)
    for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:
        for start in range(0, len(ids), width):
            windows.append(np.asarray(head + ids[start: start + width] + tail, np.int32))
    return Encoded(tuple(windows), np.zeros(len(windows), np.int32), 0)


def max_targets(width: int) -> int:
    """The most masked tokens a row of `width` tokens gets: 15% plus four standard deviations. Training
    scores a fixed number of positions per row (one compiled shape), so rows are capped there; a row
    reaches the cap about once in 30,000."""
    mean = MASK_FRACTION * width
    return min(width, math.ceil(mean + 4 * math.sqrt(mean * (1 - MASK_FRACTION))) + 1)


def mask_tokens(batch: dict[str, np.ndarray], rng: np.random.Generator, *, mask_id: int, vocab_size: int,
                special_ids: np.ndarray) -> dict[str, np.ndarray]:
    """BERT's masking of a batch: `input_ids` corrupted, `labels` [B, T] the original ids where chosen, else -100.

    Each real, non-special token is chosen with probability 15% (at most `max_targets(T)` per row); of the
    chosen, 80% become the mask token, 10% a random token, 10% stay as they are."""
    ids = batch["input_ids"]
    candidates = (batch["attention_mask"] > 0) & ~np.isin(ids, special_ids) & (batch["weights"][:, None] > 0)
    priority = rng.random(ids.shape)
    chosen = candidates & (priority < MASK_FRACTION)
    # the cap: keep the chosen tokens of lowest priority (a uniformly random subset of them)
    rank = np.argsort(np.argsort(np.where(chosen, priority, 2.0), axis=1, kind="stable"), axis=1, kind="stable")
    chosen &= rank < max_targets(ids.shape[1])
    draw = rng.random(ids.shape)
    corrupted = np.where(chosen & (draw < MASK_TOKEN_SHARE), mask_id, ids)
    random_tokens = rng.integers(0, vocab_size, ids.shape, dtype=np.int32)
    use_random = chosen & (draw >= MASK_TOKEN_SHARE) & (draw < MASK_TOKEN_SHARE + RANDOM_TOKEN_SHARE)
    corrupted = np.where(use_random, random_tokens, corrupted).astype(np.int32)
    return {**batch, "input_ids": corrupted, "labels": np.where(chosen, ids, -100).astype(np.int32)}


def next_token_labels(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Causal LM: every real token is a target (the loss shifts them by one)."""
    real = (batch["attention_mask"] > 0) & (batch["weights"][:, None] > 0)
    return {**batch, "labels": np.where(real, batch["input_ids"], -100).astype(np.int32)}


def masked_logits(model, batch: dict, dropout_key=None) -> tuple:
    """(logits [B, M, V], labels [B, M]) at each row's masked positions: M = `max_targets(T)`, rows with fewer
    targets filled with label -100."""
    labels = batch["labels"]
    targets_first = jnp.argsort(labels == -100, axis=1, stable=True)[:, : max_targets(labels.shape[1])]
    logits = model(batch["input_ids"], batch["attention_mask"], dropout_key=dropout_key, positions=targets_first)
    return logits, jnp.take_along_axis(labels, targets_first, axis=1)


def masked_lm_loss(model, batch: dict, dropout_key=None):
    """The masked-LM loss, scoring only the masked positions: equal to `language_model_loss` over all logits,
    without computing the vocabulary logits of the 85% of tokens that are not targets."""
    logits, labels = masked_logits(model, batch, dropout_key)
    scored = labels != -100
    loss, accuracy = cross_entropy(logits, jnp.where(scored, labels, 0), scored)
    return loss, {"accuracy": accuracy}


@dataclasses.dataclass
class LanguageModelling(Objective):
    """Masked (encoders) or causal (decoders) language modelling on windows of unlabelled text."""

    masked: bool = True
    mask_id: int = 0
    vocab_size: int = 0
    special_ids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))
    seed: int = 0

    def __post_init__(self) -> None:
        self.metrics = ("loss", "perplexity", "accuracy")
        self.evaluate_before = True

    def with_labels(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        batch = {k: v for k, v in batch.items() if k != "labels"}
        if self.masked:
            return mask_tokens(batch, rng, mask_id=self.mask_id, vocab_size=self.vocab_size,
                               special_ids=self.special_ids)
        return next_token_labels(batch)

    def loss(self, model, batch, dropout_key):
        return (masked_lm_loss if self.masked else language_model_loss)(model, batch, dropout_key)

    def outputs(self, model, batch):
        """(summed token loss, predicted tokens, correct predictions) of the batch."""
        if self.masked:
            logits, labels = masked_logits(model, batch)
        else:
            logits, labels = model(batch["input_ids"], batch["attention_mask"])[:, :-1], batch["labels"][:, 1:]
        scored = labels != -100
        safe = jnp.where(scored, labels, 0)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
        correct = (jnp.argmax(logits, -1) == safe) & scored
        return (jnp.where(scored, losses, 0.0).sum(), scored.sum(), correct.sum())

    def train_batches(self, batch_size, seed, position=None, share=(0, 1)):
        position = position or {"epoch": 0, "index": 0}
        # training batches with token labels; the masks depend only on (seed, epoch, index)
        return MappedBatches(BatchIterator(self.encoded["train"], batch_size, self.pad_id, self.max_length,
                                           seed=seed, epoch=position["epoch"], index=position["index"], share=share),
                             lambda batch, drawn_at: self.with_labels(batch, np.random.default_rng(drawn_at)))

    def evaluate(self, forward, split, batch_size):
        total, tokens, correct = 0.0, 0, 0
        for number, batch in enumerate(self.evaluation_batches(self.encoded[split], batch_size)):
            # the same masks every time this split is evaluated
            batch = self.with_labels(batch, np.random.default_rng((self.seed, 1 << 20, number)))
            loss_sum, count, hits = forward(batch)
            total, tokens, correct = total + float(loss_sum), tokens + int(count), correct + int(hits)
        loss = total / max(tokens, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / max(tokens, 1),
                "tokens": tokens}

    def title(self) -> str:
        return f"{'masked' if self.masked else 'causal'} LM, {super().title()}"


def language_modelling_objective(config, adaptation, tokenizer, splits: dict[str, TextDataset],
                                 max_length: int) -> LanguageModelling:
    """The objective for `config.task` ("masked-lm" or "causal-lm") over split, unlabelled documents."""
    masked = config.task == "masked-lm"
    if masked and tokenizer.mask_token_id is None:
        raise ConfigKeyError(f"{config.model}'s tokenizer has no mask token, so it cannot do masked-LM training; "
                         "use task: causal-lm for decoder models")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = {name: encode_windows(split.texts, tokenizer, max_length) for name, split in splits.items()}
    for name, windows in encoded.items():
        if not len(windows):
            raise DataError(f"the {name} split has no text; use more documents or other split fractions")
    return LanguageModelling(adaptation, encoded, pad_id, max_length, masked=masked,
                             mask_id=tokenizer.mask_token_id or 0, vocab_size=adaptation.model.config.vocab_size,
                             special_ids=np.asarray(tokenizer.all_special_ids, np.int32), seed=config.training.seed)


__all__ = ["LanguageModelling", "encode_windows", "language_modelling_objective", "load_texts", "mask_tokens",
           "passages"]
