"""`TrainState`: everything that changes during training, as one pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import Array


@struct.dataclass
class TrainState:
    """`params`, `opt_state`, `step` (int32 scalar: updates applied) and `rng` (uint32 raw key
    data, so checkpoints store it as a plain array; `key` gives the typed key)."""

    params: Any
    opt_state: optax.OptState
    step: Array
    rng: Array

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation, key: Array) -> TrainState:
        return cls(
            params=params,
            opt_state=tx.init(params),
            step=jnp.zeros((), jnp.int32),
            rng=jax.random.key_data(key),
        )

    @property
    def key(self) -> Array:
        return jax.random.wrap_key_data(self.rng)


def init_params(model: Any, inputs: tuple[Any, ...], key: Array) -> Any:
    """`model.init(key, *inputs)["params"]`, jitted (Flax linen module, example inputs)."""
    return jax.jit(model.init)(key, *inputs)["params"]


def num_params(params: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
