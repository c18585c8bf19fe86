"""Optimizers and schedules by name: the optax schedule values, the torch twin's scheduler
following them exactly, the hyperparameter conventions, and config validation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxml.configs import OptimizerConfig, TrainConfig
from jaxml.training.optim import make_optimizer, make_schedule
from torchref.training.optim import lr_factor, make_scheduler
from torchref.training.optim import make_optimizer as make_torch_optimizer

SCHEDULES = {
    "constant": OptimizerConfig(lr=0.1),
    "cosine": OptimizerConfig(
        lr=0.1, schedule="cosine", warmup_steps=4, total_steps=20, final_lr_scale=0.1
    ),
    "step": OptimizerConfig(lr=0.1, schedule="step", step_size=5, gamma=0.5),
}


def test_cosine_with_warmup_values() -> None:
    lr = make_schedule(SCHEDULES["cosine"])
    assert float(lr(0)) == 0.0
    np.testing.assert_allclose(float(lr(2)), 0.05, rtol=1e-6)
    np.testing.assert_allclose(float(lr(4)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(lr(12)), 0.01 + 0.09 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(lr(20)), 0.01, rtol=1e-6)
    np.testing.assert_allclose(float(lr(30)), 0.01, rtol=1e-6)


def test_step_decay_values() -> None:
    lr = make_schedule(SCHEDULES["step"])
    assert [round(float(lr(s)), 6) for s in (0, 4, 5, 9, 10, 15)] == [
        0.1,
        0.1,
        0.05,
        0.05,
        0.025,
        0.0125,
    ]


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_torch_scheduler_follows_the_optax_schedule(name: str) -> None:
    config = SCHEDULES[name]
    optax_lr = make_schedule(config)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = make_torch_optimizer([param], config)
    scheduler = make_scheduler(optimizer, config)
    for step in range(26):
        expected = float(optax_lr(step))
        np.testing.assert_allclose(config.lr * lr_factor(config, step), expected, rtol=1e-6)
        np.testing.assert_allclose(optimizer.param_groups[0]["lr"], expected, rtol=1e-6, atol=1e-9)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def one_update(config: OptimizerConfig, param: float, grad: float) -> tuple[float, float]:
    """The first update of both libraries on a scalar parameter: (optax, torch)."""
    tx = make_optimizer(config)
    p = jnp.array([param])
    updates, _ = tx.update(jnp.array([grad]), tx.init(p), p)
    t = torch.nn.Parameter(torch.tensor([param]))
    optimizer = make_torch_optimizer([t], config)
    t.grad = torch.tensor([grad])
    optimizer.step()
    return float(updates[0]), float(t.detach()[0]) - param


def test_rmsprop_puts_eps_outside_the_square_root() -> None:
    config = OptimizerConfig("rmsprop", lr=0.1, decay=0.9, eps=0.5)
    expected = -0.1 * 2.0 / (np.sqrt(0.1 * 4.0) + 0.5)
    for update in one_update(config, 1.0, 2.0):
        np.testing.assert_allclose(update, expected, rtol=1e-6)


def test_adamw_decay_is_decoupled_and_scaled_by_lr() -> None:
    config = OptimizerConfig("adamw", lr=0.1, weight_decay=0.5)
    for update in one_update(config, 2.0, 0.0):  # zero gradient: only the decay moves p
        np.testing.assert_allclose(update, -0.1 * 0.5 * 2.0, rtol=1e-6)


def test_sgd_nesterov_momentum_first_step() -> None:
    config = OptimizerConfig("sgd", lr=0.1, momentum=0.9, nesterov=True)
    for update in one_update(config, 0.0, 1.0):  # buffer = g, step = g + m * buffer
        np.testing.assert_allclose(update, -0.1 * 1.9, rtol=1e-6)


def test_clipping_scales_to_the_global_norm() -> None:
    tx = make_optimizer(OptimizerConfig("sgd", lr=1.0, clip_norm=1.0))
    grads = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
    updates, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_allclose(float(optax.tree.norm(updates)), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"name": "lamb"}, "name"),
        ({"schedule": "linear"}, "schedule"),
        ({"schedule": "cosine"}, "total_steps"),
        ({"schedule": "cosine", "total_steps": 5, "warmup_steps": 5}, "total_steps"),
        ({"weight_decay": 0.1}, "weight_decay"),
        ({"name": "sgd", "nesterov": True}, "nesterov"),
        ({"momentum": 0.9}, "momentum"),
        ({"centered": True}, "centered"),
        ({"lr": 0.0}, "lr"),
        ({"clip_norm": -1.0}, "clip_norm"),
    ],
)
def test_invalid_optimizer_configs(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"OptimizerConfig.{field}="):
        OptimizerConfig(**kwargs)


def test_invalid_train_configs() -> None:
    with pytest.raises(ValueError, match="TrainConfig.batch_size=0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="TrainConfig.parallel='ddp'"):
        TrainConfig(parallel="ddp")
    with pytest.raises(ValueError, match="TrainConfig.resume=True"):
        TrainConfig(resume=True)
