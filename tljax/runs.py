"""A trained run as a thing to build, write and load: the model of a run, its `export/`, and loading it back.

    adaptation = build_model(info, model_dir, tokenizer)            # pre-trained model + head + methods
    written = export_run(run_dir / "export", model, adaptation.methods, info, model_dir=..., tokenizer=...)
    model, tokenizer, info = load_exported(find_export(run_dir))    # what `tljax.predict` and the harness use

An export holds `trainable.safetensors` (every trainable parameter, by "/"-joined path) and `run.json`
(`RunInfo`: enough to rebuild the model those parameters fit), plus a Hugging Face directory (`model/`) when the
result is an ordinary model of the base architecture (LoRA merged into it), and a PEFT adapter (`adapter/`) for
LoRA and the soft-prompt methods. A chat-tuning run that taught its base a turn format (`chat.template`) keeps the
template in run.json and in both copies' tokenizers, and loading gives the tokenizer it back. Depends only on models,
methods, the zoo and `tljax.data.chat`; the training loop, the harness and the app all read runs through this module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from tljax import models, zoo
from tljax.data.chat import resolve_template
from tljax.errors import InputError
from tljax.methods import Adaptation, Method, MethodContext, MethodError, adapt, make_method, merge_and_unload, save_peft
from tljax.methods.crf import CRFLayer
from tljax.methods.rules import parameter_sizes
from tljax.models.checkpoint import CheckpointError, atomic_directory, path_str, read_safetensors, safetensors_problem
from tljax.models.config import ConfigError
from tljax.models.transforms import select_layers

log = logging.getLogger(__name__)

# Methods whose trained model is an ordinary Hugging Face model of the base architecture
HF_EXPORTABLE = frozenset({"full", "partial", "gradual-unfreezing", "feature-extraction", "bitfit"})
PEFT_EXPORTABLE = frozenset({"lora", "prompt", "p-tuning", "prefix"})
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
FINAL_STEP = 10**9
LABELLED_TASKS = ("sequence-classification", "token-classification")  # a head with one output per label  # a step beyond every schedule (gradual unfreezing): the largest trainable set


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What `export/run.json` records: the base model and how it was adapted, for one classification (or
    language-modelling) task."""

    model: str  # a packaged name, a Hugging Face id or a directory
    task: str = "sequence-classification"
    method: tuple[dict[str, Any], ...] = ()  # method specs, e.g. ({"name": "lora", "rank": 8},)
    labels: tuple[str, ...] = ()  # class names, in head order; empty for language modelling
    text_prefix: str = ""  # put before every text (e.g. "query: " for e5)
    max_length: int = 512  # of the text, in tokens (virtual tokens excluded)
    seed: int = 42
    dtype: str = "float32"  # compute dtype; parameters are float32
    student_layers: tuple[int, ...] | None = None  # the backbone layers kept (a distilled student)
    # a chat-tuned decoder: {instruction, verbalisers, template} it was taught with (template: the Jinja text of the
    # turn format a base model was taught, or None: the tokenizer's own)
    chat: dict[str, Any] | None = None
    pooling: str = "pooler"  # what an encoder classifier's linear layer reads: "pooler" or "mean" (no pooler)
    # whether the pooler trained with the head under every method; False in exports written before it did
    # (there the methods decided it), so that they rebuild the model their parameters fit
    pooler_with_head: bool = True
    crf: bool = False  # a token classifier with a CRF over its tags (its transitions: crf.safetensors)
    # question answering: how span scores become answers (tljax.train.qa.AnswerSettings: stride, n_best_size,
    # max_answer_length, allow_null, null_score_diff_threshold)
    answers: dict[str, Any] | None = None
    # seq2seq: how an input is asked (tljax.data.prompts.PromptForm's form and separator; its prefix is text_prefix),
    # the output's longest length in tokens (max_target_length), and a multi-task run's tasks ({name: prefix})
    seq2seq: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("method", "labels", "student_layers"):  # JSON gives lists
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.dtype not in DTYPES:
            raise InputError(f"dtype {self.dtype!r} is unknown; valid: {', '.join(DTYPES)}")

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        fields["method"] = [dict(spec) for spec in self.method]
        if not self.crf:  # as written before the CRF existed
            del fields["crf"]
        return json.dumps(fields, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunInfo:
        """From a `run.json`; keys it does not know (written by a newer version) are ignored."""
        raw = json.loads(text)
        if isinstance(raw, dict):
            raw.setdefault("pooler_with_head", False)  # a run.json from before the pooler joined the head
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known and v is not None})


def make_methods(specs: Sequence[dict[str, Any]]) -> list[Method]:
    """Methods from their specs, e.g. [{"name": "lora", "rank": 8}]."""
    methods = []
    for spec in specs:
        spec = dict(spec)
        if "name" not in spec:
            raise MethodError(f"method {spec} has no name; e.g. method: {{name: lora, rank: 8}}")
        methods.append(make_method(spec.pop("name"), spec))
    return methods


def build_model(info: RunInfo, model_dir: Path, tokenizer: Any, internal: Sequence[Method] = ()) -> Adaptation:
    """The pre-trained model of `info` (with a head for `info.labels` when classifying, cut to its student layers)
    and its methods, plus `internal` ones (a distillation teacher, multi-task heads), applied in one `adapt`."""
    head = {"id2label": dict(enumerate(info.labels))} if info.task in LABELLED_TASKS else {}
    if info.task == "sequence-classification" and pooled_classifier(model_dir):
        head["classifier_pooling"] = info.pooling
    elif info.pooling != "pooler":
        raise ConfigError(f"pooling {info.pooling!r} is for encoder sequence classifiers; {info.model} as "
                          f"{info.task} reads no pooled features: leave pooling at 'pooler'")
    model = models.from_pretrained(model_dir, info.task, dtype=DTYPES[info.dtype], param_dtype=jnp.float32,
                                   seed=info.seed, **head)
    if info.student_layers:
        select_layers(model, list(info.student_layers))
    if info.crf:
        internal = (*internal, CRFLayer(num_tags=len(info.labels), seed=info.seed))
    methods = [*make_methods(info.method), *internal]
    return adapt(model, methods, context=MethodContext(tokenizer=tokenizer, seed=info.seed),
                 train_pooler=info.pooler_with_head)


def pooled_classifier(model_dir: Path) -> bool:
    """Whether the sequence classifier of the model in `model_dir` chooses its pooling (an encoder's does)."""
    model_type = models.read_config_dict(model_dir).get("model_type", "")
    config_class = models.model_class(model_type, "sequence-classification").config_class
    return any(f.name == "classifier_pooling" for f in dataclasses.fields(config_class))


def trainable_tensors(model: nnx.Module, filter_: nnx.filterlib.Filter) -> dict[str, np.ndarray]:
    """"/"-joined path -> float32 array of the parameters `filter_` selects."""
    state = nnx.state(model, filter_)
    return {path_str(p): np.asarray(jax.device_get(v.get_value()), np.float32) for p, v in nnx.to_flat_state(state)}


def export_run(directory: Path, model: nnx.Module, methods: Sequence[Method], info: RunInfo, *, model_dir: Path,
               tokenizer: Any) -> list[str]:
    """Writes the trained `model` into `directory` (atomically: all of it or nothing); returns what was written.

    Internal methods (names starting "_") are not part of the result; the model must not hold their modules.
    Exporting merges LoRA into `model`: pass a copy if it is still needed."""
    methods = tuple(m for m in methods if not m.name.startswith("_"))
    crf = getattr(model, "crf", None)
    if crf is not None:  # the transitions go beside the model: a Hugging Face token classifier has no CRF
        del model.crf
    adaptation = Adaptation(model, methods, train_pooler=info.pooler_with_head)
    names = {m.name for m in methods}
    directory = Path(directory)
    written = [str(directory / "trainable.safetensors")]
    with atomic_directory(directory) as staging:
        save_file(trainable_tensors(model, adaptation.trainable(FINAL_STEP)), staging / "trainable.safetensors")
        if crf is not None:
            save_file(crf_tensors(crf), staging / CRF_FILE)
            written.append(f"{directory / CRF_FILE} (the CRF's transitions, pytorch-crf's names)")
        (staging / "run.json").write_text(info.to_json())
        if names & PEFT_EXPORTABLE and info.student_layers:
            log.warning("no PEFT export: the adapter's base would be the full-depth %s, not the student's %d "
                        "layers (use export/model or trainable.safetensors)", info.model, len(info.student_layers))
        elif names & PEFT_EXPORTABLE:
            try:
                save_peft(adaptation, staging / "adapter", base_model_name_or_path=str(model_dir))
                tokenizer.save_pretrained(staging / "adapter")
                written.append(f"{directory / 'adapter'} (PEFT adapter)")
            except MethodError as error:
                log.warning("no PEFT export: %s", error)
        if names <= HF_EXPORTABLE | {"lora"}:
            if "lora" in names:
                merge_and_unload(model)
            try:
                model.save_pretrained(staging / "model", tokenizer_source=model_dir)
                if taught_template(info):  # the base's tokenizer files lack the turn format the run taught
                    tokenizer.save_pretrained(staging / "model")
                written.append(f"{directory / 'model'} (Hugging Face directory)")
            except CheckpointError as error:  # e.g. BitFit's biases on a family whose Hugging Face class has none
                log.warning("no Hugging Face export: %s", error)
    return written


CRF_FILE = "crf.safetensors"


def taught_template(info: RunInfo) -> str | None:
    """The chat template (Jinja text) a chat-tuning run taught its base model (`chat.template`), or None when it
    used the tokenizer's own. A template name (in a hand-written run.json) is resolved."""
    template = (info.chat or {}).get("template")
    return resolve_template(template) if template else None


def crf_tensors(crf: nnx.Module) -> dict[str, np.ndarray]:
    """A CRF's parameters by pytorch-crf's names (`torchcrf.CRF`'s state dict)."""
    return {name: np.asarray(jax.device_get(getattr(crf, name)[...]), np.float32)
            for name in ("start_transitions", "end_transitions", "transitions")}


def find_export(path: str | Path) -> Path:
    """The export directory (the one holding `run.json`) of a run directory, or `path` itself if it is one;
    a multi-task run has one export per task (`export/<task>/`): then name the task's directory."""
    path = Path(path).expanduser()
    for candidate in (path, path / "export"):
        if (candidate / "run.json").is_file():
            return candidate
    tasks = sorted(p.parent.name for p in (path / "export").glob("*/run.json")) if (path / "export").is_dir() else []
    if tasks:
        raise InputError(f"{path} is a multi-task run with one export per task; name one: "
                         + ", ".join(str(path / "export" / task) for task in tasks))
    for candidate in (path, path / "export"):  # the rest of an export is there: its run.json was lost
        if (candidate / "trainable.safetensors").is_file():
            raise CheckpointError(f"{candidate} is incomplete: its run.json is missing; {_export_remedy(candidate)}")
    raise InputError(f"{path} is not a finished tljax run (it has no export/run.json)")


def _export_remedy(directory: Path) -> str:
    """What to do about a damaged export: an export is written whole, so the damage came later (a copy, an edit)."""
    run_dir = directory.parent if (directory.parent / "config.yaml").is_file() else directory.parent.parent
    retrain = (f" (python -m tljax.train --config {run_dir / 'config.yaml'} --set output_dir=NEW_DIR)"
               if (run_dir / "config.yaml").is_file() else "")
    return f"copy the export again from where it was made, or train the run again{retrain}"


def _read_run_info(directory: Path) -> RunInfo:
    """The `RunInfo` of an export's run.json; an empty or garbled one is reported as damaged."""
    path = directory / "run.json"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is damaged: it is not UTF-8 text; {_export_remedy(directory)}") from None
    if not text.strip():
        raise CheckpointError(f"{path} is damaged: it is empty; {_export_remedy(directory)}")
    try:
        return RunInfo.from_json(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is damaged: it is not valid JSON ({error.msg} at line {error.lineno}, column "
                              f"{error.colno}); {_export_remedy(directory)}") from None
    except (TypeError, AttributeError) as error:  # JSON, but not the fields a run.json holds
        raise CheckpointError(f"{path} is damaged: it does not hold a run's record ({error}); "
                              f"{_export_remedy(directory)}") from None


def _warn_about_damaged_copies(directory: Path) -> None:
    """The Hugging Face model and PEFT adapter of an export are copies for other tools; loading does not read
    them, but a damaged one is worth knowing about before someone does."""
    for path in sorted(directory.glob("*/*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            log.warning("%s; loading this export is not affected (it reads trainable.safetensors), but that copy "
                        "cannot be used: %s", problem, _export_remedy(directory))


def load_exported(directory: str | Path) -> tuple[nnx.Module, Any, RunInfo]:
    """(model, tokenizer, run info) of an export directory written by `export_run`."""
    from transformers import AutoTokenizer  # slow to import: only when a run is loaded

    directory = Path(directory)
    if not (directory / "run.json").is_file():
        raise InputError(f"{directory} is not a tljax export (it has no run.json)")
    info = _read_run_info(directory)
    trainable = directory / "trainable.safetensors"
    saved = read_safetensors(trainable, _export_remedy(directory))  # before the model is built: that takes a while
    if info.crf:
        saved.update({f"crf/{name}": array for name, array in
                      read_safetensors(directory / CRF_FILE, _export_remedy(directory)).items()})
    _warn_about_damaged_copies(directory)
    model_dir = zoo.resolve(info.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if taught_template(info):  # asked in the form it was taught: a base model's tokenizer has no template
        tokenizer.chat_template = taught_template(info)
    adaptation = build_model(info, model_dir, tokenizer)
    unknown = sorted(set(saved) - set(parameter_sizes(adaptation.model)))
    if unknown:
        raise CheckpointError(f"{trainable} does not fit its model {info.model}: unknown parameters {unknown[:5]}; "
                              f"the file is damaged or comes from another run: {_export_remedy(directory)}")
    # every parameter the run trained must be there: one left out would keep its random or pre-trained start
    trained = nnx.to_flat_state(nnx.state(adaptation.model, adaptation.trainable(FINAL_STEP)))
    missing = sorted({path_str(path) for path, _ in trained} - set(saved))
    if missing:
        listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"{trainable} does not fit its model {info.model}: {len(missing)} trained parameters "
                              f"are missing ({listed}); the file is damaged or comes from another run: "
                              f"{_export_remedy(directory)}")
    for path, variable in nnx.to_flat_state(nnx.state(adaptation.model, nnx.Param)):
        name = path_str(path)
        if name in saved:
            if saved[name].shape != variable.get_value().shape:
                raise CheckpointError(f"{directory}: {name} has shape {saved[name].shape}, the model's is "
                                      f"{variable.get_value().shape}")
            variable.set_value(jnp.asarray(saved[name], variable.get_value().dtype))
    return adaptation.model, tokenizer, info
