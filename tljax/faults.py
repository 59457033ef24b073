"""Named fault-injection points, for the tests that kill a run at a chosen moment and check nothing is lost.

A point is a call `faults.point("checkpoint-write")` at a place where a crash matters. It does nothing
unless the environment variable TLJAX_FAULTS names it: `NAME=N:ACTION[,NAME=N:ACTION...]`, where the
action happens at the point's N-th pass (1-based) in this process:

- `kill`: SIGKILL to this process (no handler runs, no file is closed: what a power cut or the OOM
  killer does);
- `enospc`: `OSError(ENOSPC)` raised there, as a full disk would.

Points: `step` (after a train step is dispatched), `checkpoint-write` (a checkpoint's files written, not
yet verified and committed), `export` (the export's files written, not yet moved into place).
"""

from __future__ import annotations

import errno
import os
import signal

ENVIRONMENT = "TLJAX_FAULTS"
POINTS = ("step", "checkpoint-write", "export")
_passes: dict[str, int] = {}


def _planned() -> dict[str, tuple[int, str]]:
    plan = {}
    for item in filter(None, os.environ.get(ENVIRONMENT, "").split(",")):
        name, _, when = item.partition("=")
        count, _, action = when.partition(":")
        if name not in POINTS or not count.isdigit() or action not in ("kill", "enospc"):
            raise ValueError(f"{ENVIRONMENT}: {item!r} is not NAME=N:kill|enospc with NAME one of {', '.join(POINTS)}")
        plan[name] = (int(count), action)
    return plan


def point(name: str) -> None:
    """Passes point `name`; the fault planned for this pass, if any, happens now."""
    if ENVIRONMENT not in os.environ:
        return
    _passes[name] = _passes.get(name, 0) + 1
    count, action = _planned().get(name, (0, ""))
    if _passes[name] != count:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, f"No space left on device (injected at {name})")
