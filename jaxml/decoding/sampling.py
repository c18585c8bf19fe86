"""Next-token selection as pure functions of logits and explicit random noise.

`sample(logits, noise, config)` is `argmax(probs / noise)` with `noise ~ Exponential(1)` (the
exponential race, as in gpt-fast): it draws token `i` with probability `probs[i]`, and any
implementation given the same `noise` array picks the same token. `probs` is
`probabilities(logits, config)`: temperature, then top-k, top-p and min-p filtering, normalised.
Ties keep every token equal to a threshold, so the filters do not depend on sort stability.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array, lax

from jaxml.configs import SamplingConfig


def probabilities(logits: Array, config: SamplingConfig) -> Array:
    """`[..., vocab]` logits -> filtered, normalised probabilities (float32, float64 for float64).

    Needs `config.temperature > 0` (a greedy config has no distribution to sample from).
    """
    if config.greedy:
        raise ValueError("probabilities needs SamplingConfig.temperature > 0 (0 means greedy)")
    acc = jnp.promote_types(logits.dtype, jnp.float32)
    scaled = logits.astype(acc) / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = lax.top_k(scaled, config.top_k)[0][..., -1:]
        scaled = jnp.where(scaled >= kth, scaled, -jnp.inf)
    probs = jax.nn.softmax(scaled, axis=-1)
    if config.top_p is not None and config.top_p < 1:
        descending = -jnp.sort(-probs, axis=-1)
        mass_before = jnp.cumsum(descending, axis=-1) - descending
        kept = jnp.where(mass_before < config.top_p, descending, jnp.inf)
        probs = jnp.where(probs >= jnp.min(kept, axis=-1, keepdims=True), probs, 0)
    if config.min_p is not None:
        floor = config.min_p * jnp.max(probs, axis=-1, keepdims=True)
        probs = jnp.where(probs >= floor, probs, 0)
    return probs / jnp.sum(probs, axis=-1, keepdims=True)


def exponential_noise(key: Array, shape: tuple[int, ...]) -> Array:
    """float32 `Exponential(1)` noise of `shape` (one value per vocabulary entry)."""
    return jax.random.exponential(key, shape, jnp.float32)


def sample(logits: Array, noise: Array, config: SamplingConfig) -> Array:
    """int32 tokens `[...]` from `logits: [..., vocab]` and `noise` (same shape, Exponential(1))."""
    if config.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if noise.shape != logits.shape:
        raise ValueError(f"noise must have the logits' shape {logits.shape}, got {noise.shape}")
    probs = probabilities(logits, config)
    noise = jnp.maximum(noise.astype(probs.dtype), jnp.finfo(probs.dtype).tiny)
    return jnp.argmax(probs / noise, axis=-1).astype(jnp.int32)


def sampler(config: SamplingConfig) -> Callable[[Array, Array], Array]:
    """The decode loop's `select(logits [batch, vocab], key) -> tokens [batch]` for `config`."""

    def select(logits: Array, key: Array) -> Array:
        return sample(logits, exponential_noise(key, logits.shape), config)

    return select
