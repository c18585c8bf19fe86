"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; no download)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits as _sklearn_digits

from jaxml.data.loader import ArrayDataset

LAYOUTS = ("NHWC", "NCHW")


def to_layout(images: np.ndarray, layout: str) -> np.ndarray:
    """`[n, h, w, c]` (NHWC) -> the requested layout, contiguous."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is invalid: allowed values are {', '.join(LAYOUTS)}")
    return np.ascontiguousarray(images if layout == "NHWC" else images.transpose(0, 3, 1, 2))


def load_digits(
    *, seed: int, test_fraction: float = 0.2, layout: str = "NHWC"
) -> tuple[ArrayDataset, ArrayDataset]:
    """`(train, test)`: images `[n, 8, 8, 1]` (or NCHW) float32 in [0, 1], labels int32 `[n]`."""
    bunch = _sklearn_digits()
    images = (bunch.images[..., None] / 16.0).astype(np.float32)
    data = ArrayDataset((to_layout(images, layout),), bunch.target.astype(np.int32))
    train, test = data.split(test_fraction, seed)
    return train, test
