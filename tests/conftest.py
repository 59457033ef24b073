"""Test settings: strict JAX numerics, 8 simulated CPU devices, a persistent compilation cache."""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
_cache = Path(os.environ.get("TLJAX_CACHE", Path.home() / ".cache" / "tljax")).expanduser() / "jax-compilation"
jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
torch.set_num_threads(2)


@pytest.fixture
def rng() -> np.random.RandomState:
    return np.random.RandomState(0)


def padded_batch(rng: np.random.RandomState, vocab: int, lengths: list[int], *, left: bool = False, low: int = 3):
    """Token ids [B, T] and a mask [B, T] for sequences of the given lengths, padded to the longest."""
    width = max(lengths)
    ids = rng.randint(low, vocab, (len(lengths), width))
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        if left:
            mask[row, width - n:] = 1
        else:
            mask[row, :n] = 1
    return ids * mask, mask
