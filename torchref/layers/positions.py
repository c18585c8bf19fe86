"""Positional information: sinusoidal encodings and rotary embeddings (RoPE), PyTorch twin.

Written independently of jaxml (not imported from it) so parity tests compare two implementations.
Tables are computed in float64 on the CPU (MPS has no float64) and returned as float32.
"""

from __future__ import annotations

import math

import torch


def sinusoidal_positions(max_seq_len: int, embed_dim: int) -> torch.Tensor:
    """Vaswani et al. encodings, `[max_seq_len, embed_dim]` float32 (sin on even, cos on odd)."""
    if max_seq_len < 1 or embed_dim < 2 or embed_dim % 2:
        raise ValueError(
            f"sinusoidal_positions needs max_seq_len >= 1 and an even embed_dim >= 2, "
            f"got max_seq_len={max_seq_len}, embed_dim={embed_dim}"
        )
    position = torch.arange(max_seq_len, dtype=torch.float64)[:, None]
    inv_freq = torch.exp(
        -math.log(10000.0) * torch.arange(0, embed_dim, 2, dtype=torch.float64) / embed_dim
    )
    table = torch.zeros(max_seq_len, embed_dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table.float()


def rope_inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """`[head_dim // 2]` float32 frequencies `theta^(-2i/head_dim)`."""
    return (1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)).float()


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate `x: [batch, seq, heads, head_dim]` by `positions: [batch, seq]` ("rotate half")."""
    inv_freq = rope_inverse_frequencies(x.shape[-1], theta).to(x.device)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]
    x32 = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat([-x32[..., half:], x32[..., :half]], dim=-1)
    return (x32 * torch.cos(angles) + rotated * torch.sin(angles)).to(x.dtype)
