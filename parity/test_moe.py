"""jaxml == torchref for the Mixture of Experts: outputs, aux losses, routing statistics, gradients.

Cases cover topk 1 and 2, dropless mode, capacities that force drops and overflow, both dispatch
implementations, both expert kinds. The compared output is `y` flattened followed by the three
losses, so the gradients checked are those of the output and of the aux losses together
(router gradients included).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxml.configs import FFNConfig
from jaxml.layers.moe import MoE
from parity.harness import assert_close, check_parity, to_torch, tolerance
from torchref.convert import load_jaxml_params
from torchref.layers.moe import MoE as TorchMoE

X = np.random.default_rng(0).standard_normal((2, 6, 16)).astype(np.float32)
LOSSES = ("load_balance_loss", "z_loss", "aux_loss")

CASES = {
    "top1-dropless-einsum": dict(topk=1, dispatch="einsum"),
    "top1-cap2-drop-gather": dict(topk=1, capacity=2, dispatch="gather", norm_topk_prob=False),
    "top2-dropless-gather-swiglu": dict(topk=2, dispatch="gather", kind="swiglu"),
    "top2-cap3-drop-einsum": dict(topk=2, capacity=3, dispatch="einsum"),
    "top2-factor1-drop-gather-swiglu": dict(
        topk=2, capacity_factor=1.0, dispatch="gather", kind="swiglu", use_bias=False
    ),
    "top2-cap2-overflow-gather": dict(topk=2, capacity=2, overflow_policy="overflow_expert"),
    "top1-cap1-overflow-einsum-swiglu": dict(
        topk=1, capacity=1, overflow_policy="overflow_expert", dispatch="einsum", kind="swiglu"
    ),
}


def _config(**changes: Any) -> FFNConfig:
    base: dict[str, Any] = dict(
        activation="relu", use_moe=True, num_experts=4, alpha=0.01, z_loss_coef=0.001
    )
    base.update(changes)
    if base.get("kind") == "swiglu":
        base["activation"] = "silu"
    return FFNConfig(16, 24, **base)


@pytest.mark.parametrize("case", list(CASES))
def test_moe_parity(case: str, device: str) -> None:
    cfg = _config(**CASES[case])
    module = MoE(cfg)
    params = module.init(jax.random.key(0), X)["params"]

    def jax_fn(p: Any, x: Any) -> Any:
        y, aux = module.apply({"params": p}, x)
        return jnp.concatenate([y.ravel(), jnp.stack([aux[k] for k in LOSSES])])

    def torch_fn(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        y, aux = m(x)
        return torch.cat([y.reshape(-1), torch.stack([aux[k] for k in LOSSES])])

    check_parity(jax_fn, params, TorchMoE(cfg), torch_fn, [X], device=device)

    # the routing statistics agree exactly (same choices, same slots)
    _, aux = module.apply({"params": params}, X)
    torch_module = load_jaxml_params(TorchMoE(cfg), params).to(device)
    with torch.no_grad():
        _, taux = torch_module(to_torch(X, device, "float32"))
    for key in ("tokens_per_expert", "dropped_fraction"):
        assert_close(key, aux[key], taux[key], tolerance("float32", device))
    if "capacity" in CASES[case] or "capacity_factor" in CASES[case]:
        assert float(aux["dropped_fraction"]) > 0, "this case is meant to overflow"
    else:
        assert float(aux["dropped_fraction"]) == 0
