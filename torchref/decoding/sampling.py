"""Next-token selection from explicit noise, PyTorch twin of `jaxml.decoding.sampling`.

`sample(logits, noise, config) = argmax(probabilities(logits, config) / noise)`, noise ~
Exponential(1): given the noise array jaxml drew, torchref picks the same token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from jaxml.configs import SamplingConfig


def probabilities(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """`[..., vocab]` logits -> filtered, normalised probabilities (float32, float64 for float64)."""
    if config.greedy:
        raise ValueError("probabilities needs SamplingConfig.temperature > 0 (0 means greedy)")
    acc = torch.promote_types(logits.dtype, torch.float32)
    scaled = logits.to(acc) / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = torch.topk(scaled, config.top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, -torch.inf)
    probs = torch.softmax(scaled, dim=-1)
    zero = torch.zeros((), dtype=acc, device=logits.device)
    if config.top_p is not None and config.top_p < 1:
        descending = torch.sort(probs, dim=-1, descending=True).values
        mass_before = torch.cumsum(descending, dim=-1) - descending
        kept = torch.where(mass_before < config.top_p, descending, torch.inf)
        probs = torch.where(probs >= kept.min(dim=-1, keepdim=True).values, probs, zero)
    if config.min_p is not None:
        floor = config.min_p * probs.max(dim=-1, keepdim=True).values
        probs = torch.where(probs >= floor, probs, zero)
    return probs / probs.sum(dim=-1, keepdim=True)


def exponential_noise(
    shape: tuple[int, ...], generator: torch.Generator | None = None
) -> torch.Tensor:
    """float32 `Exponential(1)` noise of `shape`, drawn with torch's own generator."""
    return torch.empty(shape, dtype=torch.float32).exponential_(1.0, generator=generator)


def sample(logits: torch.Tensor, noise: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """int32 tokens `[...]` from `logits: [..., vocab]` and `noise` (same shape, Exponential(1))."""
    if config.greedy:
        return logits.argmax(dim=-1).to(torch.int32)
    if noise.shape != logits.shape:
        raise ValueError(
            f"noise must have the logits' shape {tuple(logits.shape)}, got {tuple(noise.shape)}"
        )
    probs = probabilities(logits, config)
    noise = noise.to(probs.device, probs.dtype).clamp_min(torch.finfo(probs.dtype).tiny)
    return (probs / noise).argmax(dim=-1).to(torch.int32)


def sampler(
    config: SamplingConfig, noise: torch.Tensor
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The decode loop's `select(logits [batch, vocab], step) -> tokens [batch]`, using
    `noise[step]` (`noise: [steps, batch, vocab]`, e.g. the noise jaxml drew)."""

    def select(logits: torch.Tensor, step: int) -> torch.Tensor:
        return sample(logits, noise[step], config)

    return select
