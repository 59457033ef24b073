"""Hugging Face model directories <-> the parameters of our NNX models.

Our module and parameter names follow Hugging Face's, so a checkpoint name is our "/"-joined parameter
path with "." separators and a renamed leaf (`kernel`, `scale`, `embedding` -> `weight`); Linear kernels
are stored [out, in] by PyTorch's nn.Linear and [in, out] by us, except those a model marks as stored [in, out]
(`STORED_IN_OUT`: GPT-2's Conv1D projections), which convert as they are.

A directory holds its tensors in one of the forms `transformers` writes or has written: `model.safetensors`,
sharded safetensors (`model.safetensors.index.json`), or PyTorch pickles (`pytorch_model.bin`, sharded by
`pytorch_model.bin.index.json`), the latter read through torch when it is installed. Tensors keep the dtype
they were stored in; `resolve_dtype` decides what the model computes in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from tljax import faults
from tljax.cache import usual_modes
from tljax.errors import InputError

log = logging.getLogger(__name__)

# Non-parameter buffers that PyTorch checkpoints may carry; they hold nothing we need.
IGNORED_BUFFERS = re.compile(r"(^|\.)(position_ids|rotary_emb\.inv_freq|masked_bias)$")

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "merges.txt",
    "vocab.json",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)


class CheckpointError(InputError):
    """A model directory that does not fit the model it is loaded into."""


def path_str(path: Iterable) -> str:
    """("bert", "encoder", "layer", 0, "attention") -> "bert/encoder/layer/0/attention"."""
    return "/".join(str(part) for part in path)


def hf_name(path: tuple) -> str:
    """Our parameter path -> its Hugging Face tensor name."""
    *parents, leaf = (str(part) for part in path)
    leaf = "weight" if leaf in ("kernel", "scale", "embedding") else leaf
    return ".".join([*parents, leaf])


# The metadata key (on a kernel's nnx.Param) of a kernel whose Hugging Face tensor is stored [in, out] as ours is,
# not transposed as nn.Linear's: a model sets it where its PyTorch twin does so (GPT-2's Conv1D). It lives on the
# parameter itself, so it stays true when a method wraps the projection (LoRA and adapters keep the kernel).
STORED_IN_OUT = "stored_in_out"


def stored_in_out(kernel: nnx.Variable) -> bool:
    """Whether a kernel [in, out] is stored [in, out] by Hugging Face too (its model marked it `STORED_IN_OUT`)."""
    return bool(kernel.get_metadata().get(STORED_IN_OUT, False))


def stored_transposed(path: tuple, variable: nnx.Variable) -> bool:
    """Whether the parameter at `path` is the transpose of its Hugging Face tensor: a kernel [in, out] that PyTorch
    stores [out, in] (every kernel but those marked `STORED_IN_OUT`)."""
    return str(path[-1]) == "kernel" and not stored_in_out(variable)


def model_to_hf_tensors(model: nnx.Module) -> dict[str, np.ndarray]:
    """All parameters of `model` as float arrays under their Hugging Face names and layouts."""
    tensors = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        array = np.asarray(jax.device_get(variable.get_value()))
        if array.dtype not in (np.float32, np.float16):
            array = array.astype(np.float32)  # bfloat16 is not a numpy type safetensors.numpy writes
        tensors[hf_name(path)] = np.ascontiguousarray(array.T if stored_transposed(path, variable) else array)
    return tensors


# What to do about a damaged or missing file of a Hugging Face model directory.
MODEL_REMEDY = ("copy or download the model directory again (an export of a tljax run: copy the export again, or "
                "train the run again)")


def read_safetensors(path: Path, remedy: str) -> dict[str, np.ndarray]:
    """The tensors of one .safetensors file; a missing, cut-short or altered file is a `CheckpointError` that
    says so and what to do (`remedy`)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; {remedy}")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{_damaged(path, error)}; {remedy}") from None


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be read, from its header alone (nothing is loaded); None when it can."""
    try:
        with safe_open(path, "numpy"):
            return None
    except (SafetensorError, OSError) as error:
        return _damaged(path, error)


def _damaged(path: Path, error: Exception) -> str:
    # safetensors checks the header and that the tensors it lists fill the file exactly: a cut-short copy or
    # edited bytes fail that check
    reason = str(error).removeprefix("Error while deserializing header: ")
    return f"{path} is damaged or incomplete ({reason}): it was cut short or altered, e.g. by an interrupted copy"


# The checkpoint files of a directory, in the order `transformers` prefers them: one file, else a sharded index.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face directory, in the dtype it was stored in (bfloat16 as `jnp.bfloat16`).

    Reads the first of `WEIGHT_FILES` that exists; PyTorch `.bin` files need torch (`read_torch_file`)."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            tensors: dict[str, np.ndarray] = {}
            for shard in _shards(path):
                tensors.update(_read_file(directory / shard))
            return tensors
        return _read_file(path)
    found = sorted(p.name for p in directory.iterdir())
    raise CheckpointError(f"{directory} has none of {', '.join(WEIGHT_FILES)}; it holds {found}")


def _read_file(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".bin":
        return read_torch_file(path, MODEL_REMEDY)
    return read_safetensors(path, MODEL_REMEDY)


# What to do when a PyTorch checkpoint cannot be read for want of torch.
NO_TORCH_HINT = ("PyTorch .bin checkpoints are not read without torch: install torch (pip install torch; the CPU "
                 "build is enough), or re-save the model with transformers, which writes model.safetensors")


def read_torch_file(path: Path, remedy: str) -> dict[str, np.ndarray]:
    """The tensors of one PyTorch state-dict file (`torch.save`), read with `weights_only=True` (plain tensors
    only: nothing in the file is run). Without torch installed, a `CheckpointError` says how to get it."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; {remedy}")
    try:
        import torch  # optional: only .bin checkpoints need it, and a plain install has no torch
    except ImportError:
        raise CheckpointError(f"{path}: {NO_TORCH_HINT}") from None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:  # what weights_only refuses: objects other than tensors and containers
        raise CheckpointError(f"{path} holds more than tensors (torch.load with weights_only=True refuses it); "
                              "re-save the model's state_dict() or use model.safetensors") from None
    except (EOFError, RuntimeError, OSError, ValueError) as error:  # an empty, cut-short or altered archive
        # torch's messages run to paragraphs: their first sentence says what failed
        reason = str(error).split(". ")[0].splitlines()[0] if str(error).strip() else "the file ends early"
        reason = "the file is empty" if path.stat().st_size == 0 else reason
        raise CheckpointError(f"{path} is damaged or incomplete ({reason}): it was cut short or altered, e.g. by "
                              f"an interrupted copy; {remedy}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict (it holds a {type(state).__name__}, not tensor name -> "
                              f"tensor); {remedy}")
    return {str(name): _torch_to_numpy(tensor, torch) for name, tensor in state.items()}


def _torch_to_numpy(tensor: Any, torch: Any) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16 of its own: the same 16 bits as ml_dtypes' one
        return tensor.view(torch.int16).numpy().view(jnp.bfloat16)
    return tensor.numpy()


def _shards(index: Path) -> list[str]:
    """The shard files a `*.index.json` of safetensors or PyTorch shards names."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:  # not JSON, or not an index's layout
        raise CheckpointError(f"{index} is damaged: it is not a checkpoint index ({type(error).__name__}: "
                              f"{error}; expected JSON with a weight_map of tensor name -> shard file); "
                              f"{MODEL_REMEDY}") from None


# The dtypes the models compute in and store parameters in, by the names config.json and `dtype=` use.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def stored_dtype(config: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> str:
    """The name of the dtype a checkpoint was saved in, found as `transformers`' dtype="auto" finds it:
    config.json's `dtype` (`torch_dtype` before transformers 5), else that of its first floating-point tensor
    (float32 when it has none)."""
    declared = config.get("dtype") or config.get("torch_dtype")
    if declared is not None:
        return str(declared).removeprefix("torch.")
    for name, array in tensors.items():
        if not IGNORED_BUFFERS.search(name) and jnp.issubdtype(array.dtype, jnp.floating):
            return np.dtype(array.dtype).name
    return "float32"


def resolve_dtype(
    dtype: DTypeLike | None, config: Mapping[str, Any], tensors: Mapping[str, np.ndarray], *, argument: str = "dtype"
) -> jnp.dtype:
    """The dtype a model is built in: `dtype` itself (a name of `DTYPES` or a jnp / numpy dtype), or, for
    None or "auto", the checkpoint's own (`stored_dtype`). Anything else is a `CheckpointError` naming the
    valid ones."""
    valid = ", ".join(DTYPES)
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        name = stored_dtype(config, tensors)
        if name not in DTYPES:
            raise CheckpointError(f"the checkpoint is stored in {name}, which the models do not compute in; pass "
                                  f"{argument}=\"float32\" (or another of {valid}) to cast it")
        return jnp.dtype(DTYPES[name])
    try:
        name = jnp.dtype(DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype).name
    except TypeError:  # not a dtype at all
        name = None
    if name not in DTYPES:
        given = repr(dtype) if isinstance(dtype, str) or name is None else name
        raise CheckpointError(f"{argument}={given} is not a dtype the models compute in; valid: \"auto\" (the "
                              f"checkpoint's), {valid}")
    return jnp.dtype(DTYPES[name])


def fill_parameters(
    model: nnx.Module,
    tensors: Mapping[str, np.ndarray],
    *,
    base_prefix: str,
    new_parameters: tuple[str, ...] = (),
    tied: Mapping[str, str] | None = None,
    unused: str | None = None,
    prefix_aliases: tuple[str, ...] = (),
) -> tuple[nnx.Module, list[str]]:
    """Replaces every parameter of `model` by the checkpoint tensor of the same name.

    Checks names and shapes in both directions and raises one `CheckpointError` listing every problem.
    A checkpoint of the bare backbone loads into a model with a head (names gain `base_prefix.`) and a
    checkpoint with a head loads into the bare backbone (its head tensors are reported, not loaded).
    Parameters whose names start with one of `new_parameters` may be absent: they keep their values in
    `model` (a freshly initialised head). `tied` maps a tensor name to the name of the one it repeats.

    `prefix_aliases`: other names of the backbone in checkpoints (a causal LM's `model.` for a question-answering
    model's `transformer.`), renamed to `base_prefix`.

    Returns the filled model and the names of the parameters that kept their initial values.
    """
    tied = dict(tied or {})
    for alias in prefix_aliases:
        if not any(name.startswith(base_prefix + ".") for name in tensors):
            tensors = {f"{base_prefix}.{name[len(alias) + 1:]}" if name.startswith(alias + ".") else name: array
                       for name, array in tensors.items()}
    graphdef, state = nnx.split(model)
    flat = list(nnx.to_flat_state(state))
    wanted = {hf_name(path): (path, variable) for path, variable in flat if isinstance(variable, nnx.Param)}

    has_prefix = any(name.startswith(base_prefix + ".") for name in wanted)
    ckpt_prefixed = any(name.startswith(base_prefix + ".") for name in tensors)
    renamed: dict[str, np.ndarray] = {}
    foreign_head: list[str] = []
    for name, array in tensors.items():
        if IGNORED_BUFFERS.search(name):
            continue
        if unused and re.search(unused, name):
            foreign_head.append(name)
            continue
        if has_prefix and not ckpt_prefixed and name not in wanted:
            name = f"{base_prefix}.{name}"
        elif not has_prefix and ckpt_prefixed:
            if not name.startswith(base_prefix + "."):
                foreign_head.append(name)
                continue
            name = name[len(base_prefix) + 1 :]
        renamed[name] = array

    if foreign_head:
        log.info("%s does not use these checkpoint tensors: %s", type(model).__name__, ", ".join(foreign_head))
    problems: list[str] = []
    for name, source in tied.items():
        if name in renamed and source in renamed:
            if not np.array_equal(renamed[name], renamed[source]):
                problems.append(f"{name}: should equal the tied {source} but differs")
            del renamed[name]
    kept: list[str] = []
    filled = []
    for name, (path, variable) in wanted.items():
        expected = tuple(variable.shape)
        if name not in renamed:
            if name.startswith(new_parameters) and new_parameters:
                kept.append(name)
                filled.append((path, variable))
            else:
                problems.append(f"missing: {name} {expected}")
            continue
        array = renamed.pop(name)
        transposed = stored_transposed(path, variable)
        array = array.T if transposed else array
        if tuple(array.shape) != expected:
            got = tuple(array.T.shape) if transposed else tuple(array.shape)
            want = expected[::-1] if transposed else expected
            problems.append(f"wrong shape: {name} is {got} in the checkpoint, the model needs {want}")
            continue
        filled.append((path, variable.replace(jax.numpy.asarray(array, dtype=variable.dtype))))
    problems += [f"unexpected: {name} {tuple(array.shape)}" for name, array in sorted(renamed.items())]
    if problems:
        raise CheckpointError(
            f"the checkpoint does not fit {type(model).__name__} ({len(problems)} problems):\n  "
            + "\n  ".join(problems)
        )
    others = [(path, variable) for path, variable in flat if not isinstance(variable, nnx.Param)]
    return nnx.merge(graphdef, nnx.from_flat_state(filled + others)), kept


@contextlib.contextmanager
def atomic_directory(directory: Path) -> Iterator[Path]:
    """Yields a private staging directory that replaces `directory` whole when the block succeeds.

    A reader never sees half a directory, and a failure leaves the old one (or nothing) in place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield staging
        usual_modes(staging)
        faults.point("export")  # every file written, none in place yet
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old.{os.getpid()}")
            directory.rename(old)
            try:
                staging.rename(directory)
            except BaseException:
                old.rename(directory)  # the old one stays in place
                raise
            shutil.rmtree(old)
        else:
            staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_model_directory(
    directory: Path,
    tensors: Mapping[str, np.ndarray],
    config: Mapping,
    tokenizer_source: Path | None = None,
) -> None:
    """Writes config.json, model.safetensors and tokenizer files into `directory`, atomically. config.json's
    `dtype` is that of the floating-point tensors written (what `dtype="auto"` loads them as, here and in
    `transformers`)."""
    floating = [t.dtype for t in tensors.values() if np.issubdtype(t.dtype, np.floating)]
    config = {**config, "dtype": str(floating[0]) if floating else "float32"}
    with atomic_directory(directory) as staging:
        save_file(dict(tensors), staging / "model.safetensors", metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if tokenizer_source is not None:
            for name in TOKENIZER_FILES:
                if (Path(tokenizer_source) / name).is_file():
                    shutil.copy2(Path(tokenizer_source) / name, staging / name)
