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
from tljax.data.batches import Encoded, encode
from tljax.methods import Adaptation, MethodContext, adapt, make_method
from tljax.methods.base import backbone
from tljax.methods.rules import parameter_sizes
from tljax.models.checkpoint import path_str
from tljax.train.config import RunConfig

log = logging.getLogger(__name__)

# Methods whose trained model is an ordinary Hugging Face model of the base architecture
HF_EXPORTABLE = {"full", "partial", "gradual-unfreezing", "feature-extraction", "bitfit"}
PEFT_EXPORTABLE = {"lora", "prompt", "p-tuning", "prefix"}


@dataclasses.dataclass
class Prepared:
    config: RunConfig
    model_dir: Path
    tokenizer: Any
    label_names: tuple[str, ...]
    encoded: dict[str, Encoded]  # train / validation / test
    split_report: str
    adaptation: Adaptation
    max_length: int
    pad_id: int


def build_model(config: RunConfig, model_dir: Path, label_names, tokenizer) -> Adaptation:
    """The pre-trained model with a head for `label_names` and the config's methods applied."""
    if config.task != "sequence-classification":
        raise ValueError(f"task {config.task!r}: the training command trains 'sequence-classification'")
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(config.training.dtype)
    if dtype is None:
        raise ValueError(f"training.dtype {config.training.dtype!r} is unknown; valid: float32, bfloat16")
    model = models.from_pretrained(model_dir, config.task, id2label=dict(enumerate(label_names)), dtype=dtype,
                                   param_dtype=jnp.float32, seed=config.training.seed)
    methods = []
    for spec in config.methods():
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError(f"method {spec} has no name; e.g. method: {{name: lora, rank: 8}}")
        methods.append(make_method(spec.pop("name"), spec))
    return adapt(model, methods, context=MethodContext(tokenizer=tokenizer, seed=config.training.seed))


def prepare(config: RunConfig) -> Prepared:
    """Resolves and checks every input of a run; raises a clear error on the first bad one."""
    from transformers import AutoTokenizer

    from tljax.data.sources import load_source
    from tljax.data.splits import describe_splits, split_dataset

    model_dir = zoo.resolve(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = config.data
    dataset = load_source(data.source, text_column=data.text_column, label_column=data.label_column,
                          labels=data.labels)
    splits = split_dataset(dataset, validation=data.validation, test=data.test, seed=config.training.seed)
    limits = {"train": data.max_train_examples, "validation": data.max_eval_examples, "test": data.max_eval_examples}
    for name, limit in limits.items():
        if limit is not None and limit < len(splits[name]):
            splits[name] = splits[name].subset(range(limit))
    adaptation = build_model(config, model_dir, dataset.label_names, tokenizer)
    # virtual prompt tokens and prefix keys take positions too
    body = backbone(adaptation.model)
    positions = adaptation.model.config.max_position_embeddings - body.num_virtual_tokens - body.num_prefix_tokens
    if positions < 8:
        raise ValueError(f"the method's {body.num_virtual_tokens + body.num_prefix_tokens} virtual tokens leave "
                         f"{positions} of the model's positions for text; use fewer virtual tokens")
    max_length = min(data.max_length, positions)
    encoded = {name: encode(split.texts, split.labels, tokenizer, max_length, data.text_prefix)
               for name, split in splits.items()}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Prepared(config, model_dir, tokenizer, tuple(dataset.label_names), encoded, describe_splits(splits),
                    adaptation, max_length, pad_id)


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
    adaptation = Adaptation(model, prepared.adaptation.methods, prepared.adaptation.train_head)
    names = {m.name for m in adaptation.methods}
    save_file(trainable_tensors(model, adaptation.trainable(step=10**9)), directory / "trainable.safetensors")
    config = prepared.config
    (directory / "run.json").write_text(json.dumps({
        "model": config.model, "task": config.task, "method": config.methods(), "labels": list(prepared.label_names),
        "text_prefix": config.data.text_prefix, "max_length": prepared.max_length, "seed": config.training.seed,
        "dtype": config.training.dtype}, indent=2) + "\n")
    written = [str(directory / "trainable.safetensors")]
    tokenizer_source = prepared.model_dir
    if names & PEFT_EXPORTABLE:
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
        tokenizer)
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
