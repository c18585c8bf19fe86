"""`make run` (`python -m experiments.main`): the default job, a short transformer regression.

Trains the classic post-norm transformer (2 layers, 4 heads, GQA with 2 key/value groups) to
predict the sum of 16 uniform values, then prints the final train / validation loss.
Extra arguments go to `experiments.regression` (e.g. `--backend torch`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from experiments import regression

DEFAULT_JOB = ["--type", "transformer", "--attention_type", "gqa", "--epochs", "10"]


def main(argv: Sequence[str] | None = None) -> int:
    regression.run([*DEFAULT_JOB, *(sys.argv[1:] if argv is None else argv)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
