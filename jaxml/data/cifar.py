"""CIFAR-10 from its standard python-pickle batches (`data_batch_1..5`, `test_batch`,
`batches.meta`, as in `cifar-10-python.tar.gz`, extracted).

Each batch pickle holds `data` (uint8 `[n, 3072]`, the red, green and blue 32x32 planes of each
image in row-major order) and `labels` (`n` ints); `batches.meta` holds `label_names`.

The batches are read with a restricted unpickler: a pickle can name any importable callable, so
only what the CIFAR-10 release holds (dicts, lists, bytes, str, ints and numpy arrays) is
admitted, and any other global is refused by name (`pickle.UnpicklingError`).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from jaxml.data.digits import to_layout
from jaxml.data.loader import ArrayDataset

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"


# The only globals a CIFAR-10 batch pickle references: numpy's array reconstruction (under its
# numpy 1 and numpy 2 module names) and, in protocol-2 pickles of bytes, `_codecs.encode`.
ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only dicts, lists, "
                "bytes, str, ints and numpy arrays"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-10 file {path} is missing (expected the python-pickle batches)"
        )
    with path.open("rb") as f:
        try:
            raw = _CifarUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError as error:
            raise ValueError(f"{path}: not a CIFAR-10 batch: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch (a {type(raw).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int32)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(
            f"{path}: expected data [n, 3072] and n labels, got {data.shape} and {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(
    directory: str | Path, *, layout: str = "NHWC"
) -> tuple[ArrayDataset, ArrayDataset, list[str]]:
    """`(train, test, label_names)`; images `[n, 32, 32, 3]` (or NCHW) float32, labels int32.

    Pixels are scaled to [0, 1] and standardised per channel with the training set's mean/std.
    """
    root = Path(directory)
    parts = [_read_batch(root / name) for name in TRAIN_FILES]
    train_x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    train_y = np.concatenate([p[1] for p in parts])
    test_u8, test_y = _read_batch(root / TEST_FILE)
    test_x = test_u8.astype(np.float32) / 255.0
    names = [
        n.decode() if isinstance(n, bytes) else str(n)
        for n in _unpickle(root / META_FILE)["label_names"]
    ]
    mean = train_x.mean(axis=(0, 1, 2))
    std = train_x.std(axis=(0, 1, 2)) + 1e-6
    train = ArrayDataset((to_layout((train_x - mean) / std, layout),), train_y)
    test = ArrayDataset((to_layout((test_x - mean) / std, layout),), test_y)
    return train, test, names
