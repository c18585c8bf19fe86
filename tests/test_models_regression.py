"""Regressors: config parsing/validation, shapes, and that they can fit what they should."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxml.configs import RegressorConfig, parse_latent_dims
from jaxml.models import LinearRegressor, MLPRegressor


def test_latent_dims_accepts_cli_string() -> None:
    assert RegressorConfig(3, latent_dims="128, 64,32").latent_dims == (128, 64, 32)  # type: ignore[arg-type]
    assert RegressorConfig(3, latent_dims=[8, 4]).latent_dims == (8, 4)  # type: ignore[arg-type]
    assert parse_latent_dims("") == ()
    hash(RegressorConfig(3, latent_dims=(8,)))


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"input_dim": 0}, "input_dim"),
        ({"output_dim": -1}, "output_dim"),
        ({"latent_dims": "8,x"}, "latent_dims"),
        ({"latent_dims": (8, 0)}, "latent_dims"),
        ({"activation": "sigmoid"}, "activation"),
    ],
)
def test_config_rejects_bad_values(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"RegressorConfig.{field}="):
        RegressorConfig(**{"input_dim": 3, **changes})


def test_linear_rejects_hidden_layers_and_bad_input() -> None:
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="MLPRegressor"):
        LinearRegressor(RegressorConfig(3, latent_dims=(4,))).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="input_dim=3"):
        LinearRegressor(RegressorConfig(3)).init(jax.random.key(0), jnp.ones((2, 4)))


def test_mlp_param_names_and_shapes() -> None:
    model = MLPRegressor(RegressorConfig(3, output_dim=2, latent_dims=(8, 4), activation="tanh"))
    params = model.init(jax.random.key(0), jnp.ones((5, 3)))["params"]
    shapes = jax.tree_util.tree_map(jnp.shape, params)
    assert shapes == {
        "hidden_0": {"kernel": (3, 8), "bias": (8,)},
        "hidden_1": {"kernel": (8, 4), "bias": (4,)},
        "head": {"kernel": (4, 2), "bias": (2,)},
    }
    assert model.apply({"params": params}, jnp.ones((5, 3))).shape == (5, 2)


def _fit(model: LinearRegressor | MLPRegressor, x: np.ndarray, y: np.ndarray, steps: int) -> float:
    params = model.init(jax.random.key(0), x)["params"]
    opt = optax.adam(0.05)

    def loss_fn(p: dict) -> jax.Array:
        return jnp.mean((model.apply({"params": p}, x) - y) ** 2)

    @jax.jit
    def step(carry: tuple, _: None) -> tuple:
        p, s = carry
        grads = jax.grad(loss_fn)(p)
        updates, s = opt.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return float(loss_fn(params))


def test_linear_recovers_a_linear_map() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = x @ np.array([[1.5], [-2.0], [0.5]], np.float32) + 0.3
    assert _fit(LinearRegressor(RegressorConfig(3)), x, y, 300) < 1e-4


def test_mlp_fits_a_nonlinear_target_the_linear_model_cannot() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-2, 2, (128, 1)).astype(np.float32)
    y = x**2
    linear = _fit(LinearRegressor(RegressorConfig(1)), x, y, 300)
    mlp = _fit(MLPRegressor(RegressorConfig(1, latent_dims=(32, 32))), x, y, 300)
    assert mlp < 0.05 < linear
