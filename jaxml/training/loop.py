"""`fit`: the training loop shared by every experiment (jax backend).

Per step: one jitted update (`ParallelStep`: one device, mesh or pmap), a progress-bar tick, and
every `log_every` steps the step's metrics plus throughput to tensorboardX. Per `eval_every`
epochs: validation metrics. Every `save_every` steps and at the end: an orbax checkpoint holding
the state and the data position, from which `resume=True` continues exactly.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import optax

from jaxml.configs import TrainConfig
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
    `config.resume` is False (a user's checkpoints are never overwritten).
    """
    check_loss(loss)
    logger = logger or RunLogger(None)
    bs = config.batch_size
    steps_per_epoch = train.steps_per_epoch(bs)
    total_steps = config.epochs * steps_per_epoch
    apply_fn = module_apply(model)
    state, tx, schedule = init_state(model, train, config)
    runner = ParallelStep(config.parallel, apply_fn, tx, schedule, loss, config.num_devices)
    runner.check_batch_size(bs)
    position = {"epoch": 0, "batch": 0}
    ckpt = None
    if config.checkpoint_dir is not None:
        ckpt = Checkpointer(config.checkpoint_dir, save_every=config.save_every, keep=config.keep)
        latest = ckpt.latest_step()
        if latest is not None and not config.resume:
            ckpt.close()
            raise FileExistsError(
                f"{config.checkpoint_dir} already holds checkpoints (latest step {latest}); "
                "resume from them or choose another directory"
            )
        if latest is not None:
            state, saved = ckpt.restore(state)
            position = {"epoch": saved["epoch"], "batch": saved["batch"]}

    eval_step = jax.jit(make_eval_step(apply_fn, loss))
    step = int(state.step)
    device_state = runner.device_state(state)
    history: list[dict[str, float]] = []
    bar = progress_bar(total_steps, initial=step, enabled=config.progress)
    tick = time.perf_counter()

    def save(force: bool) -> None:
        assert ckpt is not None
        epoch, batch = position["epoch"], position["batch"]
        info = {"step": step, **_position(epoch, batch, steps_per_epoch), "seed": config.seed}
        ckpt.save(
            step, runner.host_state(device_state), {**info, "run": dict(meta or {})}, force=force
        )

    try:
        for epoch in range(position["epoch"], config.epochs):
            start = position["batch"] if epoch == position["epoch"] else 0
            losses = []
            for i, batch in enumerate(
                train.batches(bs, seed=config.seed, epoch=epoch, start=start)
            ):
                device_state, metrics = runner(device_state, batch)
                step += 1
                position = {"epoch": epoch, "batch": start + i + 1}
                losses.append(metrics["loss"])
                bar.update()
                if step % config.log_every == 0:
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    values["samples_per_sec"] = config.log_every * bs / (now - tick)
                    tick = now
                    logger.scalars("train", values, step)
                    bar.set_postfix(loss=f"{values['loss']:.4g}")
                if ckpt is not None and step % config.save_every == 0:
                    save(force=False)
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                val_metrics = evaluate(eval_step, runner.host_state(device_state).params, val)
                logger.scalars("val", val_metrics, step)
                row = {"epoch": epoch + 1, "step": step, "val_loss": val_metrics["loss"]}
                if losses:
                    row["train_loss"] = float(np.mean(jax.device_get(losses)))
                history.append(row)
                bar.set_postfix(
                    loss=f"{row.get('train_loss', float('nan')):.4g}", val=f"{row['val_loss']:.4g}"
                )
        if ckpt is not None:
            save(force=True)
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    final = runner.host_state(device_state)
    return FitResult(
        state=final,
        history=history,
        train_metrics=evaluate(eval_step, final.params, train),
        val_metrics=evaluate(eval_step, final.params, val),
    )
