"""Pure language-model train / eval steps on packed token windows `[batch, seq_len + 1]`.

Inputs are a window's first `seq_len` tokens, targets its last `seq_len` (next-token
prediction). A train step averages the gradients of `grad_accum` equal micro-batches (one
`lax.scan`), so it computes the update of the whole batch. Not jitted here:
`jaxml.training.lm_loop` jits them for one device, a mesh, or pmap (`axis_name`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import Array, lax

from jaxml.training.losses import ApplyFn, Metrics, cross_entropy, split_output
from jaxml.training.state import TrainState

LMTrainStep = Callable[[TrainState, Array], tuple[TrainState, Metrics]]
LMEvalStep = Callable[[Any, Array], Metrics]


def all_finite(tree: Any) -> Array:
    """True when every element of every leaf is finite (a bool scalar)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def lm_objective(apply_fn: ApplyFn) -> Callable[[Any, Array, Array | None], tuple[Array, Metrics]]:
    """`(params, windows [b, seq_len + 1], key) -> (cross-entropy + aux loss, metrics)`;
    metrics: `loss` (the mean next-token cross-entropy, nats) and `aux_loss`."""

    def fn(params: Any, windows: Array, key: Array | None) -> tuple[Array, Metrics]:
        logits, aux = split_output(apply_fn(params, (windows[:, :-1],), key))
        loss = cross_entropy(logits, windows[:, 1:])
        aux_loss = aux["aux_loss"].astype(jnp.float32)
        return loss + aux_loss, {"loss": loss, "aux_loss": aux_loss}

    return fn


def make_lm_train_step(
    apply_fn: ApplyFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    grad_accum: int = 1,
    axis_name: str | None = None,
) -> LMTrainStep:
    """One optimizer update on `windows [batch, seq_len + 1]`.

    Metrics: `loss`, `aux_loss` (micro-batch means), `grad_norm` (global, before clipping),
    `lr` (the rate this update used) and `finite` (loss, gradients and new parameters are all
    finite: when False the caller must stop and never save this state).
    """
    grad_fn = jax.grad(lm_objective(apply_fn), has_aux=True)

    def accumulate(params: Any, windows: Array, key: Array) -> tuple[Any, Metrics]:
        if grad_accum == 1:
            return grad_fn(params, windows, key)
        # Micro-batch k takes rows k, k + grad_accum, ...: every micro-batch spans every
        # device's shard of a batch split over devices.
        micro = windows.reshape(-1, grad_accum, windows.shape[-1]).swapaxes(0, 1)
        keys = jax.random.split(key, grad_accum)

        def body(carry: Any, xs: tuple[Array, Array]) -> tuple[Any, None]:
            grads, metrics = grad_fn(params, *xs)
            return jax.tree.map(jnp.add, carry, (grads, metrics)), None

        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, micro[0], keys[0]))
        total, _ = lax.scan(body, zeros, (micro, keys))
        return jax.tree.map(lambda x: x / grad_accum, total)

    def train_step(state: TrainState, windows: Array) -> tuple[TrainState, Metrics]:
        rng, key = jax.random.split(state.key)
        grads, metrics = accumulate(state.params, windows, key)
        if axis_name is not None:
            grads, metrics = lax.pmean((grads, metrics), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm) & all_finite(params)
        metrics = {**metrics, "grad_norm": grad_norm, "lr": schedule(state.step), "finite": finite}
        new_state = dataclasses.replace(
            state,
            params=params,
            opt_state=opt_state,
            step=state.step + 1,
            rng=jax.random.key_data(rng),
        )
        return new_state, metrics

    return train_step


def make_lm_eval_step(apply_fn: ApplyFn, axis_name: str | None = None) -> LMEvalStep:
    """`(params, windows) -> {"loss", "aux_loss"}` on one batch (no update, no PRNG key)."""
    fn = lm_objective(apply_fn)

    def eval_step(params: Any, windows: Array) -> Metrics:
        metrics = fn(params, windows, None)[1]
        return metrics if axis_name is None else lax.pmean(metrics, axis_name)

    return eval_step
