"""Autoregressive prediction on continuous values, PyTorch twin of `jaxml.models.generation`.

`predict_autoregressively` / `generate` decode with the KV cache through `torchref.decoding.loop`
(or call the references when `DecodeConfig.use_kv_cache=False`). The `*_recompute` references
use the same fixed-size buffer scheme as jaxml (a full forward pass per step over
`prefix ++ predictions[:-1]`), so both sides agree even with capacity-limited MoE FFNs, whose
expert slots are shared by every token in the pass. Runs under `torch.no_grad()`.
"""

from __future__ import annotations

from typing import Any

import torch

from jaxml.configs import DecodeConfig, TransformerConfig
from torchref.decoding import loop
from torchref.models.transformer import AutoregressiveTransformerModel, EncoderDecoder, init_cache


def _check_feedback(config: TransformerConfig, what: str) -> None:
    if config.output_dim != config.input_dim:
        raise ValueError(
            f"{what} feeds predictions back as inputs, so output_dim={config.output_dim} "
            f"must equal input_dim={config.input_dim}"
        )


@torch.no_grad()
def predict_autoregressively_recompute(
    model: AutoregressiveTransformerModel, prefix: torch.Tensor, steps: int
) -> torch.Tensor:
    """Continue `prefix: [batch, prefix_len, input_dim]` by `steps` predictions.

    Returns `[batch, steps, output_dim]`: prediction `i` is the model's output at the last
    position of `prefix ++ predictions[:i]`.
    """
    _check_feedback(model.config, "predict_autoregressively_recompute")
    if prefix.ndim != 3 or prefix.shape[1] < 1 or steps < 1:
        raise ValueError(
            f"need prefix [batch, prefix_len >= 1, input_dim] and steps >= 1, got {tuple(prefix.shape)}, {steps}"
        )
    batch, prefix_len, dim = prefix.shape
    preds = torch.zeros(batch, steps, dim, dtype=prefix.dtype, device=prefix.device)
    for i in range(steps):
        out, _ = model(torch.cat([prefix, preds[:, :-1]], dim=1))
        preds[:, i] = out[:, prefix_len - 1 + i]
    return preds


@torch.no_grad()
def generate_recompute(
    model: EncoderDecoder,
    source: torch.Tensor,
    steps: int,
    start: torch.Tensor | None = None,
    source_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy continuous decoding: encode once, then a full decoder pass per prediction.

    Returns `[batch, steps, output_dim]`.
    """
    _check_feedback(model.config, "generate_recompute")
    if source.ndim != 3 or steps < 1:
        raise ValueError(
            f"need source [batch, src_len, input_dim] and steps >= 1, got {tuple(source.shape)}, {steps}"
        )
    batch, _, dim = source.shape
    if start is None:
        start = torch.zeros(batch, 1, dim, dtype=source.dtype, device=source.device)
    if tuple(start.shape) != (batch, 1, dim):
        raise ValueError(
            f"start must be [batch, 1, input_dim]={(batch, 1, dim)}, got {tuple(start.shape)}"
        )
    memory, _ = model.encode(source, source_mask)
    preds = torch.zeros(batch, steps, dim, dtype=source.dtype, device=source.device)
    for i in range(steps):
        out, _ = model.decode(torch.cat([start, preds[:, :-1]], dim=1), memory, source_mask)
        preds[:, i] = out[:, i]
    return preds


def _feed_back(outputs: torch.Tensor, step: int) -> torch.Tensor:
    return outputs


def _check_positions(config: TransformerConfig, needed: int, what: str) -> None:
    if needed > config.max_seq_len:
        raise ValueError(
            f"{what} reaches position {needed - 1}, but the sinusoidal table of "
            f"TransformerConfig.max_seq_len={config.max_seq_len} ends at {config.max_seq_len - 1}"
        )


@torch.no_grad()
def predict_autoregressively(
    model: AutoregressiveTransformerModel,
    prefix: torch.Tensor,
    steps: int,
    prefix_lengths: torch.Tensor | None = None,
    decode_config: DecodeConfig | None = None,
) -> torch.Tensor:
    """Continue `prefix` by `steps` predictions with the cache (ragged with `prefix_lengths`)."""
    _check_feedback(model.config, "predict_autoregressively")
    decode_config = decode_config or DecodeConfig()
    if prefix.ndim != 3 or steps < 1:
        raise ValueError(
            f"need prefix [batch, prefix_len, input_dim] and steps >= 1, got {tuple(prefix.shape)}, {steps}"
        )
    if not decode_config.use_kv_cache:
        if prefix_lengths is not None:
            raise ValueError("ragged prefixes (prefix_lengths) need DecodeConfig.use_kv_cache=True")
        return predict_autoregressively_recompute(model, prefix, steps)
    _check_positions(model.config, prefix.shape[1] + steps - 1, "predict_autoregressively")
    batch, prefix_len, _ = prefix.shape
    if prefix_lengths is None:
        prefix_lengths = torch.full((batch,), prefix_len, dtype=torch.int32)
    cache = init_cache(
        model.config,
        model.config.num_layers,
        batch,
        decode_config.cache_len(prefix_len, steps),
        window=decode_config.window,
        dtype=prefix.dtype,
        device=prefix.device,
    )

    def step(cache: Any, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> Any:
        return model.decode_step(x, positions, mask, cache)

    result = loop.decode(
        step, cache, prefix, prefix_lengths.to(prefix.device), steps=steps, select=_feed_back
    )
    return result.outputs


@torch.no_grad()
def generate(
    model: EncoderDecoder,
    source: torch.Tensor,
    steps: int,
    start: torch.Tensor | None = None,
    source_mask: torch.Tensor | None = None,
    decode_config: DecodeConfig | None = None,
) -> torch.Tensor:
    """Greedy continuous decoding with the cache: encode once (cross-attention keys/values too),
    then one cached decoder step per prediction. Returns `[batch, steps, output_dim]`."""
    _check_feedback(model.config, "generate")
    decode_config = decode_config or DecodeConfig()
    if source.ndim != 3 or steps < 1:
        raise ValueError(
            f"need source [batch, src_len, input_dim] and steps >= 1, got {tuple(source.shape)}, {steps}"
        )
    if not decode_config.use_kv_cache:
        return generate_recompute(model, source, steps, start, source_mask)
    batch, _, dim = source.shape
    if start is None:
        start = torch.zeros(batch, 1, dim, dtype=source.dtype, device=source.device)
    if tuple(start.shape) != (batch, 1, dim):
        raise ValueError(
            f"start must be [batch, 1, input_dim]={(batch, 1, dim)}, got {tuple(start.shape)}"
        )
    _check_positions(model.config, steps, "generate")
    cache = model.start_decoding(
        source, source_mask, decode_config.cache_len(1, steps), decode_config.window
    )

    def step(cache: Any, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> Any:
        return model.decode_step(x, positions, mask, cache)

    lengths = torch.ones(batch, dtype=torch.int32, device=source.device)
    return loop.decode(step, cache, start, lengths, steps=steps, select=_feed_back).outputs
