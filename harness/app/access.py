"""What the page may open for its users.

On this machine's loopback (the default, `--host 127.0.0.1`) the page's user is its operator: a base model, a task
or a corpus may be any directory, file or Hugging Face name. Listening beyond it (`--host 0.0.0.0`, or any address
other than localhost, 127.x.x.x and ::1), the page is public: it opens only what it lists (the packaged models and
corpora, the runs and results it found and the runs' bases, the listed tasks) and the files uploaded to it. A run's
name stays a folder inside the runs folder either way.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Collection
from pathlib import Path

from tljax.errors import InputError

RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")


class AccessError(InputError):
    """Something a public page does not open; the message says what it opens instead."""


def is_public(host: str) -> bool:
    """Whether listening on `host` makes the page reachable from other machines: any host but localhost and the
    loopback addresses (127.0.0.0/8, ::1); a host name other than localhost may resolve to anything."""
    host = host.strip().lower().strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name (or nothing: every interface)
        return True


def upload_folder() -> Path:
    """Where Gradio keeps the files uploaded to the page (its GRADIO_TEMP_DIR; the rule of
    `gradio.utils.get_upload_folder`, without importing Gradio)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def _listed(what: str, name: str, listed: Collection[str]) -> str:
    """The refusal of `name`, naming what may be chosen instead (the first dozen)."""
    shown = ", ".join(sorted(listed)[:12]) + (", ..." if len(listed) > 12 else "")
    return f"this page opens only the {what} it lists, not {name!r}; choose one of: {shown}"


def check_listed(public: bool, what: str, name: str, listed: Collection[str]) -> str:
    """`name` if the page may open it: anything on loopback, one of `listed` on a public page."""
    if public and name not in listed:
        raise AccessError(_listed(what, name, listed))
    return name


def check_upload(public: bool, path: str | Path) -> Path:
    """An uploaded file's path, if the page may read it: anything on loopback, a file under the upload folder on a
    public page."""
    path = Path(path)
    if public and not path.resolve().is_relative_to(upload_folder()):
        raise AccessError(f"this page reads only files uploaded to it, not {str(path)!r}; upload the file instead")
    return path


def check_corpus(public: bool, source: str, packaged: Collection[str]) -> str:
    """A corpus the page may train on: anything on loopback, a packaged corpus or an uploaded file on a public
    page."""
    if public and source not in packaged:
        try:
            check_upload(public, source)
        except AccessError:
            raise AccessError(f"this page trains only on a packaged corpus ({', '.join(sorted(packaged))}) or a file "
                              f"uploaded to it, not {source!r}") from None
    return source


def check_run_name(name: str, runs_folder: Path) -> Path:
    """The folder `runs_folder/name`, if `name` names a folder directly inside it (letters, digits, '.', '_',
    '-'; not '.' or '..', no separator)."""
    if not RUN_NAME.fullmatch(name or "") or set(name) == {"."}:
        raise AccessError(f"the run's name {name!r} must be letters, digits, '.', '_' or '-' and not only dots (it "
                          f"names a folder inside {runs_folder})")
    return Path(runs_folder) / name
