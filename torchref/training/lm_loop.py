"""`train_lm`, PyTorch twin of `jaxml.training.lm_loop`: the same batches per step, schedule,
gradient accumulation, finiteness stop, logging cadence, checkpoints and exact resume.

The model (built and seeded, or loaded with converted jaxml params, by the caller) trains on
one device: `cpu`, `cuda` or `mps` (float32 on MPS).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from jaxml.configs.lm_training import LMTrainConfig
from jaxml.data.text import PackedSequences, TokenData
from jaxml.training.logging import RunLogger, progress_bar
from torchref.training.loop import open_checkpointer
from torchref.training.losses import split_output
from torchref.training.optim import clip_gradients
from torchref.training.state import TrainState


class NonFiniteLoss(FloatingPointError):
    """As `jaxml.training.lm_loop.NonFiniteLoss`."""

    def __init__(self, step: int, loss: float, last_checkpoint: int | None) -> None:
        kept = (
            f"the last good checkpoint is step {last_checkpoint}"
            if last_checkpoint is not None
            else "no checkpoint was written"
        )
        super().__init__(f"non-finite training loss ({loss}) at step {step}; stopped, {kept}")
        self.step, self.loss, self.last_checkpoint = step, loss, last_checkpoint


@dataclass
class LMResult:
    """As `jaxml.training.lm_loop.LMResult`, with the torch `TrainState`."""

    state: TrainState
    history: list[dict[str, float]]
    val_loss: float
    val_perplexity: float
    steps_run: int
    tokens_per_sec: float
    mfu: float | None


def lm_objective(model: torch.nn.Module, windows: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """`(cross-entropy + aux loss, {"loss", "aux_loss"})` of `windows [b, seq_len + 1]`."""
    logits, aux = split_output(model(windows[:, :-1]))
    loss = F.cross_entropy(logits.float().flatten(0, 1), windows[:, 1:].flatten().long())
    aux_loss = aux["aux_loss"].float()
    return loss + aux_loss, {"loss": loss.detach(), "aux_loss": aux_loss.detach()}


def _all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def train_step(state: TrainState, rows: np.ndarray, config: LMTrainConfig, device: str) -> dict:
    """One update on the global batch `rows`: the mean of `grad_accum` micro-batch gradients
    (micro-batch k = rows k, k + grad_accum, ..., as in jaxml), clipping, optimizer and
    scheduler step. Metrics as jaxml's, `finite` included."""
    windows = torch.from_numpy(rows).to(device)
    state.model.train()
    state.optimizer.zero_grad(set_to_none=True)
    totals = {"loss": torch.zeros((), device=device), "aux_loss": torch.zeros((), device=device)}
    for k in range(config.grad_accum):
        total, metrics = lm_objective(state.model, windows[k :: config.grad_accum])
        (total / config.grad_accum).backward()
        for name in totals:
            totals[name] += metrics[name] / config.grad_accum
    grad_norm = clip_gradients(state.model.parameters(), config.optimizer.clip_norm)
    lr = state.optimizer.param_groups[0]["lr"]
    state.optimizer.step()
    if state.scheduler is not None:
        state.scheduler.step()
    state.step += 1
    finite = (
        bool(torch.isfinite(totals["loss"]))
        and bool(torch.isfinite(grad_norm))
        and _all_finite(state.model.parameters())
    )
    return {**totals, "grad_norm": grad_norm.detach(), "lr": lr, "finite": finite}


@torch.no_grad()
def evaluate_lm(
    model: torch.nn.Module, val: PackedSequences, config: LMTrainConfig, device: str
) -> dict[str, float]:
    """Mean validation loss over up to `eval_batches` full batches, and its perplexity."""
    model.eval()
    batch = min(config.batch_size, len(val))
    losses = [
        float(lm_objective(model, torch.from_numpy(rows).to(device))[1]["loss"])
        for rows in val.eval_rows(batch, config.eval_batches)
    ]
    loss = float(np.mean(losses))
    return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 700.0))}


def matmul_peak_flops(device: str = "cpu", size: int = 1024, repeats: int = 8) -> float:
    """Measured float32 FLOP/s of a `size`² matmul on `device`: the MFU denominator."""
    x = torch.ones(size, size, device=device)
    best = math.inf
    for _ in range(repeats + 1):
        start = time.perf_counter()
        (x @ x).sum().item()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def train_lm(
    model: torch.nn.Module,
    data: TokenData,
    config: LMTrainConfig,
    *,
    logger: RunLogger | None = None,
    meta: Mapping[str, Any] | None = None,
    device: str = "cpu",
    flops_per_token: float | None = None,
    peak_flops: float | None = None,
) -> LMResult:
    """Train `model` (`model(ids) -> logits` or `(logits, aux)`) for `config.steps` steps; as
    `jaxml.training.lm_loop.train_lm` (the same errors), on one torch `device`."""
    if config.parallel != "none":
        raise ValueError(
            f"parallel={config.parallel!r} is invalid for torchref: it trains on one device"
        )
    logger = logger or RunLogger(None)
    state = TrainState.create(model.to(device), config.optimizer)
    ckpt = open_checkpointer(config)
    if ckpt is not None and ckpt.latest_step() is not None:
        saved = ckpt.restore(state)
        if saved.get("train", {}).get("seed", config.seed) != config.seed:
            raise ValueError("cannot resume: the checkpoint was written with another seed")
    start = state.step
    bar = progress_bar(config.steps, initial=start, enabled=config.progress)
    history: list[dict[str, float]] = []
    postfix: dict[str, str] = {}
    tokens_per_sec, mfu = 0.0, None
    timed_steps, timed_seconds = 0, 0.0
    window: list[float] = []
    try:
        for step in range(start, config.steps):
            tick = time.perf_counter()
            rows = data.train.train_rows(step, config.batch_size, config.seed)
            metrics = train_step(state, rows, config, device)
            if not metrics["finite"]:
                last = None if ckpt is None else ckpt.latest_step()
                raise NonFiniteLoss(step + 1, float(metrics["loss"]), last)
            if step > start:
                timed_steps += 1
                timed_seconds += time.perf_counter() - tick
            window.append(float(metrics["loss"]))
            bar.update()
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                if timed_seconds > 0:
                    tokens_per_sec = timed_steps * config.tokens_per_step / timed_seconds
                    if flops_per_token and peak_flops:
                        mfu = flops_per_token * tokens_per_sec / peak_flops
                row = train_row(done, window, metrics, tokens_per_sec, mfu)
                window = []
                history.append(row)
                logger.scalars("train", {k: v for k, v in row.items() if k != "step"}, done)
                postfix.update(_postfix(row))
                bar.set_postfix(postfix)
            if done % config.eval_every == 0 or done == config.steps:
                figures = evaluate_lm(state.model, data.val, config, device)
                history.append({"step": done, **figures})
                logger.scalars("val", figures, done)
                postfix.update(_postfix(figures))
                bar.set_postfix(postfix)
            if ckpt is not None:
                info = {"step": done, "seed": config.seed, "next_batch": done}
                saved_meta = {**info, "train": config.to_dict(), "run": dict(meta or {})}
                ckpt.save(done, state, saved_meta, force=done == config.steps)
        if start == config.steps:
            figures = evaluate_lm(state.model, data.val, config, device)
        else:
            figures = history[-1]
    finally:
        bar.close()
    return LMResult(
        state=state,
        history=history,
        val_loss=figures["val_loss"],
        val_perplexity=figures["val_perplexity"],
        steps_run=config.steps - start,
        tokens_per_sec=tokens_per_sec,
        mfu=mfu,
    )


def train_row(
    step: int, losses: list[float], last: dict, tokens_per_sec: float, mfu: float | None
) -> dict[str, float]:
    """As jaxml's: mean loss since the last row, the last step's lr and gradient norm."""
    row = {
        "step": step,
        "train_loss": float(np.mean(losses)),
        "lr": float(last["lr"]),
        "grad_norm": float(last["grad_norm"]),
        "tokens_per_sec": tokens_per_sec,
    }
    return row if mfu is None else {**row, "mfu": mfu}


def _postfix(row: Mapping[str, float]) -> dict[str, str]:
    shown = {"train_loss": "loss", "val_loss": "val", "tokens_per_sec": "tok/s", "mfu": "mfu"}
    return {
        name: f"{row[key]:.1%}" if key == "mfu" else f"{row[key]:.4g}"
        for key, name in shown.items()
        if key in row
    }
