"""Losses on model outputs, and the objective `fit` differentiates.

Models return either a prediction or `(prediction, aux)` with `aux["aux_loss"]` (e.g. the MoE
load-balancing loss, already weighted by the layer); the objective is task loss + aux loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import optax
from jax import Array

from jaxml.configs import LOSS_NAMES
from jaxml.data.loader import Batch

Metrics = dict[str, Array]


def mse(prediction: Array, target: Array) -> Array:
    """Mean squared error over every element; shapes must match."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ")
    return jnp.mean(jnp.square(prediction.astype(jnp.float32) - target))


def cross_entropy(logits: Array, labels: Array) -> Array:
    """`logits: [batch, classes]`, integer `labels: [batch]` -> mean softmax cross-entropy."""
    return jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    )


def accuracy(logits: Array, labels: Array) -> Array:
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


LOSSES: dict[str, Callable[[Array, Array], Array]] = {"mse": mse, "cross_entropy": cross_entropy}


def split_output(output: Any) -> tuple[Array, Mapping[str, Array]]:
    """`prediction` or `(prediction, aux)` -> `(prediction, aux)` with `aux["aux_loss"]`."""
    if isinstance(output, tuple):
        prediction, aux = output
        return prediction, aux
    return output, {"aux_loss": jnp.zeros((), jnp.float32)}


def check_loss(name: str) -> None:
    if name not in LOSSES:
        raise ValueError(f"loss={name!r} is invalid: allowed values are {', '.join(LOSS_NAMES)}")


ApplyFn = Callable[[Any, tuple[Array, ...], Array | None], Any]


def module_apply(model: Any) -> ApplyFn:
    """`(params, inputs, key) -> model output` for a Flax linen module; `key` (or None in
    evaluation) seeds the module's stochastic layers under every rng name they ask for."""

    def apply(params: Any, inputs: tuple[Array, ...], key: Array | None) -> Any:
        rngs = None if key is None else {"dropout": key}
        return model.apply({"params": params}, *inputs, rngs=rngs)

    return apply


def objective(apply_fn: ApplyFn, loss: str) -> Callable[..., tuple[Array, Metrics]]:
    """`(params, batch, key) -> (task + aux loss, metrics)` for `apply_fn` (see `module_apply`).

    Metrics: `loss`, `task_loss`, `aux_loss`, `accuracy` (cross-entropy), and the scalar MoE
    statistics the model reports (`dropped_fraction`).
    """
    check_loss(loss)

    def fn(params: Any, batch: Batch, key: Array | None) -> tuple[Array, Metrics]:
        prediction, aux = split_output(apply_fn(params, batch.inputs, key))
        task = LOSSES[loss](prediction, batch.targets)
        total = task + aux["aux_loss"]
        metrics = {"loss": total, "task_loss": task, "aux_loss": aux["aux_loss"]}
        if loss == "cross_entropy":
            metrics["accuracy"] = accuracy(prediction, batch.targets)
        if "dropped_fraction" in aux:
            metrics["dropped_fraction"] = aux["dropped_fraction"]
        return total, metrics

    return fn
