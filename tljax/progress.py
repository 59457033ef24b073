"""The progress bar: tqdm's notebook widget inside a notebook kernel (Jupyter, Colab) where `ipywidgets` is
installed (`pip install -e ".[notebook]"`), tqdm's text bar everywhere else (a terminal, a log file, a kernel
without the widgets)."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import warnings
from collections.abc import Iterator
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


def quiet_widget_notice() -> None:
    """Holds back, for the process, tqdm's notice that a notebook kernel lacks ipywidgets ("IProgress not found"),
    which `huggingface_hub` triggers by importing tqdm.auto: there tljax shows the text bar on purpose."""
    if in_notebook() and importlib.util.find_spec("ipywidgets") is None:
        warnings.filterwarnings("ignore", message="IProgress not found", module=r"tqdm\.")


# the loggers of the libraries under a run, whose INFO and WARNING lines say nothing to a notebook's user
LIBRARY_LOGGERS = ("absl", "jax", "orbax", "transformers", "datasets", "tensorflow_datasets", "huggingface_hub")
# the modules whose Python warnings are held back with them
QUIET_MODULES = (r"jax\.", r"jaxlib\.", r"orbax\.", r"transformers\.", r"datasets\.", r"flax\.", r"huggingface_hub\.")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Holds back the log lines and Python warnings of JAX, orbax, transformers, datasets and the progress bars'
    imports for the length of the block (a run, an evaluation, a prediction from Python: the command's users see
    them in a terminal's scroll; a notebook keeps them in its cell); tljax's own warnings still show."""
    levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for module in QUIET_MODULES:
                warnings.filterwarnings("ignore", module=module)
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
