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
import json
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tljax.data.batches import Encoded, encode, evaluation_batches, make_batch
from tljax.methods.base import Method, MethodContext
from tljax.methods.rules import PathRules, Rule, parameter_sizes
from tljax.models.layers import Linear, layer_keys
from tljax.train.config import DistillationConfig
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


def resolve_teacher(spec: str) -> Path:
    """The directory holding the teacher: a run's export, or a Hugging Face directory."""
    path = Path(spec).expanduser()
    for candidate in (path, path / "export"):
        if (candidate / "run.json").is_file():
            return candidate
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"distillation.teacher {spec!r} is neither a tljax run (a directory with "
                            "export/run.json) nor a Hugging Face sequence-classification directory (config.json)")


def load_teacher(spec: str, seed: int) -> tuple[nnx.Module, Any, tuple[str, ...], str, int]:
    """(teacher model, its tokenizer, its label names, its text prefix, its max length)."""
    from transformers import AutoTokenizer

    from tljax import models
    from tljax.train.run import load_exported

    directory = resolve_teacher(spec)
    if (directory / "run.json").is_file():
        from tljax.methods import merge_and_unload

        model, tokenizer, info = load_exported(directory)
        merge_and_unload(model)  # a LoRA teacher as one plain model: nothing of it looks trainable, and it is faster
        return model, tokenizer, tuple(info["labels"]), info.get("text_prefix", ""), int(info.get("max_length", 512))
    model = models.from_pretrained(directory, "sequence-classification", seed=seed)
    labels = tuple(model.config.id2label[i] for i in range(model.config.num_labels))
    return model, AutoTokenizer.from_pretrained(directory), labels, "", model.config.max_position_embeddings


def select_layers(model: nnx.Module, indices: list[int]) -> None:
    """Keeps only the backbone layers at `indices` (0-based, in order), in place: a student built from a
    subset of a deeper model's layers (as DistilBERT is initialised from every other BERT layer)."""
    from tljax.methods.base import backbone

    body = backbone(model)
    layers = body.encoder.layer if hasattr(body, "encoder") else body.layers
    count = len(layers)
    if not indices or any(not isinstance(i, int) or not 0 <= i < count for i in indices) \
            or sorted(set(indices)) != list(indices):
        raise ValueError(f"distillation.student_layers {indices} must be increasing layer indices in 0..{count - 1} "
                         f"(the model has {count} layers), e.g. {list(range(0, count, 2))}")
    kept = nnx.List([layers[i] for i in indices])
    if hasattr(body, "encoder"):
        body.encoder.layer = kept
    else:
        body.layers = kept
    config = model.config.replace(num_hidden_layers=len(indices))
    model.config = body.config = config


def even_layer_map(student_layers: int, teacher_layers: int) -> tuple[tuple[int, int], ...]:
    """Student layer i (1-based) -> teacher layer round(i * T / S): the top layers always meet."""
    return tuple((i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1))


def _jitted_logits(model: nnx.Module):
    graphdef, state = nnx.split(model)

    @jax.jit
    def logits(state, input_ids, attention_mask):
        return nnx.merge(graphdef, state)(input_ids, attention_mask)

    return lambda batch: np.asarray(logits(state, batch["input_ids"], batch["attention_mask"]), np.float32)


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
    """Examples per second of `forward` over `batches` (compiled first, then the best of `repeats` passes)."""
    for batch in batches:
        forward(batch)  # compile every shape
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
            offset, teacher_offset = model.bert.num_virtual_tokens, parts.teacher.bert.num_virtual_tokens
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
        timed the same way: one compiled forward each, LoRA merged as a deployed model would be)."""
        from tljax.methods import merge_and_unload

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

    def export(self, prepared, model, directory: Path) -> list[str]:
        """The student alone, as any classification run exports it."""
        from tljax.train.run import export

        if getattr(model, "distillation", None) is not None:
            model.distillation = None
        written = export(prepared, model, directory)
        if self.settings.student_layers:  # the student is not the packaged model's full depth
            info = json.loads((directory / "run.json").read_text())
            info["student_layers"] = list(self.settings.student_layers)
            (directory / "run.json").write_text(json.dumps(info, indent=2) + "\n")
        return written


def distillation_objective(config, base: Classification, tokenizer, texts: dict[str, tuple[str, ...]]) -> Distillation:
    """Wraps a prepared classification objective with the configured teacher; every check happens here."""
    settings: DistillationConfig = config.distillation
    teacher, teacher_tokenizer, teacher_labels, teacher_prefix, teacher_max = load_teacher(settings.teacher,
                                                                                         config.training.seed)
    if tuple(teacher_labels) != tuple(base.label_names):
        raise ValueError(f"the teacher {settings.teacher} predicts labels {list(teacher_labels)}, but the student's "
                         f"task has {list(base.label_names)}; distil from a teacher trained on the same labels "
                         "(in the same order)")
    student = base.adaptation.model
    layer_map: tuple[tuple[int, int], ...] = ()
    if settings.hidden_weight > 0:
        if not hasattr(student, "bert") or not hasattr(teacher, "bert"):
            raise ValueError("hidden-state matching (distillation.hidden_weight > 0) is implemented for encoder "
                             "(BERT-family) students and teachers; set distillation.hidden_weight=0")
        if teacher.bert.num_prefix_tokens:
            raise ValueError("hidden-state matching cannot use a prefix-tuned teacher (its layers attend to extra "
                             "keys the student lacks); set distillation.hidden_weight=0")
        if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"hidden-state matching needs the student ({config.model}) and the teacher "
                             f"({settings.teacher}) to share a tokenizer, and theirs differ; set "
                             "distillation.hidden_weight=0 (logit distillation works across tokenizers)")
        s_layers, t_layers = student.config.num_hidden_layers, teacher.config.num_hidden_layers
        layer_map = tuple(tuple(pair) for pair in settings.layer_map) if settings.layer_map else \
            even_layer_map(s_layers, t_layers)
        bad = [pair for pair in layer_map if len(pair) != 2 or not 0 <= pair[0] <= s_layers or not 0 <= pair[1] <= t_layers]
        if bad:
            raise ValueError(f"distillation.layer_map {bad}: each pair is [student layer 0..{s_layers}, teacher "
                             f"layer 0..{t_layers}] (0 is the embeddings' output)")
        method = HiddenStateMatching(teacher=teacher, layer_map=layer_map, seed=config.training.seed)
        method.apply(student, MethodContext())
        base.adaptation.methods = (*base.adaptation.methods, method)
        base.adaptation.rules().filter(student)  # every new parameter decided
    teacher_pad = teacher_tokenizer.pad_token_id if teacher_tokenizer.pad_token_id is not None else 0
    teacher_max = min(teacher_max, teacher.config.max_position_embeddings)
    teacher_encoded = {name: encode(texts[name], base.encoded[name].labels, teacher_tokenizer, teacher_max,
                                    teacher_prefix) for name in ("train", "test")}
    train = base.encoded["train"]
    print(f"distillation: the teacher ({settings.teacher}) predicts the {len(train):,} training examples once ...",
          file=sys.stderr, flush=True)
    soft_targets = predict_logits(teacher, teacher_encoded["train"], teacher_pad, teacher_max)
    encoded = dict(base.encoded)
    encoded["train"] = dataclasses.replace(train, extras={**train.extras, "teacher_logits": soft_targets})
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
    return Distillation(**{**fields, "encoded": encoded}, settings=settings, teacher=teacher,
                        teacher_encoded=teacher_encoded, teacher_pad_id=teacher_pad, teacher_max_length=teacher_max,
                        layer_map=layer_map)
