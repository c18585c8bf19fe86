"""jaxml custom_vjp ops == torchref autograd Functions: values and gradients w.r.t. every
differentiable input, float32, on every available device; plus the custom-op MLP through the
harness (outputs, input grads and parameter grads after weight conversion)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxml.autograd as J
import torchref.autograd as T
from parity.harness import assert_close, check_parity, to_torch, tolerance

R = np.random.default_rng(0)
LABELS = np.array([[1, 4, 0], [2, 2, 3]])
LARGE_LOGITS = np.array([[1e4, 0.0, -1e4, 5.0], [3.0, 1e4 - 1.0, 1e4, -2.0]])


def _f32(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(a, np.float32) for a in arrays)


# (name, jax op, torch op, float32 inputs; every input is differentiated)
CASES: list[tuple[str, Callable[..., Any], Callable[..., Any], tuple[np.ndarray, ...]]] = [
    (
        "linear",
        J.linear,
        T.linear,
        _f32(R.standard_normal((2, 3, 8)), R.standard_normal((6, 8)), R.standard_normal(6)),
    ),
    (
        "linear_bias_per_row",
        J.linear,
        T.linear,
        _f32(R.standard_normal((3, 8)), R.standard_normal((6, 8)), R.standard_normal((3, 6))),
    ),
    ("relu", J.relu, T.relu, _f32(np.append(R.standard_normal(11), 0.0))),
    ("square", J.square, T.square, _f32(R.standard_normal((3, 4)))),
    ("power", J.power, T.power, _f32(R.uniform(0.5, 2.0, (3, 4)), R.uniform(-1.0, 3.0, (4,)))),
    (
        # the edge rules (d/dn uses log|x|, 0 at x == 0); n is [1], not 0-d, because
        # harness.to_torch (np.ascontiguousarray) turns a 0-d array into shape [1]
        "power_nonpositive_base",
        J.power,
        T.power,
        _f32(np.array([-2.0, -1.0, 0.0, 0.5, 1.5]), np.array([3.0])),
    ),
    ("exp", J.exp, T.exp, _f32(R.standard_normal((3, 4)))),
    ("sigmoid", J.sigmoid, T.sigmoid, _f32(np.array([-1000.0, -20.0, -1.0, 0.0, 2.0, 1000.0]))),
    ("tanh", J.tanh, T.tanh, _f32(R.standard_normal((3, 4)))),
    ("softmax", J.softmax, T.softmax, _f32(R.standard_normal((3, 5)))),
    ("softmax_large_logits", J.softmax, T.softmax, _f32(LARGE_LOGITS)),
    (
        "softmax_axis0",
        lambda x: J.softmax(x, 0),
        lambda x: T.softmax(x, 0),
        _f32(R.standard_normal((3, 5))),
    ),
    ("log_softmax", J.log_softmax, T.log_softmax, _f32(R.standard_normal((3, 5)))),
    ("log_softmax_large_logits", J.log_softmax, T.log_softmax, _f32(LARGE_LOGITS)),
    (
        "cross_entropy",
        lambda x: J.cross_entropy(x, jnp.asarray(LABELS)),
        lambda x: T.cross_entropy(x, torch.from_numpy(LABELS).to(x.device)),
        _f32(R.standard_normal((2, 3, 5))),
    ),
    (
        "cross_entropy_large_logits",
        lambda x: J.cross_entropy(x, jnp.array([0, 2])),
        lambda x: T.cross_entropy(x, torch.tensor([0, 2], device=x.device)),
        _f32(LARGE_LOGITS),
    ),
    ("mse", J.mse, T.mse, _f32(R.standard_normal((3, 4)), R.standard_normal((3, 4)))),
    (
        "layer_norm",
        J.layer_norm,
        T.layer_norm,
        _f32(R.standard_normal((2, 3, 8)), 1 + 0.1 * R.standard_normal(8), R.standard_normal(8)),
    ),
]


@pytest.mark.parametrize("name,jax_fn,torch_fn,inputs", CASES, ids=[c[0] for c in CASES])
def test_custom_op(
    name: str,
    jax_fn: Callable[..., Any],
    torch_fn: Callable[..., Any],
    inputs: tuple[np.ndarray, ...],
    device: str,
) -> None:
    tol = tolerance("float32", device)
    out, vjp = jax.vjp(jax_fn, *(jnp.asarray(a) for a in inputs))
    cotangent = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    grads = vjp(jnp.asarray(cotangent))

    t_inputs = [to_torch(a, device, "float32", requires_grad=True) for a in inputs]
    t_out = torch_fn(*t_inputs)
    t_grads = torch.autograd.grad((t_out * torch.from_numpy(cotangent).to(device)).sum(), t_inputs)
    assert np.all(np.isfinite(out)) and all(np.all(np.isfinite(g)) for g in grads)
    assert_close(f"{name} value", out, t_out, tol)
    for i, (g, tg) in enumerate(zip(grads, t_grads, strict=True)):
        assert_close(f"{name} d/d input[{i}]", g, tg, tol)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_custom_op_mlp(activation: str, device: str) -> None:
    """`mlp_apply` == `torchref.autograd.MLP` with the same weights (converted by the harness)."""
    sizes = (4, 16, 8, 3)
    params = jax.tree_util.tree_map(np.asarray, J.mlp_init(jax.random.PRNGKey(0), sizes))
    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    check_parity(
        lambda p, x: J.mlp_apply(p, x, activation),
        params,
        T.MLP(sizes, activation),
        lambda m, x: m(x),
        [x],
        device=device,
    )
