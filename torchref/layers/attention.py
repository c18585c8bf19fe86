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
from torchref.layers import kv_cache
from torchref.layers.kv_cache import KVCache
from torchref.layers.positions import apply_rope

BLOCK_SIZES = (
    64,
    32,
)  # jaxml's blockwise kernel sizes: `kernel="blockwise"` accepts the same calls


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
    """Multi-head attention with grouped key/value heads; same call as the jaxml module.

    `config.kernel` is validated like jaxml's (a `blockwise`, `fused` or `cudnn` request the jaxml
    kernel could not serve is an error); the computation is `F.scaled_dot_product_attention` either way, or the
    explicit path when weights are asked for. A cache write that does not fit raises.
    """

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

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[batch, kv_len, embed_dim]` -> keys, values `[batch, kv_len, num_kv_heads, head_dim]`."""
        cfg = self.config
        if source.ndim != 3 or source.shape[-1] != cfg.embed_dim:
            raise ValueError(
                f"context must be [batch, kv_len, embed_dim={cfg.embed_dim}], got {tuple(source.shape)}"
            )
        shape = (*source.shape[:2], cfg.num_kv_heads, cfg.head_dim)
        return self.k_proj(source).view(shape), self.v_proj(source).view(shape)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> AttentionOutput:
        cfg = self.config
        cross = context is not None or context_kv is not None
        self._check_call(x, context, context_kv, positions, cache, mask)
        batch, q_len, _ = x.shape
        q = self.q_proj(x).view(batch, q_len, cfg.num_heads, cfg.head_dim)
        if context_kv is None:
            k, v = self.project_kv(x if context is None else context)
        else:
            k, v = context_kv
            expected = (batch, k.shape[1], cfg.num_kv_heads, cfg.head_dim)
            if tuple(k.shape) != expected or k.shape != v.shape:
                raise ValueError(
                    f"context_kv must be two {expected} tensors (from project_kv), "
                    f"got {tuple(k.shape)} and {tuple(v.shape)}"
                )
        if cfg.use_rope:
            if positions is None:
                positions = torch.arange(q_len, device=x.device).expand(batch, q_len)
            q = apply_rope(q, positions, cfg.rope_theta)
            k = apply_rope(k, positions, cfg.rope_theta)
        if cache is not None:
            cache = kv_cache.append(cache, k, v)
            k, v = cache.k, cache.v
        _check_fused(cfg.kernel, q, return_weights)
        self._check_kernel(q_len, k.shape[1], cross, cache, mask, kv_mask, return_weights)
        allowed = self._allowed(batch, q_len, k.shape[1], cross, kv_mask, mask, x.device)
        weights = None
        if return_weights:
            attended, weights = dot_product_attention(q, k, v, allowed)
        else:
            attended = fused_attention(q, k, v, allowed)
        out = self.o_proj(attended.reshape(batch, q_len, cfg.num_heads * cfg.head_dim))
        return AttentionOutput(out, cache, weights)

    def _check_call(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None,
        positions: torch.Tensor | None,
        cache: KVCache | None,
        mask: torch.Tensor | None,
    ) -> None:
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.embed_dim:
            raise ValueError(
                f"x must be [batch, seq, embed_dim={cfg.embed_dim}], got {tuple(x.shape)}"
            )
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
        if positions is not None and tuple(positions.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"positions must be [batch, q_len]={tuple(x.shape[:2])}, got {tuple(positions.shape)}"
            )

    def _allowed(
        self,
        batch: int,
        q_len: int,
        kv_len: int,
        cross: bool,
        kv_mask: torch.Tensor | None,
        mask: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor | None:
        """`[batch, q_len, kv_len]` bool of visible keys, or None (everything visible)."""
        allowed = None
        if mask is not None:
            if tuple(mask.shape) != (batch, q_len, kv_len):
                raise ValueError(
                    f"mask must be [batch, q_len, kv_len]={(batch, q_len, kv_len)}, got {tuple(mask.shape)}"
                )
            allowed = mask.bool()
        elif self.config.apply_causal_mask and not cross:
            allowed = causal_mask(q_len, kv_len, device=device)[None]
        if kv_mask is not None:
            if tuple(kv_mask.shape) != (batch, kv_len):
                raise ValueError(
                    f"kv_mask must be [batch, kv_len]={(batch, kv_len)}, got {tuple(kv_mask.shape)}"
                )
            padding = kv_mask.bool()[:, None, :]
            allowed = padding if allowed is None else allowed & padding
        return None if allowed is None else allowed.expand(batch, q_len, kv_len)

    def _check_kernel(
        self,
        q_len: int,
        kv_len: int,
        cross: bool,
        cache: KVCache | None,
        mask: torch.Tensor | None,
        kv_mask: torch.Tensor | None,
        return_weights: bool,
    ) -> None:
        if self.config.kernel != "blockwise":
            return
        whole_blocks = q_len == kv_len and any(
            q_len % b == 0 and q_len >= 2 * b for b in BLOCK_SIZES
        )
        obstacles = {
            "a non-causal config": not self.config.apply_causal_mask,
            "cross-attention": cross,
            "a cache": cache is not None,
            "an explicit mask": mask is not None,
            "a kv_mask": kv_mask is not None,
            "return_weights": return_weights,
            f"q_len={q_len}, kv_len={kv_len} (not two or more whole blocks of {BLOCK_SIZES})": (
                not whole_blocks
            ),
        }
        blocked = [what for what, present in obstacles.items() if present]
        if blocked:
            raise ValueError(
                f"AttentionConfig.kernel='blockwise' cannot serve a call with {', '.join(blocked)}: "
                "use kernel='dense' or 'auto'"
            )


def _check_fused(kernel: str, q: torch.Tensor, return_weights: bool) -> None:
    """jaxml's `fused` cannot return weights; `cudnn` also needs CUDA and float16/bfloat16."""
    if kernel not in ("fused", "cudnn"):
        return
    blocked = ["return_weights"] if return_weights else []
    if kernel == "cudnn":
        if q.device.type != "cuda":
            blocked.append(f"no CUDA GPU (device {q.device.type!r})")
        if q.dtype not in (torch.float16, torch.bfloat16):
            blocked.append(
                f"dtype {str(q.dtype).removeprefix('torch.')} (cuDNN takes float16 or bfloat16)"
            )
    if blocked:
        raise ValueError(
            f"AttentionConfig.kernel={kernel!r} cannot serve a call with {', '.join(blocked)}: "
            "use kernel='dense' or 'auto'"
        )
