"""`python -m experiments.classify`: the CNN classifier on real images.

    python -m experiments.classify [--data DIR] [--epochs N] [--lr X] [--backend jax|torch]

Default data: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), split
80/20 by `--seed`. `--data DIR` reads CIFAR-10 from its python-pickle batches
(`data_batch_1..5`, `test_batch`, `batches.meta`). Reports the test accuracy; logs to a run
directory and checkpoints there (`--restore DIR [--predict]` as in `experiments.regression`).
The jax model takes NHWC images, the torch twin NCHW; the loader delivers the backend's layout.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from experiments.common import (
    add_training_args,
    check_args,
    format_metrics,
    restore,
    run_dir,
    saved_run,
    train,
    train_config,
)
from jaxml.configs import CNNConfig, parse_latent_dims
from jaxml.data.cifar import load_cifar10
from jaxml.data.digits import load_digits
from jaxml.data.loader import ArrayDataset
from jaxml.training.logging import RunLogger

# Per dataset: epochs, lr, batch size, conv channels, hidden widths.
DEFAULTS = {"digits": (40, 2e-3, 64, "16,32", "64"), "cifar10": (10, 1e-3, 128, "32,64", "128")}
RUN_FLAGS = (
    "data limit channels hidden_dims custom_act backend seed batch_size lr optimizer "
    "schedule warmup_steps step_size gamma weight_decay momentum nesterov clip_norm"
).split()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.classify", description=__doc__.split("\n")[0]
    )
    g = parser.add_argument_group("data and model")
    g.add_argument("--data", default=None, metavar="DIR", help="CIFAR-10 python batches")
    g.add_argument("--limit", type=int, default=None, help="use the first N training images")
    g.add_argument("--channels", default=None, help="conv channels per block, e.g. 16,32")
    g.add_argument("--hidden_dims", default=None, help="dense widths before the head, e.g. 64")
    g.add_argument("--custom_act", choices=("relu", "tanh", "gelu"), default="relu")
    add_training_args(parser)
    return parser


def load(args: argparse.Namespace) -> tuple[ArrayDataset, ArrayDataset, list[str]]:
    layout = "NCHW" if args.backend == "torch" else "NHWC"
    if args.data is None:
        train_data, test_data = load_digits(seed=args.seed, layout=layout)
        names = [str(i) for i in range(10)]
    else:
        train_data, test_data, names = load_cifar10(args.data, layout=layout)
    if args.limit is not None:
        train_data = train_data.take(slice(0, args.limit))
    return train_data, test_data, names


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse `argv`, train (or restore) the CNN, print the test accuracy; returns the results."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    check_args(args)
    if args.restore is not None:
        saved = saved_run(args.restore)
        for name in RUN_FLAGS:
            setattr(args, name, saved.get(name, getattr(args, name)))
        if args.epochs is None:
            args.epochs = saved.get("epochs")
    dataset = "digits" if args.data is None else "cifar10"
    epochs, lr, batch, channels, hidden = DEFAULTS[dataset]
    args.epochs = args.epochs or epochs
    args.lr = args.lr or lr
    args.batch_size = args.batch_size or batch
    args.channels = args.channels or channels
    args.hidden_dims = args.hidden_dims or hidden
    train_data, test_data, names = load(args)
    image = train_data.inputs[0].shape[1:]
    in_channels, size = (image[0], image[1:]) if args.backend == "torch" else (image[2], image[:2])
    config = CNNConfig(
        in_channels=int(in_channels),
        image_size=(int(size[0]), int(size[1])),
        num_classes=len(names),
        channels=parse_latent_dims(args.channels),
        hidden_dims=parse_latent_dims(args.hidden_dims),
        activation=args.custom_act,
    )

    def build(backend: str) -> Any:
        if backend == "torch":
            from torchref.models.cnn import CNNClassifier
        else:
            from jaxml.models.cnn import CNNClassifier  # type: ignore[assignment]
        return CNNClassifier(config)

    logdir = run_dir(args, "classify", dataset)
    cfg = train_config(args, logdir, train_data.steps_per_epoch(args.batch_size))
    results: dict[str, Any] = {"dataset": dataset, "backend": args.backend, "logdir": str(logdir)}
    if args.predict:
        trained = restore(args.backend, build, train_data, cfg, args.restore, args.device)
        test = trained.evaluate(test_data, "cross_entropy")
        print(f"restored CNN ({args.backend}) from {args.restore}")
        print(f"test: {format_metrics(test)}")
        pred = trained.predict(test_data.take(slice(0, 10))).argmax(-1)
        print("first 10 test images: predicted", [names[i] for i in pred])
        print("                      labels   ", [names[i] for i in test_data.targets[:10]])
        results.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
        return results

    logger = RunLogger(logdir)
    meta = {name: getattr(args, name) for name in RUN_FLAGS} | {"epochs": args.epochs}
    logger.text("run", meta)
    start = time.perf_counter()
    trained = train(
        args.backend,
        build,
        train_data,
        test_data,
        cfg,
        loss="cross_entropy",
        logger=logger,
        meta=meta,
        device=args.device,
    )
    seconds = time.perf_counter() - start
    logger.close()
    fit = trained.result
    test = fit.val_metrics
    results.update(
        train_accuracy=fit.train_metrics["accuracy"],
        test_accuracy=test["accuracy"],
        test_loss=test["loss"],
        history=fit.history,
        seconds=seconds,
        num_classes=len(names),
    )
    print(
        f"{dataset} CNN ({args.backend}): {len(train_data)} train / {len(test_data)} test images, "
        f"{args.epochs} epochs in {seconds:.1f}s"
    )
    print(
        f"train accuracy {results['train_accuracy']:.4f}  test accuracy {test['accuracy']:.4f}  "
        f"test loss {test['loss']:.4f}"
    )
    print(f"logs: {logdir}  checkpoints: {cfg.checkpoint_dir}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
