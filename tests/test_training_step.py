"""Train / eval steps: pure and jittable, the objective adds auxiliary losses, metrics."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxml.configs import OptimizerConfig
from jaxml.data.loader import Batch
from jaxml.training.losses import cross_entropy, module_apply, mse, objective
from jaxml.training.optim import make_optimizer, make_schedule
from jaxml.training.state import TrainState, init_params
from jaxml.training.step import make_eval_step, make_train_step


class WithAux(nn.Module):
    """A Dense layer reporting an auxiliary loss `0.5 * sum(kernel^2)`, like an MoE layer."""

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        dense = nn.Dense(1)
        y = dense(x)
        aux = 0.5 * jnp.sum(dense.variables["params"]["kernel"] ** 2)
        return y, {"aux_loss": aux, "dropped_fraction": jnp.float32(0.25)}


def linear_batch(n: int = 16, seed: int = 0) -> Batch:
    x = np.random.default_rng(seed).standard_normal((n, 3)).astype(np.float32)
    return Batch((x,), x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.3)


def test_objective_adds_the_aux_loss_and_reports_moe_stats() -> None:
    model, batch = WithAux(), linear_batch()
    params = init_params(model, batch.inputs, jax.random.key(0))
    total, metrics = objective(module_apply(model), "mse")(params, batch, None)
    pred = batch.inputs[0] @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
    task = np.mean((np.asarray(pred) - batch.targets) ** 2)
    aux = 0.5 * np.sum(np.asarray(params["Dense_0"]["kernel"]) ** 2)
    np.testing.assert_allclose(float(metrics["task_loss"]), task, rtol=1e-5)
    np.testing.assert_allclose(float(total), task + aux, rtol=1e-5)
    assert float(metrics["dropped_fraction"]) == 0.25


def test_train_step_is_pure_and_reports_grad_norm_and_lr() -> None:
    model, batch = nn.Dense(1), linear_batch()
    params = init_params(model, batch.inputs, jax.random.key(0))
    opt = OptimizerConfig("adam", 0.1, schedule="step", step_size=1, gamma=0.5)
    tx = make_optimizer(opt)
    state = TrainState.create(params, tx, jax.random.key(1))
    step = jax.jit(make_train_step(module_apply(model), tx, make_schedule(opt)))
    new1, m1 = step(state, batch)
    new2, m2 = step(state, batch)
    for a, b in zip(jax.tree.leaves((new1, m1)), jax.tree.leaves((new2, m2)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(new1.step) == 1 and not np.array_equal(new1.rng, state.rng)
    grads = jax.grad(lambda p: objective(module_apply(model), "mse")(p, batch, None)[0])(params)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(optax.tree.norm(grads)), rtol=1e-5)
    assert float(m1["lr"]) == pytest.approx(0.1)
    _, m3 = step(new1, batch)
    assert float(m3["lr"]) == pytest.approx(0.05)


def test_training_steps_reduce_the_loss() -> None:
    model, batch = nn.Dense(1), linear_batch()
    opt = OptimizerConfig("sgd", 0.1, momentum=0.9)
    tx = make_optimizer(opt)
    state = TrainState.create(
        init_params(model, batch.inputs, jax.random.key(0)), tx, jax.random.key(1)
    )
    step = jax.jit(make_train_step(module_apply(model), tx, make_schedule(opt)))
    evaluate = jax.jit(make_eval_step(module_apply(model)))
    first = float(evaluate(state.params, batch)["loss"])
    for _ in range(60):
        state, _ = step(state, batch)
    assert float(evaluate(state.params, batch)["loss"]) < 1e-2 * first


def test_cross_entropy_and_accuracy() -> None:
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = jnp.array([0, 2])
    expected = -np.mean([jax.nn.log_softmax(logits[0])[0], jax.nn.log_softmax(logits[1])[2]])
    np.testing.assert_allclose(float(cross_entropy(logits, labels)), expected, rtol=1e-6)
    model = nn.Dense(3)
    batch = Batch((np.eye(3, dtype=np.float32),), np.array([0, 1, 2]))
    params = init_params(model, batch.inputs, jax.random.key(0))
    metrics = make_eval_step(module_apply(model), "cross_entropy")(params, batch)
    assert set(metrics) == {"loss", "task_loss", "aux_loss", "accuracy"}
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_bad_loss_inputs_raise() -> None:
    with pytest.raises(ValueError, match="differ"):
        mse(jnp.zeros((4, 1)), jnp.zeros((4,)))
    with pytest.raises(ValueError, match="loss='hinge'"):
        objective(lambda p, xs, k: xs[0], "hinge")


def test_state_is_a_pytree() -> None:
    tx = optax.adam(1e-3)
    state = TrainState.create({"w": jnp.ones(2)}, tx, jax.random.key(0))
    leaves: list[Any] = jax.tree.leaves(state)
    assert len(leaves) == 6  # w; adam's count, mu, nu; step; rng
    assert state.key.dtype == jax.random.key(0).dtype
