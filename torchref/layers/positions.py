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


def rope_inverse_frequencies(
    head_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """`[head_dim // 2]` frequencies `theta^(-2i/head_dim)`, computed in float64."""
    return (1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)).to(dtype)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate `x: [batch, seq, heads, head_dim]` by `positions: [batch, seq]` ("rotate half")."""
    acc = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for float64 inputs
    inv_freq = rope_inverse_frequencies(x.shape[-1], theta, acc).to(x.device)
    angles = positions.to(acc)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]
    x32 = x.to(acc)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x32[..., half:], x32[..., :half]], dim=-1)
    return (x32 * torch.cos(angles) + rotated * torch.sin(angles)).to(x.dtype)
