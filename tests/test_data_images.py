"""Image loaders: scikit-learn digits, and CIFAR-10 from a fixture written in the exact format
of the python-pickle batches (`data_batch_1..5`, `test_batch`, `batches.meta`)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from jaxml.data.cifar import load_cifar10
from jaxml.data.digits import load_digits

NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
NAMES += [b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_cifar_fixture(root: Path, per_batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Five training batches and a test batch of random images, pickled like the originals:
    dicts with bytes keys, `data` uint8 `[n, 3072]` (R, G, B planes), `labels` a list of ints."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img{i}.png".encode() for i in range(per_batch)],
        }
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
        arrays[name] = data
        arrays[name + "_labels"] = np.asarray(labels)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": NAMES, b"num_vis": 3072}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return arrays


def test_digits() -> None:
    train, test = load_digits(seed=0)
    assert len(train) + len(test) == 1797 and len(test) == 359
    (x,) = train.inputs
    assert x.shape == (len(train), 8, 8, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(train.targets)) == set(range(10)) and train.targets.dtype == np.int32
    nchw, _ = load_digits(seed=0, layout="NCHW")
    np.testing.assert_array_equal(nchw.inputs[0], x.transpose(0, 3, 1, 2))


def test_cifar10_pickles(tmp_path: Path) -> None:
    arrays = write_cifar_fixture(tmp_path)
    train, test, names = load_cifar10(tmp_path)
    assert names[0] == "airplane" and names[9] == "truck"
    assert train.inputs[0].shape == (10, 32, 32, 3) and test.inputs[0].shape == (2, 32, 32, 3)
    expected_labels = np.concatenate([arrays[f"data_batch_{i}_labels"] for i in range(1, 6)])
    np.testing.assert_array_equal(train.targets, expected_labels)
    # pixel (row 3, col 5) of image 0: red at 3*32+5, green 1024 later, blue 2048 later
    raw = arrays["data_batch_1"][0].astype(np.float32) / 255.0
    rgb = raw[[3 * 32 + 5, 1024 + 3 * 32 + 5, 2048 + 3 * 32 + 5]]
    all_train = np.concatenate([arrays[f"data_batch_{i}"] for i in range(1, 6)]) / 255.0
    planes = all_train.reshape(10, 3, 1024)
    mean, std = planes.mean(axis=(0, 2)), planes.std(axis=(0, 2))
    np.testing.assert_allclose(train.inputs[0][0, 3, 5], (rgb - mean) / std, rtol=1e-4)
    np.testing.assert_allclose(train.inputs[0].mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    nchw, _, _ = load_cifar10(tmp_path, layout="NCHW")
    np.testing.assert_array_equal(nchw.inputs[0], train.inputs[0].transpose(0, 3, 1, 2))


def test_cifar10_missing_batch(tmp_path: Path) -> None:
    write_cifar_fixture(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path)


class _Exploit:
    """Unpickling this runs `os.system` in a plain `pickle.load`."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, ("touch pwned",)


def test_cifar10_refuses_a_malicious_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cifar_fixture(tmp_path)
    monkeypatch.chdir(tmp_path)
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Exploit()}
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_2: not a CIFAR-10 batch: refusing .*system"):
        load_cifar10(tmp_path)
    assert not (tmp_path / "pwned").exists()
    # the same file does run its payload through a plain pickle.load: the test can fail
    pickle.loads((tmp_path / "data_batch_2").read_bytes())
    assert (tmp_path / "pwned").exists()
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ValueError, match="a list, not a dict"):
        load_cifar10(tmp_path)


def test_cifar10_release_pickles_with_numpy1_names_load(tmp_path: Path) -> None:
    """The release was pickled by numpy 1 (`numpy.core.multiarray._reconstruct`)."""
    arrays = write_cifar_fixture(tmp_path)
    for path in tmp_path.iterdir():
        raw = path.read_bytes()
        path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in (tmp_path / "test_batch").read_bytes()
    _, test, _ = load_cifar10(tmp_path)
    np.testing.assert_array_equal(test.targets, arrays["test_batch_labels"])
