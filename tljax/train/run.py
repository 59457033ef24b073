"""Everything a run needs before its first step (model, tokenizer, data, method), and its export.

`prepare` does all the checking (config, model name, data source, columns, labels, splits, method) before
anything is written, so that bad input leaves no run directory behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from tljax import models, zoo
from tljax.data.batches import encode
from tljax.methods import Adaptation, MethodContext, adapt, make_method
from tljax.methods.base import backbone
from tljax.methods.rules import parameter_sizes
from tljax.models.checkpoint import path_str
from tljax.train.config import DataConfig, RunConfig
from tljax.train.objectives import Classification, EvaluationSet, Objective

log = logging.getLogger(__name__)

# Methods whose trained model is an ordinary Hugging Face model of the base architecture
HF_EXPORTABLE = {"full", "partial", "gradual-unfreezing", "feature-extraction", "bitfit"}
PEFT_EXPORTABLE = {"lora", "prompt", "p-tuning", "prefix"}


@dataclasses.dataclass
class Prepared:
    config: RunConfig
    model_dir: Path
    tokenizer: Any
    label_names: tuple[str, ...]  # of the (first) task; empty for language modelling
    split_report: str
    objective: Objective  # what is trained, on which batches, judged how
    max_length: int
    pad_id: int

    @property
    def adaptation(self) -> Adaptation:
        return self.objective.adaptation


def build_model(config: RunConfig, model_dir: Path, label_names, tokenizer,
                student_layers: list[int] | None = None) -> Adaptation:
    """The pre-trained model (with a head for `label_names` when classifying) and the config's methods."""
    from tljax.train.distill import select_layers

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(config.training.dtype)
    if dtype is None:
        raise ValueError(f"training.dtype {config.training.dtype!r} is unknown; valid: float32, bfloat16")
    head = {"id2label": dict(enumerate(label_names))} if config.task == "sequence-classification" else {}
    model = models.from_pretrained(model_dir, config.task, dtype=dtype, param_dtype=jnp.float32,
                                   seed=config.training.seed, **head)
    if student_layers:
        select_layers(model, list(student_layers))
    methods = []
    for spec in config.methods():
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError(f"method {spec} has no name; e.g. method: {{name: lora, rank: 8}}")
        methods.append(make_method(spec.pop("name"), spec))
    return adapt(model, methods, context=MethodContext(tokenizer=tokenizer, seed=config.training.seed))


def _split(dataset, data: DataConfig, seed: int):
    """Train / validation / test of `dataset` as `data` asks (fractions, then the example budgets)."""
    from tljax.data.splits import split_dataset

    splits = split_dataset(dataset, validation=data.validation, test=data.test, seed=seed)
    limits = {"train": data.max_train_examples, "validation": data.max_eval_examples, "test": data.max_eval_examples}
    for name, limit in limits.items():
        if limit is not None and limit < len(splits[name]):
            splits[name] = splits[name].subset(range(limit))
    return splits


def _load_labelled(data: DataConfig):
    from tljax.data.sources import load_source

    return load_source(data.source, text_column=data.text_column, label_column=data.label_column, labels=data.labels)


def _text_positions(adaptation: Adaptation, wanted: int) -> int:
    """The longest text the model takes: virtual prompt tokens and prefix keys take positions too."""
    body = backbone(adaptation.model)
    positions = adaptation.model.config.max_position_embeddings - body.num_virtual_tokens - body.num_prefix_tokens
    if positions < 8:
        raise ValueError(f"the method's {body.num_virtual_tokens + body.num_prefix_tokens} virtual tokens leave "
                         f"{positions} of the model's positions for text; use fewer virtual tokens")
    return min(wanted, positions)


def prepare(config: RunConfig) -> Prepared:
    """Resolves and checks every input of a run; raises a clear error on the first bad one."""
    from transformers import AutoTokenizer

    from tljax.data.splits import describe_splits

    model_dir = zoo.resolve(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    data, seed = config.data, config.training.seed
    if config.tasks is not None and config.task != "sequence-classification":
        raise ValueError("tasks (multi-task learning) are classification tasks; leave task unset or "
                         "sequence-classification")
    if config.distillation is not None and (config.tasks is not None or config.task != "sequence-classification"):
        raise ValueError("distillation trains a single-task classifier; remove tasks / set task: "
                         "sequence-classification")
    if config.evaluation and (config.tasks is not None or config.task != "sequence-classification"):
        raise ValueError("evaluation sets are for single-task classification runs")

    if config.task in ("masked-lm", "causal-lm"):
        from tljax.train.language_modelling import language_modelling_objective, load_texts

        splits = _split(load_texts(data.source, data.text_column, data.label_column), data, seed)
        adaptation = build_model(config, model_dir, (), tokenizer)
        max_length = _text_positions(adaptation, data.max_length)
        objective = language_modelling_objective(config, adaptation, tokenizer, splits, max_length)
        report = describe_splits(splits)
        label_names: tuple[str, ...] = ()
    elif config.tasks is not None:
        from tljax.train.multitask import multitask_objective, parse_tasks

        tasks = parse_tasks(config.tasks, data)
        loaded = [(name, task_data, _load_labelled(task_data)) for name, task_data in tasks]
        label_names = tuple(loaded[0][2].label_names)
        adaptation = build_model(config, model_dir, label_names, tokenizer)
        max_length = _text_positions(adaptation, data.max_length)
        prepared_tasks, reports = [], []
        for name, task_data, dataset in loaded:
            splits = _split(dataset, task_data, seed)
            encoded = {split_name: encode(part.texts, part.labels, tokenizer, max_length, task_data.text_prefix)
                       for split_name, part in splits.items()}
            prepared_tasks.append((name, tuple(dataset.label_names), encoded))
            reports.append(f"task {name} ({task_data.source}):\n{describe_splits(splits)}")
        objective = multitask_objective(config, adaptation, prepared_tasks, [d for _, d in tasks], pad_id, max_length)
        report = "\n".join(reports)
    else:
        dataset = _load_labelled(data)
        splits = _split(dataset, data, seed)
        label_names = tuple(dataset.label_names)
        student_layers = config.distillation.student_layers if config.distillation else None
        adaptation = build_model(config, model_dir, label_names, tokenizer, student_layers)
        max_length = _text_positions(adaptation, data.max_length)
        encoded = {name: encode(split.texts, split.labels, tokenizer, max_length, data.text_prefix)
                   for name, split in splits.items()}
        evaluation_sets = load_evaluation_sets(config, tokenizer, max_length, label_names)
        objective = Classification(adaptation, encoded, pad_id, max_length, label_names=label_names,
                                   evaluation_sets=evaluation_sets)
        if config.distillation is not None:
            from tljax.train.distill import distillation_objective

            objective = distillation_objective(config, objective, tokenizer,
                                               {name: split.texts for name, split in splits.items()})
        report = describe_splits(splits)
    objective.check_metric(config.training.metric_for_best_model)
    return Prepared(config, model_dir, tokenizer, label_names, report, objective, max_length, pad_id)


EVALUATION_KEYS = ("source", "split", "max_examples", "text_column", "label_column")


def load_evaluation_sets(config: RunConfig, tokenizer, max_length: int,
                         label_names: tuple[str, ...]) -> tuple[EvaluationSet, ...]:
    """The config's extra evaluation sets, encoded like the run's data, labels mapped by name."""
    from tljax.data.sources import DataError, load_source
    from tljax.data.splits import split_dataset

    sets = []
    for name, spec in config.evaluation.items():
        spec = {"source": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or "source" not in spec or set(spec) - set(EVALUATION_KEYS):
            raise ValueError(f"evaluation.{name} must be a source name or a mapping with a source (keys: "
                             f"{', '.join(EVALUATION_KEYS)}); got {spec!r}")
        split = spec.get("split", "all")
        dataset = load_source(spec["source"], text_column=spec.get("text_column", "text"),
                              label_column=spec.get("label_column", "label"))
        if split == "test":  # the held-out part, as a run training on this source would split it
            dataset = split_dataset(dataset, validation=config.data.validation, test=config.data.test,
                                    seed=config.training.seed)["test"]
        elif split != "all":
            raise ValueError(f"evaluation.{name}.split {split!r} is unknown; valid: all, test")
        if set(dataset.label_names) != set(label_names):
            raise DataError(f"evaluation.{name} ({spec['source']}) has labels {list(dataset.label_names)}, but the "
                            f"model is trained for {list(label_names)}; evaluate on a set with the same labels")
        limit = spec.get("max_examples")
        if limit is not None:
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise ValueError(f"evaluation.{name}.max_examples must be a whole number >= 1, got {limit!r}")
            dataset = dataset.subset(range(min(limit, len(dataset))))
        if not len(dataset):
            raise DataError(f"evaluation.{name} ({spec['source']}, split {split}) has no examples")
        to_model = [label_names.index(n) for n in dataset.label_names]
        labels = [to_model[label] for label in dataset.labels]
        sets.append(EvaluationSet(name, spec["source"], encode(dataset.texts, labels, tokenizer, max_length,
                                                               config.data.text_prefix), dataset.language))
    return tuple(sets)


def trainable_tensors(model: nnx.Module, filter_) -> dict[str, np.ndarray]:
    """"/"-joined path -> array of the parameters `filter_` selects."""
    state = nnx.state(model, filter_)
    return {path_str(p): np.asarray(jax.device_get(v.get_value()), np.float32) for p, v in nnx.to_flat_state(state)}


def export(prepared: Prepared, model: nnx.Module, directory: Path) -> list[str]:
    """Writes the trained result; returns what was written (for the closing message).

    Always `trainable.safetensors` + `run.json` (what `tljax.predict` loads); also a Hugging Face directory
    (`model/`) when the result is an ordinary model of the base architecture (LoRA merged into it), and a PEFT
    adapter (`adapter/`) for LoRA and the soft-prompt methods.
    """
    from tljax.methods import merge_and_unload, save_peft

    directory.mkdir(parents=True, exist_ok=True)
    # internal methods (a distillation teacher, multi-task heads) are not part of the result
    methods = tuple(m for m in prepared.adaptation.methods if not m.name.startswith("_"))
    adaptation = Adaptation(model, methods, prepared.adaptation.train_head)
    names = {m.name for m in adaptation.methods}
    save_file(trainable_tensors(model, adaptation.trainable(step=10**9)), directory / "trainable.safetensors")
    config = prepared.config
    (directory / "run.json").write_text(json.dumps({
        "model": config.model, "task": config.task, "method": config.methods(), "labels": list(prepared.label_names),
        "text_prefix": config.data.text_prefix, "max_length": prepared.max_length, "seed": config.training.seed,
        "dtype": config.training.dtype, "student_layers": config.distillation.student_layers if config.distillation
        else None}, indent=2) + "\n")
    written = [str(directory / "trainable.safetensors")]
    tokenizer_source = prepared.model_dir
    student_layers = config.distillation.student_layers if config.distillation else None
    if names & PEFT_EXPORTABLE and student_layers:
        log.warning("no PEFT export: the adapter's base would be the full-depth %s, not the student's %d layers "
                    "(use export/model or trainable.safetensors)", config.model, len(student_layers))
    elif names & PEFT_EXPORTABLE:
        try:
            save_peft(adaptation, directory / "adapter", base_model_name_or_path=str(prepared.model_dir))
            prepared.tokenizer.save_pretrained(directory / "adapter")
            written.append(f"{directory / 'adapter'} (PEFT adapter)")
        except ValueError as error:
            log.warning("no PEFT export: %s", error)
    if names <= HF_EXPORTABLE | {"lora"}:
        if "lora" in names:
            merge_and_unload(model)
        model.save_pretrained(directory / "model", tokenizer_source=tokenizer_source)
        written.append(f"{directory / 'model'} (Hugging Face directory)")
    return written


def load_exported(directory: Path) -> tuple[nnx.Module, Any, dict[str, Any]]:
    """(model, tokenizer, run info) from an export directory written by `export`."""
    from transformers import AutoTokenizer

    info_path = Path(directory) / "run.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{directory} is not a tljax export (it has no run.json)")
    info = json.loads(info_path.read_text())
    config = RunConfig(model=info["model"], task=info["task"], method=info["method"])
    model_dir = zoo.resolve(info["model"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    adaptation = build_model(dataclasses.replace(config, training=dataclasses.replace(
        config.training, seed=info.get("seed", 42), dtype=info.get("dtype", "float32"))), model_dir, info["labels"],
        tokenizer, info.get("student_layers"))
    saved = load_file(Path(directory) / "trainable.safetensors")
    sizes = parameter_sizes(adaptation.model)
    missing = sorted(set(saved) - set(sizes))
    if missing:
        raise ValueError(f"the export does not fit its model: unknown parameters {missing[:5]}")
    for path, variable in nnx.to_flat_state(nnx.state(adaptation.model, nnx.Param)):
        name = path_str(path)
        if name in saved:
            variable.set_value(jnp.asarray(saved[name], variable.dtype))
    return adaptation.model, tokenizer, info
