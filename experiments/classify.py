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
from collections.abc import Sequence
from typing import Any

from experiments.common import (
    Job,
    add_training_args,
    cli_main,
    exit_process,
    fit_job,
    format_metrics,
    make_job,
    parse_run_args,
    restore_job,
)
from experiments.flags import dims, int_list, positive_int
from jaxml.configs import CNNConfig
from jaxml.data.cifar import load_cifar10
from jaxml.data.digits import load_digits
from jaxml.data.loader import ArrayDataset

# Per dataset: epochs, lr, batch size, conv channels, hidden widths.
DEFAULTS = {"digits": (40, 2e-3, 64, "16,32", "64"), "cifar10": (10, 1e-3, 128, "32,64", "128")}
RUN_FLAGS = (
    "data limit channels hidden_dims custom_act backend seed batch_size lr optimizer "
    "schedule warmup_steps step_size gamma weight_decay momentum nesterov clip_norm"
).split()


PROG = "python -m experiments.classify"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    g = parser.add_argument_group("data and model")
    g.add_argument("--data", default=None, metavar="DIR", help="CIFAR-10 python batches")
    g.add_argument(
        "--limit", type=positive_int, default=None, help="use the first N training images"
    )
    g.add_argument(
        "--channels", type=int_list(), default=None, help="conv channels per block, e.g. 16,32"
    )
    g.add_argument(
        "--hidden_dims",
        type=int_list(allow_empty=True),
        default=None,
        help="dense widths before the head, e.g. 64 ('' for none)",
    )
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


def prepare(argv: Sequence[str] | None = None) -> Job:
    """Parse and validate `argv` (ValueError / argparse exit 2), load the images and create the
    run directories; nothing is compiled or trained."""
    args = parse_run_args(build_parser, argv, RUN_FLAGS)
    dataset = "digits" if args.data is None else "cifar10"
    for name, default in zip(
        ("epochs", "lr", "batch_size", "channels", "hidden_dims"), DEFAULTS[dataset], strict=True
    ):
        if getattr(args, name) is None:
            setattr(args, name, default)
    train_data, test_data, names = load(args)
    image = train_data.inputs[0].shape[1:]
    in_channels, size = (image[0], image[1:]) if args.backend == "torch" else (image[2], image[:2])
    config = CNNConfig(
        in_channels=int(in_channels),
        image_size=(int(size[0]), int(size[1])),
        num_classes=len(names),
        channels=dims(args.channels),
        hidden_dims=dims(args.hidden_dims),
        activation=args.custom_act,
    )

    def build(backend: str) -> Any:
        if backend == "torch":
            from torchref.models.cnn import CNNClassifier
        else:
            from jaxml.models.cnn import CNNClassifier  # type: ignore[assignment]
        return CNNClassifier(config)

    args.class_names = names
    return make_job(
        args,
        experiment="classify",
        name=dataset,
        build=build,
        data=(train_data, test_data),
        loss="cross_entropy",
        run_flags=RUN_FLAGS,
    )


def execute(job: Job) -> dict[str, Any]:
    """Train (or restore) a prepared job, print the test accuracy; returns the results."""
    args, test_data, names = job.args, job.val_data, job.args.class_names
    dataset = "digits" if args.data is None else "cifar10"
    results: dict[str, Any] = {
        "dataset": dataset,
        "backend": args.backend,
        "logdir": str(job.logdir),
    }
    if args.predict:
        trained = restore_job(job)
        test = trained.evaluate(test_data, "cross_entropy")
        print(f"restored CNN ({args.backend}) from {args.restore}")
        print(f"test: {format_metrics(test)}")
        pred = trained.predict(test_data.take(slice(0, 10))).argmax(-1)
        print("first 10 test images: predicted", [names[i] for i in pred])
        print("                      labels   ", [names[i] for i in test_data.targets[:10]])
        results.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
        return results

    trained, seconds, logger = fit_job(job)
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
        f"{dataset} CNN ({args.backend}): {len(job.train_data)} train / {len(test_data)} test "
        f"images, {args.epochs} epochs in {seconds:.1f}s"
    )
    print(
        f"train accuracy {results['train_accuracy']:.4f}  test accuracy {test['accuracy']:.4f}  "
        f"test loss {test['loss']:.4f}"
    )
    print(f"logs: {job.logdir}  checkpoints: {job.config.checkpoint_dir}")
    return results


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`execute(prepare(argv))`: errors are raised (`main` turns them into exit codes)."""
    return execute(prepare(argv))


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(PROG, prepare, execute, argv)


if __name__ == "__main__":
    exit_process(main)
