"""Positional information: sinusoidal encodings and rotary embeddings (RoPE)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import Array


def sinusoidal_positions(max_seq_len: int, embed_dim: int) -> np.ndarray:
    """Vaswani et al. encodings, `[max_seq_len, embed_dim]` float32.

    Even channels hold `sin(pos / 10000^(2i/d))`, odd channels the matching `cos`.
    Computed in float64 with numpy so jaxml and torchref share the exact same table.
    """
    if max_seq_len < 1 or embed_dim < 2 or embed_dim % 2:
        raise ValueError(
            f"sinusoidal_positions needs max_seq_len >= 1 and an even embed_dim >= 2, "
            f"got max_seq_len={max_seq_len}, embed_dim={embed_dim}"
        )
    position = np.arange(max_seq_len, dtype=np.float64)[:, None]
    inv_freq = np.exp(-np.log(10000.0) * np.arange(0, embed_dim, 2, dtype=np.float64) / embed_dim)
    table = np.zeros((max_seq_len, embed_dim), dtype=np.float64)
    table[:, 0::2] = np.sin(position * inv_freq)
    table[:, 1::2] = np.cos(position * inv_freq)
    return table.astype(np.float32)


def rope_inverse_frequencies(
    head_dim: int, theta: float, dtype: type[np.floating] = np.float32
) -> np.ndarray:
    """`[head_dim // 2]` frequencies `theta^(-2i/head_dim)`, computed in float64."""
    return (1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(dtype)


SPLIT = False


def apply_rope(x: Array, positions: Array, theta: float) -> Array:
    """Rotate `x: [batch, seq, heads, head_dim]` by `positions: [batch, seq]` ("rotate half").

    The convention of Llama-family checkpoints: channel i pairs with channel i + head_dim/2, so the
    halves `x1, x2` become `x1 cos - x2 sin, x2 cos + x1 sin` (written on the halves rather than as
    `x cos + rotate_half(x) sin`: one concatenate each way instead of three passes, 1.02x on the 5M
    LM train step). Computed in float32 (float64 for float64 inputs), returned in `x.dtype`.
    """
    acc = jnp.promote_types(x.dtype, jnp.float32)
    inv_freq = jnp.asarray(rope_inverse_frequencies(x.shape[-1], theta, acc.type))
    angles = (positions.astype(acc)[..., None] * inv_freq)[:, :, None, :]  # [batch, seq, 1, half]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].astype(acc), x[..., half:].astype(acc)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
