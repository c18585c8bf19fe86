"""Synthetic regression tasks (float32 numpy, fully determined by `seed`).

- `polynomial`: `x: [n, 1]` uniform, `y = sum_k c_k x^k + noise`, `[n, 1]`.
- `sequence_sum`: `x: [n, seq_len, 1]` uniform in [-1, 1], target its sum `[n, 1]`.
- `sinusoids` / `next_value`: noisy sinusoids `[n, length, 1]`; the next-value task predicts
  `x[:, 1:]` from `x[:, :-1]` (teacher forcing for causal models).
- `seq2seq`: a source `[n, seq_len, 1]` and its transform (reversed or sorted); the decoder input
  is the target shifted right behind a 0 start value.
"""

from __future__ import annotations

import numpy as np

from jaxml.data.loader import ArrayDataset

DEFAULT_COEFFICIENTS = (1.0, -2.0, 0.5, 1.5)  # y = 1 - 2x + 0.5x^2 + 1.5x^3
SEQ2SEQ_TRANSFORMS = ("reverse", "sort")


def _check_positive(**fields: int) -> None:
    for name, value in fields.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid: must be a positive integer")


def polynomial(
    num_samples: int,
    *,
    seed: int,
    coefficients: tuple[float, ...] = DEFAULT_COEFFICIENTS,
    noise: float = 0.1,
    x_range: tuple[float, float] = (-1.5, 1.5),
) -> ArrayDataset:
    """`y = c_0 + c_1 x + c_2 x^2 + ... + noise * N(0, 1)` with `x ~ U(x_range)`."""
    _check_positive(num_samples=num_samples)
    if noise < 0:
        raise ValueError(f"noise={noise!r} is invalid: must be >= 0")
    rng = np.random.default_rng(seed)
    x = rng.uniform(*x_range, size=(num_samples, 1))
    y = np.polynomial.polynomial.polyval(x, np.asarray(coefficients, np.float64))
    y = y + noise * rng.standard_normal(y.shape)
    return ArrayDataset((x.astype(np.float32),), y.astype(np.float32))


def sequence_sum(num_samples: int, seq_len: int, *, seed: int) -> ArrayDataset:
    """`x: [n, seq_len, 1]` uniform in [-1, 1] -> `y = x.sum(1)`: `[n, 1]`."""
    _check_positive(num_samples=num_samples, seq_len=seq_len)
    x = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(num_samples, seq_len, 1))
    return ArrayDataset((x.astype(np.float32),), x.sum(axis=1).astype(np.float32))


def sinusoids(num_samples: int, length: int, *, seed: int, noise: float = 0.05) -> np.ndarray:
    """`A sin(w t + phi) + noise`, `t = 0.3 * arange(length)`: `[n, length, 1]` float32.

    Per sequence `A ~ U(0.5, 1.5)`, `w ~ U(0.5, 1.5)`, `phi ~ U(0, 2 pi)`.
    """
    _check_positive(num_samples=num_samples, length=length)
    rng = np.random.default_rng(seed)
    amp = rng.uniform(0.5, 1.5, (num_samples, 1))
    freq = rng.uniform(0.5, 1.5, (num_samples, 1))
    phase = rng.uniform(0.0, 2 * np.pi, (num_samples, 1))
    t = 0.3 * np.arange(length)[None, :]
    x = amp * np.sin(freq * t + phase) + noise * rng.standard_normal((num_samples, length))
    return x[..., None].astype(np.float32)


def next_value(sequences: np.ndarray) -> ArrayDataset:
    """`[n, length, d]` -> inputs `x[:, :-1]`, targets `x[:, 1:]` (each `[n, length-1, d]`)."""
    if sequences.ndim != 3 or sequences.shape[1] < 2:
        raise ValueError(f"sequences must be [n, length >= 2, dim], got {sequences.shape}")
    return ArrayDataset((sequences[:, :-1],), sequences[:, 1:])


def seq2seq(
    num_samples: int, seq_len: int, *, seed: int, transform: str = "reverse"
) -> ArrayDataset:
    """inputs `(source, decoder_input)`, targets `transform(source)`, all `[n, seq_len, 1]`."""
    _check_positive(num_samples=num_samples, seq_len=seq_len)
    if transform not in SEQ2SEQ_TRANSFORMS:
        raise ValueError(
            f"transform={transform!r} is invalid: allowed values are {', '.join(SEQ2SEQ_TRANSFORMS)}"
        )
    source = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(num_samples, seq_len, 1))
    target = source[:, ::-1] if transform == "reverse" else np.sort(source, axis=1)
    decoder_input = np.concatenate([np.zeros_like(target[:, :1]), target[:, :-1]], axis=1)
    return ArrayDataset(
        (source.astype(np.float32), decoder_input.astype(np.float32)),
        np.ascontiguousarray(target, dtype=np.float32),
    )
