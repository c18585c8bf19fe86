"""What the training CLIs share: optimizer / run flags, the `TrainConfig` they map to, and
training, prediction and checkpoint restore for either backend (`jax` or `torch`).

Every run logs to a run directory (`--logdir`, default `runs/<experiment>/<name>-<time>`) and
checkpoints into `<run dir>/checkpoints` unless `--checkpoint_dir` says otherwise, so any run
can be continued (`--restore DIR`) or used for prediction (`--restore DIR --predict`).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxml.configs import (
    OPTIMIZERS,
    PARALLEL_MODES,
    SCHEDULES,
    OptimizerConfig,
    TrainConfig,
)
from jaxml.data.loader import ArrayDataset
from jaxml.training.logging import RunLogger

BACKENDS = ("jax", "torch")


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Flags of every training CLI (defaults of `None` are filled per experiment)."""
    g = parser.add_argument_group("training")
    g.add_argument("--backend", choices=BACKENDS, default="jax")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch_size", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    g.add_argument("--schedule", choices=SCHEDULES, default="constant")
    g.add_argument("--warmup_steps", type=int, default=0, help="cosine schedule warmup")
    g.add_argument("--step_size", type=int, default=1000, help="step schedule: decay period")
    g.add_argument("--gamma", type=float, default=0.1, help="step schedule: decay factor")
    g.add_argument("--weight_decay", type=float, default=0.0, help="adamw only")
    g.add_argument("--momentum", type=float, default=None, help="sgd only (default 0.9)")
    g.add_argument("--nesterov", action="store_true", help="sgd only")
    g.add_argument("--clip_norm", type=float, default=None, help="global gradient-norm clip")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--parallel", choices=PARALLEL_MODES, default="none", help="jax only")
    g.add_argument("--num_devices", type=int, default=None)
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda, mps)")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is fastest for these small "
        "models when other processes share the CPU)",
    )
    g = parser.add_argument_group("run directory, checkpoints, logging")
    g.add_argument("--logdir", default=None, help="tensorboard run directory")
    g.add_argument("--checkpoint_dir", default=None, help="default: <logdir>/checkpoints")
    g.add_argument("--save_every", type=int, default=500, help="checkpoint period in steps")
    g.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    g.add_argument("--log_every", type=int, default=50, help="scalar logging period in steps")
    g.add_argument("--restore", default=None, metavar="DIR", help="continue from DIR's checkpoint")
    g.add_argument("--predict", action="store_true", help="with --restore: predict, no training")
    g.add_argument("--no_progress", action="store_true", help="hide the progress bar")


def check_args(args: argparse.Namespace) -> None:
    if args.predict and args.restore is None:
        raise ValueError("--predict needs --restore DIR (the checkpoint to predict with)")
    if args.backend == "torch" and args.parallel != "none":
        raise ValueError(
            f"--parallel {args.parallel} is jax-only; the torch backend trains on one device"
        )


def run_dir(args: argparse.Namespace, experiment: str, name: str) -> Path:
    if args.logdir is not None:
        return Path(args.logdir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / experiment / f"{name}-{args.backend}-{stamp}-{os.getpid()}"


def train_config(args: argparse.Namespace, logdir: Path, steps_per_epoch: int) -> TrainConfig:
    total = args.epochs * steps_per_epoch
    momentum = (0.9 if args.momentum is None else args.momentum) if args.optimizer == "sgd" else 0.0
    optimizer = OptimizerConfig(
        args.optimizer,
        args.lr,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps,
        total_steps=total if args.schedule == "cosine" else None,
        step_size=args.step_size,
        gamma=args.gamma,
        weight_decay=args.weight_decay,
        momentum=momentum,
        nesterov=args.nesterov,
        clip_norm=args.clip_norm,
    )
    checkpoints = args.restore or args.checkpoint_dir or str(logdir / "checkpoints")
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        optimizer=optimizer,
        log_every=args.log_every,
        logdir=str(logdir),
        checkpoint_dir=checkpoints,
        save_every=args.save_every,
        keep=args.keep,
        resume=args.restore is not None,
        progress=not args.no_progress,
        parallel=args.parallel,
        num_devices=args.num_devices,
    )


def saved_run(directory: str) -> dict[str, Any]:
    """The CLI settings stored in the latest checkpoint of `directory` (its `meta["run"]`)."""
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"--restore {directory}: no such checkpoint directory")
    backend = _backend_of(directory)
    if backend == "torch":
        from torchref.training.checkpoint import Checkpointer as TorchCheckpointer

        return dict(TorchCheckpointer(directory).read_meta()["run"])
    from jaxml.training.checkpoint import Checkpointer

    ckpt = Checkpointer(directory)
    try:
        return dict(ckpt.read_meta()["run"])
    finally:
        ckpt.close()


def _backend_of(directory: str) -> str:
    """torch checkpoints hold `<step>/state.pt`, orbax ones `<step>/state/`."""
    return "torch" if any(Path(directory).glob("*/state.pt")) else "jax"


@dataclass
class Trained:
    """A trained (or restored) model of either backend, and its fit result if it was trained."""

    backend: str
    model: Any
    params: Any
    result: Any
    device: str = "cpu"

    def predict(self, data: ArrayDataset) -> np.ndarray:
        if self.backend == "torch":
            from torchref.training.loop import predict

            return predict(self.model, data, device=self.device)
        from jaxml.training.loop import predict as jax_predict
        from jaxml.training.losses import module_apply

        return jax_predict(module_apply(self.model), self.params, data)

    def evaluate(self, data: ArrayDataset, loss: str) -> dict[str, float]:
        if self.backend == "torch":
            from torchref.training.loop import evaluate

            return evaluate(self.model, data, loss=loss, device=self.device)
        import jax

        from jaxml.training.loop import evaluate as jax_evaluate
        from jaxml.training.losses import module_apply
        from jaxml.training.step import make_eval_step

        step = jax.jit(make_eval_step(module_apply(self.model), loss))
        return jax_evaluate(step, self.params, data)


def train(
    backend: str,
    build_model: Callable[[str], Any],
    train_data: ArrayDataset,
    val_data: ArrayDataset,
    config: TrainConfig,
    *,
    loss: str,
    logger: RunLogger,
    meta: dict[str, Any],
    device: str = "cpu",
) -> Trained:
    """`fit` with the backend's model (`build_model(backend)`; torch is seeded first)."""
    if backend == "torch":
        import torch

        from torchref.training.loop import fit as torch_fit

        torch.manual_seed(config.seed)
        model = build_model("torch")
        result = torch_fit(
            model, train_data, val_data, config, loss=loss, logger=logger, meta=meta, device=device
        )
        return Trained("torch", result.state.model, None, result, device)
    from jaxml.training.loop import fit

    model = build_model("jax")
    jax_result = fit(model, train_data, val_data, config, loss=loss, logger=logger, meta=meta)
    return Trained("jax", model, jax_result.state.params, jax_result)


def restore(
    backend: str,
    build_model: Callable[[str], Any],
    train_data: ArrayDataset,
    config: TrainConfig,
    directory: str,
    device: str = "cpu",
) -> Trained:
    """The model of the latest checkpoint in `directory`, for prediction (no training)."""
    if backend == "torch":
        import torch

        from torchref.training.checkpoint import Checkpointer as TorchCheckpointer
        from torchref.training.state import TrainState as TorchState

        torch.manual_seed(config.seed)
        state = TorchState.create(build_model("torch").to(device), config.optimizer)
        TorchCheckpointer(directory).restore(state)
        return Trained("torch", state.model, None, None, device)
    from jaxml.training.checkpoint import Checkpointer
    from jaxml.training.loop import init_state

    model = build_model("jax")
    template, _, _ = init_state(model, train_data, config)
    ckpt = Checkpointer(directory)
    try:
        jax_state, _ = ckpt.restore(template)
    finally:
        ckpt.close()
    return Trained("jax", model, jax_state.params, None)


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.5g}" for k, v in metrics.items())
