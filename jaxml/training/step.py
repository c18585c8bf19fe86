"""Pure train / eval steps: `(state, batch) -> (state, metrics)` and `(params, batch) -> metrics`.

Not jitted here: `jaxml.training.parallel` jits them for one device, a device mesh, or pmap.
With `axis_name` set (pmap), gradients and metrics are averaged over that axis with
`lax.pmean`, so each device holds the update of the global batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax
from jax import lax

from jaxml.data.loader import Batch
from jaxml.training.losses import ApplyFn, Metrics, objective
from jaxml.training.state import TrainState

TrainStep = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
EvalStep = Callable[[Any, Batch], Metrics]


def make_train_step(
    apply_fn: ApplyFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    loss: str = "mse",
    axis_name: str | None = None,
) -> TrainStep:
    """One optimizer update. Metrics add `grad_norm` (global, before clipping) and `lr` (used)."""
    value_and_grad = jax.value_and_grad(objective(apply_fn, loss), has_aux=True)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng, key = jax.random.split(state.key)
        (_, metrics), grads = value_and_grad(state.params, batch, key)
        if axis_name is not None:
            grads = lax.pmean(grads, axis_name)
            metrics = lax.pmean(metrics, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        new_state = dataclasses.replace(
            state,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            step=state.step + 1,
            rng=jax.random.key_data(rng),
        )
        return new_state, metrics

    return train_step


def make_eval_step(apply_fn: ApplyFn, loss: str = "mse") -> EvalStep:
    """Metrics of `params` on one batch (no update, no PRNG key)."""
    fn = objective(apply_fn, loss)

    def eval_step(params: Any, batch: Batch) -> Metrics:
        return fn(params, batch, None)[1]

    return eval_step
