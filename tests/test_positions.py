"""RoPE and sinusoidal encodings: the properties that make them positional encodings, and the
RoPE angles of both backends against a hand-computed table."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxml.layers.positions import apply_rope, sinusoidal_positions
from torchref.layers.positions import apply_rope as torch_apply_rope


def _rope(x: np.ndarray, position: int, theta: float = 10000.0) -> np.ndarray:
    return np.asarray(apply_rope(jnp.asarray(x)[None, None, None], jnp.array([[position]]), theta))[
        0, 0, 0
    ]


@settings(max_examples=25, deadline=None)
@given(position=st.integers(0, 4096), seed=st.integers(0, 2**16))
def test_rope_preserves_norm(position: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(_rope(x, position)), np.linalg.norm(x), rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(0, 500),
    n=st.integers(0, 500),
    shift=st.integers(0, 500),
    seed=st.integers(0, 2**16),
)
def test_rope_dot_product_depends_only_on_relative_position(
    m: int, n: int, shift: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    base = _rope(q, m) @ _rope(k, n)
    shifted = _rope(q, m + shift) @ _rope(k, n + shift)
    np.testing.assert_allclose(shifted, base, atol=2e-3 * (1 + abs(base)))


def test_rope_rotate_half_convention() -> None:
    """Channel i pairs with i + d/2 (Llama / Hugging Face), not with i + 1 (interleaved)."""
    x = np.zeros(8, np.float32)
    x[0] = 1.0
    out = _rope(x, 1, theta=1.0)  # every frequency is 1 rad per position
    expected = np.zeros(8, np.float32)
    expected[0], expected[4] = np.cos(1.0), np.sin(1.0)
    np.testing.assert_allclose(out, expected, atol=1e-6)


# head_dim 8, theta 10000: frequencies 10000^(-2i/8) = 1, 0.1, 0.01, 0.001 rad per position.
ROPE_ANGLES = {
    1: [1.0, 0.1, 0.01, 0.001],
    7: [7.0, 0.7, 0.07, 0.007],
    1000: [1000.0, 100.0, 10.0, 1.0],
}


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_rope_angles_match_a_hand_computed_table(backend: str) -> None:
    """Each basis vector e_j (one head each) at each position: channel pair (j, j + 4) turns by
    the tabled angle, so a wrong frequency exponent or theta shows here, not only in parity."""
    positions = np.array([list(ROPE_ANGLES)])  # [1, 3]
    x = np.broadcast_to(np.eye(8, dtype=np.float32), (1, 3, 8, 8))  # [batch, seq, heads, dim]
    if backend == "jax":
        out = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(positions), 10000.0))
    else:
        out = torch_apply_rope(torch.tensor(x), torch.tensor(positions), 10000.0).numpy()
    for s, (position, angles) in enumerate(ROPE_ANGLES.items()):
        cos, sin = np.cos(angles), np.sin(angles)
        expected = np.zeros((8, 8))  # row h: the image of e_h
        for j in range(4):
            expected[j, j], expected[j, j + 4] = cos[j], sin[j]
            expected[j + 4, j], expected[j + 4, j + 4] = -sin[j], cos[j]
        np.testing.assert_allclose(out[0, s], expected, atol=1e-5, err_msg=f"position {position}")


def test_rope_at_position_zero_is_identity() -> None:
    x = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    np.testing.assert_allclose(_rope(x, 0), x, atol=1e-7)


def test_sinusoidal_table() -> None:
    table = sinusoidal_positions(64, 16)
    assert table.shape == (64, 16) and table.dtype == np.float32
    np.testing.assert_allclose(table[0, 0::2], 0.0)
    np.testing.assert_allclose(table[0, 1::2], 1.0)
    np.testing.assert_allclose(table[5, 0], np.sin(5.0), rtol=1e-6)
    np.testing.assert_allclose(table[5, 3], np.cos(5.0 / 10000 ** (2 / 16)), rtol=1e-6)
    assert len({row.tobytes() for row in table}) == 64  # every position is distinct


@pytest.mark.parametrize("args", [(0, 16), (8, 15), (8, 0)])
def test_sinusoidal_rejects_bad_sizes(args: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="sinusoidal_positions"):
        sinusoidal_positions(*args)
