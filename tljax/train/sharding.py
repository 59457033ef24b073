"""Data parallelism over every local device with a `jax.sharding.Mesh`; the steps do not change.

Batches are split along their first axis over the mesh's "data" axis; parameters and optimiser state are
replicated. The same code runs on one CPU, on simulated CPU devices (the tests use 8), on GPUs and TPUs of
one host. Training across hosts is not supported yet: the loop reads and writes checkpoints and logs as
the only process.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh() -> Mesh:
    """A one-axis mesh ("data") over all devices."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of `tree` on every device."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Splits each array's first (batch) axis over the devices; its size must divide evenly."""
    devices = mesh.devices.size
    for name, array in batch.items():
        if array.shape[0] % devices:
            raise ValueError(f"batch dimension {array.shape[0]} of {name!r} is not a multiple of the "
                             f"{devices} devices; choose a batch size that is")
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    # one process: its rows are all the rows
    return {name: jax.make_array_from_process_local_data(sharding, array) for name, array in batch.items()}
