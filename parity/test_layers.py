"""jaxml == torchref for the small layers: FFN, SwiGLU, RMSNorm, LayerNorm, positions, RoPE."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxml.configs import FFNConfig
from jaxml.layers import ffn as jffn
from jaxml.layers import norms as jnorms
from jaxml.layers import positions as jpos
from parity.harness import assert_close, check_parity, to_torch, tolerance
from torchref.layers import ffn as tffn
from torchref.layers import norms as tnorms
from torchref.layers import positions as tpos

X = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)


@pytest.mark.parametrize(
    "kind,activation",
    [("mlp", "relu"), ("mlp", "gelu"), ("mlp", "tanh"), ("mlp", "gelu_tanh"), ("swiglu", "silu")],
)
def test_feed_forward(kind: str, activation: str, device: str) -> None:
    cfg = FFNConfig(16, 24, activation=activation, kind=kind)
    module = jffn.make_ffn(cfg)
    params = module.init(jax.random.key(1), X)["params"]
    check_parity(
        lambda p, x: module.apply({"params": p}, x),
        params,
        tffn.make_ffn(cfg),
        lambda m, x: m(x),
        [X],
        device=device,
    )


def test_rms_norm(device: str) -> None:
    module = jnorms.RMSNorm(eps=1e-6)
    params = {"scale": np.random.default_rng(2).standard_normal(16).astype(np.float32)}
    check_parity(
        lambda p, x: module.apply({"params": p}, x),
        params,
        tnorms.RMSNorm(16, eps=1e-6),
        lambda m, x: m(x),
        [X],
        device=device,
    )


def test_layer_norm(device: str) -> None:
    rng = np.random.default_rng(3)
    module = jnorms.LayerNorm(epsilon=1e-5)
    params = {
        "scale": rng.standard_normal(16).astype(np.float32),
        "bias": rng.standard_normal(16).astype(np.float32),
    }
    check_parity(
        lambda p, x: module.apply({"params": p}, x),
        params,
        tnorms.LayerNorm(16, eps=1e-5),
        lambda m, x: m(x),
        [X],
        device=device,
    )


def test_sinusoidal_positions_identical() -> None:
    np.testing.assert_array_equal(
        jpos.sinusoidal_positions(50, 16), tpos.sinusoidal_positions(50, 16).numpy()
    )


class _Rope(nn.Module):
    """Parameter-free wrapper so RoPE goes through the same harness (input gradients only)."""

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        return jpos.apply_rope(x, positions, 500.0)


class _TorchRope(torch.nn.Module):
    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return tpos.apply_rope(x, positions, 500.0)


def test_rope(device: str) -> None:
    x = np.random.default_rng(4).standard_normal((2, 7, 3, 8)).astype(np.float32)
    positions = np.array([np.arange(7), np.arange(7) + 100], dtype=np.int32)
    check_parity(
        lambda p, x, pos: _Rope().apply({}, x, pos),
        {},
        _TorchRope(),
        lambda m, x, pos: m(x, pos),
        [x, positions],
        device=device,
    )


def test_rope_large_positions(device: str) -> None:
    """Angles up to 4096 rad: both sides compute them in float32 the same way."""
    x = np.random.default_rng(5).standard_normal((1, 4, 2, 16)).astype(np.float32)
    positions = np.array([[0, 1000, 2048, 4095]], dtype=np.int32)
    expected = jpos.apply_rope(jnp.asarray(x), jnp.asarray(positions), 10000.0)
    actual = tpos.apply_rope(
        to_torch(x, device, "float32"), to_torch(positions, device, "float32"), 10000.0
    )
    assert_close("rope", expected, actual, tolerance("float32", device))
