"""`ArrayDataset`: arrays in memory, batched in a seed- and epoch-determined order.

A dataset is `inputs` (a tuple of arrays, the model's positional arguments) and `targets`, all
with the same leading dimension. Training batches have a fixed size (the last partial batch is
dropped, so jitted steps see one shape); the order of epoch `e` depends only on `(seed, e)`, so a
run resumed at `(epoch, batch)` sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np


class Batch(NamedTuple):
    """`inputs`: the model's positional arguments, each `[batch, ...]`; `targets`: `[batch, ...]`.

    numpy arrays from the loader; jax arrays or tracers once inside a jitted step.
    """

    inputs: tuple[Any, ...]
    targets: Any


@dataclass(frozen=True)
class ArrayDataset:
    inputs: tuple[np.ndarray, ...]
    targets: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, tuple) or not self.inputs:
            raise ValueError("ArrayDataset.inputs must be a non-empty tuple of arrays")
        sizes = {len(a) for a in (*self.inputs, self.targets)}
        if len(sizes) != 1:
            raise ValueError(f"ArrayDataset arrays differ in length: {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, index: np.ndarray | slice) -> ArrayDataset:
        return ArrayDataset(tuple(a[index] for a in self.inputs), self.targets[index])

    def split(self, val_fraction: float, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
        """A random `(train, val)` split; `val` gets `round(len * val_fraction)` examples."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction!r} is invalid: must be in (0, 1)")
        n_val = round(len(self) * val_fraction)
        if not 0 < n_val < len(self):
            raise ValueError(
                f"val_fraction={val_fraction} of {len(self)} examples leaves a side empty"
            )
        order = np.random.default_rng(seed).permutation(len(self))
        return self.take(order[n_val:]), self.take(order[:n_val])

    def steps_per_epoch(self, batch_size: int) -> int:
        steps = len(self) // batch_size
        if steps == 0:
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({len(self)})")
        return steps

    def batches(
        self, batch_size: int, *, seed: int, epoch: int, start: int = 0, shuffle: bool = True
    ) -> Iterator[Batch]:
        """Full batches of epoch `epoch`, from batch index `start` on."""
        steps = self.steps_per_epoch(batch_size)
        order = (
            np.random.default_rng((seed, epoch)).permutation(len(self))
            if shuffle
            else np.arange(len(self))
        )
        for i in range(start, steps):
            yield self._batch(order[i * batch_size : (i + 1) * batch_size])

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        """Every example once, in order (the last batch may be smaller)."""
        for lo in range(0, len(self), batch_size):
            yield self._batch(np.arange(lo, min(lo + batch_size, len(self))))

    def _batch(self, index: np.ndarray) -> Batch:
        return Batch(tuple(a[index] for a in self.inputs), self.targets[index])
