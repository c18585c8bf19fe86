"""`ArrayDataset`: epoch order fixed by (seed, epoch), exact resume from a batch index, splits."""

from __future__ import annotations

import numpy as np
import pytest

from jaxml.data.loader import ArrayDataset


def dataset(n: int = 22) -> ArrayDataset:
    x = np.arange(n, dtype=np.float32)[:, None]
    return ArrayDataset((x, 10 * x), np.arange(n))


def test_an_epoch_is_a_permutation_without_the_last_partial_batch() -> None:
    data = dataset()
    batches = list(data.batches(5, seed=0, epoch=0))
    assert data.steps_per_epoch(5) == len(batches) == 4
    seen = np.concatenate([b.targets for b in batches])
    assert len(set(seen.tolist())) == 20
    for b in batches:
        np.testing.assert_array_equal(b.inputs[0][:, 0], b.targets)
        np.testing.assert_array_equal(b.inputs[1][:, 0], 10 * b.targets)


def test_order_depends_on_seed_and_epoch_only() -> None:
    data = dataset()

    def order(seed: int, epoch: int) -> list[int]:
        return np.concatenate([b.targets for b in data.batches(5, seed=seed, epoch=epoch)]).tolist()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    unshuffled = [b.targets for b in data.batches(5, seed=0, epoch=0, shuffle=False)]
    np.testing.assert_array_equal(np.concatenate(unshuffled), np.arange(20))


def test_start_resumes_with_the_same_batches() -> None:
    data = dataset()
    full = list(data.batches(4, seed=2, epoch=3))
    tail = list(data.batches(4, seed=2, epoch=3, start=2))
    assert len(tail) == len(full) - 2
    for a, b in zip(full[2:], tail, strict=True):
        np.testing.assert_array_equal(a.targets, b.targets)


def test_eval_batches_cover_everything_in_order() -> None:
    batches = list(dataset().eval_batches(8))
    assert [len(b.targets) for b in batches] == [8, 8, 6]
    np.testing.assert_array_equal(np.concatenate([b.targets for b in batches]), np.arange(22))


def test_split_is_disjoint_and_sized() -> None:
    train, val = dataset(20).split(0.25, seed=0)
    assert len(train) == 15 and len(val) == 5
    assert not set(train.targets.tolist()) & set(val.targets.tolist())


def test_invalid_datasets_raise() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        ArrayDataset((np.zeros(3),), np.zeros(4))
    with pytest.raises(ValueError, match="non-empty tuple"):
        ArrayDataset((), np.zeros(4))
    with pytest.raises(ValueError, match="larger than the dataset"):
        dataset(3).steps_per_epoch(4)
    with pytest.raises(ValueError, match="val_fraction"):
        dataset().split(1.5, seed=0)
