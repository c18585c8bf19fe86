"""The classic post-norm transformer: regression, autoregressive and encoder-decoder models.

Every model: input projection -> sinusoidal positions -> N blocks -> head. An encoder block is
`x = norm1(x + self_attn(x)); x = norm2(x + ffn(x))`; a decoder block adds
`norm2(x + cross_attn(x, memory))` between the two, its FFN norm is `norm3`.
The FFN slot is `make_ffn(config.ffn)` or, with `config.ffn.use_moe`, `jaxml.layers.moe.MoE`.

Outputs are `(prediction, aux)`: `aux["aux_loss"]` is a float32 scalar (0 without MoE, else the
sum of the MoE layers' `aux_loss`); with MoE `aux` also holds `dropped_fraction` (mean over MoE
layers) and `tokens_per_expert` `[num_moe_layers, num_experts]` (encoder layers first).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from jaxml.configs import FFNConfig, TransformerConfig
from jaxml.layers.attention import Attention
from jaxml.layers.ffn import make_ffn
from jaxml.layers.moe import MoE
from jaxml.layers.positions import sinusoidal_positions

Aux = dict[str, Array]


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
        x = self.norm1(x + self.self_attn(x, kv_mask=mask).out)
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
        x = self.norm2(x + self.cross_attn(x, memory, kv_mask=memory_mask).out)
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
        """The prediction following `x`: `[batch, 1, output_dim]`."""
        return self(x)[0][:, -1:]


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

    def __call__(
        self, source: Array, target: Array, source_mask: Array | None = None
    ) -> tuple[Array, Aux]:
        """`-> ([batch, tgt_len, output_dim], aux over encoder and decoder MoE layers)`."""
        memory, enc_aux = self.encoder(source, source_mask)
        h, dec_aux = self.decoder(target, memory, source_mask)
        return self.head(h), collect_aux(enc_aux + dec_aux)
