"""`python -m experiments.sweep`: a small hyperparameter grid over `experiments.regression`,
printed as a table ranked by validation loss.

    python -m experiments.sweep [--lr 1e-3,1e-2] [--optimizer adam,sgd,rmsprop]
        [--latent_dims "64,32;128,64,32"] [--custom_act relu,tanh] [regression flags ...]

Grid values are comma-separated (`;` between `--latent_dims` entries); any other flag goes to
every run unchanged (default base run: `--type nlinear --epochs 30`). Each run logs to
`<sweep dir>/<run name>`.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments import regression
from experiments.common import Job, cli_main, exit_process

GRID_FLAGS = {"lr": ",", "optimizer": ",", "latent_dims": ";", "custom_act": ","}
BASE = ["--type", "nlinear", "--epochs", "30"]


PROG = "python -m experiments.sweep"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--lr", default="1e-3,1e-2")
    parser.add_argument("--optimizer", default="adam,sgd,rmsprop")
    parser.add_argument("--latent_dims", default=None, help='e.g. "64,32;128,64,32"')
    parser.add_argument("--custom_act", default=None, help="e.g. relu,tanh")
    parser.add_argument("--sweep_dir", default=None, help="default: runs/sweep/<time>")
    return parser


def grid(args: argparse.Namespace) -> list[dict[str, str]]:
    """Every combination of the given grid values, in order (ValueError for an empty axis)."""
    axes = {
        name: [v.strip() for v in getattr(args, name).split(sep) if v.strip()]
        for name, sep in GRID_FLAGS.items()
        if getattr(args, name) is not None
    }
    for name, values in axes.items():
        if not values:
            raise ValueError(f"--{name} {getattr(args, name)!r}: give at least one value")
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def prepare(argv: Sequence[str] | None = None) -> list[tuple[dict[str, str], Job]]:
    """Every grid point as a validated regression job, so a bad value fails before any run."""
    args, extra = build_parser().parse_known_args(list(sys.argv[1:] if argv is None else argv))
    base = extra if any(a.startswith("--type") for a in extra) else [*BASE, *extra]
    sweep_dir = Path(args.sweep_dir or Path("runs") / "sweep" / time.strftime("%Y%m%d-%H%M%S"))
    runs = []
    for point in grid(args):
        name = "-".join(f"{k}={v}" for k, v in point.items()).replace(",", "_")
        flags = [x for k, v in point.items() for x in (f"--{k}", v)]
        argv = [*base, *flags, "--no_progress", "--logdir", str(sweep_dir / name)]
        regression.build_parser(PROG).parse_args(argv)  # every value, before any directory
        runs.append((point, argv))
    return [(point, regression.prepare(argv, prog=PROG)) for point, argv in runs]


def execute(jobs: list[tuple[dict[str, str], Job]]) -> list[dict[str, Any]]:
    """Run every job; returns one row per run, best (lowest validation loss) first and
    diverged runs (NaN losses) last."""
    rows = []
    for i, (point, job) in enumerate(jobs):
        print(
            f"[{i + 1}/{len(jobs)}] {' '.join(f'--{k} {v}' for k, v in point.items())}", flush=True
        )
        start = time.perf_counter()
        try:
            result = regression.execute(job)
        except FloatingPointError as error:  # one diverged point does not end the sweep
            print(f"{PROG}: {error}", file=sys.stderr)
            nan = float("nan")
            result = {"train_loss": nan, "val_loss": nan, "seconds": time.perf_counter() - start}
        rows.append(
            {
                **point,
                "train_loss": result["train_loss"],
                "val_loss": result["val_loss"],
                "seconds": result["seconds"],
            }
        )
    rows.sort(key=lambda r: (math.isnan(r["val_loss"]), r["val_loss"]))
    print(format_table(rows))
    return rows


def run(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the grid; returns one row per run, best (lowest validation loss) first."""
    return execute(prepare(argv))


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table: rank, the grid values, losses and run time."""
    columns = ["rank", *[k for k in rows[0] if k not in ("train_loss", "val_loss", "seconds")]]
    columns += ["train_loss", "val_loss", "seconds"]
    cells = [
        [
            str(i + 1),
            *[
                f"{row[c]:.5f}"
                if "loss" in c
                else f"{row[c]:.1f}"
                if c == "seconds"
                else str(row[c])
                for c in columns[1:]
            ],
        ]
        for i, row in enumerate(rows)
    ]
    widths = [max(len(c), *(len(r[j]) for r in cells)) for j, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(PROG, prepare, execute, argv)


if __name__ == "__main__":
    exit_process(main)
