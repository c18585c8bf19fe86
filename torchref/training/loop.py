"""`fit`, PyTorch twin of `jaxml.training.loop`: same data order, logging, checkpoints, resume.

The model is built (and seeded with `torch.manual_seed`) by the caller. torchref trains on one
device (`config.parallel` must be `none`; data parallelism is the jax side's `mesh` / `pmap`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from jaxml.configs import LMTrainConfig, TrainConfig
from jaxml.data.loader import ArrayDataset
from jaxml.training.logging import RunLogger, progress_bar
from torchref.training.checkpoint import Checkpointer
from torchref.training.losses import check_loss, split_output
from torchref.training.state import TrainState
from torchref.training.step import eval_step, to_device, train_step

EVAL_BATCH = 512


@dataclass
class FitResult:
    """As `jaxml.training.loop.FitResult`, with the torch `TrainState`."""

    state: TrainState
    history: list[dict[str, float]]
    train_metrics: dict[str, float]
    val_metrics: dict[str, float]


def evaluate(
    model: torch.nn.Module, data: ArrayDataset, *, loss: str = "mse", device: str = "cpu"
) -> dict[str, float]:
    """Example-weighted mean of the eval metrics over `data`."""
    totals: dict[str, float] = {}
    for batch in data.eval_batches(EVAL_BATCH):
        for name, value in eval_step(model, batch, loss=loss, device=device).items():
            totals[name] = totals.get(name, 0.0) + float(value) * len(batch.targets)
    return {name: total / len(data) for name, total in totals.items()}


@torch.no_grad()
def predict(model: torch.nn.Module, data: ArrayDataset, *, device: str = "cpu") -> np.ndarray:
    """The model's predictions for every example of `data`, in order (numpy)."""
    model.eval()
    outputs = [
        split_output(model(*to_device(b, device)[0]))[0].cpu().numpy()
        for b in data.eval_batches(EVAL_BATCH)
    ]
    return np.concatenate(outputs)


def open_checkpointer(config: TrainConfig | LMTrainConfig) -> Checkpointer | None:
    """The run's `Checkpointer` (None without `checkpoint_dir`); FileExistsError when the
    directory already holds checkpoints and `config.resume` is False (never overwrite)."""
    if config.checkpoint_dir is None:
        return None
    ckpt = Checkpointer(config.checkpoint_dir, save_every=config.save_every, keep=config.keep)
    latest = ckpt.latest_step()
    if latest is not None and not config.resume:
        raise FileExistsError(
            f"{config.checkpoint_dir} already holds checkpoints (latest step {latest}); "
            "resume from them or choose another directory"
        )
    return ckpt


def check_finite(losses: list[torch.Tensor], last_step: int, ckpt: Checkpointer | None) -> None:
    """FloatingPointError naming the first step whose loss is NaN or inf; `losses` are the
    losses of the steps ending at `last_step`."""
    values = torch.stack(losses).double().cpu()
    bad = torch.nonzero(~torch.isfinite(values)).flatten()
    if len(bad):
        first = int(bad[0])
        step = last_step - len(values) + 1 + first
        saved = None if ckpt is None else ckpt.latest_step()
        kept = "" if saved is None else f"; the last checkpoint (step {saved}) is kept"
        raise FloatingPointError(
            f"training diverged: loss {float(values[first])} at step {step}; stopped{kept}"
        )


@dataclass
class _Loop:
    """One `fit` call's moving parts: the state, the data position and where logs and
    checkpoints go."""

    config: TrainConfig
    state: TrainState
    position: dict[str, int]
    steps_per_epoch: int
    loss: str
    device: str
    logger: RunLogger
    ckpt: Checkpointer | None
    meta: dict[str, Any]
    bar: Any
    unchecked: list[torch.Tensor] = field(default_factory=list)

    def train_epoch(self, train: ArrayDataset, epoch: int) -> list[torch.Tensor]:
        """One (possibly resumed) epoch of updates; returns its per-step losses."""
        cfg, state = self.config, self.state
        start = self.position["batch"] if epoch == self.position["epoch"] else 0
        losses = []
        tick = time.perf_counter()
        for i, batch in enumerate(
            train.batches(cfg.batch_size, seed=cfg.seed, epoch=epoch, start=start)
        ):
            metrics = train_step(
                state,
                batch,
                loss=self.loss,
                clip_norm=cfg.optimizer.clip_norm,
                device=self.device,
            )
            self.position = {"epoch": epoch, "batch": start + i + 1}
            losses.append(metrics["loss"])
            self.unchecked.append(metrics["loss"])
            self.bar.update()
            if state.step % cfg.log_every == 0:
                self.check_finite()
                values = {k: float(v) for k, v in metrics.items()}
                now = time.perf_counter()
                values["samples_per_sec"] = cfg.log_every * cfg.batch_size / (now - tick)
                tick = now
                self.logger.scalars("train", values, state.step)
                self.bar.set_postfix(loss=f"{values['loss']:.4g}")
            if state.step % cfg.save_every == 0:
                self.save(force=False)
        self.check_finite()
        return losses

    def check_finite(self) -> None:
        if self.unchecked:
            check_finite(self.unchecked, self.state.step, self.ckpt)
            self.unchecked = []

    def save(self, force: bool) -> None:
        """Checkpoint the current state and data position (never a diverged one)."""
        if self.ckpt is None:
            return
        self.check_finite()
        epoch, batch = self.position["epoch"], self.position["batch"]
        info = {
            "step": self.state.step,
            "epoch": epoch + batch // self.steps_per_epoch,
            "batch": batch % self.steps_per_epoch,
            "seed": self.config.seed,
            "run": self.meta,
        }
        self.ckpt.save(self.state.step, self.state, info, force=force)

    def validate(
        self, val: ArrayDataset, epoch: int, losses: list[torch.Tensor]
    ) -> dict[str, float]:
        """Validation metrics after `epoch`, logged; returns the history row."""
        val_metrics = evaluate(self.state.model, val, loss=self.loss, device=self.device)
        self.logger.scalars("val", val_metrics, self.state.step)
        row = {"epoch": epoch + 1, "step": self.state.step, "val_loss": val_metrics["loss"]}
        if losses:
            row["train_loss"] = float(torch.stack(losses).mean())
        self.bar.set_postfix(
            loss=f"{row.get('train_loss', float('nan')):.4g}", val=f"{row['val_loss']:.4g}"
        )
        return row


def fit(
    model: torch.nn.Module,
    train: ArrayDataset,
    val: ArrayDataset,
    config: TrainConfig,
    *,
    loss: str = "mse",
    logger: RunLogger | None = None,
    meta: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> FitResult:
    """Train `model` on `train`, evaluating on `val`; `meta` is stored in checkpoints.

    Raises FileExistsError when `config.checkpoint_dir` already holds checkpoints and
    `config.resume` is False, and FloatingPointError when the loss becomes NaN or inf
    (nothing non-finite is saved).
    """
    check_loss(loss)
    if config.parallel != "none":
        raise ValueError(
            f"parallel={config.parallel!r} is invalid for torchref: it trains on one device "
            "(mesh / pmap data parallelism is the jax backend's)"
        )
    state = TrainState.create(model.to(device), config.optimizer)
    ckpt = open_checkpointer(config)
    position = {"epoch": 0, "batch": 0}
    if ckpt is not None and ckpt.latest_step() is not None:
        saved = ckpt.restore(state)
        position = {"epoch": saved["epoch"], "batch": saved["batch"]}
    steps_per_epoch = train.steps_per_epoch(config.batch_size)
    total = config.epochs * steps_per_epoch
    history = []
    with progress_bar(total, initial=state.step, enabled=config.progress) as bar:
        loop = _Loop(
            config,
            state,
            position,
            steps_per_epoch,
            loss,
            device,
            logger or RunLogger(None),
            ckpt,
            dict(meta or {}),
            bar,
        )
        for epoch in range(position["epoch"], config.epochs):
            losses = loop.train_epoch(train, epoch)
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                history.append(loop.validate(val, epoch, losses))
        loop.save(force=True)
    return FitResult(
        state=state,
        history=history,
        train_metrics=evaluate(state.model, train, loss=loss, device=device),
        val_metrics=evaluate(state.model, val, loss=loss, device=device),
    )
