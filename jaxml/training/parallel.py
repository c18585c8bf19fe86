"""Data parallelism: the same train step on one device, on a device `Mesh`, or under `pmap`.

- `mesh`: `jax.jit` with the batch sharded over the mesh's `data` axis and the state replicated
  (`NamedSharding`); XLA inserts the gradient all-reduce.
- `pmap`: the step built with `axis_name="data"` (so it `lax.pmean`s gradients and metrics),
  state stacked `[devices, ...]`, batch split into `[devices, batch / devices, ...]`.
For a given global batch every mode computes the same update (up to summation order).
`ParallelStep` keeps the state in its device form between steps; `host_state` returns the
plain single-copy `TrainState` used for evaluation and checkpoints.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxml.configs import PARALLEL_MODES
from jaxml.data.loader import Batch
from jaxml.training.losses import ApplyFn, Metrics
from jaxml.training.state import TrainState
from jaxml.training.step import make_train_step

DATA_AXIS = "data"


def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh `("data",)` over the first `num_devices` devices (default: all)."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices={n} is invalid: this host has {len(devices)} devices")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices[:n])


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
    """Split the leading (batch) dimension of every array over the `data` axis."""
    return jax.device_put(batch, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))


def stack_for_pmap(tree: Any, devices: list[jax.Device]) -> Any:
    """One copy per device: every leaf `x` -> `[len(devices), *x.shape]`, row `i` on device `i`
    (the layout pmap returns, so feeding its outputs back does not recompile)."""
    n = len(devices)
    sharding = NamedSharding(Mesh(np.array(devices), (DATA_AXIS,)), PartitionSpec(DATA_AXIS))
    return jax.device_put(
        jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *np.shape(x))), tree), sharding
    )


def split_for_pmap(batch: Batch, num_devices: int) -> Batch:
    """`[batch, ...]` -> `[num_devices, batch / num_devices, ...]`."""
    return jax.tree.map(lambda x: x.reshape(num_devices, -1, *x.shape[1:]), batch)


def first_copy(tree: Any) -> Any:
    return jax.tree.map(lambda x: x[0], tree)


class ParallelStep:
    """A jitted train step for `mode` in `none | mesh | pmap` over `num_devices` devices."""

    def __init__(
        self,
        mode: str,
        apply_fn: ApplyFn,
        tx: optax.GradientTransformation,
        schedule: optax.Schedule,
        loss: str = "mse",
        num_devices: int | None = None,
        donate: bool = True,
    ) -> None:
        if mode not in PARALLEL_MODES:
            raise ValueError(
                f"parallel={mode!r} is invalid: allowed values are {', '.join(PARALLEL_MODES)}"
            )
        self.mode = mode
        donate_argnums = (0,) if donate else ()
        if mode == "none":
            self.num_devices = 1
            self._step = jax.jit(
                make_train_step(apply_fn, tx, schedule, loss), donate_argnums=donate_argnums
            )
        elif mode == "mesh":
            self.mesh = data_mesh(num_devices)
            self.num_devices = self.mesh.size
            replicated = NamedSharding(self.mesh, PartitionSpec())
            self._step = jax.jit(
                make_train_step(apply_fn, tx, schedule, loss),
                in_shardings=(replicated, NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))),
                out_shardings=(replicated, replicated),
                donate_argnums=donate_argnums,
            )
        else:
            self.devices = jax.devices()[: num_devices or jax.device_count()]
            self.num_devices = len(self.devices)
            if num_devices is not None and self.num_devices != num_devices:
                raise ValueError(
                    f"num_devices={num_devices} is invalid: this host has {jax.device_count()} devices"
                )
            self._step = jax.pmap(
                make_train_step(apply_fn, tx, schedule, loss, axis_name=DATA_AXIS),
                axis_name=DATA_AXIS,
                devices=self.devices,
                donate_argnums=donate_argnums,
            )

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.num_devices:
            raise ValueError(
                f"batch_size={batch_size} is invalid: must be divisible by the "
                f"{self.num_devices} devices of parallel={self.mode!r}"
            )

    def device_state(self, state: TrainState) -> Any:
        """The state in this mode's device form."""
        if self.mode == "mesh":
            return replicate(state, self.mesh)
        if self.mode == "pmap":
            return stack_for_pmap(state, self.devices)
        return state

    def host_state(self, device_state: Any) -> TrainState:
        """The plain `TrainState` (one copy) of a device-form state."""
        return first_copy(device_state) if self.mode == "pmap" else device_state

    def __call__(self, device_state: Any, batch: Batch) -> tuple[Any, Metrics]:
        """One update on the global `batch`; metrics are global-batch means."""
        if self.mode == "mesh":
            return self._step(device_state, shard_batch(batch, self.mesh))
        if self.mode == "pmap":
            new_state, metrics = self._step(device_state, split_for_pmap(batch, self.num_devices))
            return new_state, first_copy(metrics)
        return self._step(device_state, batch)
