"""The Llama-style decoder-only LM, PyTorch twin of `jaxml.models.lm`.

Same modules and names (`embed`, `layers.N.{attn_norm, attn, ffn_norm, ffn}`, `norm`, `lm_head`
unless `tie_embeddings`), same `(logits, aux)` output, `step` decode call and `generate`, so
`torchref.convert` maps the two parameter sets one to one. Under `dtype="bfloat16"` the blocks run
in `torch.autocast` (bfloat16 matmuls); the final norm and the logits stay float32.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from jaxml.configs import DecodeConfig, SamplingConfig
from jaxml.configs.lm import LMConfig
from torchref.decoding import loop, sampling
from torchref.layers import kv_cache
from torchref.layers.attention import Attention
from torchref.layers.ffn import SwiGLU
from torchref.layers.kv_cache import KVCache
from torchref.layers.moe import MoE
from torchref.layers.norms import RMSNorm
from torchref.models.transformer import Aux, collect_aux

Cache = tuple[KVCache, ...]
EMBED_INIT_STD = 0.02


class Block(nn.Module):
    """`(x, positions, cache, mask) -> (x, cache, aux)`; shapes as in jaxml."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.attn_norm = RMSNorm(config.embed_dim, config.norm_eps)
        self.attn = Attention(config.attention_config())
        self.ffn_norm = RMSNorm(config.embed_dim, config.norm_eps)
        ffn = config.ffn_config()
        self.ffn = MoE(ffn) if config.use_moe else SwiGLU(ffn)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache | None, Aux]:
        attended = self.attn(self.attn_norm(x), positions=positions, cache=cache, mask=mask)
        x = x + attended.out
        if self.config.use_moe:
            y, aux = self.ffn(self.ffn_norm(x))
        else:
            y, aux = self.ffn(self.ffn_norm(x)), {}
        return x + y, attended.cache, aux


class LM(nn.Module):
    """`ids [batch, seq] -> (logits [batch, seq, vocab_size] float32, aux)`."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        nn.init.normal_(self.embed.weight, std=EMBED_INIT_STD)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.embed_dim, config.norm_eps)
        self.lm_head = (
            None
            if config.tie_embeddings
            else nn.Linear(config.embed_dim, config.vocab_size, bias=False)
        )

    def _check(self, ids: torch.Tensor) -> None:
        if ids.ndim != 2 or ids.dtype.is_floating_point:
            raise ValueError(
                f"ids must be integer [batch, seq], got {ids.dtype} {tuple(ids.shape)}"
            )
        if ids.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"ids has {ids.shape[1]} positions, more than max_seq_len={self.config.max_seq_len}"
            )

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        if self.config.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=getattr(torch, self.config.dtype))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x.to(torch.promote_types(x.dtype, torch.float32)))
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight.to(h.dtype))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, Aux]:
        self._check(ids)
        moe_aux = []
        with self._autocast(ids.device):
            x = self.embed(ids)
            for layer in self.layers:
                x, _, aux = layer(x)
                if aux:
                    moe_aux.append(aux)
        return self._logits(x), collect_aux(moe_aux, ids.device)

    def step(
        self, ids: torch.Tensor, positions: torch.Tensor, cache: Cache, mask: torch.Tensor
    ) -> tuple[torch.Tensor, Cache]:
        """Decode `ids [batch, n]` at `positions [batch, n]` into `cache`; `mask [batch, n, cache_len]`."""
        self._check(ids)
        if len(cache) != self.config.num_layers:
            raise ValueError(
                f"cache has {len(cache)} layers, the model has num_layers={self.config.num_layers}"
            )
        new_cache = []
        with self._autocast(ids.device):
            x = self.embed(ids)
            for layer, layer_cache in zip(self.layers, cache, strict=True):
                x, updated, _ = layer(x, positions, layer_cache, mask)
                assert updated is not None
                new_cache.append(updated)
        return self._logits(x), tuple(new_cache)


def init_cache(
    config: LMConfig,
    batch: int,
    cache_len: int | None = None,
    window: int | None = None,
    device: torch.device | str = "cpu",
) -> Cache:
    """An empty decode cache: one `KVCache` per layer (as in jaxml)."""
    length = config.max_seq_len if cache_len is None else cache_len
    if window is None and length > config.max_seq_len:
        raise ValueError(
            f"init_cache cache_len={length} exceeds the model's max_seq_len={config.max_seq_len}"
        )
    dtype = getattr(torch, config.dtype)
    layer = kv_cache.init(
        batch,
        length,
        config.num_kv_heads,
        config.head_dim,
        window=window,
        dtype=dtype,
        device=device,
    )
    return tuple(layer for _ in range(config.num_layers))


SOTATransformer = LM  # the original framework's name for this model


class Generated(NamedTuple):
    tokens: torch.Tensor  # int32 [batch, max_new_tokens]; `pad_id` after a row is done
    num_generated: torch.Tensor  # int32 [batch]


@torch.no_grad()
def generate(
    model: LM,
    prompt_ids: torch.Tensor,
    prompt_lengths: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    sampling_config: SamplingConfig | None = None,
    noise: torch.Tensor | None = None,
    decode_config: DecodeConfig | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    stop_early: bool = False,
) -> Generated:
    """As jaxml's `generate` (cached decoding only); sampling reads `noise [max_new_tokens,
    batch, vocab]` (Exponential(1), e.g. the noise jaxml drew) instead of a key; greedy needs none.
    """
    config = model.config
    sampling_config = sampling_config or SamplingConfig(temperature=0.0)
    decode_config = decode_config or DecodeConfig()
    if not decode_config.use_kv_cache:
        raise ValueError(
            "torchref generate decodes with the cache (DecodeConfig.use_kv_cache=True)"
        )
    batch, prompt_len = prompt_ids.shape
    if prompt_lengths is None:
        prompt_lengths = torch.full((batch,), prompt_len, dtype=torch.int32)
    if noise is None:
        if not sampling_config.greedy:
            raise ValueError("sampling needs noise [max_new_tokens, batch, vocab_size]")
        noise = torch.ones(max_new_tokens, batch, config.vocab_size)
    cache_len = decode_config.cache_len(prompt_len, max_new_tokens)
    cache = init_cache(config, batch, cache_len, decode_config.window, prompt_ids.device)

    def step(cache: Cache, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> Any:
        return model.step(ids, positions, cache, mask)

    result = loop.decode(
        step,
        cache,
        prompt_ids,
        prompt_lengths,
        steps=max_new_tokens,
        select=sampling.sampler(sampling_config, noise),
        eos_id=eos_id,
        stop_early=stop_early,
        pad_value=pad_id,
    )
    return Generated(result.outputs, result.num_generated)
