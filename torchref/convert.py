"""Exact conversion between jaxml (Flax) parameter trees and torchref `state_dict`s.

Rules, applied per leaf of the Flax tree (`params` collection, nested dicts):
- `kernel` [in, out]            <-> `weight` [out, in]        (Dense / nn.Linear)
- `kernel` [h, w, in, out] HWIO <-> `weight` [out, in, h, w]  (Conv / nn.Conv2d, OIHW)
- `kernel` [w, in, out]         <-> `weight` [out, in, w]     (1-D conv)
- `scale` <-> `weight` (norms), `embedding` <-> `weight` (nn.Embedding)
- any other leaf keeps its name and layout (e.g. stacked expert weights `[num_experts, ...]`).
Module names: Flax list items `layers_3` <-> torch `layers.3`; other names are the same.
No jax import: leaves are converted with numpy, so the round trip is bit-exact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

_LIST_ITEM = re.compile(r"^(.*)_(\d+)$")
_KERNEL_TO_TORCH = {2: (1, 0), 3: (2, 1, 0), 4: (3, 2, 0, 1)}
_KERNEL_FROM_TORCH = {2: (1, 0), 3: (2, 1, 0), 4: (2, 3, 1, 0)}


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def _unwrap(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept both `{'params': tree}` (Flax variables) and the bare tree."""
    return params["params"] if set(params) == {"params"} else params


def torch_key(path: tuple[str, ...], ndim: int) -> str:
    """The state_dict key of the Flax leaf at `path`."""
    modules = [_LIST_ITEM.sub(r"\1.\2", name) for name in path[:-1]]
    leaf = path[-1]
    if leaf in ("kernel", "scale", "embedding"):
        if leaf == "kernel" and ndim not in _KERNEL_TO_TORCH:
            raise ValueError(f"no conversion rule for a {ndim}-d kernel at {'/'.join(path)}")
        leaf = "weight"
    return ".".join([*modules, leaf])


def to_state_dict(params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """jaxml params -> torch state_dict (float32 CPU tensors, exact copies)."""
    state: dict[str, torch.Tensor] = {}
    for path, leaf in _flatten(_unwrap(params)).items():
        array = np.asarray(leaf)
        if path[-1] == "kernel":
            array = array.transpose(_KERNEL_TO_TORCH[array.ndim])
        key = torch_key(path, array.ndim)
        if key in state:
            raise ValueError(f"two jaxml parameters map to the torch key {key!r}")
        state[key] = torch.from_numpy(np.array(array, dtype=array.dtype, copy=True))
    return state


def from_state_dict(
    state: Mapping[str, torch.Tensor], template: Mapping[str, Any]
) -> dict[str, Any]:
    """torch state_dict -> jaxml params shaped like `template` (numpy leaves).

    Raises ValueError on a missing key, an unused key or any shape mismatch.
    """
    flat: dict[tuple[str, ...], Any] = {}
    used = set()
    for path, leaf in _flatten(_unwrap(template)).items():
        expected = tuple(np.shape(leaf))
        key = torch_key(path, len(expected))
        if key not in state:
            raise ValueError(f"state_dict has no {key!r} (needed for jaxml {'/'.join(path)})")
        array = state[key].detach().cpu().numpy()
        if path[-1] == "kernel":
            array = array.transpose(_KERNEL_FROM_TORCH[array.ndim])
        if array.shape != expected:
            raise ValueError(
                f"{key!r}: torch shape converts to {array.shape}, jaxml expects {expected}"
            )
        flat[path] = np.ascontiguousarray(array)
        used.add(key)
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"state_dict keys with no jaxml parameter: {unused}")
    return _unflatten(flat)


def load_jaxml_params(module: nn.Module, params: Mapping[str, Any]) -> nn.Module:
    """Copy jaxml params into `module` (strict: every key and shape must match)."""
    state = to_state_dict(params)
    own = module.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise ValueError(
                f"{key!r}: jaxml gives shape {tuple(value.shape)}, torch module has {tuple(own[key].shape)}"
            )
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"parameter names differ: missing in jaxml {missing}, unknown to torch {unexpected}"
        )
    return module


def jaxml_params_from(module: nn.Module, template: Mapping[str, Any]) -> dict[str, Any]:
    """The torch module's parameters as a jaxml tree shaped like `template`."""
    return from_state_dict(dict(module.state_dict()), template)
