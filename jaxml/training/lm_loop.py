"""`train_lm`: the step-based training loop for language models on packed token data (jax).

The epoch-based `fit` (`jaxml.training.loop`) stays for the small models; this loop counts
optimizer steps over a token stream whose batch at step `s` depends only on `(seed, s)`:
- per step: one jitted update (one device, a device mesh, or pmap; across processes each
  process feeds its own rows of the global batch), a finiteness check (a NaN/Inf loss,
  gradient or parameter stops the run with `NonFiniteLoss` before anything is saved);
- every `log_every` steps: loss, learning rate, gradient norm, tokens/s and MFU to the
  progress bar and tensorboardX; every `eval_every` steps and at the end: validation loss and
  perplexity;
- every `save_every` steps and at the end: an orbax checkpoint (atomic) of params, optimizer
  state, step and PRNG key, from which `resume=True` continues exactly: the step is the data
  position, so a killed run resumed from its last checkpoint ends with the same parameters.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from jaxml.configs.lm_training import LMTrainConfig
from jaxml.data.text import PackedSequences, TokenData
from jaxml.training.checkpoint import Checkpointer
from jaxml.training.distributed import global_batch, host_copy, is_primary
from jaxml.training.lm_step import make_lm_eval_step, make_lm_train_step
from jaxml.training.logging import RunLogger, progress_bar
from jaxml.training.loop import open_checkpointer
from jaxml.training.losses import ApplyFn, Metrics, module_apply
from jaxml.training.optim import make_optimizer, make_schedule
from jaxml.training.parallel import DATA_AXIS, data_mesh, first_copy, stack_for_pmap
from jaxml.training.state import TrainState, init_params

log = logging.getLogger(__name__)


class NonFiniteLoss(FloatingPointError):
    """Training produced a NaN/Inf loss, gradient or parameter at update `step` (1-based); the
    newest checkpoint (`last_checkpoint`, None if there is none) holds the last good state."""

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
    """The final state (host copy), the history rows (`step` plus `train_loss`, `lr`,
    `grad_norm`, `tokens_per_sec`, `mfu` at logged steps, `val_loss`, `val_perplexity` at
    evaluations), the final validation figures and this call's throughput (after the first,
    compiling step)."""

    state: TrainState
    history: list[dict[str, float]]
    val_loss: float
    val_perplexity: float
    steps_run: int
    tokens_per_sec: float
    mfu: float | None


class DataParallel:
    """The jitted LM train and eval steps for `config.parallel`, and the state and batches in
    that mode's device form (`none`: one device; `mesh`: replicated state, batch sharded over
    the `data` axis of a mesh that may span processes; `pmap`: one state copy per device)."""

    def __init__(
        self,
        apply_fn: ApplyFn,
        tx: optax.GradientTransformation,
        schedule: optax.Schedule,
        config: LMTrainConfig,
    ) -> None:
        self.mode = config.parallel
        if jax.process_count() > 1 and self.mode != "mesh":
            raise ValueError(
                f"parallel={self.mode!r} is invalid with {jax.process_count()} processes: "
                "training across processes uses parallel='mesh'"
            )
        train = make_lm_train_step(apply_fn, tx, schedule, grad_accum=config.grad_accum)
        evaluate = make_lm_eval_step(apply_fn)
        if self.mode == "none":
            self.num_devices = 1
            self._train = jax.jit(train, donate_argnums=0)
            self._eval = jax.jit(evaluate)
        elif self.mode == "mesh":
            mesh = data_mesh(config.num_devices)
            self.num_devices = mesh.size
            self.replicated = NamedSharding(mesh, PartitionSpec())
            self.sharded = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
            self._train = jax.jit(
                train,
                in_shardings=(self.replicated, self.sharded),
                out_shardings=(self.replicated, self.replicated),
                donate_argnums=0,
            )
            self._eval = jax.jit(
                evaluate,
                in_shardings=(self.replicated, self.sharded),
                out_shardings=self.replicated,
            )
        else:
            self.devices = jax.local_devices()[: config.num_devices or jax.local_device_count()]
            self.num_devices = len(self.devices)
            if config.num_devices not in (None, self.num_devices):
                raise ValueError(
                    f"num_devices={config.num_devices} is invalid: this host has "
                    f"{jax.local_device_count()} devices"
                )
            pmapped = make_lm_train_step(
                apply_fn, tx, schedule, grad_accum=config.grad_accum, axis_name=DATA_AXIS
            )
            self._train = jax.pmap(
                pmapped, axis_name=DATA_AXIS, devices=self.devices, donate_argnums=0
            )
            self._eval = jax.pmap(
                make_lm_eval_step(apply_fn, DATA_AXIS),
                axis_name=DATA_AXIS,
                devices=self.devices,
            )
        if config.batch_size % (self.num_devices * config.grad_accum):
            raise ValueError(
                f"batch_size={config.batch_size} is invalid: must be divisible by "
                f"grad_accum={config.grad_accum} x the {self.num_devices} devices of "
                f"parallel={self.mode!r}"
            )

    def device_state(self, state: TrainState) -> Any:
        if self.mode == "mesh":
            return jax.device_put(state, self.replicated)
        if self.mode == "pmap":
            return stack_for_pmap(state, self.devices)
        return state

    def saved_form(self, device_state: Any) -> TrainState:
        """What a checkpoint holds: one copy (global replicated arrays under `mesh`)."""
        return first_copy(device_state) if self.mode == "pmap" else device_state

    def checkpoint_template(self, state: TrainState) -> TrainState:
        return self.device_state(state) if self.mode == "mesh" else state

    def batch(self, rows: np.ndarray) -> Any:
        """The global batch `rows [batch, seq_len + 1]` (the same in every process)."""
        if self.mode == "mesh":
            return global_batch(rows, self.sharded)
        if self.mode == "pmap":
            return rows.reshape(self.num_devices, -1, rows.shape[-1])
        return rows

    def train(self, device_state: Any, rows: np.ndarray) -> tuple[Any, Metrics]:
        device_state, metrics = self._train(device_state, self.batch(rows))
        return device_state, first_copy(metrics) if self.mode == "pmap" else metrics

    def eval(self, device_state: Any, rows: np.ndarray) -> Metrics:
        metrics = self._eval(device_state.params, self.batch(rows))
        return first_copy(metrics) if self.mode == "pmap" else metrics

    def eval_batch_size(self, config: LMTrainConfig, val: PackedSequences) -> int:
        """`batch_size`, or fewer when the validation split is smaller (a device multiple)."""
        batch = min(config.batch_size, len(val))
        return max(batch - batch % self.num_devices, self.num_devices)


def init_lm_state(
    model: Any, config: LMTrainConfig, params: Any = None
) -> tuple[TrainState, optax.GradientTransformation, optax.Schedule]:
    """A fresh state from `config.seed`: params from one key (unless given), the training PRNG
    key from the other; params are initialised on a `[1, seq_len]` batch."""
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    if params is None:
        params = init_params(model, (jnp.zeros((1, config.seq_len), jnp.int32),), init_key)
    tx = make_optimizer(config.optimizer)
    return TrainState.create(params, tx, train_key), tx, make_schedule(config.optimizer)


def evaluate_lm(
    eval_fn: Callable[[np.ndarray], Metrics], val: PackedSequences, batch_size: int, batches: int
) -> dict[str, float]:
    """Mean of `eval_fn(rows)["loss"]` over up to `batches` full validation batches of
    `batch_size` windows, and its perplexity."""
    losses = [
        float(host_copy(eval_fn(rows))["loss"]) for rows in val.eval_rows(batch_size, batches)
    ]
    if not losses:
        raise ValueError(f"the validation split has {len(val)} windows: none to evaluate on")
    loss = float(np.mean(losses))
    return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 700.0))}


def matmul_peak_flops(dtype: str = "float32", size: int = 1024, repeats: int = 8) -> float:
    """Measured FLOP/s of a `size`² matmul on the default device: the MFU denominator."""
    x = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def train_lm(
    model: Any,
    data: TokenData,
    config: LMTrainConfig,
    *,
    logger: RunLogger | None = None,
    meta: Mapping[str, Any] | None = None,
    params: Any = None,
    flops_per_token: float | None = None,
    peak_flops: float | None = None,
) -> LMResult:
    """Train the Flax LM `model` (`apply(ids) -> logits` or `(logits, aux)`) for
    `config.steps` steps; `meta` is stored in every checkpoint; `params` replaces the seeded
    initialisation (e.g. to start both backends from the same weights). MFU is reported when
    `flops_per_token` and `peak_flops` are given.

    Raises FileExistsError when `config.checkpoint_dir` holds checkpoints and `config.resume`
    is False, and `NonFiniteLoss` when the loss, a gradient or a parameter stops being finite.
    """
    logger = logger or RunLogger(None)
    ckpt = open_checkpoints(config)
    state, tx, schedule = init_lm_state(model, config, params)
    runner = DataParallel(module_apply(model), tx, schedule, config)
    device_state = runner.device_state(state)
    if ckpt is not None and ckpt.latest_step() is not None:
        device_state, ckpt = resume(ckpt, runner, state, config)
    start = int(host_copy(runner.saved_form(device_state).step))
    primary = is_primary()
    bar = progress_bar(config.steps, initial=start, enabled=config.progress and primary)
    history: list[dict[str, float]] = []
    tokens_per_sec, mfu = 0.0, None
    timed_steps, timed_seconds = 0, 0.0

    eval_batch = runner.eval_batch_size(config, data.val)

    def evaluate(device_state: Any) -> dict[str, float]:
        return evaluate_lm(
            lambda rows: runner.eval(device_state, rows), data.val, eval_batch, config.eval_batches
        )

    def save(step: int) -> None:
        """A checkpoint every `save_every` steps and after the last (orbax's own interval
        policy would also save the first step of every call)."""
        if ckpt is not None and (step % config.save_every == 0 or step == config.steps):
            info = {"step": step, "seed": config.seed, "next_batch": step}
            saved_meta = {**info, "train": config.to_dict(), "run": dict(meta or {})}
            ckpt.save(step, runner.saved_form(device_state), saved_meta, force=True)

    try:
        window: list[Metrics] = []
        postfix: dict[str, str] = {}
        for step in range(start, config.steps):
            tick = time.perf_counter()
            rows = data.train.train_rows(step, config.batch_size, config.seed)
            new_state, metrics = runner.train(device_state, rows)
            values = host_copy(metrics)
            if not bool(values["finite"]):
                raise NonFiniteLoss(
                    step + 1, float(values["loss"]), None if ckpt is None else ckpt.latest_step()
                )
            device_state = new_state
            if step > start:  # the first step of a call compiles
                timed_steps += 1
                timed_seconds += time.perf_counter() - tick
            window.append(values)
            bar.update()
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                if timed_seconds > 0:
                    tokens_per_sec = timed_steps * config.tokens_per_step / timed_seconds
                    if flops_per_token and peak_flops:
                        mfu = flops_per_token * tokens_per_sec / peak_flops
                row = train_row(done, window, tokens_per_sec, mfu)
                window = []
                history.append(row)
                logger.scalars("train", {k: v for k, v in row.items() if k != "step"}, done)
                postfix.update(_postfix(row))
                bar.set_postfix(postfix)
            if done % config.eval_every == 0 or done == config.steps:
                figures = evaluate(device_state)
                history.append({"step": done, **figures})
                logger.scalars("val", figures, done)
                postfix.update(_postfix(figures))
                bar.set_postfix(postfix)
            save(done)
        final = host_copy(runner.saved_form(device_state))
        if start == config.steps:  # resumed at the end: nothing trained in this call
            figures = evaluate(device_state)
        else:  # the evaluation after the last step
            figures = history[-1]
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    return LMResult(
        state=final,
        history=history,
        val_loss=figures["val_loss"],
        val_perplexity=figures["val_perplexity"],
        steps_run=config.steps - start,
        tokens_per_sec=tokens_per_sec,
        mfu=mfu,
    )


def train_row(
    step: int, window: list[Metrics], tokens_per_sec: float, mfu: float | None
) -> dict[str, float]:
    """The logged row of `step`: mean loss over the steps since the last row, the last step's
    learning rate and gradient norm, and the throughput."""
    row = {
        "step": step,
        "train_loss": float(np.mean([m["loss"] for m in window])),
        "lr": float(window[-1]["lr"]),
        "grad_norm": float(window[-1]["grad_norm"]),
        "tokens_per_sec": tokens_per_sec,
    }
    return row if mfu is None else {**row, "mfu": mfu}


def resume(
    ckpt: Checkpointer, runner: DataParallel, state: TrainState, config: LMTrainConfig
) -> tuple[Any, Checkpointer]:
    """The newest intact checkpoint in `runner`'s device form (damaged newer ones set aside)."""
    restored, saved = ckpt.restore(runner.checkpoint_template(state))
    device_state = runner.device_state(restored) if runner.mode == "pmap" else restored
    return device_state, set_aside_damaged(ckpt, saved["step"], config)


def _postfix(row: Mapping[str, float]) -> dict[str, str]:
    shown = {"train_loss": "loss", "val_loss": "val", "tokens_per_sec": "tok/s", "mfu": "mfu"}
    return {
        name: f"{row[key]:.1%}" if key == "mfu" else f"{row[key]:.4g}"
        for key, name in shown.items()
        if key in row
    }


def set_aside_damaged(ckpt: Checkpointer, restored: int, config: LMTrainConfig) -> Checkpointer:
    """Rename the checkpoints newer than `restored` (the restore skipped them as damaged) to
    `<step>.damaged-<time>`: kept for inspection, out of the way of the resumed run's saves."""
    newer = [step for step in ckpt.all_steps() if step > restored]
    if not newer:
        return ckpt
    ckpt.close()
    if is_primary():
        for step in newer:
            path = ckpt.directory / str(step)
            path.rename(path.with_name(f"{step}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"))
            log.warning("set aside damaged checkpoint %s; resuming from step %d", path, restored)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("set_aside_damaged")
    return Checkpointer(ckpt.directory, save_every=config.save_every, keep=config.keep)


def open_checkpoints(config: LMTrainConfig) -> Checkpointer | None:
    """The run's `Checkpointer` (None without `checkpoint_dir`), checked before any work: an
    existing checkpoint needs `resume=True` (FileExistsError otherwise), and continues only the
    run that wrote it (same seed, batch, sequence length and steps; ValueError otherwise)."""
    ckpt = open_checkpointer(config)
    if ckpt is None or ckpt.latest_step() is None:
        return ckpt
    saved = ckpt.read_meta().get("train", {})
    for name in ("seed", "batch_size", "seq_len", "steps"):
        if name in saved and saved[name] != getattr(config, name):
            ckpt.close()
            raise ValueError(
                f"cannot resume: the checkpoint was written with {name}={saved[name]}, "
                f"this run has {name}={getattr(config, name)}"
            )
    return ckpt
