"""Optax optimizers and schedules by name, from an `OptimizerConfig`.

adam, adamw, sgd (momentum / nesterov) and rmsprop (eps outside the square root, as torch), each
with a constant, warmup-cosine or step-decay schedule and optional global-norm clipping first.
"""

from __future__ import annotations

import optax

from jaxml.configs import OptimizerConfig


def make_schedule(config: OptimizerConfig) -> optax.Schedule:
    """The learning rate as a function of the step (0 for the first update)."""
    if config.schedule == "cosine":
        assert config.total_steps is not None
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=config.lr,
            warmup_steps=config.warmup_steps,
            decay_steps=config.total_steps,
            end_value=config.lr * config.final_lr_scale,
        )
    if config.schedule == "step":
        return optax.exponential_decay(
            config.lr, transition_steps=config.step_size, decay_rate=config.gamma, staircase=True
        )
    return optax.constant_schedule(config.lr)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """`optax.chain(clip_by_global_norm?, optimizer(schedule))`."""
    lr = make_schedule(config)
    if config.name == "adam":
        opt = optax.adam(lr, b1=config.b1, b2=config.b2, eps=config.eps)
    elif config.name == "adamw":
        opt = optax.adamw(
            lr, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay
        )
    elif config.name == "sgd":
        opt = optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov)
    else:
        opt = optax.rmsprop(
            lr, decay=config.decay, eps=config.eps, eps_in_sqrt=False, centered=config.centered
        )
    if config.clip_norm is None:
        return opt
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), opt)
