"""Tokenizers shared by the page's request threads, used by one thread at a time.

A Hugging Face fast tokenizer is one Rust object whose padding and truncation every call sets before it encodes:
two threads in it at once can encode with each other's settings (or fail with "Already borrowed"). The service
holds one tokenizer per model, shared by every request and by everything built on the model (its embedder, its
scorer, a run's predictor), so `guard` makes the tokenizer object itself take a lock around each call: whoever
holds it is covered, and nothing else changes (its class name, attributes and results stay the same).
"""

from __future__ import annotations

import threading
from typing import Any

# the calls that configure or read the Rust tokenizer (the others are plain attribute reads)
LOCKED_CALLS = ("__call__", "encode", "decode", "batch_decode", "tokenize", "convert_ids_to_tokens",
                "convert_tokens_to_ids", "num_special_tokens_to_add", "apply_chat_template", "pad", "get_vocab",
                "__len__")

_guarded_classes: dict[type, type] = {}
_guarding = threading.Lock()


class Guarded:
    """Marks a tokenizer class made by `guard`; `_thread_lock` is the instance's lock."""

    _thread_lock: threading.RLock


def _guarded_class(cls: type) -> type:
    """A subclass of `cls` whose LOCKED_CALLS hold the instance's lock, named as `cls` (so what a saved tokenizer
    writes as its class stays the same)."""
    def locked(name: str):
        def call(self, *args, **kwargs):
            # re-entrant: apply_chat_template(tokenize=True) calls __call__ on the same tokenizer
            with self._thread_lock:
                return getattr(super(guarded, self), name)(*args, **kwargs)

        call.__name__ = call.__qualname__ = name
        return call

    namespace = {name: locked(name) for name in LOCKED_CALLS if hasattr(cls, name)}
    guarded = type(cls.__name__, (cls, Guarded), {**namespace, "__module__": cls.__module__,
                                                    "__qualname__": cls.__qualname__})
    return guarded


def guard(tokenizer: Any) -> Any:
    """`tokenizer` itself, each of its calls from now on made by one thread at a time (idempotent)."""
    with _guarding:
        if not isinstance(tokenizer, Guarded):
            cls = type(tokenizer)
            if cls not in _guarded_classes:
                _guarded_classes[cls] = _guarded_class(cls)
            object.__setattr__(tokenizer, "_thread_lock", threading.RLock())
            tokenizer.__class__ = _guarded_classes[cls]
    return tokenizer
