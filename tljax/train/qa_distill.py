"""Knowledge distillation of a reader: a student QA model learns from a trained teacher reader's softened start and
end distributions, window by window.

loss = (1 - alpha) * the span loss on the labels
       + alpha * T^2 * (KL(p_teacher_start || p_student_start) + KL(p_teacher_end || p_student_end)) / 2,

each p a softmax over a window's real tokens at temperature T, the KL term averaged over the windows. The teacher
is a finished question-answering run with the student's tokenizer: it reads the student's own windows (the same
question and context tokens, the same null position), so that its distribution over positions is one over the
student's positions. Its scores on the training windows are computed once, before training.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tljax.data.answer_windows import window_outputs
from tljax.data.batches import Encoded, evaluation_batches
from tljax.errors import InputError
from tljax.methods import merge_and_unload
from tljax.methods.rules import parameter_sizes
from tljax.models.transforms import backbone, jit_bound
from tljax.runs import find_export, load_exported
from tljax.train.config import ConfigKeyError, DistillationConfig, RunConfig
from tljax.train.qa import QA_METRICS, QuestionAnswering, qa_metrics, span_loss

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class QATeacher:
    """A trained reader that teaches: its model (LoRA merged) and where it came from."""

    source: str
    model: Any

    def forward(self):
        """batch -> the teacher's span scores [B, T, 2] (compiled; the parameters stay on the device)."""
        scores = jit_bound(self.model, lambda m, ids, mask, types: m(ids, mask, types))
        return lambda batch: scores(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def load_qa_teacher(spec: str, student_tokenizer, text_prefix: str, max_length: int) -> QATeacher:
    """The teacher a finished question-answering run holds, checked to read the student's windows as they are:
    the same tokenizer, the same text prefix, and room for `max_length` tokens."""
    try:
        directory = find_export(spec)
    except InputError as error:
        raise ConfigKeyError(f"distillation.teacher {spec!r}: {error} (a reader's teacher is a finished "
                             "question-answering run)") from None
    task = json.loads((directory / "run.json").read_text()).get("task")  # before the model loads: that takes a while
    if task != "question-answering":
        raise ConfigKeyError(f"distillation.teacher {spec!r} is a {task} run; a reader learns from a "
                             "question-answering run")
    model, tokenizer, info = load_exported(directory)
    if tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise ConfigKeyError(f"distillation.teacher {spec!r} ({info.model}) tokenises text differently from the "
                             "student; a reader's teacher reads the student's windows: distil from a question-"
                             "answering run of a model with the student's tokenizer")
    if info.text_prefix != text_prefix:
        raise ConfigKeyError(f"distillation.teacher {spec!r} read its questions with text_prefix "
                             f"{info.text_prefix!r}, the student with {text_prefix!r}; set data.text_prefix to "
                             f"{info.text_prefix!r}")
    body = backbone(model)
    positions = model.config.max_text_positions - body.num_virtual_tokens - body.num_prefix_tokens
    if positions < max_length:
        raise ConfigKeyError(f"distillation.teacher {spec!r} reads at most {positions} tokens, the student's windows "
                             f"are {max_length}; set data.max_length to {positions} or less")
    merge_and_unload(model)  # one plain model: nothing of it looks trainable, and it is faster
    return QATeacher(spec, model)


def span_distillation_loss(logits: Array, batch: dict[str, Array], temperature: float,
                           alpha: float) -> tuple[Array, dict[str, Array]]:
    """The student's span scores [B, T, 2] against the labels (`span_loss`) and the teacher's scores
    `teacher_scores` [B, >= T, 2] of the same windows, as the module's docstring says: the soft term over each
    row's real tokens (`attention_mask` [B, T]), weighted by `weights` [B]."""
    hard, metrics = span_loss(logits, batch)
    width = logits.shape[1]
    real = batch["attention_mask"].astype(bool)[..., None]  # [B, T, 1]
    t = temperature
    teacher = jnp.where(real, batch["teacher_scores"][:, :width].astype(jnp.float32) / t, -1e9)
    student = jnp.where(real, logits.astype(jnp.float32) / t, -1e9)
    teacher_log_p = jax.nn.log_softmax(teacher, axis=1)  # over positions, for start and end apart
    student_log_p = jax.nn.log_softmax(student, axis=1)
    kl = jnp.where(real, jnp.exp(teacher_log_p) * (teacher_log_p - student_log_p), 0.0).sum(1).mean(-1)  # [B]
    weights = batch["weights"].astype(jnp.float32)
    soft = (kl * weights).sum() / jnp.maximum(weights.sum(), 1.0)
    return (1 - alpha) * hard + alpha * t * t * soft, {**metrics, "hard_loss": hard, "soft_loss": soft}


@dataclasses.dataclass
class QADistillation(QuestionAnswering):
    """Question answering with a teacher's soft spans: the training windows carry `teacher_scores`
    [windows, max_length, 2]."""

    distillation: DistillationConfig | None = None  # (`settings`: how span scores become answers)
    teacher: QATeacher | None = None

    def loss(self, model, batch, dropout_key):
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], dropout_key=dropout_key)
        return span_distillation_loss(logits, batch, self.distillation.temperature, self.distillation.alpha)

    def title(self) -> str:
        return f"{super().title()} (distilled)"

    def report(self, forward, batch_size, model, test):
        """The teacher's test metrics (on the student's test windows) beside the student's: F1 retained and the
        parameter ratio, of both models as deployed (LoRA merged)."""
        result = super().report(forward, batch_size, model, test)
        split = self.encoded["test"]
        teacher_metrics = qa_metrics(split, self.scores(self.teacher.forward(), split, batch_size), self.settings)
        student = nnx.clone(model)
        merge_and_unload(student)
        student_parameters = sum(parameter_sizes(student).values())
        teacher_parameters = sum(parameter_sizes(self.teacher.model).values())
        result["distillation"] = {
            "teacher": {name: teacher_metrics[name] for name in QA_METRICS} | {"parameters": teacher_parameters},
            "student": {name: test[name] for name in QA_METRICS} | {"parameters": student_parameters},
            "f1_retained": test["f1"] / max(teacher_metrics["f1"], 1e-9),
            "parameter_ratio": student_parameters / teacher_parameters,
            "settings": dataclasses.asdict(self.distillation)}
        return result


def teacher_scores(teacher: QATeacher, encoded: Encoded, pad_id: int, max_length: int,
                   batch_size: int = 64) -> np.ndarray:
    """The teacher's span scores of every window of `encoded` [windows, max_length, 2] (zero past a window's
    end)."""
    batches = evaluation_batches(encoded, batch_size, pad_id, max_length)
    scores = window_outputs(teacher.forward(), batches, encoded)
    padded = np.zeros((len(scores), max_length, 2), np.float32)
    for window, values in enumerate(scores):
        padded[window, : len(values)] = values
    return padded


def qa_distillation_objective(config: RunConfig, base: QuestionAnswering, tokenizer) -> QADistillation:
    """Wraps a prepared question-answering objective with its teacher: the teacher's scores of the training
    windows computed once."""
    settings: DistillationConfig = config.distillation
    if settings.hidden_weight > 0:
        raise ConfigKeyError("distillation.hidden_weight (hidden-state matching) is for sequence classifiers; a "
                             "reader learns from its teacher's spans: leave hidden_weight at 0")
    teacher = load_qa_teacher(settings.teacher, tokenizer, config.data.text_prefix, base.max_length)
    train = base.encoded["train"]
    print(f"distillation: the teacher ({settings.teacher}) reads the {len(train.windows.encoded):,} training windows "
          "once ...", file=sys.stderr, flush=True)
    windows = train.windows
    scores = teacher_scores(teacher, windows.encoded, base.pad_id, base.max_length)
    extras = {**windows.encoded.extras, "teacher_scores": scores}
    encoded = dict(base.encoded)
    encoded["train"] = dataclasses.replace(train, windows=dataclasses.replace(
        windows, encoded=dataclasses.replace(windows.encoded, extras=extras)))
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(QuestionAnswering) if f.init}
    return QADistillation(**{**fields, "encoded": encoded}, distillation=settings, teacher=teacher)
