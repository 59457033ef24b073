"""Knowledge distillation: a student learns from a trained teacher's softened predictions.

loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
       [+ hidden_weight * MSE(projection(student layer s), teacher layer t) over mapped layers]

(Hinton et al., 2015; the T^2 keeps the soft term's gradients on the scale of the hard one.) The teacher's
logits are computed once, before training, over the training texts (with the teacher's own tokenizer, so
any teacher works); hidden-state matching (TinyBERT-style, through learned linear projections) runs the
frozen teacher inside the same compiled step, and needs the student's tokenizer to be the teacher's.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from transformers import AutoTokenizer

from tljax import models
from tljax.data.batches import Encoded, encode, evaluation_batches, make_batch
from tljax.methods import merge_and_unload
from tljax.methods.base import Method, MethodContext
from tljax.methods.rules import PathRules, Rule, parameter_sizes
from tljax.models.layers import Linear, layer_keys
from tljax.models.transforms import backbone, jit_bound
from tljax.errors import InputError
from tljax.runs import RunInfo, export_run, find_export, load_exported
from tljax.train.config import ConfigKeyError, DistillationConfig, RunConfig
from tljax.train.losses import cross_entropy
from tljax.train.objectives import Classification, classify_batches

Array = jax.Array


class DistillationParts(nnx.Module):
    """What the compiled step needs besides the student: the frozen teacher and the learned projections."""

    def __init__(self, teacher: nnx.Module, projections: list[Linear]):
        self.teacher = teacher
        self.projections = nnx.List(projections)


@dataclasses.dataclass(frozen=True)
class HiddenStateMatching(Method):
    """Internal method: puts the teacher and projections on the student (`distillation/...`), so that the
    usual rules keep the teacher frozen and train the projections."""

    name: ClassVar[str] = "_distillation"
    teacher: Any = None
    layer_map: tuple[tuple[int, int], ...] = ()
    seed: int = 0

    def apply(self, model: nnx.Module, context: MethodContext) -> None:
        student_width, teacher_width = model.config.hidden_size, self.teacher.config.hidden_size
        rngs = nnx.Rngs(self.seed)
        projections = [Linear(student_width, teacher_width, rngs=rngs) for _ in self.layer_map]
        model.distillation = DistillationParts(self.teacher, projections)

    def rules(self, model: nnx.Module, step: int = 0) -> PathRules:
        return PathRules((Rule(r"^distillation/teacher/", False, "distillation teacher (frozen)"),
                          Rule(r"^distillation/projections/", True, "hidden-state projections")))

    def new_parameters(self) -> tuple[str, ...]:
        return (r"^distillation/projections/",)


@dataclasses.dataclass
class Teacher:
    """A trained classifier that teaches: its model, tokenizer, labels and how it reads text."""

    source: str  # as the config names it
    model: nnx.Module
    tokenizer: Any
    labels: tuple[str, ...]
    text_prefix: str
    max_length: int


def resolve_teacher(spec: str) -> Path:
    """The directory holding the teacher: a run's export, or a Hugging Face directory."""
    path = Path(spec).expanduser()
    if (path / "config.json").is_file() and not (path / "run.json").is_file():
        return path
    try:
        return find_export(path)
    except InputError as error:
        raise ConfigKeyError(f"distillation.teacher {spec!r}: {error} (a teacher is a finished tljax run or a "
                             "Hugging Face sequence-classification directory with a config.json)") from None


def load_teacher(spec: str, seed: int) -> Teacher:
    """The teacher a run or a Hugging Face sequence-classification directory holds (LoRA merged)."""
    directory = resolve_teacher(spec)
    if (directory / "run.json").is_file():
        model, tokenizer, info = load_exported(directory)
        merge_and_unload(model)  # a LoRA teacher as one plain model: nothing of it looks trainable, and it is faster
        return Teacher(spec, model, tokenizer, info.labels, info.text_prefix, info.max_length)
    # float32 as every model of a run, whatever dtype the directory was saved in
    model = models.from_pretrained(directory, "sequence-classification", dtype=jnp.float32, seed=seed)
    labels = tuple(model.config.id2label[i] for i in range(model.config.num_labels))
    return Teacher(spec, model, AutoTokenizer.from_pretrained(directory), labels, "",
                   model.config.max_text_positions)


def even_layer_map(student_layers: int, teacher_layers: int) -> tuple[tuple[int, int], ...]:
    """Student layer i (1-based) -> teacher layer round(i * T / S): the top layers always meet."""
    return tuple((i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1))


def _jitted_logits(model: nnx.Module):
    """batch -> the model's logits [B, C] (float32, on the host); the parameters stay on the device."""
    logits = jit_bound(model, lambda m, ids, mask: m(ids, mask))
    return lambda batch: np.asarray(logits(batch["input_ids"], batch["attention_mask"]), np.float32)


def predict_logits(model: nnx.Module, encoded: Encoded, pad_id: int, max_length: int,
                   batch_size: int = 64) -> np.ndarray:
    """The model's logits [N, C] for every example of `encoded`, in example order."""
    forward = _jitted_logits(model)
    order = np.argsort([len(x) for x in encoded.ids], kind="stable")
    parts = []
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size].tolist()
        parts.append(forward(make_batch(encoded, rows, batch_size, pad_id, max_length))[: len(rows)])
    result = np.zeros((len(encoded), parts[0].shape[-1]), np.float32)
    result[order] = np.concatenate(parts)
    return result


def throughput(forward, batches: list[dict], repeats: int = 2) -> float:
    """Examples per second of `forward` over `batches` (each shape compiled first, then the best of `repeats`
    passes)."""
    shapes = {}
    for batch in batches:
        shapes.setdefault(tuple(sorted((k, v.shape) for k, v in batch.items())), batch)
    for batch in shapes.values():
        jax.block_until_ready(forward(batch))  # one batch of each shape compiles it; the others would add nothing
    best = float("inf")
    examples = sum(int(b["weights"].sum()) for b in batches)
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batches:
            jax.block_until_ready(forward(batch))
        best = min(best, time.perf_counter() - started)
    return examples / best


@dataclasses.dataclass
class Distillation(Classification):
    """Classification with a teacher: soft targets (cached logits) and optional hidden-state matching."""

    settings: DistillationConfig | None = None
    teacher: Any = None
    teacher_encoded: dict[str, Encoded] = dataclasses.field(default_factory=dict)
    teacher_pad_id: int = 0
    teacher_max_length: int = 512
    layer_map: tuple[tuple[int, int], ...] = ()

    def loss(self, model, batch, dropout_key):
        s = self.settings
        k_student, _ = layer_keys(dropout_key, 2)
        matching = s.hidden_weight > 0
        if matching:
            logits, student_states = model(batch["input_ids"], batch["attention_mask"], dropout_key=k_student,
                                           output_hidden_states=True)
        else:  # any classifier (decoders have no hidden-state output)
            logits = model(batch["input_ids"], batch["attention_mask"], dropout_key=k_student)
        weights = batch["weights"]
        hard, accuracy = cross_entropy(logits, batch["labels"], weights)
        t = s.temperature
        teacher_log_p = jax.nn.log_softmax(batch["teacher_logits"].astype(jnp.float32) / t)
        student_log_p = jax.nn.log_softmax(logits.astype(jnp.float32) / t)
        kl = (jnp.exp(teacher_log_p) * (teacher_log_p - student_log_p)).sum(-1)
        soft = (kl * weights).sum() / jnp.maximum(weights.sum(), 1.0)
        loss = (1 - s.alpha) * hard + s.alpha * t * t * soft
        metrics = {"accuracy": accuracy, "hard_loss": hard, "soft_loss": soft}
        if matching:
            parts = model.distillation
            _, teacher_states = parts.teacher(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
            real = batch["attention_mask"].astype(jnp.float32)[..., None]
            # virtual prompt tokens (of either model) have no counterpart in the other
            offset = backbone(model).num_virtual_tokens
            teacher_offset = backbone(parts.teacher).num_virtual_tokens
            hidden = 0.0
            for projection, (i, j) in zip(parts.projections, self.layer_map):
                student = projection(student_states[i][:, offset:]).astype(jnp.float32)
                target = jax.lax.stop_gradient(teacher_states[j][:, teacher_offset:]).astype(jnp.float32)
                hidden += (((student - target) ** 2) * real).sum() / jnp.maximum(real.sum() * target.shape[-1], 1.0)
            hidden = hidden / len(self.layer_map)
            loss = loss + s.hidden_weight * hidden
            metrics["hidden_loss"] = hidden
        return loss, metrics

    def title(self) -> str:
        return f"{super().title()} (distilled)"

    def count(self, step: int = 0) -> tuple[int, int]:
        """The student's (trainable, total) parameters: the teacher and projections are not part of it."""
        report = self.adaptation.rules(step).report(self.adaptation.model)
        student = [(size, rule) for path, size, rule in report if not path.startswith("distillation/")]
        return sum(s for s, r in student if r.trainable), sum(s for s, _ in student)

    def report(self, forward, batch_size, model, test):
        """Teacher vs student on the test split: accuracy retained, parameters, inference throughput (both
        timed the same way: one compiled forward each with its parameters on the device, LoRA merged as a
        deployed model would be)."""
        result = super().report(forward, batch_size, model, test)
        teacher_batches = evaluation_batches(self.teacher_encoded["test"], batch_size, self.teacher_pad_id,
                                             self.teacher_max_length)
        teacher_forward = _jitted_logits(self.teacher)
        teacher_metrics = classify_batches(teacher_forward, teacher_batches, len(self.label_names))
        student_metrics = test  # the loop has just evaluated the best checkpoint on the test split
        student = nnx.clone(model)
        student.distillation = None
        merge_and_unload(student)
        student_speed = throughput(_jitted_logits(student), self.evaluation_batches(self.encoded["test"], batch_size))
        teacher_speed = throughput(teacher_forward, teacher_batches)
        student_parameters = self.count()[1]
        teacher_parameters = sum(parameter_sizes(self.teacher).values())
        result["distillation"] = {
            "teacher": {"accuracy": teacher_metrics["accuracy"], "f1": teacher_metrics["f1"],
                        "parameters": teacher_parameters, "examples_per_second": teacher_speed},
            "student": {"accuracy": student_metrics["accuracy"], "f1": student_metrics["f1"],
                        "parameters": student_parameters, "examples_per_second": student_speed},
            "accuracy_retained": student_metrics["accuracy"] / max(teacher_metrics["accuracy"], 1e-9),
            "parameter_ratio": student_parameters / teacher_parameters,
            "speed_up": student_speed / teacher_speed,
            "settings": dataclasses.asdict(self.settings),
        }
        return result

    def export(self, model, info: RunInfo, directory: Path, *, model_dir: Path, tokenizer) -> list[str]:
        """The student alone, as any classification run exports it (its `student_layers` in the record)."""
        model.distillation = None
        return export_run(directory, model, self.adaptation.methods, info, model_dir=model_dir, tokenizer=tokenizer)


def hidden_state_matching(config: RunConfig, model_dir: Path, tokenizer, teacher: Teacher,
                          label_names: tuple[str, ...]) -> HiddenStateMatching | None:
    """The internal method that puts the teacher and the projections on the student when the config matches
    hidden states (None otherwise), after every check that the teacher can teach this student."""
    settings: DistillationConfig = config.distillation
    if tuple(teacher.labels) != tuple(label_names):
        raise ConfigKeyError(f"the teacher {settings.teacher} predicts labels {list(teacher.labels)}, but the "
                             f"student's task has {list(label_names)}; distil from a teacher trained on the same "
                             "labels (in the same order)")
    if settings.hidden_weight == 0:
        return None
    student_config = models.read_config_dict(model_dir)
    student_class = models.model_class(student_config.get("model_type", ""), "sequence-classification")
    if not (student_class.returns_hidden_states and type(teacher.model).returns_hidden_states):
        raise ConfigKeyError("hidden-state matching (distillation.hidden_weight > 0) needs a student and a teacher "
                             "that return their hidden states (encoders); set distillation.hidden_weight=0")
    if backbone(teacher.model).num_prefix_tokens:
        raise ConfigKeyError("hidden-state matching cannot use a prefix-tuned teacher (its layers attend to extra "
                             "keys the student lacks); set distillation.hidden_weight=0")
    if teacher.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigKeyError(f"hidden-state matching needs the student ({config.model}) and the teacher "
                             f"({settings.teacher}) to share a tokenizer, and theirs differ; set "
                             "distillation.hidden_weight=0 (logit distillation works across tokenizers)")
    s_layers = len(settings.student_layers) if settings.student_layers else student_config["num_hidden_layers"]
    t_layers = teacher.model.config.num_hidden_layers
    layer_map = tuple(tuple(pair) for pair in settings.layer_map) if settings.layer_map else \
        even_layer_map(s_layers, t_layers)
    bad = [pair for pair in layer_map if not 0 <= pair[0] <= s_layers or not 0 <= pair[1] <= t_layers]
    if bad:
        raise ConfigKeyError(f"distillation.layer_map {bad}: each pair is [student layer 0..{s_layers}, teacher "
                             f"layer 0..{t_layers}] (0 is the embeddings' output)")
    return HiddenStateMatching(teacher=teacher.model, layer_map=layer_map, seed=config.training.seed)


def distillation_objective(config: RunConfig, base: Classification, teacher: Teacher,
                           texts: dict[str, tuple[str, ...]]) -> Distillation:
    """Wraps a prepared classification objective with the teacher: its soft targets computed once."""
    settings: DistillationConfig = config.distillation
    matching = next((m for m in base.adaptation.methods if isinstance(m, HiddenStateMatching)), None)
    tokenizer = teacher.tokenizer
    teacher_pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    teacher_max = min(teacher.max_length, teacher.model.config.max_text_positions)
    teacher_encoded = {name: encode(texts[name], base.encoded[name].labels, tokenizer, teacher_max,
                                    teacher.text_prefix) for name in ("train", "test")}
    train = base.encoded["train"]
    print(f"distillation: the teacher ({settings.teacher}) predicts the {len(train):,} training examples once ...",
          file=sys.stderr, flush=True)
    soft_targets = predict_logits(teacher.model, teacher_encoded["train"], teacher_pad, teacher_max)
    encoded = dict(base.encoded)
    encoded["train"] = dataclasses.replace(train, extras={**train.extras, "teacher_logits": soft_targets})
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
    return Distillation(**{**fields, "encoded": encoded}, settings=settings, teacher=teacher.model,
                        teacher_encoded=teacher_encoded, teacher_pad_id=teacher_pad, teacher_max_length=teacher_max,
                        layer_map=matching.layer_map if matching else ())
