"""One attention for MHA, MQA and GQA, PyTorch twin of `jaxml.layers.attention`.

Query head `h` uses key/value head `h // heads_per_group`. Without `return_weights` the fused
`F.scaled_dot_product_attention` (with `enable_gqa`) does the work; with it, the explicit
einsum path below returns the weights. Both paths are covered by the parity tests.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from jaxml.configs import AttentionConfig
from torchref.layers.kv_cache import KVCache, append_kv
from torchref.layers.positions import apply_rope


class AttentionOutput(NamedTuple):
    out: torch.Tensor  # [batch, q_len, embed_dim]
    cache: KVCache | None
    weights: torch.Tensor | None  # [batch, num_heads, q_len, kv_len]


def causal_mask(
    q_len: int, kv_len: int | None = None, offset: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """`[q_len, kv_len]` bool, True where query `offset + i` may see key `j` (j <= offset + i)."""
    kv_len = q_len if kv_len is None else kv_len
    return (
        torch.arange(kv_len, device=device)[None, :]
        <= (offset + torch.arange(q_len, device=device))[:, None]
    )


def dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit softmax attention in float32 (float64 for float64 inputs); shapes as in jaxml."""
    batch, q_len, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    acc = torch.promote_types(q.dtype, torch.float32)
    qg = q.reshape(batch, q_len, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = torch.einsum("btgrd,bsgd->bgrts", qg.to(acc), k.to(acc)) / math.sqrt(head_dim)
    if allowed is not None:
        allowed = allowed.expand(batch, q_len, k.shape[1])
        scores = scores.masked_fill(~allowed[:, None, None], torch.finfo(acc).min)
    weights = torch.softmax(scores, dim=-1)
    out = torch.einsum("bgrts,bsgd->btgrd", weights.to(v.dtype), v)
    return out.reshape(q.shape), weights.reshape(batch, num_heads, q_len, k.shape[1])


def fused_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` on the same layout; masked logits as in the explicit path."""
    bias = None
    if allowed is not None:
        zero = torch.zeros((), dtype=q.dtype, device=q.device)
        bias = torch.where(
            allowed, zero, torch.tensor(torch.finfo(q.dtype).min, dtype=q.dtype, device=q.device)
        )[:, None]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias, enable_gqa=True
    )
    return out.transpose(1, 2)


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads; same call as the jaxml module."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.config = config
        kv_features = config.num_kv_heads * config.head_dim
        self.q_proj = nn.Linear(
            config.embed_dim, config.num_heads * config.head_dim, bias=config.use_bias
        )
        self.k_proj = nn.Linear(config.embed_dim, kv_features, bias=config.use_bias)
        self.v_proj = nn.Linear(config.embed_dim, kv_features, bias=config.use_bias)
        self.o_proj = nn.Linear(
            config.num_heads * config.head_dim, config.embed_dim, bias=config.use_bias
        )

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        kv_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_weights: bool = False,
    ) -> AttentionOutput:
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.embed_dim:
            raise ValueError(
                f"x must be [batch, seq, embed_dim={cfg.embed_dim}], got {tuple(x.shape)}"
            )
        if context is not None and (cache is not None or cfg.use_rope):
            raise ValueError("cross-attention (context=...) takes neither a cache nor use_rope")
        source = x if context is None else context
        if source.ndim != 3 or source.shape[0] != x.shape[0] or source.shape[-1] != cfg.embed_dim:
            raise ValueError(
                f"context must be [batch={x.shape[0]}, kv_len, {cfg.embed_dim}], got {tuple(source.shape)}"
            )
        batch, q_len, _ = x.shape
        q = self.q_proj(x).view(batch, q_len, cfg.num_heads, cfg.head_dim)
        kv_shape = (batch, source.shape[1], cfg.num_kv_heads, cfg.head_dim)
        k = self.k_proj(source).view(kv_shape)
        v = self.v_proj(source).view(kv_shape)

        offset = 0 if cache is None else cache.end_index
        if cfg.use_rope:
            if positions is None:
                positions = (offset + torch.arange(q_len, device=x.device)).expand(batch, q_len)
            q = apply_rope(q, positions, cfg.rope_theta)
            k = apply_rope(k, positions, cfg.rope_theta)

        allowed = None
        if cache is not None:
            cache = append_kv(cache, k, v)
            k, v = cache.k, cache.v
            kv_len = k.shape[1]
            if cfg.apply_causal_mask:
                allowed = causal_mask(q_len, kv_len, offset, x.device)[None]
            else:
                allowed = (torch.arange(kv_len, device=x.device) < cache.end_index)[None, None, :]
        elif cfg.apply_causal_mask and context is None:
            allowed = causal_mask(q_len, device=x.device)[None]
        if kv_mask is not None:
            if tuple(kv_mask.shape) != (batch, k.shape[1]):
                raise ValueError(
                    f"kv_mask must be [batch, kv_len]={(batch, k.shape[1])}, got {tuple(kv_mask.shape)}"
                )
            padding = kv_mask.bool()[:, None, :]
            allowed = padding if allowed is None else allowed & padding
        if allowed is not None:
            allowed = allowed.expand(batch, q_len, k.shape[1])

        weights = None
        if return_weights:
            attended, weights = dot_product_attention(q, k, v, allowed)
        else:
            attended = fused_attention(q, k, v, allowed)
        out = self.o_proj(attended.reshape(batch, q_len, cfg.num_heads * cfg.head_dim))
        return AttentionOutput(out, cache, weights)
