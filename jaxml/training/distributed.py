"""Multi-process (multi-host) plumbing: start-up, each process's share of a global batch, and
host copies of replicated arrays.

Every process runs the same program; `jax.distributed.initialize` connects them, after which
`jax.devices()` lists the devices of every process and a `Mesh` over them spans processes.
Each process computes the same global batch (it depends only on the seed and the step) and
hands over only the rows its own devices hold (`jax.make_array_from_process_local_data`).
On CPU the collectives run over gloo, so several processes on one machine (127.0.0.1) work.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join the `num_processes` processes coordinated by process 0 at `coordinator`
    (`HOST:PORT`). Must run before anything touches a jax device."""
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"process_id={process_id} is invalid: must be in [0, num_processes={num_processes})"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def is_primary() -> bool:
    """True in process 0, the one that logs and writes run metadata."""
    return jax.process_index() == 0


def local_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> slice:
    """The contiguous rows of a `global_shape` array (sharded on its first axis) that live on
    this process's devices."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        rows = index[0] if index else slice(None)
        start, stop, _ = rows.indices(global_shape[0])
        starts.append(start)
        stops.append(stop)
    return slice(min(starts), max(stops))


def global_batch(rows: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global `rows` (identical in every process) as one array sharded by `sharding`;
    each process supplies only its own rows."""
    mine = rows[local_rows(sharding, rows.shape)]
    return jax.make_array_from_process_local_data(sharding, mine, rows.shape)


def host_copy(tree: Any) -> Any:
    """numpy copies of replicated (or single-device) arrays, readable in every process."""

    def copy(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree.map(copy, tree)
