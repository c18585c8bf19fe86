"""Autoregressive prediction on continuous values, PyTorch twin of `jaxml.models.generation`.

Same fixed-size buffer scheme as jaxml (a full forward pass per step over
`prefix ++ predictions[:-1]`), so both sides agree even with capacity-limited MoE FFNs, whose
expert slots are shared by every token in the pass. Runs under `torch.no_grad()`.
"""

from __future__ import annotations

import torch

from jaxml.configs import TransformerConfig
from torchref.models.transformer import AutoregressiveTransformerModel, EncoderDecoder


def _check_feedback(config: TransformerConfig, what: str) -> None:
    if config.output_dim != config.input_dim:
        raise ValueError(
            f"{what} feeds predictions back as inputs, so output_dim={config.output_dim} "
            f"must equal input_dim={config.input_dim}"
        )


@torch.no_grad()
def predict_autoregressively(
    model: AutoregressiveTransformerModel, prefix: torch.Tensor, steps: int
) -> torch.Tensor:
    """Continue `prefix: [batch, prefix_len, input_dim]` by `steps` predictions.

    Returns `[batch, steps, output_dim]`: prediction `i` is the model's output at the last
    position of `prefix ++ predictions[:i]`.
    """
    _check_feedback(model.config, "predict_autoregressively")
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
def generate(
    model: EncoderDecoder,
    source: torch.Tensor,
    steps: int,
    start: torch.Tensor | None = None,
    source_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy continuous decoding: encode once, feed each prediction back (see jaxml's `generate`).

    Returns `[batch, steps, output_dim]`.
    """
    _check_feedback(model.config, "generate")
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
