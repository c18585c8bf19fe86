"""Normalisation layers. LayerNorm is Flax's own (`scale`, `bias`); RMSNorm is written here."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

LayerNorm = nn.LayerNorm


class RMSNorm(nn.Module):
    """`x / sqrt(mean(x²) + eps) * scale` over the last axis, in float32 (float64 for float64 x)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        normed = x32 * jnp.reciprocal(
            jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        )
        return (normed * scale).astype(x.dtype)
