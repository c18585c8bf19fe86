"""Position-wise feed-forward networks, PyTorch twin: two-layer MLP and SwiGLU."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from jaxml.configs import FFNConfig

ACTIVATION_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "tanh": torch.tanh,
    "silu": F.silu,
}


class FeedForward(nn.Module):
    """`w2(act(w1(x)))`: `[..., embed_dim] -> [..., embed_dim]`."""

    def __init__(self, config: FFNConfig) -> None:
        super().__init__()
        self.config = config
        self.w1 = nn.Linear(config.embed_dim, config.ffn_latent_dim, bias=config.use_bias)
        self.w2 = nn.Linear(config.ffn_latent_dim, config.embed_dim, bias=config.use_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(ACTIVATION_FNS[self.config.activation](self.w1(x)))


class SwiGLU(nn.Module):
    """`w2(silu(w1(x)) * w3(x))` (w1=gate, w3=up, w2=down)."""

    def __init__(self, config: FFNConfig) -> None:
        super().__init__()
        self.config = config
        self.w1 = nn.Linear(config.embed_dim, config.ffn_latent_dim, bias=config.use_bias)
        self.w3 = nn.Linear(config.embed_dim, config.ffn_latent_dim, bias=config.use_bias)
        self.w2 = nn.Linear(config.ffn_latent_dim, config.embed_dim, bias=config.use_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def make_ffn(config: FFNConfig) -> nn.Module:
    """The dense FFN that `config.kind` names (`mlp` or `swiglu`)."""
    return SwiGLU(config) if config.kind == "swiglu" else FeedForward(config)
