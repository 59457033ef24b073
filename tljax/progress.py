"""The progress bar: tqdm's notebook widget inside a notebook kernel (Jupyter, Colab) where `ipywidgets` is
installed (`pip install -e ".[notebook]"`), tqdm's text bar everywhere else (a terminal, a log file, a kernel
without the widgets)."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any


def in_notebook() -> bool:
    """Whether this process is a notebook kernel (IPython's kernel app is running it)."""
    shell = sys.modules.get("IPython")  # never imported here: a process that has not loaded IPython is no kernel
    ipython = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


def progress_bar(**options: Any):
    """A tqdm bar (`options`: tqdm's) of the kind this process shows best."""
    # tqdm.notebook's bar is an ipywidgets widget; without them a notebook shows the text bar as printed lines
    if in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as notebook_bar

        return notebook_bar(**options)
    from tqdm import tqdm

    return tqdm(**options)
