"""The parity contract in one place: devices, tolerances and the jaxml-vs-torchref check.

`check_parity` runs a Flax module and its torch twin on the same weights and inputs and compares
outputs, gradients w.r.t. every input, and gradients w.r.t. every parameter (converted with the
same rules as the weights, see `torchref.convert`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from torchref.convert import load_jaxml_params, to_state_dict


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# One table for the whole suite: (dtype, device) -> tolerance. Reasons:
# - float32 CPU: both sides run full-precision float32; differences are summation order only.
# - float32 CUDA: cuBLAS/cuDNN kernels pick other reduction orders (TF32 is disabled).
# - float32 MPS: Metal kernels use fast-math transcendental functions (exp, erf) -> ~1e-4.
# - bfloat16: 8 mantissa bits, so one rounding step is ~4e-3 relative.
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("float32", "cpu"): Tolerance(atol=1e-5, rtol=1e-5),
    ("float32", "cuda"): Tolerance(atol=5e-5, rtol=5e-5),
    ("float32", "mps"): Tolerance(atol=2e-4, rtol=2e-4),
    ("float64", "cpu"): Tolerance(atol=1e-12, rtol=1e-12),
    ("float64", "cuda"): Tolerance(atol=1e-12, rtol=1e-12),
    ("bfloat16", "cpu"): Tolerance(atol=3e-2, rtol=3e-2),
    ("bfloat16", "cuda"): Tolerance(atol=3e-2, rtol=3e-2),
    ("bfloat16", "mps"): Tolerance(atol=3e-2, rtol=3e-2),
}

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def device_available(name: str) -> str | None:
    """None when usable, else the reason it is not."""
    if name == "cuda" and not torch.cuda.is_available():
        return "no CUDA device on this machine"
    if name == "mps" and not (torch.backends.mps.is_available()):
        return "no Apple MPS device on this machine"
    return None


def tolerance(dtype: str, device: str) -> Tolerance:
    if (dtype, device) not in TOLERANCES:
        pytest.skip(f"{dtype} is not supported on {device}")
    return TOLERANCES[(dtype, device)]


def assert_close(name: str, jax_value: Any, torch_value: Any, tol: Tolerance) -> None:
    """Max-abs and relative comparison with a message that gives both errors."""
    expected = np.asarray(jax_value, dtype=np.float64)
    actual = (
        torch_value.detach().to("cpu", torch.float64).numpy()
        if torch.is_tensor(torch_value)
        else np.asarray(torch_value, dtype=np.float64)
    )
    if expected.shape != actual.shape:
        raise AssertionError(f"{name}: shape {actual.shape} (torch) != {expected.shape} (jax)")
    diff = np.abs(expected - actual)
    max_abs = float(diff.max(initial=0.0))
    max_rel = float((diff / np.maximum(np.abs(expected), 1e-12)).max(initial=0.0))
    if not np.all(diff <= tol.atol + tol.rtol * np.abs(expected)):
        raise AssertionError(
            f"{name}: max abs err {max_abs:.3e}, max rel err {max_rel:.3e} exceed atol={tol.atol}, rtol={tol.rtol}"
        )


def to_torch(x: np.ndarray, device: str, dtype: str, requires_grad: bool = False) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(x, order="C"))  # ascontiguousarray would turn 0-d into [1]
    if np.issubdtype(x.dtype, np.floating):
        tensor = tensor.to(TORCH_DTYPES[dtype])
    tensor = tensor.to(device).contiguous()
    return tensor.requires_grad_(requires_grad)


def check_parity(
    jax_fn: Callable[..., Any],
    params: Any,
    torch_module: torch.nn.Module,
    torch_fn: Callable[..., Any],
    inputs: Sequence[np.ndarray],
    *,
    device: str = "cpu",
    dtype: str = "float32",
    differentiable: Sequence[bool] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Compare `jax_fn(params, *inputs)` with `torch_fn(torch_module, *inputs)`.

    Both functions return one array (the output). Gradients are those of `sum(out * cotangent)`
    for a fixed random cotangent, w.r.t. the float inputs marked `differentiable` and all params.
    Returns the max-abs errors seen (for reporting).
    """
    tol = tolerance(dtype, device)
    differentiable = differentiable or [np.issubdtype(x.dtype, np.floating) for x in inputs]
    jdtype = jnp.dtype(dtype)
    j_inputs = [
        jnp.asarray(x, jdtype) if np.issubdtype(x.dtype, np.floating) else jnp.asarray(x)
        for x in inputs
    ]
    j_params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jdtype), params)

    # Reductions for the gradient run in float64 for float64 checks, else float32 (bf16 included).
    acc = np.float64 if dtype == "float64" else np.float32
    out = jax_fn(j_params, *j_inputs)
    cotangent = np.random.default_rng(seed).standard_normal(out.shape).astype(acc)
    argnums = tuple(i + 1 for i, d in enumerate(differentiable) if d)

    def loss(p: Any, *xs: Any) -> Any:
        return jnp.sum(jax_fn(p, *xs).astype(acc) * cotangent)

    grads = jax.grad(loss, argnums=(0, *argnums))(j_params, *j_inputs)

    load_jaxml_params(
        torch_module, jax.tree_util.tree_map(lambda p: np.asarray(p, np.float32), params)
    )
    torch_module.to(device=device, dtype=TORCH_DTYPES[dtype])
    t_inputs = [
        to_torch(x, device, dtype, requires_grad=d)
        for x, d in zip(inputs, differentiable, strict=True)
    ]
    t_out = torch_fn(torch_module, *t_inputs)
    (
        t_out.to(TORCH_DTYPES[np.dtype(acc).name]) * torch.from_numpy(cotangent).to(device)
    ).sum().backward()

    errors = {"out": _err(out, t_out)}
    assert_close("output", out, t_out, tol)
    for k, i in enumerate(a - 1 for a in argnums):
        grad_t = t_inputs[i].grad
        assert grad_t is not None, f"torch produced no gradient for input {i}"
        assert_close(f"d/d input[{i}]", grads[k + 1], grad_t, tol)
        errors[f"grad_input{i}"] = _err(grads[k + 1], grad_t)
    torch_grads = {name: p.grad for name, p in torch_module.named_parameters()}
    for key, g in to_state_dict(
        jax.tree_util.tree_map(lambda x: np.asarray(x, acc), grads[0])
    ).items():
        grad_t = torch_grads.get(key)
        assert grad_t is not None, f"torch parameter {key!r} has no gradient"
        assert_close(f"d/d {key}", g.numpy(), grad_t, tol)
        errors[f"grad_{key}"] = _err(g.numpy(), grad_t)
    return errors


def _err(a: Any, b: torch.Tensor) -> float:
    return float(
        np.max(
            np.abs(np.asarray(a, np.float64) - b.detach().to("cpu", torch.float64).numpy()),
            initial=0.0,
        )
    )
