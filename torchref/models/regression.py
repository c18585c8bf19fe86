"""Linear and MLP regressors, PyTorch twin: `[batch, input_dim] -> [batch, output_dim]`."""

from __future__ import annotations

import torch
from torch import nn

from jaxml.configs import RegressorConfig
from torchref.layers.ffn import ACTIVATION_FNS


def _check_input(x: torch.Tensor, config: RegressorConfig) -> None:
    if x.ndim != 2 or x.shape[-1] != config.input_dim:
        raise ValueError(f"x must be [batch, input_dim={config.input_dim}], got {tuple(x.shape)}")


class LinearRegressor(nn.Module):
    """`y = x W^T + b` (one `nn.Linear` named `linear`); `config.latent_dims` must be empty."""

    def __init__(self, config: RegressorConfig) -> None:
        super().__init__()
        if config.latent_dims:
            raise ValueError(
                f"LinearRegressor has no hidden layers, got latent_dims={config.latent_dims} "
                "(use MLPRegressor)"
            )
        self.config = config
        self.linear = nn.Linear(config.input_dim, config.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.config)
        return self.linear(x)


class MLPRegressor(nn.Module):
    """`nn.Linear` + activation per width in `latent_dims` (`hidden.i`), then a `head` Linear."""

    def __init__(self, config: RegressorConfig) -> None:
        super().__init__()
        self.config = config
        widths = (config.input_dim, *config.latent_dims)
        self.hidden = nn.ModuleList(
            nn.Linear(w_in, w_out) for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = nn.Linear(widths[-1], config.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.config)
        act = ACTIVATION_FNS[self.config.activation]
        for layer in self.hidden:
            x = act(layer(x))
        return self.head(x)
