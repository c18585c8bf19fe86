"""Frozen, validated training configs shared by jaxml, torchref and the CLIs (no jax, no torch).

`OptimizerConfig` names one optimizer + schedule + clipping; `jaxml.training.optim` builds it with
optax and `torchref.training.optim` with the matching torch optimizer and scheduler. Only settings
where the two are mathematically identical are accepted (see `torchref.training.optim`).
`TrainConfig` drives `fit` in both backends.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "step")
PARALLEL_MODES = ("none", "mesh", "pmap")
LOSS_NAMES = ("mse", "cross_entropy")


def _fail(cls: str, name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{cls}.{name}={value!r} is invalid: {allowed}")


def _check_int(cls: str, minimum: int, **fields: Any) -> None:
    for name, value in fields.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            _fail(cls, name, value, f"must be an integer >= {minimum}")


def _check_choice(cls: str, name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(cls, name, value, f"allowed values are {', '.join(allowed)}")


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer `name` with learning rate `lr`, a `schedule` and optional global-norm clipping.

    - adam / adamw: `b1`, `b2`, `eps` (added outside the square root, as in both libraries);
      adamw's `weight_decay` is decoupled and scaled by the current learning rate
      (`p -= lr * wd * p`, optax `adamw` == torch `AdamW`).
    - sgd: `momentum` (0 = plain SGD) and `nesterov`, dampening 0, lr applied after momentum.
    - rmsprop: `decay` (torch's `alpha`), `eps` outside the square root, `centered`; no momentum.
    - schedule `constant`; `cosine`: linear warmup from 0 over `warmup_steps`, then cosine decay
      to `lr * final_lr_scale` at `total_steps`; `step`: `lr * gamma ** (step // step_size)`.
    - `clip_norm`: clip gradients to this global L2 norm before the optimizer (None = off).
    """

    name: str = "adam"
    lr: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    final_lr_scale: float = 0.0
    step_size: int = 1000
    gamma: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    nesterov: bool = False
    decay: float = 0.9
    centered: bool = False
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        cls = type(self).__name__
        _check_choice(cls, "name", self.name, OPTIMIZERS)
        _check_choice(cls, "schedule", self.schedule, SCHEDULES)
        if not self.lr > 0:
            _fail(cls, "lr", self.lr, "must be > 0")
        _check_int(cls, 0, warmup_steps=self.warmup_steps)
        _check_int(cls, 1, step_size=self.step_size)
        if self.schedule == "cosine":
            if self.total_steps is None:
                _fail(cls, "total_steps", None, "the cosine schedule needs total_steps")
            _check_int(cls, 1, total_steps=self.total_steps)
            assert self.total_steps is not None
            if self.total_steps <= self.warmup_steps:
                _fail(cls, "total_steps", self.total_steps, "must exceed warmup_steps")
        if not 0.0 <= self.final_lr_scale <= 1.0:
            _fail(cls, "final_lr_scale", self.final_lr_scale, "must be in [0, 1]")
        if not 0.0 < self.gamma <= 1.0:
            _fail(cls, "gamma", self.gamma, "must be in (0, 1]")
        for name in ("b1", "b2", "decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                _fail(cls, name, getattr(self, name), "must be in [0, 1)")
        if not self.eps > 0:
            _fail(cls, "eps", self.eps, "must be > 0")
        if self.weight_decay < 0 or (self.weight_decay and self.name != "adamw"):
            _fail(
                cls,
                "weight_decay",
                self.weight_decay,
                "must be >= 0 and is only used by adamw (decoupled weight decay)",
            )
        if not 0.0 <= self.momentum < 1.0 or (self.momentum and self.name != "sgd"):
            _fail(cls, "momentum", self.momentum, "must be in [0, 1) and is only used by sgd")
        if self.nesterov and not self.momentum:
            _fail(cls, "nesterov", True, "needs sgd with momentum > 0")
        if self.centered and self.name != "rmsprop":
            _fail(cls, "centered", True, "only rmsprop can be centered")
        if self.clip_norm is not None and not self.clip_norm > 0:
            _fail(cls, "clip_norm", self.clip_norm, "must be > 0 or None")

    def replace(self, **changes: Any) -> OptimizerConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainConfig:
    """One training run: `epochs` over the data in shuffled batches of `batch_size`.

    `seed` fixes the initialisation, the data order and every PRNG key, so the same config gives
    the same numbers. `eval_every` is in epochs, `log_every` and `save_every` in optimizer steps.
    `checkpoint_dir` keeps the last `keep` checkpoints; an existing one is only continued with
    `resume=True` (never overwritten). `parallel`: `none` (one device), `mesh` (`jax.jit` with
    the batch sharded over a device mesh) or `pmap`; `num_devices` defaults to all devices.
    """

    epochs: int = 10
    batch_size: int = 32
    seed: int = 0
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    eval_every: int = 1
    log_every: int = 10
    logdir: str | None = None
    checkpoint_dir: str | None = None
    save_every: int = 100
    keep: int = 3
    resume: bool = False
    progress: bool = True
    parallel: str = "none"
    num_devices: int | None = None

    def __post_init__(self) -> None:
        cls = type(self).__name__
        _check_int(
            cls,
            1,
            epochs=self.epochs,
            batch_size=self.batch_size,
            eval_every=self.eval_every,
            log_every=self.log_every,
            save_every=self.save_every,
            keep=self.keep,
        )
        _check_int(cls, 0, seed=self.seed)
        if not isinstance(self.optimizer, OptimizerConfig):
            _fail(cls, "optimizer", self.optimizer, "must be an OptimizerConfig")
        _check_choice(cls, "parallel", self.parallel, PARALLEL_MODES)
        if self.num_devices is not None:
            _check_int(cls, 1, num_devices=self.num_devices)
        if self.resume and self.checkpoint_dir is None:
            _fail(cls, "resume", True, "needs a checkpoint_dir to resume from")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
