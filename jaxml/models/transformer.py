"""The classic post-norm transformer: regression, autoregressive and encoder-decoder models.

Every model: input projection -> sinusoidal positions -> N blocks -> head. An encoder block is
`x = norm1(x + self_attn(x)); x = norm2(x + ffn(x))`; a decoder block adds
`norm2(x + cross_attn(x, memory))` between the two, its FFN norm is `norm3`.
The FFN slot is `make_ffn(config.ffn)` or, with `config.ffn.use_moe`, `jaxml.layers.moe.MoE`.

Outputs are `(prediction, aux)`: `aux["aux_loss"]` is a float32 scalar (0 without MoE, else the
sum of the MoE layers' `aux_loss`); with MoE `aux` also holds `dropped_fraction` (mean over MoE
layers) and `tokens_per_expert` `[num_moe_layers, num_experts]` (encoder layers first).

Cached decoding (`jaxml.decoding.loop`): `AutoregressiveTransformerModel.decode_step` and
`EncoderDecoder.decode_step` take `(inputs, positions, mask, cache)` and return
`(prediction, cache)`; the caches come from `init_cache` / `EncoderDecoder.start_decoding` (which
computes each decoder layer's cross-attention keys/values once from the encoder output).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from jaxml.configs import FFNConfig, TransformerConfig
from jaxml.layers import kv_cache
from jaxml.layers.attention import Attention
from jaxml.layers.ffn import make_ffn
from jaxml.layers.kv_cache import KVCache
from jaxml.layers.moe import MoE
from jaxml.layers.positions import sinusoidal_positions

Aux = dict[str, Array]
LayerCaches = tuple[KVCache, ...]


class DecoderCache(NamedTuple):
    """What `EncoderDecoder.decode_step` carries: per decoder layer a self-attention `KVCache` and
    the cross-attention keys/values `[batch, src_len, num_kv_heads, head_dim]`, and the source mask."""

    self_attn: LayerCaches
    cross_kv: tuple[tuple[Array, Array], ...]
    source_mask: Array | None


def init_cache(
    config: TransformerConfig,
    num_layers: int,
    batch: int,
    cache_len: int,
    *,
    window: int | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> LayerCaches:
    """One empty self-attention `KVCache` per layer (`window=None`: expanding context)."""
    attn = config.attention_config(causal=True)
    return tuple(
        kv_cache.init(
            batch, cache_len, attn.num_kv_heads, attn.head_dim, window=window, dtype=dtype
        )
        for _ in range(num_layers)
    )


def collect_aux(moe_aux: list[Aux]) -> Aux:
    """Merge the per-layer MoE aux dicts into the model-level aux (see the module docstring)."""
    if not moe_aux:
        return {"aux_loss": jnp.zeros((), jnp.float32)}
    return {
        "aux_loss": jnp.sum(jnp.stack([a["aux_loss"] for a in moe_aux])).astype(jnp.float32),
        "dropped_fraction": jnp.mean(jnp.stack([a["dropped_fraction"] for a in moe_aux])),
        "tokens_per_expert": jnp.stack([a["tokens_per_expert"] for a in moe_aux]),
    }


def _make_ffn_slot(config: FFNConfig) -> nn.Module:
    if config.use_moe:
        return MoE(config)
    return make_ffn(config)


def _apply_ffn_slot(ffn: nn.Module, x: Array, use_moe: bool) -> tuple[Array, list[Aux]]:
    if use_moe:
        y, aux = ffn(x)
        return y, [aux]
    return ffn(x), []


def _layer_norm(config: TransformerConfig) -> nn.LayerNorm:
    # Two-pass variance, as torch computes it (the fast E[x²]-E[x]² form loses digits).
    return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False)


class EncoderBlock(nn.Module):
    """`[batch, seq, embed_dim] -> [batch, seq, embed_dim]`; `mask: [batch, seq]` True = real."""

    config: TransformerConfig
    causal: bool = False

    def setup(self) -> None:
        cfg = self.config
        self.self_attn = Attention(cfg.attention_config(self.causal))
        self.norm1 = _layer_norm(cfg)
        self.ffn = _make_ffn_slot(cfg.ffn)
        self.norm2 = _layer_norm(cfg)

    def __call__(self, x: Array, mask: Array | None = None) -> tuple[Array, list[Aux]]:
        return self._feed_forward(self.norm1(x + self.self_attn(x, kv_mask=mask).out))

    def decode(
        self, x: Array, positions: Array, mask: Array, cache: KVCache
    ) -> tuple[Array, KVCache]:
        """Cached self-attention on the new positions `x: [batch, n, embed_dim]`."""
        attn = self.self_attn(x, positions=positions, cache=cache, mask=mask)
        y, _ = self._feed_forward(self.norm1(x + attn.out))
        assert attn.cache is not None
        return y, attn.cache

    def _feed_forward(self, x: Array) -> tuple[Array, list[Aux]]:
        y, aux = _apply_ffn_slot(self.ffn, x, self.config.ffn.use_moe)
        return self.norm2(x + y), aux


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to `memory: [batch, src_len, embed_dim]`, FFN."""

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        self.self_attn = Attention(cfg.attention_config(causal=True))
        self.norm1 = _layer_norm(cfg)
        self.cross_attn = Attention(cfg.attention_config(causal=False))
        self.norm2 = _layer_norm(cfg)
        self.ffn = _make_ffn_slot(cfg.ffn)
        self.norm3 = _layer_norm(cfg)

    def __call__(
        self, x: Array, memory: Array, memory_mask: Array | None = None
    ) -> tuple[Array, list[Aux]]:
        x = self.norm1(x + self.self_attn(x).out)
        return self._cross_and_feed_forward(x, memory_mask, context=memory)

    def decode(
        self,
        x: Array,
        positions: Array,
        mask: Array,
        cache: KVCache,
        cross_kv: tuple[Array, Array],
        memory_mask: Array | None,
    ) -> tuple[Array, KVCache]:
        """Cached self-attention, then cross-attention to the precomputed `cross_kv`."""
        attn = self.self_attn(x, positions=positions, cache=cache, mask=mask)
        y, _ = self._cross_and_feed_forward(
            self.norm1(x + attn.out), memory_mask, context_kv=cross_kv
        )
        assert attn.cache is not None
        return y, attn.cache

    def cross_kv(self, memory: Array) -> tuple[Array, Array]:
        """This layer's cross-attention keys/values of `memory`, computed once per source."""
        return self.cross_attn.project_kv(memory)

    def _cross_and_feed_forward(
        self,
        x: Array,
        memory_mask: Array | None,
        context: Array | None = None,
        context_kv: tuple[Array, Array] | None = None,
    ) -> tuple[Array, list[Aux]]:
        cross = self.cross_attn(x, context, context_kv=context_kv, kv_mask=memory_mask)
        x = self.norm2(x + cross.out)
        y, aux = _apply_ffn_slot(self.ffn, x, self.config.ffn.use_moe)
        return self.norm3(x + y), aux


def _embed(config: TransformerConfig, input_proj: nn.Module, x: Array, what: str) -> Array:
    """`[batch, seq, input_dim] -> [batch, seq, embed_dim]`: projection + sinusoidal positions."""
    if x.ndim != 3 or x.shape[-1] != config.input_dim:
        raise ValueError(
            f"{what} must be [batch, seq, input_dim={config.input_dim}], got {x.shape}"
        )
    if x.shape[1] > config.max_seq_len:
        raise ValueError(
            f"{what} has {x.shape[1]} positions, more than max_seq_len={config.max_seq_len}"
        )
    table = sinusoidal_positions(config.max_seq_len, config.embed_dim)[: x.shape[1]]
    return input_proj(x) + jnp.asarray(table, x.dtype)


def _embed_at(
    config: TransformerConfig, input_proj: nn.Module, x: Array, positions: Array
) -> Array:
    """`_embed` for the new positions of a decode step: `positions: [batch, n]` index the table.

    Positions past `max_seq_len` have no encoding: the decode loop's callers check the bound.
    """
    if x.ndim != 3 or x.shape[-1] != config.input_dim:
        raise ValueError(f"input must be [batch, n, input_dim={config.input_dim}], got {x.shape}")
    table = jnp.asarray(sinusoidal_positions(config.max_seq_len, config.embed_dim), x.dtype)
    return input_proj(x) + jnp.take(table, positions, axis=0)


class Encoder(nn.Module):
    """`input_proj`, positions and `depth` encoder blocks (`layers_0`, ...)."""

    config: TransformerConfig
    depth: int
    causal: bool = False

    def setup(self) -> None:
        self.input_proj = nn.Dense(self.config.embed_dim)
        self.layers = [EncoderBlock(self.config, self.causal) for _ in range(self.depth)]

    def __call__(self, x: Array, mask: Array | None = None) -> tuple[Array, list[Aux]]:
        """`x: [batch, seq, input_dim]` -> `([batch, seq, embed_dim], per-MoE-layer aux)`."""
        h = _embed(self.config, self.input_proj, x, "input")
        aux: list[Aux] = []
        for layer in self.layers:
            h, layer_aux = layer(h, mask)
            aux += layer_aux
        return h, aux

    def decode(
        self, x: Array, positions: Array, mask: Array, caches: LayerCaches
    ) -> tuple[Array, LayerCaches]:
        """Causal stack on new positions only, each layer with its own cache."""
        h = _embed_at(self.config, self.input_proj, x, positions)
        new_caches = []
        for layer, cache in zip(self.layers, caches, strict=True):
            h, cache = layer.decode(h, positions, mask, cache)
            new_caches.append(cache)
        return h, tuple(new_caches)


class Decoder(nn.Module):
    """`input_proj`, its own positions and `decoder_depth` decoder blocks (`layers_0`, ...)."""

    config: TransformerConfig

    def setup(self) -> None:
        self.input_proj = nn.Dense(self.config.embed_dim)
        self.layers = [DecoderBlock(self.config) for _ in range(self.config.decoder_depth)]

    def __call__(
        self, target: Array, memory: Array, memory_mask: Array | None = None
    ) -> tuple[Array, list[Aux]]:
        """`target: [batch, tgt_len, input_dim]` -> `([batch, tgt_len, embed_dim], aux list)`."""
        h = _embed(self.config, self.input_proj, target, "target")
        aux: list[Aux] = []
        for layer in self.layers:
            h, layer_aux = layer(h, memory, memory_mask)
            aux += layer_aux
        return h, aux

    def cross_kv(self, memory: Array) -> tuple[tuple[Array, Array], ...]:
        return tuple(layer.cross_kv(memory) for layer in self.layers)

    def decode(
        self, target: Array, positions: Array, mask: Array, cache: DecoderCache
    ) -> tuple[Array, DecoderCache]:
        """New target positions `[batch, n, input_dim]` -> `([batch, n, embed_dim], cache)`."""
        h = _embed_at(self.config, self.input_proj, target, positions)
        new_caches = []
        for layer, self_cache, kv in zip(self.layers, cache.self_attn, cache.cross_kv, strict=True):
            h, self_cache = layer.decode(h, positions, mask, self_cache, kv, cache.source_mask)
            new_caches.append(self_cache)
        return h, cache._replace(self_attn=tuple(new_caches))


class TransformerModel(nn.Module):
    """Regression: `[batch, seq, input_dim] -> ([batch, output_dim], aux)`.

    Encoder stack (causal if `config.apply_causal_mask`), global average pooling over the
    sequence, Dense `head`.
    """

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        self.encoder = Encoder(cfg, cfg.num_layers, causal=cfg.apply_causal_mask)
        self.head = nn.Dense(cfg.output_dim)

    def __call__(self, x: Array) -> tuple[Array, Aux]:
        h, aux = self.encoder(x)
        return self.head(jnp.mean(h, axis=1)), collect_aux(aux)


class AutoregressiveTransformerModel(nn.Module):
    """Next-value prediction on continuous sequences, always causal.

    `[batch, seq, input_dim] -> ([batch, seq, output_dim], aux)`: position `t` sees `x[:, :t+1]`.
    """

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        self.encoder = Encoder(cfg, cfg.num_layers, causal=True)
        self.head = nn.Dense(cfg.output_dim)

    def __call__(self, x: Array) -> tuple[Array, Aux]:
        h, aux = self.encoder(x)
        return self.head(h), collect_aux(aux)

    def generate_next_token(self, x: Array) -> Array:
        """The prediction following `x`: `[batch, 1, output_dim]` (a full forward pass)."""
        return self(x)[0][:, -1:]

    def decode_step(
        self, x: Array, positions: Array, mask: Array, cache: LayerCaches
    ) -> tuple[Array, LayerCaches]:
        """Cached step on new positions `x: [batch, n, input_dim]` -> `([batch, n, output_dim],
        cache)`; `positions`/`mask` come from the decode loop (see `jaxml.decoding.loop`)."""
        h, cache = self.encoder.decode(x, positions, mask, cache)
        return self.head(h), cache


class EncoderDecoder(nn.Module):
    """Sequence to sequence: encoder stack, causal decoder stack with cross-attention, `head`.

    `source: [batch, src_len, input_dim]`, `target: [batch, tgt_len, input_dim]` (teacher
    forcing), optional `source_mask: [batch, src_len]` bool (True = real, False = padding; the
    encoder's self-attention and the decoder's cross-attention ignore padding).
    """

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        self.encoder = Encoder(cfg, cfg.encoder_depth)
        self.decoder = Decoder(cfg)
        self.head = nn.Dense(cfg.output_dim)

    def encode(self, source: Array, source_mask: Array | None = None) -> tuple[Array, Aux]:
        """`-> (memory [batch, src_len, embed_dim], aux of the encoder's MoE layers)`."""
        memory, aux = self.encoder(source, source_mask)
        return memory, collect_aux(aux)

    def decode(
        self, target: Array, memory: Array, source_mask: Array | None = None
    ) -> tuple[Array, Aux]:
        """`-> (prediction [batch, tgt_len, output_dim], aux of the decoder's MoE layers)`."""
        h, aux = self.decoder(target, memory, source_mask)
        return self.head(h), collect_aux(aux)

    def start_decoding(
        self,
        source: Array,
        source_mask: Array | None,
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
        )
        return DecoderCache(self_caches, self.decoder.cross_kv(memory), source_mask)

    def decode_step(
        self, target: Array, positions: Array, mask: Array, cache: DecoderCache
    ) -> tuple[Array, DecoderCache]:
        """Cached decoder step on new target positions -> `([batch, n, output_dim], cache)`."""
        h, cache = self.decoder.decode(target, positions, mask, cache)
        return self.head(h), cache

    def __call__(
        self, source: Array, target: Array, source_mask: Array | None = None
    ) -> tuple[Array, Aux]:
        """`-> ([batch, tgt_len, output_dim], aux over encoder and decoder MoE layers)`."""
        memory, enc_aux = self.encoder(source, source_mask)
        h, dec_aux = self.decoder(target, memory, source_mask)
        return self.head(h), collect_aux(enc_aux + dec_aux)
