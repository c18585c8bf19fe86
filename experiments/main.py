"""`make run` (`python -m experiments.main`): the default job, a short transformer regression.

Trains the classic post-norm transformer (2 layers, 4 heads, GQA with 2 key/value groups) to
predict the sum of 16 uniform values, then prints the final train / validation loss.
Extra arguments go to `experiments.regression` (e.g. `--backend torch`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from experiments import regression
from experiments.common import Job, cli_main, exit_process

PROG = "python -m experiments.main"
DEFAULT_JOB = ["--type", "transformer", "--attention_type", "gqa", "--epochs", "10"]


def prepare(argv: Sequence[str] | None = None) -> Job:
    return regression.prepare([*DEFAULT_JOB, *(sys.argv[1:] if argv is None else argv)], PROG)


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(PROG, prepare, regression.execute, argv)


if __name__ == "__main__":
    exit_process(main)
