"""jaxml == torchref for the regressors: same weights => same outputs and gradients."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxml.configs import RegressorConfig
from jaxml.models import regression as jreg
from parity.harness import check_parity
from torchref.models import regression as treg

X = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "name,latent_dims,activation",
    [
        ("LinearRegressor", (), "relu"),
        ("MLPRegressor", (8, 6), "gelu"),
        ("MLPRegressor", (5,), "tanh"),
    ],
)
def test_regressor(name: str, latent_dims: tuple[int, ...], activation: str, device: str) -> None:
    cfg = RegressorConfig(3, output_dim=2, latent_dims=latent_dims, activation=activation)
    model = getattr(jreg, name)(cfg)
    params = model.init(jax.random.key(0), X)["params"]
    check_parity(
        jax.jit(lambda p, x: model.apply({"params": p}, x)),
        params,
        getattr(treg, name)(cfg),
        lambda m, x: m(x),
        [X],
        device=device,
    )
