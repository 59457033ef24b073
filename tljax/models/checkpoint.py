"""Hugging Face model directories <-> the parameters of our NNX models.

Our module and parameter names follow Hugging Face's, so a checkpoint name is our "/"-joined parameter
path with "." separators and a renamed leaf (`kernel`, `scale`, `embedding` -> `weight`); Linear kernels
are stored [out, in] by PyTorch and [in, out] by us.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from tljax import faults
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


def _is_kernel(path: tuple) -> bool:
    return str(path[-1]) == "kernel"


def model_to_hf_tensors(model: nnx.Module) -> dict[str, np.ndarray]:
    """All parameters of `model` as float arrays under their Hugging Face names and layouts."""
    tensors = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        array = np.asarray(jax.device_get(variable.get_value()))
        if array.dtype not in (np.float32, np.float16):
            array = array.astype(np.float32)  # bfloat16 is not a numpy type safetensors.numpy writes
        tensors[hf_name(path)] = np.ascontiguousarray(array.T if _is_kernel(path) else array)
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


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face directory (`model.safetensors` or its sharded index)."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single, MODEL_REMEDY)
    if index.is_file():
        tensors: dict[str, np.ndarray] = {}
        for shard in _shards(index):
            tensors.update(read_safetensors(directory / shard, MODEL_REMEDY))
        return tensors
    found = sorted(p.name for p in directory.iterdir())
    hint = " (PyTorch .bin checkpoints are not read: re-save them with safe_serialization=True)"
    raise CheckpointError(
        f"{directory} has no model.safetensors or model.safetensors.index.json; it holds {found}"
        + (hint if any(name.endswith(".bin") for name in found) else "")
    )


def _shards(index: Path) -> list[str]:
    """The shard files a `model.safetensors.index.json` names."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:  # not JSON, or not an index's layout
        raise CheckpointError(f"{index} is damaged: it is not a safetensors index ({type(error).__name__}: "
                              f"{error}; expected JSON with a weight_map of tensor name -> shard file); "
                              f"{MODEL_REMEDY}") from None


def fill_parameters(
    model: nnx.Module,
    tensors: Mapping[str, np.ndarray],
    *,
    base_prefix: str,
    new_parameters: tuple[str, ...] = (),
    tied: Mapping[str, str] | None = None,
    unused: str | None = None,
) -> tuple[nnx.Module, list[str]]:
    """Replaces every parameter of `model` by the checkpoint tensor of the same name.

    Checks names and shapes in both directions and raises one `CheckpointError` listing every problem.
    A checkpoint of the bare backbone loads into a model with a head (names gain `base_prefix.`) and a
    checkpoint with a head loads into the bare backbone (its head tensors are reported, not loaded).
    Parameters whose names start with one of `new_parameters` may be absent: they keep their values in
    `model` (a freshly initialised head). `tied` maps a tensor name to the name of the one it repeats.

    Returns the filled model and the names of the parameters that kept their initial values.
    """
    tied = dict(tied or {})
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
        array = array.T if _is_kernel(path) else array
        if tuple(array.shape) != expected:
            got = tuple(array.T.shape) if _is_kernel(path) else tuple(array.shape)
            want = expected[::-1] if _is_kernel(path) else expected
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
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # as a plain mkdir would (mkdtemp makes it private)
    try:
        yield staging
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
    """Writes config.json, model.safetensors and tokenizer files into `directory`, atomically."""
    with atomic_directory(directory) as staging:
        save_file(dict(tensors), staging / "model.safetensors", metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if tokenizer_source is not None:
            for name in TOKENIZER_FILES:
                if (Path(tokenizer_source) / name).is_file():
                    shutil.copy2(Path(tokenizer_source) / name, staging / name)
