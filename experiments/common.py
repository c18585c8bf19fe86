"""What the training CLIs share: optimizer / run flags, the `TrainConfig` they map to, and
training, prediction and checkpoint restore for either backend (`jax` or `torch`).

Every run logs to a run directory (`--logdir`, default `runs/<experiment>/<name>-<time>`) and
checkpoints into `<run dir>/checkpoints` unless `--checkpoint_dir` says otherwise, so any run
can be continued (`--restore DIR`) or used for prediction (`--restore DIR --predict`).

Every CLI runs in two phases: `prepare` (parse, validate every flag, config and output location,
load the data; no jit) and `execute` (train or predict). `cli_main` turns a bad input found in the
first phase into `prog: error: ...` and exit 2, and a diverged run or an I/O failure in the second
into `prog: error: ...` and exit 1, never a traceback, and never waits on stuck background threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.flags import nonneg_float, nonneg_int, positive_float, positive_int
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
    g.add_argument("--epochs", type=positive_int, default=None)
    g.add_argument("--batch_size", type=positive_int, default=None)
    g.add_argument("--lr", type=positive_float, default=None)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    g.add_argument("--schedule", choices=SCHEDULES, default="constant")
    g.add_argument("--warmup_steps", type=nonneg_int, default=0, help="cosine schedule warmup")
    g.add_argument(
        "--step_size", type=positive_int, default=1000, help="step schedule: decay period"
    )
    g.add_argument("--gamma", type=positive_float, default=0.1, help="step schedule: decay factor")
    g.add_argument("--weight_decay", type=nonneg_float, default=0.0, help="adamw only")
    g.add_argument("--momentum", type=nonneg_float, default=None, help="sgd only (default 0.9)")
    g.add_argument("--nesterov", action="store_true", help="sgd only")
    g.add_argument("--clip_norm", type=positive_float, default=None, help="global gradient clip")
    g.add_argument("--seed", type=nonneg_int, default=0)
    g.add_argument("--parallel", choices=PARALLEL_MODES, default="none", help="jax only")
    g.add_argument("--num_devices", type=positive_int, default=None)
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps)")
    g.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads: torch.set_num_threads(N) on torch; on jax the process is pinned to N "
        "CPUs, which XLA sizes its thread pool from (1 is fastest for these small models when "
        "other processes share the CPU)",
    )
    g = parser.add_argument_group("run directory, checkpoints, logging")
    g.add_argument("--logdir", default=None, help="tensorboard run directory")
    g.add_argument("--checkpoint_dir", default=None, help="default: <logdir>/checkpoints")
    g.add_argument(
        "--save_every", type=positive_int, default=500, help="checkpoint period in steps"
    )
    g.add_argument("--keep", type=positive_int, default=3, help="checkpoints kept")
    g.add_argument(
        "--log_every", type=positive_int, default=50, help="scalar logging period in steps"
    )
    g.add_argument("--restore", default=None, metavar="DIR", help="continue from DIR's checkpoint")
    g.add_argument("--predict", action="store_true", help="with --restore: predict, no training")
    g.add_argument("--no_progress", action="store_true", help="hide the progress bar")


# Checkpoint policy: restored from the checkpoint unless given again on the command line.
POLICY_FLAGS = ("save_every", "keep", "log_every")


def check_args(args: argparse.Namespace) -> None:
    """Cross-flag rules and the torch device (ValueError naming the flag)."""
    if args.predict and args.restore is None:
        raise ValueError("--predict needs --restore DIR (the checkpoint to predict with)")
    if args.backend == "torch" and args.parallel != "none":
        raise ValueError(
            f"--parallel {args.parallel} is jax-only; the torch backend trains on one device"
        )
    if args.backend == "torch":
        check_device(args.device)


def check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device (cpu, cuda, mps)") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }.get(kind)
    if available is None:
        raise ValueError(f"--device {device}: only cpu, cuda and mps are supported")
    if not available:
        raise ValueError(f"--device {device}: {kind} is not available on this machine")


def explicit_flags(
    build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str]
) -> set[str]:
    """The destinations of the flags actually given in `argv` (not filled in from defaults):
    argparse leaves alone every attribute the namespace already holds, here a marker."""
    parser = build_parser()
    unset = object()
    namespace = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args([])), unset))
    given = parser.parse_known_args(list(argv), namespace=namespace)[0]
    return {name for name, value in vars(given).items() if value is not unset}


def apply_checkpoint(
    args: argparse.Namespace, explicit: set[str], run_flags: Sequence[str]
) -> None:
    """With `--restore DIR`: the run settings stored in DIR's newest intact checkpoint replace
    the flags; a flag given again with a different value is refused (ValueError), since the
    model, data order and optimizer state are the checkpoint's. The checkpoint policy flags
    are restored unless given; a run whose checkpoint is past `--epochs` is refused as complete."""
    meta = saved_meta(args.restore)
    saved = dict(meta.get("run", {}))
    conflicts = [
        f"--{name} {getattr(args, name)} (checkpoint: {saved[name]})"
        for name in run_flags
        if name in explicit and name in saved and _same(getattr(args, name)) != _same(saved[name])
    ]
    if conflicts:
        raise ValueError(
            f"--restore {args.restore}: {', '.join(conflicts)} conflict with the checkpoint's "
            "run settings (a resumed run keeps its model, data and optimizer); drop them, or "
            "start a new run"
        )
    for name in (*run_flags, *POLICY_FLAGS):
        if name in saved and name not in explicit:
            setattr(args, name, saved[name])
    if "epochs" not in explicit:
        args.epochs = saved.get("epochs", args.epochs)
    if not args.predict and args.epochs is not None and meta.get("epoch", 0) >= args.epochs:
        raise ValueError(
            f"--restore {args.restore}: the run is already complete (its checkpoint is at "
            f"epoch {meta.get('epoch')}, step {meta.get('step')}; --epochs {args.epochs}); "
            "pass a larger --epochs to train further, or --predict"
        )


def _same(value: Any) -> Any:
    return json.loads(json.dumps(value))


def check_outputs(args: argparse.Namespace, logdir: Path, checkpoint_dir: str) -> None:
    """Refuse unusable output locations before any work: a path that is not a directory, a
    directory that cannot be created or written, or (without `--restore`) a checkpoint
    directory that already holds a run's checkpoints. Creates both directories (a prediction
    run writes nothing, so it checks nothing)."""
    if args.predict:  # writes nothing
        return
    targets = {"--logdir": logdir, "--checkpoint_dir": Path(checkpoint_dir)}
    for flag, path in targets.items():
        if path.exists() and not path.is_dir():
            raise ValueError(f"{flag} {path}: exists and is not a directory")
    ckpt = Path(checkpoint_dir)
    if args.restore is None and ckpt.is_dir():
        steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit() and p.is_dir())
        if steps:
            raise ValueError(
                f"{ckpt} already holds checkpoints (latest step {steps[-1]}); continue them "
                "with --restore, or choose another --logdir / --checkpoint_dir"
            )
    for flag, path in targets.items():
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"{flag} {path}: cannot create it ({error.strerror})") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: not writable")


def limit_threads(threads: int | None, backend: str) -> None:
    """`--threads N`: torch's intra-op threads, or (jax) pin the process to N of its CPUs,
    before XLA creates its thread pool, which it sizes from the CPUs the process may use."""
    if threads is None:
        return
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        return
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("--threads with the jax backend needs Linux (CPU affinity)")
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus[:threads])


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


def saved_meta(directory: str) -> dict[str, Any]:
    """The meta of the newest intact checkpoint in `directory` (position, `run` settings)."""
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"--restore {directory}: no such checkpoint directory")
    if _backend_of(directory) == "torch":
        from torchref.training.checkpoint import Checkpointer as TorchCheckpointer

        return TorchCheckpointer(directory, read_only=True).read_meta()
    from jaxml.training.checkpoint import Checkpointer

    ckpt = Checkpointer(directory, read_only=True)
    try:
        return ckpt.read_meta()
    finally:
        ckpt.close()


def _backend_of(directory: str) -> str:
    """torch checkpoints hold `<step>/state.pt` + `meta.json`, orbax ones `<step>/state/` + `meta/`."""
    root = Path(directory)
    return "torch" if any(root.glob("*/state.pt")) or any(root.glob("*/meta.json")) else "jax"


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
        TorchCheckpointer(directory, read_only=True).restore(state)
        return Trained("torch", state.model, None, None, device)
    from jaxml.training.checkpoint import Checkpointer
    from jaxml.training.loop import init_state

    model = build_model("jax")
    template, _, _ = init_state(model, train_data, config)
    ckpt = Checkpointer(directory, read_only=True)
    try:
        jax_state, _ = ckpt.restore(template)
    finally:
        ckpt.close()
    return Trained("jax", model, jax_state.params, None)


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.5g}" for k, v in metrics.items())


def parse_run_args(
    build_parser: Callable[[], argparse.ArgumentParser],
    argv: Sequence[str] | None,
    run_flags: Sequence[str],
) -> argparse.Namespace:
    """Parse `argv` (argparse exits 2 on a malformed value), check the cross-flag rules and,
    with `--restore`, take the run settings from the checkpoint (see `apply_checkpoint`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.restore is not None:
        apply_checkpoint(args, explicit_flags(build_parser, argv), run_flags)
    check_args(args)
    return args


@dataclass
class Job:
    """A validated run of a training CLI: everything `execute` needs, decided before any jit."""

    args: argparse.Namespace
    build: Callable[[str], Any]
    train_data: ArrayDataset
    val_data: ArrayDataset
    config: TrainConfig
    logdir: Path
    loss: str
    meta: dict[str, Any]


def make_job(
    args: argparse.Namespace,
    *,
    experiment: str,
    name: str,
    build: Callable[[str], Any],
    data: tuple[ArrayDataset, ArrayDataset],
    loss: str,
    run_flags: Sequence[str],
) -> Job:
    """The `TrainConfig` (ValueError naming a bad field), checked and created output
    directories, and `--threads` applied: the last step of every CLI's `prepare`."""
    logdir = run_dir(args, experiment, name)
    config = train_config(args, logdir, data[0].steps_per_epoch(args.batch_size))
    assert config.checkpoint_dir is not None
    check_outputs(args, logdir, config.checkpoint_dir)
    limit_threads(args.threads, args.backend)
    meta = {n: getattr(args, n) for n in (*run_flags, *POLICY_FLAGS)} | {"epochs": args.epochs}
    return Job(args, build, data[0], data[1], config, logdir, loss, meta)


def fit_job(job: Job) -> tuple[Trained, float, RunLogger]:
    """Train `job`; returns the trained model, the seconds it took and the open run logger."""
    logger = RunLogger(job.logdir)
    try:
        logger.text("run", job.meta)
        start = time.perf_counter()
        trained = train(
            job.args.backend,
            job.build,
            job.train_data,
            job.val_data,
            job.config,
            loss=job.loss,
            logger=logger,
            meta=job.meta,
            device=job.args.device,
        )
    except BaseException:
        logger.close()
        raise
    return trained, time.perf_counter() - start, logger


def restore_job(job: Job) -> Trained:
    """The model of the newest intact checkpoint of `--restore`, for prediction."""
    args = job.args
    return restore(args.backend, job.build, job.train_data, job.config, args.restore, args.device)


def cli_main(
    prog: str,
    prepare: Callable[[Sequence[str] | None], Any],
    execute: Callable[[Any], Any],
    argv: Sequence[str] | None,
) -> int:
    """`execute(prepare(argv))` with one-line errors: a bad input (ValueError / OSError while
    preparing) is `prog: error: ...` and 2, a diverged run or an I/O failure while training 1."""
    hook, sys.unraisablehook = sys.unraisablehook, _quiet_closed_event_loop
    try:
        try:
            job = prepare(argv)
        except (ValueError, OSError) as error:
            return _error(prog, error, 2)
        try:
            execute(job)
        except (FloatingPointError, OSError) as error:
            return _error(prog, error, 1)
        return 0
    finally:
        sys.unraisablehook = hook


def _quiet_closed_event_loop(unraisable: Any) -> None:
    """A failed orbax restore (a damaged checkpoint, reported and skipped) leaves tensorstore
    reads that complete after asyncio closed their loop; their "Event loop is closed" errors are
    noise. Every other unraisable exception goes to Python's default hook."""
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
        sys.__unraisablehook__(unraisable)


def _error(prog: str, error: BaseException, code: int) -> int:
    print(f"{prog}: error: {error}", file=sys.stderr)
    return code


def exit_process(main: Callable[[], int]) -> None:
    """`python -m ...` entry point: exit with `main()`'s status. A failing run exits at once:
    orbax's save threads can outlive an error and would otherwise keep the process alive."""
    try:
        code = main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    if code and any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread()
    ):
        os._exit(code)
    raise SystemExit(code)
