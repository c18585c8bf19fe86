"""`python -m experiments.train_sota`: train the Llama-style LM on text (the main job).

Trains, checkpoints, restores the checkpoint, and prints the validation loss and perplexity
against the unigram baseline, and a generated sample.

    python -m experiments.train_sota [--data PATH] [--backend jax|torch] [--steps N]
        [--run_dir DIR [--resume]] [--parallel none|mesh|pmap]
        [--coordinator HOST:PORT --num_processes N --process_id I] ...

Without `--data` it trains on the English documentation inside CPython (`pydoc_data.topics`),
so nothing is downloaded. The run directory holds `run.json` (the settings), `checkpoints/`
(orbax steps + `tokenizer.json`), tensorboard events and `loss_curve.png`. Every flag: see
docs/train_sota.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.common import (
    check_device,
    cli_main,
    exit_process,
    explicit_flags,
    limit_threads,
)
from experiments.generate import check_prompt
from jaxml.configs import SamplingConfig
from jaxml.configs.lm_training import LMTrainConfig
from jaxml.configs.training import OptimizerConfig
from jaxml.data.text import (
    TokenData,
    load_tokenizer,
    read_corpus,
    save_tokenizer,
    train_tokenizer,
    unigram_entropy,
)
from jaxml.training.logging import RunLogger, lm_flops_per_token, loss_curve_figure

PROG = "python -m experiments.train_sota"
BACKENDS = ("jax", "torch")
# run.json holds every flag but these; --resume takes them back unless given again.
NOT_SAVED = ("run_dir", "resume", "coordinator", "num_processes", "process_id")
DATA_DIGEST = "data_digest"  # run.json's fingerprint of the tokens the run trains on
# Flags that define the run: given again on --resume, they must equal the saved values.
RUN_FLAGS = (
    "data vocab_size seq_len val_fraction embed_dim num_layers num_heads num_groups "
    "attention_type ffn_latent_dim tie_embeddings dtype moe num_experts topk steps batch_size "
    "grad_accum lr warmup_steps final_lr_scale weight_decay b2 clip_norm seed backend"
).split()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help="text file, directory, JSONL or TinyStories file")
    g.add_argument("--vocab_size", type=int, default=1024, help="byte-level BPE vocabulary")
    g.add_argument("--seq_len", type=int, default=128, help="tokens per training sequence")
    g.add_argument("--val_fraction", type=float, default=0.1, help="held-out share of tokens")
    g = p.add_argument_group("model (LMConfig)")
    g.add_argument("--embed_dim", type=int, default=128)
    g.add_argument("--num_layers", type=int, default=4)
    g.add_argument("--num_heads", type=int, default=4)
    g.add_argument("--attention_type", choices=("mha", "mqa", "gqa"), default="gqa")
    g.add_argument("--num_groups", type=int, default=2, help="gqa key/value heads")
    g.add_argument("--ffn_latent_dim", type=int, default=None, help="default: Llama's 8/3 d")
    g.add_argument("--tie_embeddings", action="store_true")
    g.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="bfloat16 = mixed precision (float32 weights, bfloat16 matmuls)",
    )
    g.add_argument("--moe", action="store_true", help="Mixture-of-Experts FFNs")
    g.add_argument("--num_experts", type=int, default=4)
    g.add_argument("--topk", type=int, default=2)
    g = p.add_argument_group("optimization (AdamW, warmup + cosine, global-norm clipping)")
    g.add_argument("--steps", type=int, default=400, help="optimizer steps")
    g.add_argument("--batch_size", type=int, default=16, help="sequences per step (global)")
    g.add_argument("--grad_accum", type=int, default=1, help="micro-batches per step")
    g.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    g.add_argument("--warmup_steps", type=int, default=None, help="default: 5%% of --steps")
    g.add_argument("--final_lr_scale", type=float, default=0.1, help="final lr / peak lr")
    g.add_argument("--weight_decay", type=float, default=0.1)
    g.add_argument("--b2", type=float, default=0.95, help="AdamW beta2")
    g.add_argument("--clip_norm", type=float, default=1.0, help="global gradient-norm clip")
    g.add_argument("--seed", type=int, default=0, help="init, data order and sampling")
    g = p.add_argument_group("evaluation, logging, checkpoints")
    g.add_argument("--eval_every", type=int, default=100, help="steps between evaluations")
    g.add_argument("--eval_batches", type=int, default=20, help="validation batches per eval")
    g.add_argument("--log_every", type=int, default=10, help="steps between scalar logs")
    g.add_argument("--save_every", type=int, default=100, help="steps between checkpoints")
    g.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    g.add_argument("--run_dir", default=None, help="default: runs/train_sota/<time>-<pid>")
    g.add_argument("--resume", action="store_true", help="continue the run in --run_dir")
    g.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    g.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="MFU denominator (default: a measured matmul on the device)",
    )
    g = p.add_argument_group("backend and devices")
    g.add_argument("--backend", choices=BACKENDS, default="jax")
    g.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps")
    g.add_argument(
        "--threads", type=int, default=None, help="CPU threads (torch) / CPUs used (jax)"
    )
    g.add_argument(
        "--parallel",
        choices=("none", "mesh", "pmap"),
        default=None,
        help="jax data parallelism (default: mesh with several devices, else none)",
    )
    g.add_argument("--num_devices", type=int, default=None, help="default: every device")
    g.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="multi-process: process 0's address",
    )
    g.add_argument("--num_processes", "--num-processes", type=int, default=None)
    g.add_argument("--process_id", "--process-id", type=int, default=None)
    g = p.add_argument_group("the sample printed at the end (see experiments.generate)")
    g.add_argument("--prompt", default="The")
    g.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=80)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top_k", type=int, default=40)
    g.add_argument("--top_p", type=float, default=None)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Cheap checks before any long work; a ValueError becomes `prog: error: ...`."""
    for name in (
        "vocab_size",
        "seq_len",
        "embed_dim",
        "num_layers",
        "num_heads",
        "steps",
        "batch_size",
        "grad_accum",
        "eval_every",
        "eval_batches",
        "log_every",
        "save_every",
        "keep",
        "max_new_tokens",
    ):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.backend == "torch" and args.parallel not in (None, "none"):
        raise ValueError(f"--parallel {args.parallel} is jax-only; torch trains on one device")
    multi = (args.coordinator, args.num_processes, args.process_id)
    if any(v is not None for v in multi) and any(v is None for v in multi):
        raise ValueError(
            "multi-process runs need all of --coordinator, --num_processes, --process_id"
        )
    if args.coordinator is not None:
        if args.backend != "jax":
            raise ValueError("multi-process training is jax-only")
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--coordinator {args.coordinator!r} must be HOST:PORT")
    if args.backend == "torch" and args.device.startswith("mps") and args.dtype != "float32":
        raise ValueError("--device mps trains in float32: drop --dtype bfloat16")
    if args.resume and args.run_dir is None:
        raise ValueError("--resume needs --run_dir DIR (the run to continue)")
    if args.data is not None and not Path(args.data).exists():
        raise ValueError(f"--data {args.data}: no such file or directory")


def resolve_run_dir(args: argparse.Namespace, explicit: set[str], primary: bool) -> Path:
    """The run directory. On `--resume` the saved flags replace the defaults; a run-defining
    one given again with another value is refused. A new run never reuses a run's directory."""
    if args.run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return Path("runs") / "train_sota" / f"{stamp}-{os.getpid()}"
    run_dir = Path(args.run_dir)
    saved_path = run_dir / "run.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--run_dir {run_dir}: exists and is not a directory")
    if args.resume:
        if not saved_path.is_file():
            raise ValueError(f"--resume: {run_dir} holds no run (no run.json)")
        saved = json.loads(saved_path.read_text())
        conflicts = [
            f"--{name} {getattr(args, name)} (run: {saved[name]})"
            for name in RUN_FLAGS
            if name in explicit and name in saved and getattr(args, name) != saved[name]
        ]
        if conflicts:
            raise ValueError(
                f"--resume {run_dir}: {', '.join(conflicts)} conflict with the run's settings; "
                "drop them, or start a new run"
            )
        for name, value in saved.items():
            if name not in explicit and name != DATA_DIGEST:
                setattr(args, name, value)
    elif primary and saved_path.exists():
        raise ValueError(
            f"--run_dir {run_dir} already holds a run; pass --resume to continue it or choose "
            "another directory"
        )
    return run_dir


def lm_config(args: argparse.Namespace, vocab_size: int) -> Any:
    from jaxml.configs.lm import LMConfig

    return LMConfig(
        vocab_size=vocab_size,
        embed_dim=args.embed_dim,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        attention_type=args.attention_type,
        num_groups=args.num_groups if args.attention_type == "gqa" else None,
        ffn_latent_dim=args.ffn_latent_dim,
        max_seq_len=args.seq_len,
        tie_embeddings=args.tie_embeddings,
        use_moe=args.moe,
        num_experts=args.num_experts,
        topk=args.topk,
        dtype=args.dtype,
    )


def train_config(args: argparse.Namespace, run_dir: Path, parallel: str) -> LMTrainConfig:
    warmup = max(1, args.steps // 20) if args.warmup_steps is None else args.warmup_steps
    optimizer = OptimizerConfig(
        "adamw",
        args.lr,
        schedule="cosine",
        warmup_steps=warmup,
        total_steps=args.steps,
        final_lr_scale=args.final_lr_scale,
        b2=args.b2,
        weight_decay=args.weight_decay,
        clip_norm=args.clip_norm,
    )
    return LMTrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        grad_accum=args.grad_accum,
        seed=args.seed,
        optimizer=optimizer,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        log_every=args.log_every,
        save_every=args.save_every,
        keep=args.keep,
        checkpoint_dir=str(run_dir / "checkpoints"),
        resume=args.resume,
        logdir=str(run_dir),
        progress=not args.no_progress,
        parallel=parallel,
        num_devices=args.num_devices,
    )


@dataclass
class Job:
    """A validated run, ready to train: flags, run directory, tokenizer, data and configs."""

    args: argparse.Namespace
    run_dir: Path
    tokenizer: Any
    data: TokenData
    model: Any  # LMConfig
    train: LMTrainConfig
    corpus: str

    @property
    def primary(self) -> bool:
        return self.args.process_id in (None, 0)


def prepare(argv: Sequence[str] | None) -> Job:
    """Everything that can fail on bad input, before any training: flags, run directory,
    corpus, tokenizer, token data and configs (ValueError / DataError -> exit 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.backend == "torch":
        check_device(args.device)
    limit_threads(args.threads, args.backend)
    if args.coordinator is not None:
        from jaxml.training.distributed import initialize

        initialize(args.coordinator, args.num_processes, args.process_id)
    primary = args.process_id in (None, 0)
    run_dir = resolve_run_dir(args, explicit_flags(build_parser, argv), primary)
    corpus = read_corpus(args.data)
    tokenizer = _tokenizer(args, run_dir, corpus.documents, primary)
    data = TokenData.build(
        corpus, tokenizer, seq_len=args.seq_len, val_fraction=args.val_fraction, seed=args.seed
    )
    if args.resume:
        check_same_data(run_dir, data, args.data)
    parallel = args.parallel or "none"
    if args.backend == "jax" and args.parallel is None:
        import jax

        parallel = "mesh" if jax.device_count() > 1 else "none"
    config = lm_config(args, tokenizer.get_vocab_size())
    train = train_config(args, run_dir, parallel)
    check_prompt(tokenizer, args.prompt, args.max_new_tokens, config.max_seq_len)
    return Job(args, run_dir, tokenizer, data, config, train, corpus.describe())


def check_same_data(run_dir: Path, data: TokenData, source: str | None) -> None:
    """A resumed run must see the tokens it started on: the same `--data` path holding other
    text would silently continue on different batches."""
    saved = json.loads((run_dir / "run.json").read_text()).get(DATA_DIGEST)
    if saved is not None and saved != data.digest():
        raise ValueError(
            f"--resume {run_dir}: the corpus at --data {source or 'pydoc_data.topics'} has "
            f"changed since the run started (tokens {data.digest()}, run: {saved}); restore it "
            "or start a new run"
        )


def _tokenizer(args: argparse.Namespace, run_dir: Path, documents: Any, primary: bool) -> Any:
    """The run's tokenizer: reloaded on --resume, else trained (by process 0 alone when
    several processes train, the others load it after a barrier)."""
    path = run_dir / "checkpoints" / "tokenizer.json"
    if args.resume and path.is_file():
        return load_tokenizer(path)
    if args.coordinator is None:
        return train_tokenizer(documents, args.vocab_size)
    from jax.experimental import multihost_utils

    if primary:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tokenizer(train_tokenizer(documents, args.vocab_size), path)
    multihost_utils.sync_global_devices("tokenizer")
    return load_tokenizer(path)


def write_run_files(job: Job) -> None:
    """run.json (the flags) and checkpoints/tokenizer.json, written atomically."""
    checkpoints = job.run_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    if not (checkpoints / "tokenizer.json").exists():
        save_tokenizer(job.tokenizer, checkpoints / "tokenizer.json")
    tmp = job.run_dir / ".run.json.tmp"
    saved = {name: value for name, value in vars(job.args).items() if name not in NOT_SAVED}
    saved[DATA_DIGEST] = job.data.digest()
    tmp.write_text(json.dumps(saved, indent=2))
    tmp.replace(job.run_dir / "run.json")


def train(job: Job, logger: RunLogger) -> tuple[Any, int, float]:
    """Train with the chosen backend, both from the same (jax-initialised) weights. Returns
    `(result, parameter count, peak FLOP/s used for MFU)`."""
    import jax

    from jaxml.models.lm import LM
    from jaxml.training.lm_loop import init_lm_state

    args, config, tconfig = job.args, job.model, job.train
    params = init_lm_state(LM(config), tconfig)[0].params
    n = sum(int(x.size) for x in jax.tree.leaves(params))
    embedding = config.vocab_size * config.embed_dim
    flops = lm_flops_per_token(n, config.num_layers, config.embed_dim, tconfig.seq_len, embedding)
    meta = {"lm_config": dataclasses.asdict(config), "backend": args.backend}
    if args.backend == "torch":
        from torchref.convert import load_jaxml_params
        from torchref.models.lm import LM as TorchLM
        from torchref.training.lm_loop import matmul_peak_flops as torch_peak
        from torchref.training.lm_loop import train_lm as torch_train

        model = load_jaxml_params(TorchLM(config), jax.device_get(params))
        peak = args.peak_tflops * 1e12 if args.peak_tflops else torch_peak(args.device)
        torch_result = torch_train(
            model,
            job.data,
            tconfig,
            logger=logger,
            meta=meta,
            device=args.device,
            flops_per_token=flops,
            peak_flops=peak,
        )
        return torch_result, n, peak
    from jaxml.training.lm_loop import matmul_peak_flops, train_lm

    peak = args.peak_tflops * 1e12 if args.peak_tflops else matmul_peak_flops()
    # CPU devices (forced virtual ones included) share the machine: its peak is one measure.
    chips = jax.process_count() if jax.default_backend() == "cpu" else jax.device_count()
    result = train_lm(
        LM(config),
        job.data,
        tconfig,
        logger=logger,
        meta=meta,
        params=params,
        flops_per_token=flops,
        peak_flops=peak * chips,
    )
    return result, n, peak * chips


def execute(job: Job) -> None:
    """Train, write the loss curve, restore the checkpoint, report its validation figures and
    a sample. Prints only in process 0."""
    args, data, config, tconfig = job.args, job.data, job.model, job.train
    say = print if job.primary else (lambda *_: None)
    if job.primary:
        write_run_files(job)
    entropy = unigram_entropy(data.train.tokens, data.vocab_size)
    say(f"corpus      {job.corpus}")
    say(
        f"tokens      {len(data.train.tokens):,} train / {len(data.val.tokens):,} validation, "
        f"BPE vocabulary {data.vocab_size}"
    )
    say(
        f"baseline    unigram entropy {entropy:.3f} nats/token (perplexity {math.exp(entropy):.1f})"
    )
    logger = RunLogger(job.run_dir if job.primary else None)
    start = time.perf_counter()
    try:
        result, n, peak = train(job, logger)
    finally:
        logger.close()
    minutes = (time.perf_counter() - start) / 60
    where = tconfig.parallel if args.backend == "jax" else args.device
    say(
        f"model       {n:,} parameters; {result.steps_run} steps of {tconfig.tokens_per_step:,} "
        f"tokens in {minutes:.1f} min ({args.backend}, {where})"
    )
    mfu = "" if result.mfu is None else f", MFU {result.mfu:.1%} of {peak / 1e9:.0f} GFLOP/s"
    say(f"throughput  {result.tokens_per_sec:,.0f} tokens/s{mfu}")
    if job.primary:
        title = f"{config.num_layers} x {config.embed_dim} LM, {args.backend}"
        figure = loss_curve_figure(result.history, title, baseline=entropy)
        figure.savefig(job.run_dir / "loss_curve.png")
    if args.coordinator is not None:  # every process holds the final state
        say(
            f"validation  loss {result.val_loss:.4f} nats/token, perplexity "
            f"{result.val_perplexity:.2f} (unigram baseline {entropy:.3f})"
        )
        return
    from experiments.generate import load_checkpoint, sample

    restored = load_checkpoint(job.run_dir / "checkpoints")
    figures = restored.evaluate(data, tconfig)
    say(f"restored    step {restored.step} from {job.run_dir / 'checkpoints'}")
    say(
        f"validation  loss {figures['val_loss']:.4f} nats/token, perplexity "
        f"{figures['val_perplexity']:.2f} (unigram baseline {entropy:.3f})"
    )
    (text,) = sample(
        restored,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        sampling=SamplingConfig(args.temperature, args.top_k, args.top_p),
        seed=args.seed,
    )
    say(f"sample      {args.prompt!r} ->\n{text}")
    say(f"run         {job.run_dir} (loss_curve.png, tensorboard events, checkpoints)")


def run(argv: Sequence[str] | None = None) -> int:
    return cli_main(PROG, prepare, execute, argv)


if __name__ == "__main__":
    exit_process(run)
