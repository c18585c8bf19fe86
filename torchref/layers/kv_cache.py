"""Key/value cache for incremental decoding, PyTorch twin (functional: returns a new cache).

Buffers `k`, `v`: `[batch, max_seq_len, num_kv_heads, head_dim]`; `end_index`: filled slots.
Eager PyTorch can check bounds, so an overflowing append raises instead of returning NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from jaxml.configs import AttentionConfig


class KVCache(NamedTuple):
    k: torch.Tensor  # [batch, max_seq_len, num_kv_heads, head_dim]
    v: torch.Tensor  # [batch, max_seq_len, num_kv_heads, head_dim]
    end_index: int  # number of filled slots

    @property
    def max_seq_len(self) -> int:
        return int(self.k.shape[1])


def init_kv_cache(
    config: AttentionConfig,
    batch: int,
    max_seq_len: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> KVCache:
    """An empty cache for one attention layer."""
    if batch < 1 or max_seq_len < 1:
        raise ValueError(
            f"init_kv_cache needs batch >= 1 and max_seq_len >= 1, got {batch}, {max_seq_len}"
        )
    shape = (batch, max_seq_len, config.num_kv_heads, config.head_dim)
    zeros = torch.zeros(shape, dtype=dtype, device=device)
    return KVCache(zeros, zeros.clone(), 0)


def append_kv(cache: KVCache, k: torch.Tensor, v: torch.Tensor) -> KVCache:
    """Write `k, v: [batch, seq, kv_heads, head_dim]` at `end_index`; raise if it does not fit."""
    if k.shape[0] != cache.k.shape[0] or k.shape[2:] != cache.k.shape[2:]:
        raise ValueError(
            f"cache holds [batch, len, kv_heads, head_dim]={tuple(cache.k.shape)}, new keys are {tuple(k.shape)}"
        )
    start, end = cache.end_index, cache.end_index + k.shape[1]
    if end > cache.max_seq_len:
        raise ValueError(
            f"cache overflow: writing positions {start}..{end - 1} into max_seq_len={cache.max_seq_len}"
        )
    new_k, new_v = cache.k.clone(), cache.v.clone()
    new_k[:, start:end] = k.to(new_k.dtype)
    new_v[:, start:end] = v.to(new_v.dtype)
    return KVCache(new_k, new_v, end)
