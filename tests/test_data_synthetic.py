"""Synthetic tasks: shapes, the relations they encode, and determinism by seed."""

from __future__ import annotations

import numpy as np
import pytest

from jaxml.data import synthetic


def test_polynomial_without_noise_is_the_polynomial() -> None:
    data = synthetic.polynomial(50, seed=0, coefficients=(1.0, -2.0, 0.0, 3.0), noise=0.0)
    (x,) = data.inputs
    assert x.shape == (50, 1) and data.targets.shape == (50, 1) and x.dtype == np.float32
    np.testing.assert_allclose(data.targets, 1 - 2 * x + 3 * x**3, rtol=1e-5, atol=1e-5)


def test_polynomial_noise_has_the_requested_scale() -> None:
    clean = synthetic.polynomial(4000, seed=1, noise=0.0)
    noisy = synthetic.polynomial(4000, seed=1, noise=0.1)
    residual = noisy.targets - clean.targets
    assert 0.09 < residual.std() < 0.11


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b = synthetic.seq2seq(8, 5, seed=3), synthetic.seq2seq(8, 5, seed=3)
    c = synthetic.seq2seq(8, 5, seed=4)
    np.testing.assert_array_equal(a.inputs[0], b.inputs[0])
    assert not np.array_equal(a.inputs[0], c.inputs[0])
    np.testing.assert_array_equal(
        synthetic.sinusoids(4, 10, seed=0), synthetic.sinusoids(4, 10, seed=0)
    )


def test_sequence_sum_targets_are_sums() -> None:
    data = synthetic.sequence_sum(10, 7, seed=0)
    assert data.inputs[0].shape == (10, 7, 1) and data.targets.shape == (10, 1)
    np.testing.assert_allclose(data.targets, data.inputs[0].sum(axis=1), rtol=1e-6)


def test_next_value_shifts_by_one() -> None:
    seqs = synthetic.sinusoids(3, 9, seed=0, noise=0.0)
    assert seqs.shape == (3, 9, 1) and np.abs(seqs).max() <= 1.5
    data = synthetic.next_value(seqs)
    np.testing.assert_array_equal(data.inputs[0], seqs[:, :-1])
    np.testing.assert_array_equal(data.targets, seqs[:, 1:])


@pytest.mark.parametrize("transform", ["reverse", "sort"])
def test_seq2seq_targets_and_teacher_forcing(transform: str) -> None:
    data = synthetic.seq2seq(6, 5, seed=0, transform=transform)
    source, decoder_input = data.inputs
    expected = source[:, ::-1] if transform == "reverse" else np.sort(source, axis=1)
    np.testing.assert_array_equal(data.targets, expected)
    np.testing.assert_array_equal(decoder_input[:, 0], 0.0)
    np.testing.assert_array_equal(decoder_input[:, 1:], data.targets[:, :-1])


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="seq_len"):
        synthetic.sequence_sum(4, 0, seed=0)
    with pytest.raises(ValueError, match="transform='rotate'"):
        synthetic.seq2seq(4, 3, seed=0, transform="rotate")
    with pytest.raises(ValueError, match="noise"):
        synthetic.polynomial(4, seed=0, noise=-1.0)
    with pytest.raises(ValueError, match="length >= 2"):
        synthetic.next_value(np.zeros((2, 1, 1), np.float32))
