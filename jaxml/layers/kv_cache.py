"""Key/value cache for incremental decoding: an explicit pytree passed in and returned.

Preallocated buffers `k`, `v`: `[batch, max_seq_len, num_kv_heads, head_dim]` and `end_index`,
the number of filled slots (shared by the batch). Writing past `max_seq_len` cannot raise inside
`jit` (and `lax.dynamic_update_slice` would silently clamp the write), so an overflowing append
marks the cache `overflowed`, and attention turns its output into NaN rather than a wrong number.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array, lax

from jaxml.configs import AttentionConfig


class KVCache(NamedTuple):
    k: Array  # [batch, max_seq_len, num_kv_heads, head_dim]
    v: Array  # [batch, max_seq_len, num_kv_heads, head_dim]
    end_index: Array  # int32 [], number of filled slots

    @property
    def max_seq_len(self) -> int:
        return int(self.k.shape[1])


def init_kv_cache(
    config: AttentionConfig, batch: int, max_seq_len: int, dtype: jnp.dtype = jnp.float32
) -> KVCache:
    """An empty cache for one attention layer."""
    if batch < 1 or max_seq_len < 1:
        raise ValueError(
            f"init_kv_cache needs batch >= 1 and max_seq_len >= 1, got {batch}, {max_seq_len}"
        )
    shape = (batch, max_seq_len, config.num_kv_heads, config.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


def append_kv(cache: KVCache, k: Array, v: Array) -> tuple[KVCache, Array]:
    """Write `k, v: [batch, seq, kv_heads, head_dim]` at `end_index`.

    Returns the new cache and `overflowed` (bool []): True when the write did not fit.
    """
    if k.shape[0] != cache.k.shape[0] or k.shape[2:] != cache.k.shape[2:]:
        raise ValueError(
            f"cache holds [batch, len, kv_heads, head_dim]={cache.k.shape}, new keys are {k.shape}"
        )
    seq = k.shape[1]
    if seq > cache.max_seq_len:
        raise ValueError(
            f"{seq} new positions cannot fit a cache of max_seq_len={cache.max_seq_len}"
        )
    start = cache.end_index
    overflowed = start + seq > cache.max_seq_len
    zero = jnp.zeros((), jnp.int32)
    index = (zero, start, zero, zero)
    new_k = lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), index)
    new_v = lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), index)
    return KVCache(new_k, new_v, start + seq), overflowed
