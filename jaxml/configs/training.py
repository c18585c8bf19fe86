"""Training configs: one optimizer + schedule + clipping, and one epoch-based training run.

`jaxml.training.optim` builds `OptimizerConfig` with optax and `torchref.training.optim` with the
matching torch optimizer and scheduler. Only settings where the two are mathematically identical
are accepted (see `torchref.training.optim`). `TrainConfig` drives `fit` in both backends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from jaxml.configs._validate import Config, check_at_least, check_choice, check_range, fail

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "step")
PARALLEL_MODES = ("none", "mesh", "pmap")
LOSS_NAMES = ("mse", "cross_entropy")


@dataclass(frozen=True)
class OptimizerConfig(Config):
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

    def validate(self) -> None:
        check_choice(self, "name", OPTIMIZERS)
        check_choice(self, "schedule", SCHEDULES)
        if not self.lr > 0:
            fail(self, "lr", self.lr, "must be > 0")
        check_at_least(self, 0, "warmup_steps")
        check_at_least(self, 1, "step_size", "total_steps")
        if self.schedule == "cosine":
            if self.total_steps is None:
                fail(self, "total_steps", None, "the cosine schedule needs total_steps")
            if self.total_steps <= self.warmup_steps:
                fail(self, "total_steps", self.total_steps, "must exceed warmup_steps")
        check_range(self, "final_lr_scale", 0.0, 1.0)
        check_range(self, "gamma", 0.0, 1.0, "(]")
        for name in ("b1", "b2", "decay"):
            check_range(self, name, 0.0, 1.0, "[)")
        if not self.eps > 0:
            fail(self, "eps", self.eps, "must be > 0")
        if self.weight_decay < 0 or (self.weight_decay and self.name != "adamw"):
            fail(
                self,
                "weight_decay",
                self.weight_decay,
                "must be >= 0 and is only used by adamw (decoupled weight decay)",
            )
        if not 0.0 <= self.momentum < 1.0 or (self.momentum and self.name != "sgd"):
            fail(self, "momentum", self.momentum, "must be in [0, 1) and is only used by sgd")
        if self.nesterov and not self.momentum:
            fail(self, "nesterov", True, "needs sgd with momentum > 0")
        if self.centered and self.name != "rmsprop":
            fail(self, "centered", True, "only rmsprop can be centered")
        if self.clip_norm is not None and not self.clip_norm > 0:
            fail(self, "clip_norm", self.clip_norm, "must be > 0 or None")


@dataclass(frozen=True)
class TrainConfig(Config):
    """One training run: `epochs` over the data in shuffled batches of `batch_size`.

    `seed` fixes the initialisation, the data order and every PRNG key, so the same config gives
    the same numbers. `eval_every` is in epochs, `log_every` and `save_every` in optimizer steps.
    `checkpoint_dir` keeps the last `keep` checkpoints; an existing one is only continued with
    `resume=True` (never overwritten). `parallel`: `none` (one device), `mesh` (`jax.jit` with
    the batch sharded over a device mesh) or `pmap`; `num_devices` defaults to all devices.
    Path fields accept `str` or `os.PathLike` and are stored as `str`.
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

    def normalize(self) -> None:
        for name in ("logdir", "checkpoint_dir"):
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))

    def validate(self) -> None:
        check_at_least(
            self, 1, "epochs", "batch_size", "eval_every", "log_every", "save_every", "keep"
        )
        check_at_least(self, 1, "num_devices")
        check_at_least(self, 0, "seed")
        check_choice(self, "parallel", PARALLEL_MODES)
        if self.resume and self.checkpoint_dir is None:
            fail(self, "resume", True, "needs a checkpoint_dir to resume from")
