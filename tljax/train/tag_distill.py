"""Knowledge distillation of a token classifier: a student tagger learns from a trained teacher tagger's
softened tag distributions, word by word.

loss = (1 - alpha) * the tagging loss on the labels + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)),
the KL term averaged over the words' first sub-tokens. The teacher is a finished token-classification run with
the same tags; it reads the training texts once, before training, with its own tokenizer and windows, and its
predictions are taken back to words (`tljax.data.windows`), so a teacher with another tokenizer (a larger or
multilingual model) teaches as well: each word's first sub-token in the student's windows gets its word's
distribution. Hidden-state matching is for sequence classifiers (`distill.py`).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tljax.data.batches import evaluation_batches
from tljax.errors import InputError
from tljax.data.windows import encode_words, score_words
from tljax.methods import merge_and_unload
from tljax.methods.rules import parameter_sizes
from tljax.models.layers import layer_keys
from tljax.models.transforms import jit_bound
from tljax.runs import find_export, load_exported
from tljax.train.config import ConfigKeyError, DistillationConfig, RunConfig
from tljax.train.tagging import TaggedSplit, TokenClassification, tag_loss, tag_metrics

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TagTeacher:
    """A trained token classifier that teaches, with how it reads text."""

    source: str
    model: Any
    tokenizer: Any
    labels: tuple[str, ...]
    text_prefix: str
    max_length: int

    def word_log_probs(self, split: TaggedSplit, batch_size: int = 64) -> list[np.ndarray]:
        """The teacher's tag log-probabilities for every word of every text of `split` ([words, L] each; NaN
        for a word without a token of its own in the teacher's tokenizer)."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        dataset = split.dataset
        windows = encode_words(dataset.texts, dataset.words, None, self.tokenizer, self.max_length,
                               prefix=self.text_prefix)
        logits = jit_bound(self.model, lambda m, ids, mask: m(ids, mask))
        batches = evaluation_batches(windows.encoded, batch_size, pad, self.max_length)
        return score_words(lambda batch: logits(batch["input_ids"], batch["attention_mask"]), batches, windows)


def load_tag_teacher(spec: str, labels: tuple[str, ...]) -> TagTeacher:
    """The teacher a finished token-classification run holds (LoRA merged), its tags checked against the
    student's."""
    try:
        directory = find_export(spec)
    except InputError as error:
        raise ConfigKeyError(f"distillation.teacher {spec!r}: {error} (a tagger's teacher is a finished "
                             "token-classification run)") from None
    model, tokenizer, info = load_exported(directory)
    if info.task != "token-classification":
        raise ConfigKeyError(f"distillation.teacher {spec!r} is a {info.task} run; a tagger learns from a "
                             "token-classification run with the same tags")
    if tuple(info.labels) != tuple(labels):
        raise ConfigKeyError(f"distillation.teacher {spec!r} tags {list(info.labels)}, the student {list(labels)}; "
                             "teacher and student need the same tags (the same data.labels, in the same order)")
    merge_and_unload(model)
    return TagTeacher(spec, model, tokenizer, tuple(info.labels), info.text_prefix, info.max_length)


@dataclasses.dataclass
class TokenDistillation(TokenClassification):
    """Token classification with a teacher's soft tags (`teacher_log_probs` [N, max_length, L] per window, on
    the words' first sub-tokens; `teacher_mask` marks them)."""

    settings: DistillationConfig | None = None
    teacher: TagTeacher | None = None

    def loss(self, model, batch, dropout_key):
        s = self.settings
        logits = model(batch["input_ids"], batch["attention_mask"], dropout_key=layer_keys(dropout_key, 2)[0])
        hard, metrics = tag_loss(model, logits, batch)
        width = logits.shape[1]
        mask = batch["teacher_mask"][:, :width] * batch["weights"][:, None]
        t = s.temperature
        teacher_log_p = jax.nn.log_softmax(batch["teacher_log_probs"][:, :width].astype(jnp.float32) / t)
        student_log_p = jax.nn.log_softmax(logits.astype(jnp.float32) / t)
        kl = (jnp.exp(teacher_log_p) * (teacher_log_p - student_log_p)).sum(-1)
        soft = (kl * mask).sum() / jnp.maximum(mask.sum(), 1.0)
        return (1 - s.alpha) * hard + s.alpha * t * t * soft, {**metrics, "hard_loss": hard, "soft_loss": soft}

    def title(self) -> str:
        return f"{super().title()} (distilled)"

    def report(self, forward, batch_size, model, test):
        """The teacher's test metrics beside the student's: entity F1 retained and the parameter ratio."""
        result = super().report(forward, batch_size, model, test)
        split = self.encoded["test"]
        teacher_metrics = tag_metrics(split, self.teacher.word_log_probs(split, batch_size), self.label_names)
        student_parameters = self.count()[1]
        teacher_parameters = sum(parameter_sizes(self.teacher.model).values())
        result["distillation"] = {
            "teacher": {"f1": teacher_metrics["f1"], "accuracy": teacher_metrics["accuracy"],
                        "parameters": teacher_parameters},
            "student": {"f1": test["f1"], "accuracy": test["accuracy"], "parameters": student_parameters},
            "f1_retained": test["f1"] / max(teacher_metrics["f1"], 1e-9),
            "parameter_ratio": student_parameters / teacher_parameters,
            "settings": dataclasses.asdict(self.settings)}
        return result


def token_distillation_objective(config: RunConfig, base: TokenClassification) -> TokenDistillation:
    """Wraps a prepared token-classification objective with its teacher: the teacher's word distributions over
    the training texts computed once and placed on the student's first sub-tokens."""
    settings: DistillationConfig = config.distillation
    if settings.hidden_weight > 0:
        raise ConfigKeyError("distillation.hidden_weight (hidden-state matching) is for sequence classifiers; a "
                             "tagger learns from its teacher's tags: leave hidden_weight at 0")
    teacher = load_tag_teacher(settings.teacher, base.label_names)
    train = base.encoded["train"]
    print(f"distillation: the teacher ({settings.teacher}) tags the {len(train.dataset):,} training texts once ...",
          file=sys.stderr, flush=True)
    words = teacher.word_log_probs(train)
    windows = train.windows
    targets = np.zeros((len(windows.encoded), base.max_length, len(base.label_names)), np.float32)
    mask = np.zeros((len(windows.encoded), base.max_length), np.float32)
    for window, firsts in enumerate(windows.firsts):
        text = windows.window_of[window]
        positions = np.flatnonzero(firsts >= 0)
        scores = words[text][firsts[positions]]
        known = ~np.isnan(scores).any(-1)  # a word the teacher's tokenizer merged into another has no own score
        targets[window, positions[known]] = scores[known]
        mask[window, positions[known]] = 1.0
    extras = {**windows.encoded.extras, "teacher_log_probs": targets, "teacher_mask": mask}
    encoded = dict(base.encoded)
    encoded["train"] = dataclasses.replace(train, windows=dataclasses.replace(
        windows, encoded=dataclasses.replace(windows.encoded, extras=extras)))
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
    return TokenDistillation(**{**fields, "encoded": encoded}, settings=settings, teacher=teacher)
