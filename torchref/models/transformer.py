"""The classic post-norm transformer, PyTorch twin of `jaxml.models.transformer`.

Same blocks, same attribute names (`encoder.input_proj`, `encoder.layers.0.self_attn`, `norm1`,
`ffn`, `norm2`, decoder `cross_attn` / `norm3`, `head`), same `(prediction, aux)` outputs, and the
same cached decoding methods (`decode_step`, `init_cache`, `EncoderDecoder.start_decoding`).
"""

from __future__ import annotations

from typing import NamedTuple, cast

import torch
from torch import nn

from jaxml.configs import FFNConfig, TransformerConfig
from torchref.layers import kv_cache
from torchref.layers.attention import Attention
from torchref.layers.ffn import make_ffn
from torchref.layers.kv_cache import KVCache
from torchref.layers.moe import MoE
from torchref.layers.positions import sinusoidal_positions

Aux = dict[str, torch.Tensor]
LayerCaches = tuple[KVCache, ...]


class DecoderCache(NamedTuple):
    """Per decoder layer a self-attention `KVCache` and the cross-attention keys/values."""

    self_attn: LayerCaches
    cross_kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    source_mask: torch.Tensor | None


def init_cache(
    config: TransformerConfig,
    num_layers: int,
    batch: int,
    cache_len: int,
    *,
    window: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> LayerCaches:
    """One empty self-attention `KVCache` per layer (`window=None`: expanding context)."""
    attn = config.attention_config(causal=True)
    return tuple(
        kv_cache.init(
            batch,
            cache_len,
            attn.num_kv_heads,
            attn.head_dim,
            window=window,
            dtype=dtype,
            device=device,
        )
        for _ in range(num_layers)
    )


def collect_aux(moe_aux: list[Aux], device: torch.device) -> Aux:
    """Merge the per-layer MoE aux dicts into the model-level aux (as in jaxml)."""
    if not moe_aux:
        return {"aux_loss": torch.zeros((), dtype=torch.float32, device=device)}
    return {
        "aux_loss": torch.stack([a["aux_loss"] for a in moe_aux]).sum().float(),
        "dropped_fraction": torch.stack([a["dropped_fraction"] for a in moe_aux]).mean(),
        "tokens_per_expert": torch.stack([a["tokens_per_expert"] for a in moe_aux]),
    }


def _make_ffn_slot(config: FFNConfig) -> nn.Module:
    if config.use_moe:
        return MoE(config)
    return make_ffn(config)


def _apply_ffn_slot(
    ffn: nn.Module, x: torch.Tensor, use_moe: bool
) -> tuple[torch.Tensor, list[Aux]]:
    if use_moe:
        y, aux = ffn(x)
        return y, [aux]
    return ffn(x), []


class EncoderBlock(nn.Module):
    """`[batch, seq, embed_dim] -> [batch, seq, embed_dim]`; `mask: [batch, seq]` True = real."""

    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__()
        self.config = config
        self.self_attn = Attention(config.attention_config(causal))
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.ffn = _make_ffn_slot(config.ffn)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[Aux]]:
        return self._feed_forward(self.norm1(x + self.self_attn(x, kv_mask=mask).out))

    def decode(
        self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: KVCache
    ) -> tuple[torch.Tensor, KVCache]:
        """Cached self-attention on the new positions `x: [batch, n, embed_dim]`."""
        attn = self.self_attn(x, positions=positions, cache=cache, mask=mask)
        y, _ = self._feed_forward(self.norm1(x + attn.out))
        assert attn.cache is not None
        return y, attn.cache

    def _feed_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Aux]]:
        y, aux = _apply_ffn_slot(self.ffn, x, self.config.ffn.use_moe)
        return self.norm2(x + y), aux


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to `memory: [batch, src_len, embed_dim]`, FFN."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.self_attn = Attention(config.attention_config(causal=True))
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.cross_attn = Attention(config.attention_config(causal=False))
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.ffn = _make_ffn_slot(config.ffn)
        self.norm3 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[Aux]]:
        x = self.norm1(x + self.self_attn(x).out)
        return self._cross_and_feed_forward(x, memory_mask, context=memory)

    def decode(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        memory_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Cached self-attention, then cross-attention to the precomputed `cross_kv`."""
        attn = self.self_attn(x, positions=positions, cache=cache, mask=mask)
        y, _ = self._cross_and_feed_forward(
            self.norm1(x + attn.out), memory_mask, context_kv=cross_kv
        )
        assert attn.cache is not None
        return y, attn.cache

    def _cross_and_feed_forward(
        self,
        x: torch.Tensor,
        memory_mask: torch.Tensor | None,
        context: torch.Tensor | None = None,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[Aux]]:
        cross = self.cross_attn(x, context, context_kv=context_kv, kv_mask=memory_mask)
        x = self.norm2(x + cross.out)
        y, aux = _apply_ffn_slot(self.ffn, x, self.config.ffn.use_moe)
        return self.norm3(x + y), aux


class _Embedding(nn.Module):
    """`input_proj` plus the sinusoidal table (a non-persistent buffer, so not in the state_dict)."""

    positions: torch.Tensor

    def __init__(self, config: TransformerConfig, what: str) -> None:
        super().__init__()
        self.config = config
        self.what = what
        self.input_proj = nn.Linear(config.input_dim, config.embed_dim)
        self.register_buffer(
            "positions",
            sinusoidal_positions(config.max_seq_len, config.embed_dim),
            persistent=False,
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.input_dim:
            raise ValueError(
                f"{self.what} must be [batch, seq, input_dim={cfg.input_dim}], got {tuple(x.shape)}"
            )
        if x.shape[1] > cfg.max_seq_len:
            raise ValueError(
                f"{self.what} has {x.shape[1]} positions, more than max_seq_len={cfg.max_seq_len}"
            )
        return self.input_proj(x) + self.positions[: x.shape[1]].to(x.dtype)

    def embed_at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """`embed` for the new positions of a decode step (`positions: [batch, n]`)."""
        if x.ndim != 3 or x.shape[-1] != self.config.input_dim:
            raise ValueError(
                f"input must be [batch, n, input_dim={self.config.input_dim}], got {tuple(x.shape)}"
            )
        return self.input_proj(x) + self.positions[positions.long()].to(x.dtype)


class Encoder(_Embedding):
    """`input_proj`, positions and `depth` encoder blocks (`layers.0`, ...)."""

    def __init__(self, config: TransformerConfig, depth: int, causal: bool = False) -> None:
        super().__init__(config, "input")
        self.layers = nn.ModuleList(EncoderBlock(config, causal) for _ in range(depth))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[Aux]]:
        h = self.embed(x)
        aux: list[Aux] = []
        for layer in self.layers:
            h, layer_aux = layer(h, mask)
            aux += layer_aux
        return h, aux

    def decode(
        self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, caches: LayerCaches
    ) -> tuple[torch.Tensor, LayerCaches]:
        """Causal stack on new positions only, each layer with its own cache."""
        h = self.embed_at(x, positions)
        new_caches = []
        for layer, cache in zip(cast(list[EncoderBlock], self.layers), caches, strict=True):
            h, cache = layer.decode(h, positions, mask, cache)
            new_caches.append(cache)
        return h, tuple(new_caches)


class Decoder(_Embedding):
    """`input_proj`, its own positions and `decoder_depth` decoder blocks (`layers.0`, ...)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config, "target")
        self.layers = nn.ModuleList(DecoderBlock(config) for _ in range(config.decoder_depth))

    def forward(
        self, target: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[Aux]]:
        h = self.embed(target)
        aux: list[Aux] = []
        for layer in self.layers:
            h, layer_aux = layer(h, memory, memory_mask)
            aux += layer_aux
        return h, aux

    def decode(
        self, target: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: DecoderCache
    ) -> tuple[torch.Tensor, DecoderCache]:
        """New target positions `[batch, n, input_dim]` -> `([batch, n, embed_dim], cache)`."""
        h = self.embed_at(target, positions)
        new_caches = []
        layers = cast(list[DecoderBlock], self.layers)
        for layer, self_cache, kv in zip(layers, cache.self_attn, cache.cross_kv, strict=True):
            h, self_cache = layer.decode(h, positions, mask, self_cache, kv, cache.source_mask)
            new_caches.append(self_cache)
        return h, cache._replace(self_attn=tuple(new_caches))


class TransformerModel(nn.Module):
    """Regression: `[batch, seq, input_dim] -> ([batch, output_dim], aux)` (mean-pooled)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, config.num_layers, causal=config.apply_causal_mask)
        self.head = nn.Linear(config.embed_dim, config.output_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Aux]:
        h, aux = self.encoder(x)
        return self.head(h.mean(dim=1)), collect_aux(aux, x.device)


class AutoregressiveTransformerModel(nn.Module):
    """Causal: `[batch, seq, input_dim] -> ([batch, seq, output_dim], aux)`."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, config.num_layers, causal=True)
        self.head = nn.Linear(config.embed_dim, config.output_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Aux]:
        h, aux = self.encoder(x)
        return self.head(h), collect_aux(aux, x.device)

    def generate_next_token(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction following `x`: `[batch, 1, output_dim]` (a full forward pass)."""
        return self(x)[0][:, -1:]

    def decode_step(
        self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: LayerCaches
    ) -> tuple[torch.Tensor, LayerCaches]:
        """Cached step on new positions `x: [batch, n, input_dim]` -> `([batch, n, output_dim], cache)`."""
        h, cache = self.encoder.decode(x, positions, mask, cache)
        return self.head(h), cache


class EncoderDecoder(nn.Module):
    """Sequence to sequence with optional `source_mask: [batch, src_len]` (True = real)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, config.encoder_depth)
        self.decoder = Decoder(config)
        self.head = nn.Linear(config.embed_dim, config.output_dim)

    def encode(
        self, source: torch.Tensor, source_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Aux]:
        """`-> (memory [batch, src_len, embed_dim], aux of the encoder's MoE layers)`."""
        memory, aux = self.encoder(source, source_mask)
        return memory, collect_aux(aux, source.device)

    def decode(
        self, target: torch.Tensor, memory: torch.Tensor, source_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Aux]:
        """`-> (prediction [batch, tgt_len, output_dim], aux of the decoder's MoE layers)`."""
        h, aux = self.decoder(target, memory, source_mask)
        return self.head(h), collect_aux(aux, target.device)

    def start_decoding(
        self,
        source: torch.Tensor,
        source_mask: torch.Tensor | None,
        cache_len: int,
        window: int | None = None,
    ) -> DecoderCache:
        """Encode `source` once and compute every decoder layer's cross-attention keys/values."""
        memory, _ = self.encoder(source, source_mask)
        self_caches = init_cache(
            self.config,
            self.config.decoder_depth,
            source.shape[0],
            cache_len,
            window=window,
            dtype=memory.dtype,
            device=memory.device,
        )
        layers = cast(list[DecoderBlock], self.decoder.layers)
        cross_kv = tuple(layer.cross_attn.project_kv(memory) for layer in layers)
        return DecoderCache(self_caches, cross_kv, source_mask)

    def decode_step(
        self, target: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: DecoderCache
    ) -> tuple[torch.Tensor, DecoderCache]:
        """Cached decoder step on new target positions -> `([batch, n, output_dim], cache)`."""
        h, cache = self.decoder.decode(target, positions, mask, cache)
        return self.head(h), cache

    def forward(
        self, source: torch.Tensor, target: torch.Tensor, source_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Aux]:
        memory, enc_aux = self.encoder(source, source_mask)
        h, dec_aux = self.decoder(target, memory, source_mask)
        return self.head(h), collect_aux(enc_aux + dec_aux, target.device)
