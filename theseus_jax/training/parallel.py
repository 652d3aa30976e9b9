"""Data parallelism over a `jax.sharding.Mesh`: the same jitted steps on 1 or N devices.

Batches are split along a `data` axis (`NamedSharding(mesh, P("data"))`), parameters and
optimizer state are replicated, and XLA inserts the gradient all-reduce. The
replacement mask is drawn from the step's key, which every device holds, so all
devices take the same branch. Across hosts, each process contributes the rows of the
global batch that its own devices hold (`process_slice`), assembled into one global
array by `jax.make_array_from_process_local_data`; orbax then writes and reads such
global arrays cooperatively from every process.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def init_distributed(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Starts multi-host JAX if this process is one of several; call it before any other JAX call.

    The arguments default to JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID;
    without a coordinator, a multi-task SLURM or Open MPI launch is left to JAX's own
    detection. Returns whether JAX runs distributed (False: a plain single-process run).
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    launched = int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    if coordinator_address is None and not launched:
        return False
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True


def is_writer() -> bool:
    """Whether this process writes the run's files (reports, exports, logs): process 0."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(ok: bool) -> bool:
    """Process 0's `ok`, on every process (so all stop together when process 0 must)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def make_mesh(num_devices: int = 0) -> Mesh:
    """A one-axis mesh over the first `num_devices` devices (0 = all, across hosts)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"asked for {num_devices} devices, {len(devices)} available")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf on every device of the mesh (parameters, optimizer state)."""
    return jax.device_put(tree, replicated(mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    """Whole on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the `data` axis, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def process_slice(global_rows: int, mesh: Mesh) -> slice:
    """The rows of a `global_rows` batch that this process's devices hold: what a host
    reads or keeps of each global batch."""
    size = mesh.shape[DATA_AXIS]
    if global_rows % size:
        raise ValueError(f"{global_rows} batch rows do not divide over {size} devices")
    spans = sorted(
        (index[0].start or 0, index[0].stop or global_rows)
        for index in batch_sharding(mesh).addressable_devices_indices_map((global_rows,)).values()
    )
    if not spans:
        raise ValueError(f"process {jax.process_index()} holds no device of the mesh")
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in set(spans)) != stop - start:
        raise ValueError("this process's devices do not hold one contiguous block of rows")
    return slice(start, stop)


def local_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, np.ndarray]:
    """This process's rows of a global batch (all of it in a single-process run)."""
    rows = {value.shape[0] for value in batch.values()}
    if len(rows) != 1:
        raise ValueError(f"batch fields disagree on the number of rows: {sorted(rows)}")
    part = process_slice(rows.pop(), mesh)
    return {key: value[part] for key, value in batch.items()}


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """One global array per field from every process's local rows (equal counts per
    process, in process order), sharded along the `data` axis."""
    sharding = batch_sharding(mesh)
    scale = mesh.shape[DATA_AXIS] // len(mesh.local_devices)
    return {
        key: jax.make_array_from_process_local_data(sharding, value, (value.shape[0] * scale,) + value.shape[1:])
        for key, value in local.items()
    }


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """The global batch (the same on every process) split along its first axis over the
    mesh; each process transfers only its own rows."""
    return global_batch(local_batch(batch, mesh), mesh)
