"""tljax: transfer learning for pre-trained transformers, in JAX and Flax NNX.

`tljax.zoo` turns names into Hugging Face model directories; `tljax.models` holds our Flax models, which
load and save those directories. `load(name, task)` does both. `fine_tune(model=..., data=..., method=...)`
trains a run from Python (`python -m tljax.train` in this process) and returns a `Run`; `Run.load(path)` opens
a finished one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tljax.progress import quiet_widget_notice

if TYPE_CHECKING:
    from jax.typing import DTypeLike

    from tljax.api import fine_tune
    from tljax.run_handle import Run

__all__ = ["Run", "fine_tune", "load"]

# transformers serves tljax its tokenizers only; installed without PyTorch (which tljax never needs), it would
# advise on import that "PyTorch was not found. Models won't be available"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
quiet_widget_notice()

__version__ = "0.1.0"


def load(name_or_path: str, task: str | None = None, *, dtype: DTypeLike | None = "auto", **kwargs):
    """A packaged model name, Hugging Face id or local directory -> (model, tokenizer).

    `task` is "base", "sequence-classification", "token-classification", "masked-lm" or "causal-lm" (default:
    the backbone for encoders, the language model for decoders). `dtype` is what the model computes in and
    stores its parameters in: "auto" (the default) or None keeps the checkpoint's dtype, as `transformers` 5 does; "float32",
    "bfloat16", "float16" (or the jnp dtype) casts to it. `kwargs` go to `from_pretrained` (param_dtype,
    id2label, ...).
    """
    # imported on first use: `import tljax.errors` (or any small module) must not load JAX and transformers
    from transformers import AutoTokenizer

    from tljax import models, zoo

    directory = zoo.resolve(name_or_path)
    return models.from_pretrained(directory, task, dtype=dtype, **kwargs), AutoTokenizer.from_pretrained(directory)


def __getattr__(name: str):
    """`tljax.fine_tune` and `tljax.Run`, imported on first use (they bring JAX and the training engine)."""
    if name == "fine_tune":
        from tljax.api import fine_tune

        return fine_tune
    if name == "Run":
        from tljax.run_handle import Run

        return Run
    raise AttributeError(f"module 'tljax' has no attribute {name!r}")
