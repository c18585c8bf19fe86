"""The classic post-norm transformer, PyTorch twin of `jaxml.models.transformer`.

Same blocks, same attribute names (`encoder.input_proj`, `encoder.layers.0.self_attn`, `norm1`,
`ffn`, `norm2`, decoder `cross_attn` / `norm3`, `head`), same `(prediction, aux)` outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from jaxml.configs import FFNConfig, TransformerConfig
from torchref.layers.attention import Attention
from torchref.layers.ffn import make_ffn
from torchref.layers.moe import MoE
from torchref.layers.positions import sinusoidal_positions

Aux = dict[str, torch.Tensor]


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
        x = self.norm1(x + self.self_attn(x, kv_mask=mask).out)
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
        x = self.norm2(x + self.cross_attn(x, memory, kv_mask=memory_mask).out)
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
        """The prediction following `x`: `[batch, 1, output_dim]`."""
        return self(x)[0][:, -1:]


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

    def forward(
        self, source: torch.Tensor, target: torch.Tensor, source_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Aux]:
        memory, enc_aux = self.encoder(source, source_mask)
        h, dec_aux = self.decoder(target, memory, source_mask)
        return self.head(h), collect_aux(enc_aux + dec_aux, target.device)
