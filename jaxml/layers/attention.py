"""One attention for MHA, MQA and GQA: queries grouped by reshape, keys/values never repeated.

Shapes: queries `[batch, q_len, num_heads, head_dim]`, keys/values
`[batch, kv_len, num_kv_heads, head_dim]`; inside, queries are viewed as
`[batch, q_len, num_kv_heads, heads_per_group, head_dim]` so each key/value head serves its group.
Query head `h` uses key/value head `h // heads_per_group` (the Llama/Hugging Face convention).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxml.configs import AttentionConfig
from jaxml.layers import flash_attention
from jaxml.layers.kv_cache import KVCache, append_kv
from jaxml.layers.positions import apply_rope


class AttentionOutput(NamedTuple):
    out: Array  # [batch, q_len, embed_dim]
    cache: KVCache | None  # the updated cache when one was passed in
    weights: Array | None  # [batch, num_heads, q_len, kv_len] when return_weights=True


def causal_mask(q_len: int, kv_len: int | None = None, offset: Array | int = 0) -> Array:
    """`[q_len, kv_len]` bool, True where query `offset + i` may see key `j` (j <= offset + i)."""
    kv_len = q_len if kv_len is None else kv_len
    return jnp.arange(kv_len)[None, :] <= (offset + jnp.arange(q_len))[:, None]


def dot_product_attention(
    q: Array, k: Array, v: Array, allowed: Array | None = None
) -> tuple[Array, Array]:
    """Softmax attention in float32 (float64 for float64 inputs).

    q: `[batch, q_len, num_heads, head_dim]`; k, v: `[batch, kv_len, num_kv_heads, head_dim]`;
    allowed: bool, broadcastable to `[batch, q_len, kv_len]`.
    Returns out `[batch, q_len, num_heads, head_dim]` and weights `[batch, num_heads, q_len, kv_len]`.
    """
    batch, q_len, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    qg = q.reshape(batch, q_len, num_kv_heads, num_heads // num_kv_heads, head_dim)
    acc = jnp.promote_types(q.dtype, jnp.float32)
    scores = jnp.einsum("btgrd,bsgd->bgrts", qg, k, preferred_element_type=acc)
    scores = scores * (1.0 / np.sqrt(head_dim)).astype(acc)
    if allowed is not None:
        allowed = jnp.broadcast_to(allowed, (batch, q_len, k.shape[1]))
        scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(acc).min)
    weights = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bgrts,bsgd->btgrd", weights.astype(v.dtype), v)
    return out.reshape(q.shape), weights.reshape(batch, num_heads, q_len, k.shape[1])


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads.

    Call with `x: [batch, q_len, embed_dim]` and optionally
    - `context: [batch, kv_len, embed_dim]`: cross-attention (keys/values from `context`);
    - `kv_mask: [batch, kv_len]` bool, True for real keys (padding gets zero weight);
      with a cache, kv_len is the cache's `max_seq_len`;
    - `positions: [batch, q_len]` int, rotary positions (default: cache end index + arange);
    - `cache`: a `KVCache` for self-attention decoding; the new keys/values are appended and
      the queries attend to every filled slot (causally if `apply_causal_mask`);
    - `return_weights`: also return the attention weights.
    Causal self-attention without cache, padding or weights, over at least two whole blocks, runs
    the blockwise `flash_attention.causal_attention` (same numbers, about half the work).
    """

    config: AttentionConfig

    @nn.compact
    def __call__(
        self,
        x: Array,
        context: Array | None = None,
        *,
        kv_mask: Array | None = None,
        positions: Array | None = None,
        cache: KVCache | None = None,
        return_weights: bool = False,
    ) -> AttentionOutput:
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.embed_dim:
            raise ValueError(f"x must be [batch, seq, embed_dim={cfg.embed_dim}], got {x.shape}")
        if context is not None and (cache is not None or cfg.use_rope):
            raise ValueError("cross-attention (context=...) takes neither a cache nor use_rope")
        source = x if context is None else context
        if source.ndim != 3 or source.shape[0] != x.shape[0] or source.shape[-1] != cfg.embed_dim:
            raise ValueError(
                f"context must be [batch={x.shape[0]}, kv_len, {cfg.embed_dim}], got {source.shape}"
            )
        batch, q_len, _ = x.shape
        dense = lambda features, name: nn.Dense(features, use_bias=cfg.use_bias, name=name)  # noqa: E731
        q = dense(cfg.num_heads * cfg.head_dim, "q_proj")(x).reshape(
            batch, q_len, cfg.num_heads, cfg.head_dim
        )
        kv_shape = (batch, source.shape[1], cfg.num_kv_heads, cfg.head_dim)
        k = dense(cfg.num_kv_heads * cfg.head_dim, "k_proj")(source).reshape(kv_shape)
        v = dense(cfg.num_kv_heads * cfg.head_dim, "v_proj")(source).reshape(kv_shape)

        offset = jnp.zeros((), jnp.int32) if cache is None else cache.end_index
        if cfg.use_rope:
            if positions is None:
                positions = jnp.broadcast_to(offset + jnp.arange(q_len), (batch, q_len))
            q = apply_rope(q, positions, cfg.rope_theta)
            k = apply_rope(k, positions, cfg.rope_theta)

        allowed = None
        overflowed = None
        if cache is not None:
            cache, overflowed = append_kv(cache, k, v)
            k, v = cache.k, cache.v
            kv_len = k.shape[1]
            if cfg.apply_causal_mask:
                allowed = causal_mask(q_len, kv_len, offset)[None]
            else:
                allowed = (jnp.arange(kv_len) < cache.end_index)[None, None, :]
        elif cfg.apply_causal_mask and context is None:
            allowed = causal_mask(q_len)[None]
        if kv_mask is not None:
            if kv_mask.shape != (batch, k.shape[1]):
                raise ValueError(
                    f"kv_mask must be [batch, kv_len]={(batch, k.shape[1])}, got {kv_mask.shape}"
                )
            padding = kv_mask.astype(bool)[:, None, :]
            allowed = padding if allowed is None else allowed & padding

        block_size = flash_attention.pick_block_size(q_len, k.shape[1])
        if (
            cfg.apply_causal_mask
            and context is None
            and cache is None
            and kv_mask is None
            and block_size
            and not return_weights
        ):
            attended, weights = flash_attention.causal_attention(q, k, v, block_size), None
        else:
            attended, weights = dot_product_attention(q, k, v, allowed)
        out = dense(cfg.embed_dim, "o_proj")(
            attended.reshape(batch, q_len, cfg.num_heads * cfg.head_dim)
        )
        if overflowed is not None:
            out = jnp.where(overflowed, jnp.nan, out)
        return AttentionOutput(out, cache, weights if return_weights else None)
