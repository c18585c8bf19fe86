"""Linear and MLP regressors: `[batch, input_dim] -> [batch, output_dim]`."""

from __future__ import annotations

import flax.linen as nn
from jax import Array

from jaxml.configs import RegressorConfig
from jaxml.layers.ffn import ACTIVATION_FNS


def _check_input(x: Array, config: RegressorConfig) -> None:
    if x.ndim != 2 or x.shape[-1] != config.input_dim:
        raise ValueError(f"x must be [batch, input_dim={config.input_dim}], got {x.shape}")


class LinearRegressor(nn.Module):
    """`y = x W + b` (one Dense named `linear`); `config.latent_dims` must be empty."""

    config: RegressorConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        if cfg.latent_dims:
            raise ValueError(
                f"LinearRegressor has no hidden layers, got latent_dims={cfg.latent_dims} "
                "(use MLPRegressor)"
            )
        _check_input(x, cfg)
        return nn.Dense(cfg.output_dim, name="linear")(x)


class MLPRegressor(nn.Module):
    """Dense + activation per width in `latent_dims` (`hidden_0`, ...), then a Dense `head`."""

    config: RegressorConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        _check_input(x, cfg)
        act = ACTIVATION_FNS[cfg.activation]
        for i, width in enumerate(cfg.latent_dims):
            x = act(nn.Dense(width, name=f"hidden_{i}")(x))
        return nn.Dense(cfg.output_dim, name="head")(x)
