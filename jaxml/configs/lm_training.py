"""`LMTrainConfig`: one step-based language-model training run (no jax, no torch).

Drives `jaxml.training.lm_loop.train_lm` and its twin `torchref.training.lm_loop.train_lm`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from jaxml.configs._validate import Config, check_at_least, check_choice, fail
from jaxml.configs.training import PARALLEL_MODES, OptimizerConfig


def default_lm_optimizer(steps: int = 1000) -> OptimizerConfig:
    """AdamW, linear warmup over 5% of the steps then cosine decay to 10%, clipped at norm 1."""
    return OptimizerConfig(
        "adamw",
        3e-3,
        schedule="cosine",
        warmup_steps=max(1, steps // 20),
        total_steps=steps,
        final_lr_scale=0.1,
        b2=0.95,
        weight_decay=0.1,
        clip_norm=1.0,
    )


@dataclass(frozen=True)
class LMTrainConfig(Config):
    """`steps` optimizer updates on global batches of `batch_size` sequences of `seq_len`
    tokens; each update averages the gradients of `grad_accum` equal micro-batches.

    - `seed` fixes the initialisation, the batch of every step and every PRNG key.
    - Mixed precision is the model's own setting (`LMConfig.dtype="bfloat16"`: float32 master
      weights and optimizer state, bfloat16 matmuls).
    - Evaluation every `eval_every` steps (and at the end) on at most `eval_batches` batches of
      validation windows; scalars every `log_every` steps; checkpoints every `save_every` steps
      (and at the end), keeping the newest `keep`. An existing checkpoint directory is only
      continued with `resume=True`, never overwritten.
    - `parallel`: `none`, `mesh` (jit over a device mesh, the only mode across processes) or
      `pmap`; `num_devices` defaults to every device.
    """

    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 128
    grad_accum: int = 1
    seed: int = 0
    optimizer: OptimizerConfig = field(default_factory=default_lm_optimizer)
    eval_every: int = 100
    eval_batches: int = 20
    log_every: int = 10
    save_every: int = 100
    keep: int = 3
    checkpoint_dir: str | None = None
    resume: bool = False
    logdir: str | None = None
    progress: bool = True
    parallel: str = "none"
    num_devices: int | None = None

    def normalize(self) -> None:
        for name in ("logdir", "checkpoint_dir"):
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))

    def validate(self) -> None:
        check_at_least(
            self,
            1,
            "steps",
            "batch_size",
            "seq_len",
            "grad_accum",
            "eval_every",
            "eval_batches",
            "log_every",
            "save_every",
            "keep",
            "num_devices",
        )
        check_at_least(self, 0, "seed")
        if self.batch_size % self.grad_accum:
            fail(
                self,
                "grad_accum",
                self.grad_accum,
                f"must divide batch_size={self.batch_size} into equal micro-batches",
            )
        opt = self.optimizer
        if opt.schedule == "cosine" and opt.total_steps != self.steps:
            allowed = f"must equal the cosine schedule's optimizer.total_steps={opt.total_steps}"
            fail(self, "steps", self.steps, allowed)
        check_choice(self, "parallel", PARALLEL_MODES)
        if self.resume and self.checkpoint_dir is None:
            fail(self, "resume", True, "needs a checkpoint_dir to resume from")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (the optimizer as a nested dict), for checkpoint metadata."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LMTrainConfig:
        return cls(**{**values, "optimizer": OptimizerConfig(**values["optimizer"])})
