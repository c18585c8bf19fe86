"""One attention for MHA, MQA and GQA: queries grouped by reshape, keys/values never repeated.

Shapes: queries `[batch, q_len, num_heads, head_dim]`, keys/values
`[batch, kv_len, num_kv_heads, head_dim]`; inside, queries are viewed as
`[batch, q_len, num_kv_heads, heads_per_group, head_dim]` so each key/value head serves its group.
Query head `h` uses key/value head `h // heads_per_group` (the Llama/Hugging Face convention).
"""

from __future__ import annotations

from functools import partial
from typing import Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxml.configs import AttentionConfig
from jaxml.layers import flash_attention, kv_cache
from jaxml.layers.dense import Dense
from jaxml.layers.kv_cache import KVCache
from jaxml.layers.positions import apply_rope


class AttentionOutput(NamedTuple):
    out: Array  # [batch, q_len, embed_dim]
    cache: KVCache | None  # the cache after this call's append, when one was passed in
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


Implementation = Literal["xla", "cudnn"] | None
FUSED_IMPLEMENTATIONS: dict[str, Implementation] = {"fused": None, "cudnn": "cudnn"}  # jax's names


def fused_attention(
    q: Array,
    k: Array,
    v: Array,
    allowed: Array | None,
    causal: bool,
    implementation: Implementation,
) -> Array:
    """`jax.nn.dot_product_attention`: shapes as `dot_product_attention`, output only.

    `allowed` (bool, broadcastable to `[batch, q_len, kv_len]`) and `causal` combine;
    `implementation` is jax's: None lets jax choose (XLA in jax 0.10.2), "cudnn" forces cuDNN.
    """
    mask = None if allowed is None else allowed[:, None]  # [batch | 1, 1, q_len, kv_len]
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=causal, implementation=implementation
    )


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads.

    Call with `x: [batch, q_len, embed_dim]` and optionally
    - `context: [batch, kv_len, embed_dim]`: cross-attention, keys/values projected from it; or
      `context_kv`: the same keys/values computed once by `project_kv(context)` (decoding reuses
      them every step);
    - `kv_mask: [batch, kv_len]` bool, True for real keys (padding gets zero weight);
    - `cache` (self-attention decoding): this call's keys/values are appended to it, and the
      queries attend to the cache; then `positions: [batch, q_len]` int32 (rotary positions) and
      `mask: [batch, q_len, cache_len]` bool are required: the decode loop builds them once per
      step (`kv_cache.next_positions`, `kv_cache.attention_mask`) for every layer;
    - `mask: [batch, q_len, kv_len]` bool without a cache: replaces the causal mask;
    - `positions` without a cache: rotary positions (default `0 .. q_len-1` for every row);
    - `return_weights`: also return the attention weights.
    The kernel is `config.kernel` (see `AttentionConfig`); asking `blockwise`, `fused` or `cudnn`
    for a call it cannot serve is an error. A row whose cache write did not fit returns NaN (see `kv_cache`).
    """

    config: AttentionConfig

    def setup(self) -> None:
        cfg = self.config
        dense = partial(Dense, use_bias=cfg.use_bias)
        self.q_proj = dense(cfg.num_heads * cfg.head_dim)
        self.k_proj = dense(cfg.num_kv_heads * cfg.head_dim)
        self.v_proj = dense(cfg.num_kv_heads * cfg.head_dim)
        self.o_proj = dense(cfg.embed_dim)

    def project_kv(self, source: Array) -> tuple[Array, Array]:
        """`[batch, kv_len, embed_dim]` -> keys, values `[batch, kv_len, num_kv_heads, head_dim]`."""
        cfg = self.config
        if source.ndim != 3 or source.shape[-1] != cfg.embed_dim:
            raise ValueError(
                f"context must be [batch, kv_len, embed_dim={cfg.embed_dim}], got {source.shape}"
            )
        shape = (*source.shape[:2], cfg.num_kv_heads, cfg.head_dim)
        return self.k_proj(source).reshape(shape), self.v_proj(source).reshape(shape)

    def __call__(
        self,
        x: Array,
        context: Array | None = None,
        *,
        context_kv: tuple[Array, Array] | None = None,
        kv_mask: Array | None = None,
        positions: Array | None = None,
        cache: KVCache | None = None,
        mask: Array | None = None,
        return_weights: bool = False,
    ) -> AttentionOutput:
        cfg = self.config
        cross = context is not None or context_kv is not None
        self._check_call(x, context, context_kv, positions, cache, mask)
        batch, q_len, _ = x.shape
        q = self.q_proj(x).reshape(batch, q_len, cfg.num_heads, cfg.head_dim)
        if context_kv is None:
            k, v = self.project_kv(x if context is None else context)
        else:
            k, v = self._checked_context_kv(batch, context_kv)
        if cfg.use_rope:
            q, k = self._rotate(q, k, positions)
        fits = None
        if cache is not None:
            fits = kv_cache.write_fits(cache, q_len)
            cache = kv_cache.append(cache, k, v)
            k, v = cache.k, cache.v
        allowed = self._allowed(batch, q_len, k.shape[1], cross, kv_mask, mask)
        kernel = self._kernel(q, k.shape[1], cross, cache, mask, kv_mask, return_weights)
        if kernel == "blockwise":
            block_size = flash_attention.pick_block_size(q_len, k.shape[1])
            attended, weights = flash_attention.causal_attention(q, k, v, block_size), None
        elif kernel in FUSED_IMPLEMENTATIONS:
            causal = mask is None and cfg.apply_causal_mask and not cross
            if causal:  # the kernel masks (and on cuDNN skips) the future itself
                allowed = None if kv_mask is None else kv_mask.astype(bool)[:, None, :]
            attended = fused_attention(q, k, v, allowed, causal, FUSED_IMPLEMENTATIONS[kernel])
            weights = None
        else:
            attended, weights = dot_product_attention(q, k, v, allowed)
        out = self.o_proj(attended.reshape(batch, q_len, cfg.num_heads * cfg.head_dim))
        if fits is not None:
            out = jnp.where(fits[:, None, None], out, jnp.nan)
        return AttentionOutput(out, cache, weights if return_weights else None)

    def _rotate(self, q: Array, k: Array, positions: Array | None) -> tuple[Array, Array]:
        """Rotary embedding of queries and keys at `positions` (default `0 .. q_len-1`)."""
        if positions is None:
            batch, q_len = q.shape[:2]
            positions = jnp.broadcast_to(jnp.arange(q_len, dtype=jnp.int32), (batch, q_len))
        theta = self.config.rope_theta
        return apply_rope(q, positions, theta), apply_rope(k, positions, theta)

    def _check_call(
        self,
        x: Array,
        context: Array | None,
        context_kv: tuple[Array, Array] | None,
        positions: Array | None,
        cache: KVCache | None,
        mask: Array | None,
    ) -> None:
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.embed_dim:
            raise ValueError(f"x must be [batch, seq, embed_dim={cfg.embed_dim}], got {x.shape}")
        if context is not None and context_kv is not None:
            raise ValueError("pass either context or context_kv, not both")
        if (context is not None or context_kv is not None) and (cache is not None or cfg.use_rope):
            raise ValueError("cross-attention (context=...) takes neither a cache nor use_rope")
        if context is not None and context.shape[0] != x.shape[0]:
            raise ValueError(
                f"context must be [batch={x.shape[0]}, kv_len, embed_dim], got {tuple(context.shape)}"
            )
        if cache is not None and (mask is None or (cfg.use_rope and positions is None)):
            raise ValueError(
                "with a cache, pass mask (and positions with use_rope): build them once per step "
                "with kv_cache.attention_mask / kv_cache.next_positions"
            )
        if positions is not None and positions.shape != x.shape[:2]:
            raise ValueError(
                f"positions must be [batch, q_len]={x.shape[:2]}, got {positions.shape}"
            )

    def _checked_context_kv(
        self, batch: int, context_kv: tuple[Array, Array]
    ) -> tuple[Array, Array]:
        cfg = self.config
        k, v = context_kv
        if (
            k.shape != v.shape
            or k.ndim != 4
            or k.shape[0] != batch
            or k.shape[2:] != (cfg.num_kv_heads, cfg.head_dim)
        ):
            raise ValueError(
                f"context_kv must be two [batch={batch}, kv_len, {cfg.num_kv_heads}, {cfg.head_dim}] "
                f"arrays (from project_kv), got {k.shape} and {v.shape}"
            )
        return k, v

    def _allowed(
        self,
        batch: int,
        q_len: int,
        kv_len: int,
        cross: bool,
        kv_mask: Array | None,
        mask: Array | None,
    ) -> Array | None:
        """The `[batch, q_len, kv_len]` (or broadcastable) bool mask of visible keys, or None."""
        allowed = None
        if mask is not None:
            if mask.shape != (batch, q_len, kv_len):
                raise ValueError(
                    f"mask must be [batch, q_len, kv_len]={(batch, q_len, kv_len)}, got {mask.shape}"
                )
            allowed = mask.astype(bool)
        elif self.config.apply_causal_mask and not cross:
            allowed = causal_mask(q_len, kv_len)[None]
        if kv_mask is not None:
            if kv_mask.shape != (batch, kv_len):
                raise ValueError(
                    f"kv_mask must be [batch, kv_len]={(batch, kv_len)}, got {kv_mask.shape}"
                )
            padding = kv_mask.astype(bool)[:, None, :]
            allowed = padding if allowed is None else allowed & padding
        return allowed

    def _kernel(
        self,
        q: Array,
        kv_len: int,
        cross: bool,
        cache: KVCache | None,
        mask: Array | None,
        kv_mask: Array | None,
        return_weights: bool,
    ) -> str:
        """The kernel `config.kernel` asks for (`auto` resolved); a call it cannot serve raises."""
        kernel = self.config.kernel
        if kernel == "dense":
            return kernel
        if kernel in FUSED_IMPLEMENTATIONS:
            _check_fused(kernel, q.dtype, return_weights)
            return kernel
        q_len = q.shape[1]
        obstacles = {
            "a non-causal config": not self.config.apply_causal_mask,
            "cross-attention": cross,
            "a cache": cache is not None,
            "an explicit mask": mask is not None,
            "a kv_mask": kv_mask is not None,
            "return_weights": return_weights,
            f"q_len={q_len}, kv_len={kv_len} (not two or more whole blocks of "
            f"{flash_attention.BLOCK_SIZES})": flash_attention.pick_block_size(q_len, kv_len)
            is None,
        }
        blocked = [what for what, present in obstacles.items() if present]
        if kernel == "blockwise" and blocked:
            raise ValueError(
                f"AttentionConfig.kernel='blockwise' cannot serve a call with {', '.join(blocked)}: "
                "use kernel='dense' or 'auto'"
            )
        return "dense" if blocked else "blockwise"


def _check_fused(kernel: str, dtype: jnp.dtype, return_weights: bool) -> None:
    """`fused` cannot return weights; `cudnn` also needs a CUDA GPU and float16/bfloat16."""
    blocked = ["return_weights"] if return_weights else []
    if kernel == "cudnn":
        if jax.default_backend() != "gpu":
            blocked.append(f"no CUDA GPU (default backend {jax.default_backend()!r})")
        if dtype not in (jnp.float16, jnp.bfloat16):
            blocked.append(f"dtype {jnp.dtype(dtype).name} (cuDNN takes float16 or bfloat16)")
    if blocked:
        raise ValueError(
            f"AttentionConfig.kernel={kernel!r} cannot serve a call with {', '.join(blocked)}: "
            "use kernel='dense' or 'auto'"
        )
