"""`fit`: the training loop shared by every experiment (jax backend).

Per step: one jitted update (`ParallelStep`: one device, mesh or pmap), a progress-bar tick, and
every `log_every` steps the step's metrics plus throughput to tensorboardX. Per `eval_every`
epochs: validation metrics. Every `save_every` steps and at the end: an orbax checkpoint holding
the state and the data position, from which `resume=True` continues exactly.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
import optax

from jaxml.configs import LMTrainConfig, TrainConfig
from jaxml.data.loader import ArrayDataset
from jaxml.training.checkpoint import Checkpointer
from jaxml.training.logging import RunLogger, progress_bar
from jaxml.training.losses import ApplyFn, check_loss, module_apply, split_output
from jaxml.training.optim import make_optimizer, make_schedule
from jaxml.training.parallel import ParallelStep
from jaxml.training.state import TrainState, init_params
from jaxml.training.step import EvalStep, make_eval_step

EVAL_BATCH = 512


@dataclass
class FitResult:
    """The final state, per-evaluation history rows, and final metrics on the full train and
    validation sets (`loss`, `task_loss`, `aux_loss`, `accuracy` for classification, ...)."""

    state: TrainState
    history: list[dict[str, float]]
    train_metrics: dict[str, float]
    val_metrics: dict[str, float]


def init_state(
    model: Any, train: ArrayDataset, config: TrainConfig
) -> tuple[TrainState, optax.GradientTransformation, optax.Schedule]:
    """Fresh state from `config.seed`: params from one key, the training PRNG key from another."""
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    sample = next(train.eval_batches(config.batch_size)).inputs
    tx = make_optimizer(config.optimizer)
    state = TrainState.create(init_params(model, sample, init_key), tx, train_key)
    return state, tx, make_schedule(config.optimizer)


def evaluate(eval_step: EvalStep, params: Any, data: ArrayDataset) -> dict[str, float]:
    """Example-weighted mean of `eval_step`'s metrics over `data`."""
    totals: dict[str, float] = {}
    for batch in data.eval_batches(EVAL_BATCH):
        metrics = jax.device_get(eval_step(params, batch))
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value) * len(batch.targets)
    return {name: total / len(data) for name, total in totals.items()}


def predict(apply_fn: ApplyFn, params: Any, data: ArrayDataset) -> np.ndarray:
    """The model's predictions for every example of `data`, in order."""
    run = jax.jit(lambda p, xs: split_output(apply_fn(p, xs, None))[0])
    return np.concatenate(
        [np.asarray(run(params, b.inputs)) for b in data.eval_batches(EVAL_BATCH)]
    )


def _position(epoch: int, batch: int, steps_per_epoch: int) -> dict[str, int]:
    """The data position after `batch` batches of `epoch`, normalised to the next epoch's start."""
    return {"epoch": epoch + batch // steps_per_epoch, "batch": batch % steps_per_epoch}


def open_checkpointer(config: TrainConfig | LMTrainConfig) -> Checkpointer | None:
    """The run's `Checkpointer` (None without `checkpoint_dir`); FileExistsError when the
    directory already holds checkpoints and `config.resume` is False (never overwrite)."""
    if config.checkpoint_dir is None:
        return None
    ckpt = Checkpointer(config.checkpoint_dir, save_every=config.save_every, keep=config.keep)
    latest = ckpt.latest_step()
    if latest is not None and not config.resume:
        ckpt.close()
        raise FileExistsError(
            f"{config.checkpoint_dir} already holds checkpoints (latest step {latest}); "
            "resume from them or choose another directory"
        )
    return ckpt


def check_finite(losses: list[Any], last_step: int, ckpt: Checkpointer | None) -> None:
    """FloatingPointError naming the first step whose loss is NaN or inf; `losses` are the
    losses of the steps ending at `last_step`."""
    values = np.asarray(jax.device_get(losses), np.float64).reshape(len(losses))
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        step = last_step - len(values) + 1 + int(bad[0])
        saved = None if ckpt is None else ckpt.latest_step()
        kept = "" if saved is None else f"; the last checkpoint (step {saved}) is kept"
        raise FloatingPointError(
            f"training diverged: loss {values[bad[0]]} at step {step}; stopped{kept}"
        )


@dataclass
class _Loop:
    """One `fit` call's moving parts: the step runner, its on-device state, the data position
    and where logs and checkpoints go."""

    config: TrainConfig
    runner: ParallelStep
    device_state: Any
    step: int
    position: dict[str, int]
    steps_per_epoch: int
    logger: RunLogger
    ckpt: Checkpointer | None
    meta: dict[str, Any]
    bar: Any
    unchecked: list[Any] = field(default_factory=list)

    def train_epoch(self, train: ArrayDataset, epoch: int) -> list[Any]:
        """One (possibly resumed) epoch of updates; returns its per-step losses."""
        cfg = self.config
        start = self.position["batch"] if epoch == self.position["epoch"] else 0
        losses = []
        tick = time.perf_counter()
        for i, batch in enumerate(
            train.batches(cfg.batch_size, seed=cfg.seed, epoch=epoch, start=start)
        ):
            self.device_state, metrics = self.runner(self.device_state, batch)
            self.step += 1
            self.position = {"epoch": epoch, "batch": start + i + 1}
            losses.append(metrics["loss"])
            self.unchecked.append(metrics["loss"])
            self.bar.update()
            if self.step % cfg.log_every == 0:
                self.check_finite()
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                values["samples_per_sec"] = cfg.log_every * cfg.batch_size / (now - tick)
                tick = now
                self.logger.scalars("train", values, self.step)
                self.bar.set_postfix(loss=f"{values['loss']:.4g}")
            if self.step % cfg.save_every == 0:
                self.save(force=False)
        self.check_finite()
        return losses

    def check_finite(self) -> None:
        if self.unchecked:
            check_finite(self.unchecked, self.step, self.ckpt)
            self.unchecked = []

    def save(self, force: bool) -> None:
        """Checkpoint the current state and data position (never a diverged one)."""
        if self.ckpt is None:
            return
        self.check_finite()
        position = _position(self.position["epoch"], self.position["batch"], self.steps_per_epoch)
        info = {"step": self.step, **position, "seed": self.config.seed, "run": self.meta}
        self.ckpt.save(self.step, self.runner.host_state(self.device_state), info, force=force)

    def validate(
        self, eval_step: EvalStep, val: ArrayDataset, epoch: int, losses: list[Any]
    ) -> dict[str, float]:
        """Validation metrics after `epoch`, logged; returns the history row."""
        params = self.runner.host_state(self.device_state).params
        val_metrics = evaluate(eval_step, params, val)
        self.logger.scalars("val", val_metrics, self.step)
        row = {"epoch": epoch + 1, "step": self.step, "val_loss": val_metrics["loss"]}
        if losses:
            row["train_loss"] = float(np.mean(jax.device_get(losses)))
        self.bar.set_postfix(
            loss=f"{row.get('train_loss', float('nan')):.4g}", val=f"{row['val_loss']:.4g}"
        )
        return row


def fit(
    model: Any,
    train: ArrayDataset,
    val: ArrayDataset,
    config: TrainConfig,
    *,
    loss: str = "mse",
    logger: RunLogger | None = None,
    meta: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train the Flax `model` on `train`, evaluating on `val`; `meta` is stored in checkpoints.

    Raises FileExistsError when `config.checkpoint_dir` already holds checkpoints and
    `config.resume` is False (a user's checkpoints are never overwritten), and
    FloatingPointError when the loss becomes NaN or inf (nothing non-finite is saved).
    """
    check_loss(loss)
    apply_fn = module_apply(model)
    state, tx, schedule = init_state(model, train, config)
    runner = ParallelStep(config.parallel, apply_fn, tx, schedule, loss, config.num_devices)
    runner.check_batch_size(config.batch_size)
    ckpt = open_checkpointer(config)
    try:
        position = {"epoch": 0, "batch": 0}
        if ckpt is not None and ckpt.latest_step() is not None:
            state, saved = ckpt.restore(state)
            position = {"epoch": saved["epoch"], "batch": saved["batch"]}
        steps_per_epoch = train.steps_per_epoch(config.batch_size)
        total = config.epochs * steps_per_epoch
        eval_step = jax.jit(make_eval_step(apply_fn, loss))
        history = []
        with progress_bar(total, initial=int(state.step), enabled=config.progress) as bar:
            loop = _Loop(
                config,
                runner,
                runner.device_state(state),
                int(state.step),
                position,
                steps_per_epoch,
                logger or RunLogger(None),
                ckpt,
                dict(meta or {}),
                bar,
            )
            for epoch in range(position["epoch"], config.epochs):
                losses = loop.train_epoch(train, epoch)
                if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                    history.append(loop.validate(eval_step, val, epoch, losses))
            loop.save(force=True)
    finally:
        if ckpt is not None:
            ckpt.close()
    final = runner.host_state(loop.device_state)
    return FitResult(
        state=final,
        history=history,
        train_metrics=evaluate(eval_step, final.params, train),
        val_metrics=evaluate(eval_step, final.params, val),
    )
