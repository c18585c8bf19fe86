"""Per-sequence key/value cache for incremental decoding: an explicit pytree in, a new one out.

`KVCache` holds, for one attention layer,
- `k`, `v`: `[batch, cache_len, num_kv_heads, head_dim]` (num_kv_heads = `num_groups`, so MQA and
  GQA caches are `num_heads / num_groups` times smaller than MHA ones);
- `lengths`: `[batch]` int32, tokens written per row (= the position of the row's next token);
- `positions`: `[batch, cache_len]` int32, the absolute position held by each slot, -1 when empty;
- `window` (static): None for an expanding context, else the sliding-window size.

Context policies (the original `expanding_context` flag):
- expanding (`window=None`): token `p` lives in slot `p`, capacity `cache_len`;
- sliding window: a ring buffer, token `p` lives in slot `p % cache_len`; a query at `p` sees the
  keys at `p - window + 1 .. p` (`window <= cache_len`). A write of `n` tokens that wraps around
  must leave the window of its first query intact: `n <= cache_len - window + 1` (a write into
  free slots, like the prefill of an empty cache, may fill the whole buffer).
Masks are built from `positions` (`attention_mask`), never from slot order.

A write that does not fit (`write_fits` is False): outside `jit`, `append` raises. Inside `jit`
the tokens past the end of an expanding cache are dropped (a scatter with `mode="drop"`, not a
`dynamic_update_slice`, which would clamp the start and overwrite valid slots), and attention
turns the row's output into NaN, so the error shows instead of a wrong number.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import Array


@struct.dataclass
class KVCache:
    k: Array  # [batch, cache_len, num_kv_heads, head_dim]
    v: Array  # [batch, cache_len, num_kv_heads, head_dim]
    lengths: Array  # int32 [batch]: tokens written per row
    positions: Array  # int32 [batch, cache_len]: absolute position per slot, -1 = empty
    window: int | None = struct.field(pytree_node=False, default=None)

    @property
    def cache_len(self) -> int:
        return int(self.k.shape[1])


def init(
    batch: int,
    cache_len: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    window: int | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> KVCache:
    """An empty cache for one attention layer; `window=None` is the expanding context."""
    for name, value in (("batch", batch), ("cache_len", cache_len), ("num_kv_heads", num_kv_heads)):
        if value < 1:
            raise ValueError(f"kv_cache.init: {name}={value} is invalid: must be >= 1")
    if window is not None and not 1 <= window <= cache_len:
        raise ValueError(
            f"kv_cache.init: window={window} is invalid: must be in [1, cache_len={cache_len}] "
            "(a window larger than the cache cannot be held)"
        )
    shape = (batch, cache_len, num_kv_heads, head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        lengths=jnp.zeros((batch,), jnp.int32),
        positions=jnp.full((batch, cache_len), -1, jnp.int32),
        window=window,
    )


def next_positions(cache: KVCache, num_tokens: int) -> Array:
    """`[batch, num_tokens]` int32: the positions the next `num_tokens` tokens of each row take."""
    return cache.lengths[:, None] + jnp.arange(num_tokens, dtype=jnp.int32)


def _slots(cache: KVCache, num_tokens: int) -> Array:
    """`[batch, num_tokens]`: where those tokens go (past the end of an expanding cache: dropped)."""
    positions = next_positions(cache, num_tokens)
    return positions if cache.window is None else positions % cache.cache_len


def written_positions(cache: KVCache, num_tokens: int) -> Array:
    """`[batch, cache_len]`: the slot positions after appending `num_tokens` tokens to each row."""
    rows = jnp.arange(cache.lengths.shape[0])[:, None]
    slots = _slots(cache, num_tokens)
    return cache.positions.at[rows, slots].set(next_positions(cache, num_tokens), mode="drop")


def attention_mask(cache: KVCache, num_tokens: int) -> Array:
    """`[batch, num_tokens, cache_len]` bool for the next `num_tokens` queries of each row.

    Built from positions, not slots: query `p` sees the written slots holding `p' <= p` (and
    `p' > p - window` with a sliding window), against the cache as it is after their append.
    """
    queries = next_positions(cache, num_tokens)[:, :, None]
    keys = written_positions(cache, num_tokens)[:, None, :]
    allowed = (keys >= 0) & (keys <= queries)
    if cache.window is not None:
        allowed &= keys > queries - cache.window
    return allowed


def write_fits(cache: KVCache, num_tokens: int) -> Array:
    """`[batch]` bool: `num_tokens` more tokens fit each row (see the module docstring)."""
    into_free_slots = cache.lengths + num_tokens <= cache.cache_len
    if cache.window is None:
        return into_free_slots
    return into_free_slots | (num_tokens <= cache.cache_len - cache.window + 1)


def _concrete(x: Array) -> np.ndarray | None:
    return None if isinstance(x, jax.core.Tracer) else np.asarray(x)


def append(cache: KVCache, k: Array, v: Array) -> KVCache:
    """Write `k, v: [batch, n, kv_heads, head_dim]`, each row at its own offset `lengths[row]`."""
    if k.shape != v.shape or k.shape[0] != cache.k.shape[0] or k.shape[2:] != cache.k.shape[2:]:
        raise ValueError(
            f"cache holds [batch, len, kv_heads, head_dim]={cache.k.shape}, "
            f"new keys are {k.shape}, values {v.shape}"
        )
    num_tokens = k.shape[1]
    if num_tokens > cache.cache_len:
        raise ValueError(
            f"cannot write {num_tokens} tokens at once into a cache of cache_len={cache.cache_len}"
        )
    fits = (
        _concrete(write_fits(cache, num_tokens)) if _concrete(cache.lengths) is not None else None
    )
    if fits is not None and not fits.all():
        row = int(np.argmin(fits))
        policy = "expanding context" if cache.window is None else f"window={cache.window}"
        raise ValueError(
            f"cache overflow: row {row} holds {int(cache.lengths[row])} tokens, {num_tokens} more "
            f"do not fit cache_len={cache.cache_len} ({policy})"
        )
    rows = jnp.arange(k.shape[0])[:, None]
    slots = _slots(cache, num_tokens)
    return dataclasses.replace(
        cache,
        k=cache.k.at[rows, slots].set(k.astype(cache.k.dtype), mode="drop"),
        v=cache.v.at[rows, slots].set(v.astype(cache.v.dtype), mode="drop"),
        lengths=cache.lengths + num_tokens,
        positions=written_positions(cache, num_tokens),
    )


def truncate(cache: KVCache, new_lengths: Array) -> KVCache:
    """Roll each row back to `new_lengths: [batch]` tokens (`0 <= new_lengths <= lengths`).

    Slots holding positions `>= new_lengths` become empty. With a sliding window, positions that
    were already overwritten cannot come back: roll back at most `cache_len - window` tokens.
    """
    new_lengths = jnp.asarray(new_lengths, jnp.int32)
    if new_lengths.shape != cache.lengths.shape:
        raise ValueError(
            f"new_lengths must be [batch]={cache.lengths.shape}, got {new_lengths.shape}"
        )
    new, old = _concrete(new_lengths), _concrete(cache.lengths)
    if new is not None and old is not None and np.any((new < 0) | (new > old)):
        raise ValueError(f"truncate needs 0 <= new_lengths <= lengths={old}, got {new}")
    kept = cache.positions < new_lengths[:, None]
    return dataclasses.replace(
        cache, lengths=new_lengths, positions=jnp.where(kept, cache.positions, -1)
    )


def is_full(cache: KVCache) -> Array:
    """`[batch]` bool: no room for another token (never, for a sliding window)."""
    if cache.window is not None:
        return jnp.zeros(cache.lengths.shape, bool)
    return cache.lengths >= cache.cache_len
