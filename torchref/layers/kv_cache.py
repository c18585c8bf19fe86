"""Per-sequence key/value cache, PyTorch twin of `jaxml.layers.kv_cache` (functional: new cache out).

Same fields and policies: `k`, `v` `[batch, cache_len, num_kv_heads, head_dim]`, `lengths`
`[batch]` int32, `positions` `[batch, cache_len]` int32 (-1 = empty), `window` (None = expanding;
else a ring buffer, token `p` in slot `p % cache_len`). Eager PyTorch always sees the lengths, so a
write that does not fit raises.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVCache:
    k: torch.Tensor  # [batch, cache_len, num_kv_heads, head_dim]
    v: torch.Tensor  # [batch, cache_len, num_kv_heads, head_dim]
    lengths: torch.Tensor  # int32 [batch]
    positions: torch.Tensor  # int32 [batch, cache_len], -1 = empty
    window: int | None = None

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
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
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
        k=torch.zeros(shape, dtype=dtype, device=device),
        v=torch.zeros(shape, dtype=dtype, device=device),
        lengths=torch.zeros(batch, dtype=torch.int32, device=device),
        positions=torch.full((batch, cache_len), -1, dtype=torch.int32, device=device),
        window=window,
    )


def next_positions(cache: KVCache, num_tokens: int) -> torch.Tensor:
    """`[batch, num_tokens]` int32: the positions the next tokens of each row take."""
    offsets = torch.arange(num_tokens, dtype=torch.int32, device=cache.lengths.device)
    return cache.lengths[:, None] + offsets


def _slots(cache: KVCache, num_tokens: int) -> torch.Tensor:
    positions = next_positions(cache, num_tokens).long()
    return positions if cache.window is None else positions % cache.cache_len


def written_positions(cache: KVCache, num_tokens: int) -> torch.Tensor:
    """`[batch, cache_len]`: the slot positions after appending `num_tokens` tokens to each row.

    Tokens past the end of an expanding cache land in a spare column that is cut off (dropped).
    """
    spare = torch.full_like(cache.positions[:, :1], -1)
    positions = torch.cat([cache.positions, spare], dim=1)
    slots = _slots(cache, num_tokens).clamp(max=cache.cache_len)
    positions.scatter_(1, slots, next_positions(cache, num_tokens))
    return positions[:, : cache.cache_len]


def attention_mask(cache: KVCache, num_tokens: int) -> torch.Tensor:
    """`[batch, num_tokens, cache_len]` bool: query `p` sees slots holding `p' <= p` (in the window)."""
    queries = next_positions(cache, num_tokens)[:, :, None]
    keys = written_positions(cache, num_tokens)[:, None, :]
    allowed = (keys >= 0) & (keys <= queries)
    if cache.window is not None:
        allowed &= keys > queries - cache.window
    return allowed


def write_fits(cache: KVCache, num_tokens: int) -> torch.Tensor:
    """`[batch]` bool: `num_tokens` more tokens fit each row."""
    into_free_slots = cache.lengths + num_tokens <= cache.cache_len
    if cache.window is None:
        return into_free_slots
    return into_free_slots | (num_tokens <= cache.cache_len - cache.window + 1)


def append(cache: KVCache, k: torch.Tensor, v: torch.Tensor) -> KVCache:
    """Write `k, v: [batch, n, kv_heads, head_dim]`, each row at its own offset; raise if it does not fit."""
    if k.shape != v.shape or k.shape[0] != cache.k.shape[0] or k.shape[2:] != cache.k.shape[2:]:
        raise ValueError(
            f"cache holds [batch, len, kv_heads, head_dim]={tuple(cache.k.shape)}, "
            f"new keys are {tuple(k.shape)}, values {tuple(v.shape)}"
        )
    num_tokens = k.shape[1]
    if num_tokens > cache.cache_len:
        raise ValueError(
            f"cannot write {num_tokens} tokens at once into a cache of cache_len={cache.cache_len}"
        )
    fits = write_fits(cache, num_tokens)
    if not bool(fits.all()):
        row = int(torch.argmin(fits.int()))
        policy = "expanding context" if cache.window is None else f"window={cache.window}"
        raise ValueError(
            f"cache overflow: row {row} holds {int(cache.lengths[row])} tokens, {num_tokens} more "
            f"do not fit cache_len={cache.cache_len} ({policy})"
        )
    rows = torch.arange(k.shape[0], device=k.device)[:, None]
    slots = _slots(cache, num_tokens)
    new_k, new_v = cache.k.clone(), cache.v.clone()
    new_k[rows, slots] = k.to(new_k.dtype)
    new_v[rows, slots] = v.to(new_v.dtype)
    return dataclasses.replace(
        cache,
        k=new_k,
        v=new_v,
        lengths=cache.lengths + num_tokens,
        positions=written_positions(cache, num_tokens),
    )


def truncate(cache: KVCache, new_lengths: torch.Tensor) -> KVCache:
    """Roll each row back to `new_lengths: [batch]` tokens; slots holding later positions empty."""
    new_lengths = torch.as_tensor(new_lengths, dtype=torch.int32, device=cache.lengths.device)
    if new_lengths.shape != cache.lengths.shape:
        raise ValueError(
            f"new_lengths must be [batch]={tuple(cache.lengths.shape)}, got {tuple(new_lengths.shape)}"
        )
    if bool(((new_lengths < 0) | (new_lengths > cache.lengths)).any()):
        raise ValueError(
            f"truncate needs 0 <= new_lengths <= lengths={cache.lengths.tolist()}, "
            f"got {new_lengths.tolist()}"
        )
    kept = cache.positions < new_lengths[:, None]
    positions = torch.where(kept, cache.positions, torch.full_like(cache.positions, -1))
    return dataclasses.replace(cache, lengths=new_lengths, positions=positions)


def is_full(cache: KVCache) -> torch.Tensor:
    """`[batch]` bool: no room for another token (never, for a sliding window)."""
    if cache.window is not None:
        return torch.zeros(cache.lengths.shape, dtype=torch.bool, device=cache.lengths.device)
    return cache.lengths >= cache.cache_len
