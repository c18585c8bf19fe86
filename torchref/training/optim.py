"""Torch optimizers and schedulers matching `jaxml.training.optim` (optax) step for step.

Equivalences (same `OptimizerConfig`, same gradients => same updates up to float rounding):
- adam: `torch.optim.Adam(betas=(b1, b2), eps)` == `optax.adam`; both add `eps` to the
  bias-corrected `sqrt(v_hat)`, outside the square root (optax `eps_root=0`).
- adamw: `torch.optim.AdamW(weight_decay)` == `optax.adamw(weight_decay)`: decoupled decay
  `p -= lr_t * wd * p` with the scheduled `lr_t` (set it explicitly: the defaults differ,
  1e-2 in torch and 1e-4 in optax).
- sgd: `torch.optim.SGD(momentum, nesterov, dampening=0)` == `optax.sgd(momentum, nesterov)`:
  buffer `b = m b + g` (first `b = g`), update `-lr_t (g + m b)` with nesterov else `-lr_t b`.
- rmsprop: `torch.optim.RMSprop(alpha=decay, eps, centered)` == `optax.rmsprop(decay, eps,
  eps_in_sqrt=False, centered)`: `g / (sqrt(v) + eps)` (optax's default puts eps inside the
  sqrt), accumulator starting at 0. Momentum is not offered: optax applies the learning rate
  before the momentum trace and torch after it, which differs once the rate changes.
- schedules: `constant` -> no scheduler; `cosine` -> `LambdaLR(lr_factor)`, the formula of
  `optax.warmup_cosine_decay_schedule(0, lr, warmup_steps, total_steps, lr * final_lr_scale)`;
  `step` -> `StepLR(step_size, gamma)` == `optax.exponential_decay(staircase=True)`. The
  scheduler steps after every optimizer step, so update `t` (from 0) uses `lr * factor(t)`.
- clipping: `clip_grad_norm_` scales by `clip_norm / (norm + 1e-6)` when `norm > clip_norm`,
  optax by `clip_norm / norm`: a relative difference of `1e-6 / norm`, below float32 tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, StepLR

from jaxml.configs import OptimizerConfig


def lr_factor(config: OptimizerConfig, step: int) -> float:
    """The learning-rate multiplier of update `step` (0-based), as the optax schedule."""
    if config.schedule == "cosine":
        assert config.total_steps is not None
        if step < config.warmup_steps:
            return step / config.warmup_steps
        decay_steps = config.total_steps - config.warmup_steps
        t = min(step - config.warmup_steps, decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * t / decay_steps))
        return (1.0 - config.final_lr_scale) * cosine + config.final_lr_scale
    if config.schedule == "step":
        return config.gamma ** (step // config.step_size)
    return 1.0


def make_optimizer(
    params: Iterable[torch.nn.Parameter], config: OptimizerConfig
) -> torch.optim.Optimizer:
    betas = (config.b1, config.b2)
    if config.name == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=betas, eps=config.eps)
    if config.name == "adamw":
        return torch.optim.AdamW(
            params, lr=config.lr, betas=betas, eps=config.eps, weight_decay=config.weight_decay
        )
    if config.name == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov
        )
    return torch.optim.RMSprop(
        params, lr=config.lr, alpha=config.decay, eps=config.eps, centered=config.centered
    )


def make_scheduler(optimizer: torch.optim.Optimizer, config: OptimizerConfig) -> LRScheduler | None:
    if config.schedule == "cosine":
        return LambdaLR(optimizer, lambda step: lr_factor(config, step))
    if config.schedule == "step":
        return StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    return None


def clip_gradients(params: Iterable[torch.nn.Parameter], clip_norm: float | None) -> torch.Tensor:
    """Global L2 norm of the gradients before clipping; clips them to `clip_norm` if set."""
    grads = [p for p in params if p.grad is not None]
    if clip_norm is None:
        return torch.nn.utils.get_total_norm([p.grad for p in grads if p.grad is not None])
    return torch.nn.utils.clip_grad_norm_(grads, clip_norm)
