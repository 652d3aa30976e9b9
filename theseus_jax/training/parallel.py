"""Data parallelism over a `jax.sharding.Mesh`: the same jitted steps on 1 or N devices.

Batches are split along a `data` axis (`NamedSharding(mesh, P("data"))`), parameters and
optimizer state are replicated, and XLA inserts the gradient all-reduce. The
replacement mask is drawn from the step's key, which every device holds, so all
devices take the same branch. Across hosts, every host builds the same global batch
(same loader, same seed) and contributes its own rows; `jax.distributed` is initialised
from the usual environment variables.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def init_distributed() -> bool:
    """Starts multi-host JAX when a coordinator is configured (JAX_COORDINATOR_ADDRESS with
    JAX_NUM_PROCESSES and JAX_PROCESS_ID, or a SLURM / Open MPI / cloud TPU environment)."""
    if jax.process_count() > 1:  # already initialised
        return True
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_NTASKS", "1") != "1":
        jax.distributed.initialize()
        return True
    return False


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
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """The global batch split along its first axis over the `data` axis.

    Single-process: the host array is scattered. Multi-host: each process passes the same
    global batch and contributes only the rows of its own devices.
    """
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    size = mesh.shape[DATA_AXIS]
    out = {}
    for key, value in batch.items():
        if value.shape[0] % size:
            raise ValueError(f"batch field {key!r} has {value.shape[0]} rows, not divisible by {size} devices")
        if jax.process_count() == 1:
            out[key] = jax.device_put(value, sharding)
        else:
            rows = value.shape[0] // jax.process_count()
            local = value[jax.process_index() * rows : (jax.process_index() + 1) * rows]
            out[key] = jax.make_array_from_process_local_data(sharding, local, value.shape)
    return out
