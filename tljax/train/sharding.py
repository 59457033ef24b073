"""Where arrays live: a device mesh with a data axis and a parameter-sharding (FSDP) axis.

The mesh is `training.mesh` of the run config, e.g. `{data: -1, fsdp: 1}` (the default: data parallel over
every device; -1 takes what the other axes leave). Batches are split along their first axis over every
device (both axes). Parameters and optimiser state are partitioned over the `fsdp` axis by path rules,
`training.sharding`: regular expressions over "/"-joined parameter paths, first match wins, every
parameter matched (the convention of the methods' rules), each with an action:

- `shard`: split the parameter's largest dimension that the fsdp axis size divides (replicated if none
  does, e.g. a bias of odd length);
- `replicate`: a full copy on every device.

With fsdp = N each device holds about 1/N of the parameters and of their AdamW moments; XLA gathers a
layer's weights where the computation needs them and reduce-scatters their gradients (the compiled
step's input and output shardings say where everything lives). The same code runs on one CPU, on
simulated CPU devices (the tests use 8), on the GPUs or TPUs of one host, and across hosts after
`jax.distributed.initialize()` (`tljax.train.distributed`): there `jax.devices()` lists every process's
devices, each process places only the rows and shards of its own devices, and the mesh is laid out
process by process so that a process's rows of a batch are one contiguous block.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tljax.errors import InputError
from tljax.methods.rules import tree_paths

AXES = ("data", "fsdp")
BATCH = PartitionSpec(AXES)  # a batch's rows over every device of the mesh
ACTIONS = ("shard", "replicate")
# Every model family: every parameter sharded, norms and biases included. FSDP is for memory, and the
# small vectors' gathers fuse into the large ones'; a rule list in the config changes this per path.
DEFAULT_RULES: tuple[tuple[str, str], ...] = ((".*", "shard"),)


class MeshError(InputError):
    """A mesh shape or sharding rule that does not fit the devices or the parameters."""


def make_mesh(shape: dict[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ("data", "fsdp") mesh of `shape` (e.g. {"data": -1, "fsdp": 2}) over `devices` (default: every
    device of every process, in process order)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = check_mesh(shape)
    shape = dict(zip(AXES, sizes))
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % fixed:
            raise MeshError(f"training.mesh {shape}: {len(devices)} devices do not split into groups of {fixed}")
        sizes[sizes.index(-1)] = len(devices) // fixed
    if math.prod(sizes) != len(devices):
        raise MeshError(f"training.mesh {shape} needs {math.prod(sizes)} devices; this run has {len(devices)} "
                        f"({devices[0].platform}); set one axis to -1 to use them all")
    return Mesh(np.asarray(devices, dtype=object).reshape(sizes), AXES)


def check_mesh(shape: dict[str, int] | None) -> list[int]:
    """The axis sizes of `training.mesh` (-1 where unsized), its form checked (the devices are not asked)."""
    shape = {"data": -1, "fsdp": 1, **(shape or {})}
    unknown = sorted(set(shape) - set(AXES))
    if unknown:
        raise MeshError(f"training.mesh has unknown axes {unknown}; valid: {', '.join(AXES)}, e.g. {{data: -1, fsdp: 2}}")
    sizes = [shape[axis] for axis in AXES]
    if any(not isinstance(s, int) or isinstance(s, bool) or (s < 1 and s != -1) for s in sizes) or sizes.count(-1) > 1:
        raise MeshError(f"training.mesh {shape}: each axis size must be a whole number >= 1, or -1 (one axis at most) "
                        "for the devices the others leave")
    return sizes


def data_mesh() -> Mesh:
    """Data parallelism over every device (the mesh of `training.mesh: {data: -1, fsdp: 1}`)."""
    return make_mesh()


def parse_rules(spec: Sequence[Sequence[str]] | None) -> tuple[tuple[str, str], ...]:
    """`training.sharding` ([[pattern, shard | replicate], ...]; None: the default) checked."""
    if spec is None:
        return DEFAULT_RULES
    rules = []
    for item in spec:
        if not isinstance(item, (list, tuple)) or len(item) != 2 or item[1] not in ACTIONS:
            raise MeshError(f"training.sharding rule {item!r} must be [pattern, shard | replicate], e.g. "
                            "['LayerNorm', 'replicate']")
        try:
            re.compile(item[0])
        except re.error as error:
            raise MeshError(f"training.sharding pattern {item[0]!r} is not a valid regular expression: {error}") from None
        rules.append((str(item[0]), str(item[1])))
    return tuple(rules)


def parameter_spec(shape: tuple[int, ...], action: str, fsdp: int) -> PartitionSpec:
    """The partition of one parameter of `shape`: its largest dimension that `fsdp` divides, or none."""
    if action == "replicate" or fsdp == 1:
        return PartitionSpec()
    for dim in sorted(range(len(shape)), key=lambda d: (-shape[d], d)):
        if shape[dim] % fsdp == 0:
            return PartitionSpec(*[("fsdp" if d == dim else None) for d in range(len(shape))])
    return PartitionSpec()


def parameter_shardings(params: Any, mesh: Mesh, rules: Sequence[tuple[str, str]] = DEFAULT_RULES) -> Any:
    """A tree like `params` (an `nnx.State`) of each parameter's `NamedSharding` under `rules`."""
    paths = tree_paths(params)
    unmatched = [path for path in jax.tree.leaves(paths) if not any(re.search(p, path) for p, _ in rules)]
    if unmatched:
        raise MeshError(f"{len(unmatched)} parameters match no training.sharding rule, e.g. {unmatched[0]}; end the "
                        "rules with ['.*', 'shard'] (or 'replicate')")

    def sharding(leaf, path):
        action = next(a for p, a in rules if re.search(p, path))
        return NamedSharding(mesh, parameter_spec(np.shape(leaf), action, mesh.shape["fsdp"]))

    return jax.tree.map(sharding, params, paths)


def state_shardings(state: Any, params: Any, shardings: Any, mesh: Mesh) -> Any:
    """Shardings for an optimiser state over `params`: a leaf whose path ends with a parameter's path and
    that has its shape (AdamW's moments) is placed like it; anything else (step counts) is replicated."""
    by_path = {path: (np.shape(leaf), sharding) for path, leaf, sharding
               in zip(jax.tree.leaves(tree_paths(params)), jax.tree.leaves(params), jax.tree.leaves(shardings))}
    replicated = NamedSharding(mesh, PartitionSpec())

    def sharding(leaf, path):
        parts = path.split("/")
        for start in range(len(parts)):  # the longest parameter path it ends with
            shape, found = by_path.get("/".join(parts[start:]), (None, None))
            if found is not None and shape == np.shape(leaf):
                return found
        return replicated

    return jax.tree.map(sharding, state, tree_paths(state))


@dataclasses.dataclass(frozen=True)
class StepShardings:
    """Where the train step's inputs and outputs live (each a tree of `NamedSharding`, or one for a
    whole tree)."""

    trainable: Any
    frozen: Any
    opt_state: Any
    batch: NamedSharding  # every array of a batch: rows over every device
    replicated: NamedSharding  # the dropout key, the metrics

    @classmethod
    def of(cls, mesh: Mesh, trainable: Any, frozen: Any, opt_state: Any,
           rules: Sequence[tuple[str, str]] = DEFAULT_RULES) -> StepShardings:
        train = parameter_shardings(trainable, mesh, rules)
        return cls(train, parameter_shardings(frozen, mesh, rules), state_shardings(opt_state, trainable, train, mesh),
                   NamedSharding(mesh, BATCH), NamedSharding(mesh, PartitionSpec()))


def place(tree: Any, shardings: Any) -> Any:
    """Every leaf of `tree` (the same on every process) as a global array with its sharding (a tree like
    `tree`, or one `NamedSharding` for all); each process fills only its own devices."""
    if isinstance(shardings, NamedSharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def put(leaf, sharding):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return jax.device_put(leaf, sharding)  # a global array, resharded
        # through a host copy of its own: a device_put may leave a shard sharing the source's buffer, which
        # the train step (it donates its inputs) would then delete under the model that holds the source
        host = np.array(leaf, copy=True)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of `tree` on every device."""
    return place(tree, NamedSharding(mesh, PartitionSpec()))


def gather(tree: Any, mesh: Mesh) -> Any:
    """`tree`'s global arrays as host arrays, the whole of each on every process (e.g. to export)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.device_get(jax.jit(lambda x: x, out_shardings=replicated)(tree))


def _check_rows(batch: dict[str, np.ndarray], devices: int) -> None:
    for name, array in batch.items():
        if array.shape[0] % devices:
            raise ValueError(f"batch dimension {array.shape[0]} of {name!r} is not a multiple of the "
                             f"{devices} devices; choose a batch size that is")


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """A whole batch (the same on every process) with its rows split over the devices; each process places
    only its devices' rows. The batch size must divide evenly."""
    _check_rows(batch, mesh.devices.size)
    return place(batch, NamedSharding(mesh, BATCH))


def shard_local_rows(rows: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's share of a batch (its contiguous block of rows, `tljax.data.batches` `share`) as the
    global batch of every process's rows."""
    _check_rows(rows, mesh.local_mesh.devices.size)
    sharding = NamedSharding(mesh, BATCH)
    return {name: jax.make_array_from_process_local_data(sharding, array,
                                                         (array.shape[0] * jax.process_count(), *array.shape[1:]))
            for name, array in rows.items()}


def bytes_per_device(tree: Any) -> int:
    """The bytes of `tree`'s arrays that one device (the first) holds."""
    device = jax.devices()[0]
    return sum(shard.data.nbytes for leaf in jax.tree.leaves(tree) for shard in leaf.addressable_shards
               if shard.device == device)
