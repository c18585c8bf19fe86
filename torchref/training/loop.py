"""`fit`, PyTorch twin of `jaxml.training.loop`: same data order, logging, checkpoints, resume.

The model is built (and seeded with `torch.manual_seed`) by the caller. torchref trains on one
device (`config.parallel` must be `none`; data parallelism is the jax side's `mesh` / `pmap`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from jaxml.configs import TrainConfig
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
    `config.resume` is False.
    """
    check_loss(loss)
    if config.parallel != "none":
        raise ValueError(
            f"parallel={config.parallel!r} is invalid for torchref: it trains on one device "
            "(mesh / pmap data parallelism is the jax backend's)"
        )
    logger = logger or RunLogger(None)
    bs = config.batch_size
    steps_per_epoch = train.steps_per_epoch(bs)
    total_steps = config.epochs * steps_per_epoch
    state = TrainState.create(model.to(device), config.optimizer)
    position = {"epoch": 0, "batch": 0}
    ckpt = None
    if config.checkpoint_dir is not None:
        ckpt = Checkpointer(config.checkpoint_dir, save_every=config.save_every, keep=config.keep)
        latest = ckpt.latest_step()
        if latest is not None and not config.resume:
            raise FileExistsError(
                f"{config.checkpoint_dir} already holds checkpoints (latest step {latest}); "
                "resume from them or choose another directory"
            )
        if latest is not None:
            saved = ckpt.restore(state)
            position = {"epoch": saved["epoch"], "batch": saved["batch"]}

    history: list[dict[str, float]] = []
    bar = progress_bar(total_steps, initial=state.step, enabled=config.progress)
    tick = time.perf_counter()

    def save(force: bool) -> None:
        assert ckpt is not None
        epoch, batch = position["epoch"], position["batch"]
        info = {
            "step": state.step,
            "epoch": epoch + batch // steps_per_epoch,
            "batch": batch % steps_per_epoch,
            "seed": config.seed,
        }
        ckpt.save(state.step, state, {**info, "run": dict(meta or {})}, force=force)

    for epoch in range(position["epoch"], config.epochs):
        start = position["batch"] if epoch == position["epoch"] else 0
        losses = []
        for i, batch in enumerate(train.batches(bs, seed=config.seed, epoch=epoch, start=start)):
            metrics = train_step(
                state, batch, loss=loss, clip_norm=config.optimizer.clip_norm, device=device
            )
            position = {"epoch": epoch, "batch": start + i + 1}
            losses.append(metrics["loss"])
            bar.update()
            if state.step % config.log_every == 0:
                values = {k: float(v) for k, v in metrics.items()}
                now = time.perf_counter()
                values["samples_per_sec"] = config.log_every * bs / (now - tick)
                tick = now
                logger.scalars("train", values, state.step)
                bar.set_postfix(loss=f"{values['loss']:.4g}")
            if ckpt is not None and state.step % config.save_every == 0:
                save(force=False)
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            val_metrics = evaluate(state.model, val, loss=loss, device=device)
            logger.scalars("val", val_metrics, state.step)
            row = {"epoch": epoch + 1, "step": state.step, "val_loss": val_metrics["loss"]}
            if losses:
                row["train_loss"] = float(torch.stack(losses).mean())
            history.append(row)
            bar.set_postfix(
                loss=f"{row.get('train_loss', float('nan')):.4g}", val=f"{row['val_loss']:.4g}"
            )
    bar.close()
    if ckpt is not None:
        save(force=True)
    return FitResult(
        state=state,
        history=history,
        train_metrics=evaluate(state.model, train, loss=loss, device=device),
        val_metrics=evaluate(state.model, val, loss=loss, device=device),
    )
