"""`python -m experiments.regression`: linear, MLP and transformer regression on synthetic data.

    python -m experiments.regression --type linear|nlinear|transformer
        [--autoregressive | --encoderdecoder] [--attention_type mha|mqa|gqa] [--num_groups N]
        [--moe] [--epochs N] [--lr X] [--optimizer adam|adamw|sgd|rmsprop]
        [--custom_act relu|tanh|gelu] [--latent_dims 128,64,32] [--backend jax|torch]
        [--use_kv_cache | --no-use_kv_cache] [--expanding_context | --sliding_window N]

Tasks (all synthetic, fixed by `--seed`):
- linear / nlinear: `y = 1 - 2x + 0.5x^2 + 1.5x^3 + 0.1 N(0,1)` (the noise floor is MSE 0.01).
- transformer: predict the sum of a sequence of `--seq_len` uniform values.
- --autoregressive: next-value prediction on noisy sinusoids, then a free-running continuation.
- --encoderdecoder: reverse the source sequence (teacher forcing), then greedy decoding.
Both generate with the KV cache (`--no-use_kv_cache`: full recompute per step), keeping every
position (`--expanding_context`, the default) or the last N (`--sliding_window N`).
Prints the final train / validation loss; logs to a run directory (tensorboard) and keeps
checkpoints there for `--restore DIR [--predict]`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.common import (
    Job,
    Trained,
    add_training_args,
    cli_main,
    exit_process,
    fit_job,
    format_metrics,
    make_job,
    parse_run_args,
    restore_job,
)
from experiments.flags import dims, int_list, nonneg_float, positive_float, positive_int
from jaxml.configs import DecodeConfig, FFNConfig, RegressorConfig, TransformerConfig
from jaxml.data import synthetic
from jaxml.data.loader import ArrayDataset
from jaxml.training.logging import prediction_figure

# Per mode: epochs, lr, batch size, examples.
DEFAULTS = {
    "linear": (100, 1e-2, 32, 1000),
    "nlinear": (100, 1e-3, 32, 1000),
    "transformer": (20, 1e-3, 64, 2000),
    "autoregressive": (20, 1e-3, 32, 1000),
    "encoderdecoder": (30, 1e-3, 64, 2000),
}
# Flags that define the model and data: restored from a checkpoint's run settings.
RUN_FLAGS = (
    "type autoregressive encoderdecoder attention_type num_groups moe num_experts topk "
    "capacity_factor custom_act latent_dims embed_dim num_heads num_layers ffn_latent_dim "
    "seq_len num_samples noise backend seed batch_size lr optimizer schedule warmup_steps "
    "step_size gamma weight_decay momentum nesterov clip_norm"
).split()


PROG = "python -m experiments.regression"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    g = parser.add_argument_group("model")
    g.add_argument("--type", choices=("linear", "nlinear", "transformer"), default="linear")
    g.add_argument("--autoregressive", action="store_true", help="transformer: next-value model")
    g.add_argument("--encoderdecoder", action="store_true", help="transformer: seq2seq model")
    g.add_argument("--attention_type", choices=("mha", "mqa", "gqa"), default="mha")
    g.add_argument("--num_groups", type=positive_int, default=None, help="gqa key/value heads")
    g.add_argument("--moe", action="store_true", help="Mixture-of-Experts FFNs")
    g.add_argument("--num_experts", type=positive_int, default=4)
    g.add_argument("--topk", type=positive_int, default=2)
    g.add_argument("--capacity_factor", type=positive_float, default=1.25)
    g.add_argument("--custom_act", choices=("relu", "tanh", "gelu"), default="relu")
    g.add_argument(
        "--latent_dims", type=int_list(), default="128,64,32", help="nlinear hidden widths"
    )
    g.add_argument("--embed_dim", type=positive_int, default=32)
    g.add_argument("--num_heads", type=positive_int, default=4)
    g.add_argument("--num_layers", type=positive_int, default=2)
    g.add_argument("--ffn_latent_dim", type=positive_int, default=64)
    g = parser.add_argument_group("data")
    g.add_argument("--seq_len", type=positive_int, default=16)
    g.add_argument("--num_samples", type=positive_int, default=None)
    g.add_argument("--noise", type=nonneg_float, default=0.1, help="polynomial noise std")
    g = parser.add_argument_group("generation (--autoregressive, --encoderdecoder)")
    g.add_argument(
        "--use_kv_cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decode with the KV cache (default) or recompute the full prefix every step",
    )
    context = g.add_mutually_exclusive_group()
    context.add_argument(
        "--expanding_context", action="store_true", help="keep every position (default)"
    )
    context.add_argument(
        "--sliding_window",
        type=positive_int,
        default=None,
        metavar="N",
        help="attend to the last N",
    )
    add_training_args(parser)
    return parser


def mode_of(args: argparse.Namespace) -> str:
    if args.autoregressive and args.encoderdecoder:
        raise ValueError("choose one of --autoregressive and --encoderdecoder")
    if (args.autoregressive or args.encoderdecoder or args.moe) and args.type != "transformer":
        raise ValueError("--autoregressive, --encoderdecoder and --moe need --type transformer")
    if args.autoregressive:
        return "autoregressive"
    if args.encoderdecoder:
        return "encoderdecoder"
    return str(args.type)


def fill_defaults(args: argparse.Namespace, mode: str) -> None:
    epochs, lr, batch, samples = DEFAULTS[mode]
    for name, value in (
        ("epochs", epochs),
        ("lr", lr),
        ("batch_size", batch),
        ("num_samples", samples),
    ):
        if getattr(args, name) is None:
            setattr(args, name, value)


def make_data(args: argparse.Namespace, mode: str) -> tuple[ArrayDataset, ArrayDataset]:
    n, seed = args.num_samples, args.seed
    if mode in ("linear", "nlinear"):
        data = synthetic.polynomial(n, seed=seed, noise=args.noise)
    elif mode == "transformer":
        data = synthetic.sequence_sum(n, args.seq_len, seed=seed)
    elif mode == "autoregressive":
        data = synthetic.next_value(synthetic.sinusoids(n, args.seq_len + 1, seed=seed))
    else:
        data = synthetic.seq2seq(n, args.seq_len, seed=seed)
    return data.split(0.2, seed)


def model_config(args: argparse.Namespace, mode: str) -> RegressorConfig | TransformerConfig:
    if mode == "linear":
        return RegressorConfig(1)
    if mode == "nlinear":
        return RegressorConfig(1, latent_dims=dims(args.latent_dims), activation=args.custom_act)
    ffn = FFNConfig(
        args.embed_dim,
        args.ffn_latent_dim,
        activation=args.custom_act,
        use_moe=args.moe,
        num_experts=args.num_experts,
        topk=args.topk,
        capacity_factor=args.capacity_factor if args.moe else None,
    )
    return TransformerConfig(
        input_dim=1,
        embed_dim=args.embed_dim,
        ffn_latent_dim=args.ffn_latent_dim,
        num_heads=args.num_heads,
        num_layers=args.num_layers,
        attention_type=args.attention_type,
        # mha / mqa fix the number of key/value heads; --num_groups only sizes gqa.
        num_groups=args.num_groups if args.attention_type == "gqa" else None,
        max_seq_len=args.seq_len,
        ffn_config=ffn,
    )


MODEL_CLASSES = {
    "linear": "LinearRegressor",
    "nlinear": "MLPRegressor",
    "transformer": "TransformerModel",
    "autoregressive": "AutoregressiveTransformerModel",
    "encoderdecoder": "EncoderDecoder",
}


def model_builder(config: RegressorConfig | TransformerConfig, mode: str) -> Any:
    """`backend -> model` for `train` / `restore`."""

    def build(backend: str) -> Any:
        if backend == "torch":
            import torchref.models as models
        else:
            import jaxml.models as models  # type: ignore[no-redef]
        return getattr(models, MODEL_CLASSES[mode])(config)

    return build


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    """The generation flags as a validated `DecodeConfig` (ValueError naming the field)."""
    return DecodeConfig(
        use_kv_cache=args.use_kv_cache,
        expanding_context=args.sliding_window is None,
        window=args.sliding_window,
    )


def generation_error(trained: Trained, args: argparse.Namespace, mode: str) -> float | None:
    """Free-running MSE: continue held-out sinusoids from their first half (autoregressive), or
    decode reversed sequences from the source alone (encoder-decoder)."""
    if mode == "autoregressive":
        seqs = synthetic.sinusoids(64, args.seq_len + 1, seed=args.seed + 1)
        prefix_len = args.seq_len // 2
        prefix, truth = seqs[:, :prefix_len], seqs[:, prefix_len:-1]
    elif mode == "encoderdecoder":
        data = synthetic.seq2seq(64, args.seq_len, seed=args.seed + 1)
        prefix, truth = data.inputs[0], data.targets
    else:
        return None
    steps = truth.shape[1]
    if trained.backend == "torch":
        import torch

        from torchref.models.generation import generate, predict_autoregressively

        x = torch.from_numpy(prefix).to(trained.device)
        trained.model.eval()
        out = (
            predict_autoregressively(trained.model, x, steps, decode_config=decode_config(args))
            if mode == "autoregressive"
            else generate(trained.model, x, steps, decode_config=decode_config(args))
        )
        pred = out.cpu().numpy()
    else:
        import jax.numpy as jnp

        from jaxml.models.generation import generate as jgenerate
        from jaxml.models.generation import predict_autoregressively as jpredict

        fn = jpredict if mode == "autoregressive" else jgenerate
        pred = np.asarray(
            fn(
                trained.model,
                trained.params,
                jnp.asarray(prefix),
                steps,
                decode_config=decode_config(args),
            )
        )
    return float(np.mean((pred - truth) ** 2))


def prepare(argv: Sequence[str] | None = None, prog: str = PROG) -> Job:
    """Parse and validate `argv` (ValueError / argparse exit 2) and create the run directories;
    nothing is compiled or trained."""
    args = parse_run_args(lambda: build_parser(prog), argv, RUN_FLAGS)
    mode = mode_of(args)
    decode_config(args)  # bad generation flags fail here, before any training
    fill_defaults(args, mode)
    build = model_builder(model_config(args, mode), mode)
    return make_job(
        args,
        experiment="regression",
        name=mode,
        build=build,
        data=make_data(args, mode),
        loss="mse",
        run_flags=RUN_FLAGS,
    )


def execute(job: Job) -> dict[str, Any]:
    """Train (or restore and predict) a prepared job and print the results; returns them."""
    args, val_data = job.args, job.val_data
    mode = mode_of(args)
    results: dict[str, Any] = {"mode": mode, "backend": args.backend, "logdir": str(job.logdir)}
    if args.predict:
        trained = restore_job(job)
        val = trained.evaluate(val_data, "mse")
        pred = trained.predict(val_data.take(slice(0, 5)))
        print(f"restored {mode} ({args.backend}) from {args.restore}")
        print(f"val: {format_metrics(val)}")
        for p, t in zip(pred.reshape(5, -1), val_data.targets[:5].reshape(5, -1), strict=True):
            print(
                f"  prediction {np.array2string(p[:4], precision=3)}  target {np.array2string(t[:4], precision=3)}"
            )
        results.update(val_loss=val["loss"], predictions=pred)
        return results

    trained, seconds, logger = fit_job(job)
    fit = trained.result
    step = fit.history[-1]["step"] if fit.history else 0
    pred = trained.predict(val_data)
    logger.figure("val/prediction_vs_target", prediction_figure(pred, val_data.targets, mode), step)
    gen = generation_error(trained, args, mode)
    if gen is not None:
        logger.scalars("val", {"generation_mse": gen}, step)
    logger.close()
    results.update(
        train_loss=fit.train_metrics["loss"],
        val_loss=fit.val_metrics["loss"],
        train_metrics=fit.train_metrics,
        val_metrics=fit.val_metrics,
        history=fit.history,
        generation_mse=gen,
        seconds=seconds,
        checkpoint_dir=job.config.checkpoint_dir,
    )
    print(f"{mode} ({args.backend}): {args.epochs} epochs, {step} steps in {seconds:.1f}s")
    print(f"final train loss {results['train_loss']:.5f}  val loss {results['val_loss']:.5f}")
    if "dropped_fraction" in fit.val_metrics:
        print(
            f"MoE: aux loss {fit.val_metrics['aux_loss']:.5f}  "
            f"dropped fraction {fit.val_metrics['dropped_fraction']:.3f}"
        )
    if gen is not None:
        what = (
            "continuation of held-out sinusoids" if mode == "autoregressive" else "greedy decoding"
        )
        print(f"free-running {what}: mse {gen:.5f}")
    print(f"logs: {job.logdir}  checkpoints: {job.config.checkpoint_dir}")
    return results


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`execute(prepare(argv))`: errors are raised (`main` turns them into exit codes)."""
    return execute(prepare(argv))


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(PROG, prepare, execute, argv)


if __name__ == "__main__":
    exit_process(main)
