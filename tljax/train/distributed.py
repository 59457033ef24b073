"""Multi-process runs on JAX's multi-controller runtime: one process per host (or per GPU), all running the
same `python -m tljax.train`, each feeding its devices.

A run joins when told to: `--coordinator HOST:PORT --num-processes N --process-id I`, or the environment
variables JAX_COORDINATOR_ADDRESS (read by JAX), JAX_NUM_PROCESSES and JAX_PROCESS_ID (read here), or on a
cluster JAX detects by itself (a SLURM job step or an Open MPI launch with more than one task, or
`--distributed` anywhere JAX detects, e.g. a multi-host Cloud TPU). Then `jax.devices()` lists every
process's devices and the mesh spans them all. Process 0 decides what happens to the output folder,
prints, and writes the logs, curves and exports; checkpoints are written by every process together.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from tljax.errors import InputError


def _tasks(variable: str) -> int:
    try:
        return int(os.environ.get(variable, "1"))
    except ValueError:
        return 1


def requested(coordinator: str | None = None, num_processes: int | None = None, *, distributed: bool = False) -> bool:
    """Whether this process is meant to join a multi-process run."""
    return (distributed or coordinator is not None or (num_processes or 1) > 1
            or "JAX_COORDINATOR_ADDRESS" in os.environ or _tasks("JAX_NUM_PROCESSES") > 1
            or _tasks("SLURM_NTASKS") > 1 or _tasks("OMPI_COMM_WORLD_SIZE") > 1)


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, distributed: bool = False) -> bool:
    """Joins the multi-process run if one is requested (see the module's docstring); returns whether it
    did. Must come before anything asks JAX for its devices."""
    if not requested(coordinator, num_processes, distributed=distributed):
        return False
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = _tasks("JAX_NUM_PROCESSES")
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    # CPU devices talk to other processes' over gloo (TCP); GPUs and TPUs use their own collectives
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    except (ValueError, RuntimeError) as error:
        raise InputError(f"could not join the multi-process run ({' '.join(str(error).split())[:300]}); give "
                         "--coordinator HOST:PORT --num-processes N --process-id I (the same coordinator and N in "
                         "every process)") from None
    return True


def is_main() -> bool:
    """Whether this is the process that prints and writes (process 0; the only one of a one-process run)."""
    return jax.process_index() == 0


def share() -> tuple[int, int]:
    """(this process, processes): which block of each batch's rows this process reads."""
    return jax.process_index(), jax.process_count()


def from_main(value: int) -> int:
    """Process 0's `value`, in every process (a decision all must follow)."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def any_process(flag: bool) -> bool:
    """Whether `flag` is true in any process (e.g. a stop signal that reached only some)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())
