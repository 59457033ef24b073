"""Export of an adaptation in the layout of Hugging Face PEFT (`PeftModel.from_pretrained` loads it).

    save_peft(adaptation, "out/adapter", base_model_name_or_path="bert-base-uncased")

writes `adapter_config.json` and `adapter_model.safetensors` (float32) for LoRA (alone or with BitFit),
prompt tuning, P-tuning and prefix tuning, with the task head for sequence classifiers (the classifier and
an encoder's pooler, as `modules_to_save`: both train with every method). P-tuning and
prefix tuning export the virtual tokens / key-value table their encoder computes (as PEFT itself saves
them, for inference), so the re-parameterisation MLPs are not part of the file. Methods PEFT has no
layout for (bottleneck adapters, full or partial fine-tuning, feature extraction, BitFit alone) are
refused: such a model is exported whole with `save_pretrained` (after `merge_and_unload` for LoRA). So is a
mean-pooled encoder classifier: PEFT loads its adapter onto Hugging Face's BertForSequenceClassification, which
reads the pooler.

An encoder-decoder (T5) exports as a `SEQ_2_SEQ_LM` adapter: LoRA on any of its projections, and a soft prompt
(prompt tuning, P-tuning) before the encoder's input, which is PEFT's prompt tuning of a seq2seq model with
`num_transformer_submodules: 1` (the decoder's input takes no virtual tokens). Its prefix tuning is refused:
PEFT's seq2seq prefix reaches the decoder's self-attention only (a PyTorch T5 runs its encoder without past keys
and values), so it has no place for the encoder's half.

The base directory PEFT loads the adapter onto must hold the weights the adaptation started from. When
BitFit gave a Llama model new biases, that base must have been saved from our model (its config then
says `attention_bias` / `mlp_bias`, so that PyTorch builds the biases the adapter file fills).

Prefix adapters load in PyTorch through the model's past key values. For Llama models every `transformers`
5.x does this; for BERT models only `transformers` up to 5.23 (5.24 removed past key values from BERT, and
`peft` then refuses the adapter with "Model does not support past key values"). `constraints.txt` pins a
version that loads both; exporting a BERT prefix adapter with a newer `transformers` installed warns.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from tljax.methods.base import Adaptation, backbone, linear_modules
from tljax.methods.lora import LoRALinear
from tljax.methods.prefix import prefix_encoder
from tljax.methods.prompt import PromptEncoder
from tljax.methods.rules import MethodError
from tljax.models import is_decoder, task_of
from tljax.models.checkpoint import atomic_directory, hf_name, path_str, stored_in_out, stored_transposed

log = logging.getLogger(__name__)
# the newest transformers (major, minor) whose BERT takes past key values (what PEFT prefix tuning needs)
BERT_PREFIX_UP_TO = (5, 23)

# a model's task (its class's entry in tljax.models.MODEL_CLASSES) -> PEFT task type
TASK_TYPES = {
    "sequence-classification": "SEQ_CLS",
    "token-classification": "TOKEN_CLS",
    "question-answering": "QUESTION_ANS",
    "causal-lm": "CAUSAL_LM",
    "seq2seq-lm": "SEQ_2_SEQ_LM",
    "base": "FEATURE_EXTRACTION",
}
# the method combinations PEFT has a layout for (sorted method names)
EXPORTABLE = {("lora",): "lora", ("bitfit", "lora"): "lora", ("prompt",): "prompt",
              ("p-tuning",): "prompt", ("prefix",): "prefix"}
EXPORTABLE_TEXT = "lora, lora + bitfit, prompt, p-tuning, prefix"

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def save_peft(adaptation: Adaptation, directory: str | Path, base_model_name_or_path: str) -> None:
    """Writes `adaptation` as a PEFT adapter directory for the base model `base_model_name_or_path`.

    The write is atomic: a reader never sees half an adapter, and an existing directory is replaced whole.
    Raises `MethodError` for methods or model classes PEFT has no layout for.
    """
    model = adaptation.model
    names = tuple(sorted(m.name for m in adaptation.methods))
    kind = EXPORTABLE.get(names)
    if kind is None:
        raise MethodError(
            f"PEFT has no layout for the methods {list(names) or 'none'}; exportable as a PEFT adapter: "
            f"{EXPORTABLE_TEXT}. Save the model as a Hugging Face directory with save_pretrained instead "
            "(after merge_and_unload for LoRA)")
    task_type = _task_type(model)
    if getattr(model.config, "classifier_pooling", "pooler") != "pooler":
        raise MethodError("PEFT has no layout for a mean-pooled classifier (the base model PEFT loads reads the "
                          "pooler); save the model with save_pretrained, whose directory loads in PyTorch with "
                          "trust_remote_code=True")
    if "bitfit" in names:
        _refuse_biases_the_base_lacks(model, Path(base_model_name_or_path))
    exporter = {"lora": _lora, "prompt": _prompt, "prefix": _prefix}[kind]
    config, tensors = exporter(adaptation, task_type)
    config.update(task_type=task_type, base_model_name_or_path=str(base_model_name_or_path),
                  inference_mode=True, revision=None)
    _write_adapter(Path(directory), config, tensors)


def _refuse_biases_the_base_lacks(model: nnx.Module, base: Path) -> None:
    """BitFit gives a family without biases (Llama's projections, Qwen2's o_proj and MLP) new ones, which the
    model's config then states (`attention_bias`, `mlp_bias`); PEFT loads an adapter's biases only where its base
    has them and drops the others without a word, so an adapter for a base directory that lacks them is refused,
    and so is every adapter with biases of a family whose Hugging Face class has none (T5).
    (A base named by a hub id, not a local directory, cannot be checked.)"""
    if not type(model).hf_biases:
        raise MethodError(f"BitFit trained biases that a Hugging Face {type(model).__name__} has no place for (its "
                          "projections have none), which PEFT would drop: export LoRA alone, or load the run with "
                          "tljax (tljax.predict reads its export)")
    if not (base / "config.json").is_file():
        return
    base_config = json.loads((base / "config.json").read_text())
    added = [flag for flag in ("attention_bias", "mlp_bias")
             if getattr(model.config, flag, False) and not base_config.get(flag, False)]
    if added:
        raise MethodError(f"BitFit trained biases that the base {base} does not have ({', '.join(added)} false "
                          "there), which PEFT would drop: save the model whole (save_pretrained), or load the "
                          "adapter onto a base saved from the adapted model")


def _task_type(model: nnx.Module) -> str:
    task = task_of(type(model))
    if task not in TASK_TYPES:
        raise MethodError(f"no PEFT task type for {type(model).__name__} ({task or 'no registered task'}); "
                          f"PEFT adapters exist for the tasks {', '.join(TASK_TYPES)}")
    return TASK_TYPES[task]


def _array(value: Any) -> np.ndarray:
    """A float32, C-contiguous numpy copy of a parameter value."""
    return np.ascontiguousarray(np.asarray(jax.device_get(jnp.asarray(value).astype(jnp.float32))))


def _params(model: nnx.Module, which: nnx.filterlib.Filter = nnx.Param) -> dict[tuple, Any]:
    return {tuple(path): variable.get_value() for path, variable in nnx.to_flat_state(nnx.state(model, which))}


def _variables(model: nnx.Module) -> dict[tuple, nnx.Variable]:
    return {tuple(path): variable for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _head(adaptation: Adaptation, task_type: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """(modules_to_save, {Hugging Face name: tensor}) of a sequence or token classifier's or a span model's head;
    nothing otherwise.

    `modules_to_save` names each head module by its last name ("classifier", "pooler"): PEFT wraps every module
    whose name ends so, and finds the file's `...bert.pooler.dense.weight` through that name."""
    model, pattern = adaptation.model, adaptation.task_head()
    if task_type not in ("SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS") or pattern is None:
        return [], {}
    tensors, modules = {}, []
    for path, variable in _variables(model).items():
        match = re.search(pattern, path_str(path))
        if match:
            array = _array(variable.get_value())
            tensors[hf_name(path)] = np.ascontiguousarray(array.T) if stored_transposed(path, variable) else array
            module = match.group(0).strip("/").rsplit("/", 1)[-1]
            if module not in modules:
                modules.append(module)
    return sorted(modules), tensors


def _unexported(adaptation: Adaptation, exported: re.Pattern) -> None:
    """Raises when a trained parameter would be missing from the file (its path does not match `exported`)."""
    pattern = adaptation.task_head()
    missing = [path_str(p) for p in _params(adaptation.model, adaptation.trainable())
               if not exported.search(path_str(p)) and not (pattern and re.search(pattern, path_str(p)))]
    if missing:
        raise MethodError(f"these trained parameters have no place in the PEFT layout: {', '.join(missing)}")


def _lora(adaptation: Adaptation, task_type: str) -> tuple[dict, dict[str, np.ndarray]]:
    """LoRA (+ BitFit biases, + the classification head): PEFT's `base_model.model.<module>` names."""
    model = adaptation.model
    method = next(m for m in adaptation.methods if m.name == "lora")
    bitfit = any(m.name == "bitfit" for m in adaptation.methods)
    modules = {path: module for path, module in linear_modules(model) if isinstance(module, LoRALinear)}
    if not modules:
        raise MethodError("the model has no LoRA modules (merged and unloaded?): save it with save_pretrained")
    ranks = {int(m.lora_a.shape[1]) for m in modules.values()}
    scalings = {float(m.scaling) for m in modules.values()}
    if len(ranks) > 1 or len(scalings) > 1:
        raise MethodError(f"LoRA modules differ in rank {sorted(ranks)} or scaling {sorted(scalings)}")
    rank, scaling = ranks.pop(), scalings.pop()
    # PEFT's fan_in_fan_out: the adapted weights are stored [in, out] (GPT-2's Conv1D), as the model's kernels say;
    # lora_A / lora_B are [r, in] / [out, r] either way (PEFT builds them as nn.Linear)
    fan_in_fan_out = all(stored_in_out(m.kernel) for m in modules.values())

    tensors: dict[str, np.ndarray] = {}
    for path, module in modules.items():
        name = "base_model.model." + path.replace("/", ".")
        tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(_array(module.lora_a[...]).T)  # [r, in]
        tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(_array(module.lora_b[...]).T)  # [out, r]
    if bitfit:
        for path, value in _params(model, adaptation.trainable()).items():
            if str(path[-1]) != "bias":
                continue
            parent = path_str(path[:-1])
            middle = ".base_layer" if parent in modules else ""
            tensors[f"base_model.model.{parent.replace('/', '.')}{middle}.bias"] = _array(value)
    head_modules, head = _head(adaptation, task_type)
    tensors.update({f"base_model.model.{name}": array for name, array in head.items()})
    _unexported(adaptation, re.compile(r"/lora_[ab]$" + (r"|(?:^|/)bias$" if bitfit else "")))

    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": scaling * rank,
        "lora_dropout": float(method.dropout),
        "target_modules": _target_modules(model, set(modules)),
        "bias": "all" if bitfit else "none",
        "modules_to_save": head_modules or None,
        "fan_in_fan_out": fan_in_fan_out,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
    }
    return config, tensors


def _target_modules(model: nnx.Module, paths: set[str]) -> list[str]:
    """The projections' short names when they select exactly the adapted ones, else their full names."""
    names = {p.rsplit("/", 1)[-1] for p in paths}
    selected = {p for p, _ in linear_modules(model) if p.rsplit("/", 1)[-1] in names}
    if selected == paths:
        return sorted(names)
    return sorted(p.replace("/", ".") for p in paths)


def _prompt_learning_config(num_virtual_tokens: int, token_dim: int, num_layers: int,
                            num_heads: int) -> dict:
    return {"num_virtual_tokens": num_virtual_tokens, "token_dim": token_dim, "num_layers": num_layers,
            "num_attention_heads": num_heads, "num_transformer_submodules": 1}


def _prompt(adaptation: Adaptation, task_type: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Prompt tuning / P-tuning: the virtual tokens [P, H] (P-tuning's encoder output) as `prompt_embeddings`."""
    model = adaptation.model
    prompt = backbone(model).prompt
    if prompt is None:
        raise MethodError("the model has no soft prompt to export")
    table = _array(prompt.table())
    config = model.config
    out = {"peft_type": "PROMPT_TUNING", "prompt_tuning_init": "RANDOM"}
    if isinstance(prompt, PromptEncoder):
        method = next(m for m in adaptation.methods if m.name == "p-tuning")
        out = {"peft_type": "P_TUNING", "encoder_reparameterization_type": prompt.kind.upper(),
               "encoder_hidden_size": method.encoder_hidden_size or config.hidden_size,
               "encoder_num_layers": 2, "encoder_dropout": float(method.encoder_dropout)}
    out.update(_prompt_learning_config(table.shape[0], table.shape[1], config.num_hidden_layers,
                                       config.num_attention_heads))
    return _prompt_learning_files(adaptation, task_type, out, table, r"(?:^|/)prompt/")


def _prefix(adaptation: Adaptation, task_type: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Prefix tuning: the key/value table [P, layers * 2 * kv_heads * head_dim], the projection computed away."""
    model = adaptation.model
    encoder = prefix_encoder(model)
    if encoder is None:
        raise MethodError("the model has no prefix to export")
    if getattr(model, "is_encoder_decoder", False):
        raise MethodError("PEFT's seq2seq prefix tuning reaches the decoder's self-attention only (a PyTorch "
                          f"{type(model).__name__} runs its encoder without past keys and values), so it has no place "
                          "for the encoder's prefix; tljax.predict loads the run's own export, and LoRA or prompt "
                          "tuning export as PEFT adapters")
    if not is_decoder(model.config.model_type):  # the encoders (BERT, RoBERTa) read past key values no more
        _warn_if_bert_prefix_cannot_load()
    table = _array(encoder.table())
    method = next(m for m in adaptation.methods if m.name == "prefix")
    out = {"peft_type": "PREFIX_TUNING", "prefix_projection": False,
           "encoder_hidden_size": method.projection_size or model.config.hidden_size}
    out.update(_prompt_learning_config(encoder.num_virtual_tokens, encoder.kv_heads * encoder.head_dim,
                                       encoder.num_layers, encoder.kv_heads))
    return _prompt_learning_files(adaptation, task_type, out, table, r"/prefix/encoder/")


def _warn_if_bert_prefix_cannot_load() -> None:
    import transformers

    version = tuple(int(part) for part in re.findall(r"\d+", transformers.__version__)[:2])
    if version > BERT_PREFIX_UP_TO:
        log.warning("transformers %s cannot load an encoder's prefix adapter in PyTorch (its BERT and RoBERTa take "
                    "no past key values; 5.23 and older can: pip install 'transformers<=5.23'); the adapter is written, and "
                    "tljax.predict loads it", transformers.__version__)


def _prompt_learning_files(adaptation: Adaptation, task_type: str, config: dict, table: np.ndarray,
                           method_pattern: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The config and tensors shared by the prompt-learning layouts: `prompt_embeddings` plus the head."""
    head_modules, head = _head(adaptation, task_type)
    config["modules_to_save"] = head_modules or None
    tensors = {"prompt_embeddings": table}
    tensors.update({f"base_model.{name}": array for name, array in head.items()})
    _unexported(adaptation, re.compile(method_pattern))
    return config, tensors


def _write_adapter(directory: Path, config: dict, tensors: dict[str, np.ndarray]) -> None:
    """adapter_config.json + adapter_model.safetensors, atomically."""
    with atomic_directory(directory) as staging:
        save_file(tensors, staging / WEIGHTS_NAME, metadata={"format": "pt"})
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
