"""Normalisation layers, PyTorch twin. LayerNorm is torch's own (`weight`, `bias`)."""

from __future__ import annotations

import torch
from torch import nn

LayerNorm = nn.LayerNorm


class RMSNorm(nn.Module):
    """`x / sqrt(mean(x²) + eps) * weight` over the last axis, in float32 (float64 for float64 x)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = torch.promote_types(x.dtype, torch.float32)
        x32 = x.to(acc)
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.to(acc)).to(x.dtype)
