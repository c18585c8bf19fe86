"""jaxml `MoE` params <-> the Hugging Face Mixtral sparse-MoE block layout (numpy + safetensors).

Mixtral keys, under a layer prefix such as `model.layers.0.`:
- `block_sparse_moe.gate.weight`          `[num_experts, embed_dim]`  <-> `gate/kernel` `[embed_dim, num_experts]`
- `block_sparse_moe.experts.N.w1.weight`  `[latent, embed_dim]`       <-> `w1[N]` `[embed_dim, latent]` (gate proj)
- `block_sparse_moe.experts.N.w3.weight`  `[latent, embed_dim]`       <-> `w3[N]` `[embed_dim, latent]` (up proj)
- `block_sparse_moe.experts.N.w2.weight`  `[embed_dim, latent]`       <-> `w2[N]` `[latent, embed_dim]` (down proj)
Mixtral experts are bias-free SwiGLU FFNs with top-2, renormalised, dropless routing: use
`mixtral_moe_config` for the matching `FFNConfig`. No jax or torch import; copies are exact.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy

from jaxml.configs import FFNConfig

BLOCK = "block_sparse_moe."
EXPERT_WEIGHTS = ("w1", "w2", "w3")
_EXPERT_KEY = re.compile(r"^experts\.(\d+)\.(w[123])\.weight$")


def _unwrap(params: Mapping[str, Any]) -> Mapping[str, Any]:
    return params["params"] if set(params) == {"params"} else params


def moe_to_mixtral(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """jaxml `MoE` params (`gate`, stacked `w1/w2/w3`) -> Mixtral tensors keyed `prefix + BLOCK + ...`.

    Raises ValueError for params Mixtral cannot hold (expert biases, an overflow expert, ReLU experts).
    """
    tree = _unwrap(params)
    expected = {"gate", *EXPERT_WEIGHTS}
    if set(tree) != expected:
        raise ValueError(
            f"Mixtral's MoE block holds exactly {sorted(expected)}, got {sorted(tree)} "
            "(build the MoE with kind='swiglu', use_bias=False, overflow_policy='drop')"
        )
    out = {
        f"{prefix}{BLOCK}gate.weight": np.ascontiguousarray(np.asarray(tree["gate"]["kernel"]).T)
    }
    for name in EXPERT_WEIGHTS:
        stacked = np.asarray(tree[name])
        for index, weight in enumerate(stacked):
            out[f"{prefix}{BLOCK}experts.{index}.{name}.weight"] = np.ascontiguousarray(weight.T)
    return out


def moe_from_mixtral(
    tensors: Mapping[str, np.ndarray], prefix: str = "", dtype: Any = np.float32
) -> dict[str, Any]:
    """Mixtral tensors (a whole checkpoint is fine: only `prefix + BLOCK` keys are read) -> jaxml params.

    Raises ValueError on a missing expert or weight, an unknown key inside the block, or
    inconsistent shapes.
    """
    head = prefix + BLOCK
    block = {key[len(head) :]: value for key, value in tensors.items() if key.startswith(head)}
    if "gate.weight" not in block:
        raise ValueError(f"no {head}gate.weight in the given tensors")
    gate = np.asarray(block.pop("gate.weight"))
    num_experts, embed_dim = gate.shape
    experts: dict[str, dict[int, np.ndarray]] = {name: {} for name in EXPERT_WEIGHTS}
    for key, value in block.items():
        match = _EXPERT_KEY.match(key)
        if match is None:
            raise ValueError(f"unknown key {head}{key} in a Mixtral MoE block")
        experts[match.group(2)][int(match.group(1))] = np.asarray(value)
    params: dict[str, Any] = {"gate": {"kernel": np.ascontiguousarray(gate.T, dtype=dtype)}}
    for name, by_index in experts.items():
        if sorted(by_index) != list(range(num_experts)):
            missing = sorted(set(range(num_experts)) - set(by_index))
            extra = sorted(set(by_index) - set(range(num_experts)))
            raise ValueError(
                f"{head}experts.N.{name}.weight: gate has {num_experts} experts, "
                f"missing {missing}, beyond range {extra}"
            )
        stacked = np.stack([by_index[i].T for i in range(num_experts)]).astype(dtype)
        params[name] = np.ascontiguousarray(stacked)
    latent = params["w1"].shape[-1]
    shapes = {"w1": (embed_dim, latent), "w3": (embed_dim, latent), "w2": (latent, embed_dim)}
    for name, shape in shapes.items():
        if params[name].shape[1:] != shape:
            raise ValueError(
                f"{head}experts.N.{name}.weight converts to {params[name].shape[1:]}, "
                f"expected {shape} (embed_dim={embed_dim}, latent={latent})"
            )
    return params


def mixtral_moe_config(params: Mapping[str, Any], topk: int = 2, **changes: Any) -> FFNConfig:
    """The `FFNConfig` that runs converted Mixtral params exactly (dropless, renormalised top-k)."""
    tree = _unwrap(params)
    num_experts, embed_dim, latent = np.shape(tree["w1"])
    return FFNConfig(
        embed_dim,
        latent,
        activation="silu",
        kind="swiglu",
        use_bias=False,
        use_moe=True,
        num_experts=num_experts,
        topk=topk,
        norm_topk_prob=True,
        **changes,
    )


def save_mixtral_moe(
    path: str | os.PathLike[str],
    params: Mapping[str, Any],
    prefix: str = "",
    metadata: dict[str, str] | None = None,
) -> None:
    """Write MoE params as a Mixtral-layout safetensors file."""
    safetensors.numpy.save_file(moe_to_mixtral(params, prefix), path, metadata=metadata)


def load_mixtral_moe(
    path: str | os.PathLike[str], prefix: str = "", dtype: Any = np.float32
) -> dict[str, Any]:
    """Read one MoE block from a Mixtral-layout safetensors file (bf16 files load via ml_dtypes)."""
    return moe_from_mixtral(safetensors.numpy.load_file(path), prefix, dtype)
