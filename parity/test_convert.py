"""Weight conversion jaxml <-> torchref is exact in both directions and refuses mismatches."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

from jaxml.configs import AttentionConfig, FFNConfig
from jaxml.layers.attention import Attention
from jaxml.layers.ffn import SwiGLU
from torchref.convert import from_state_dict, jaxml_params_from, load_jaxml_params, to_state_dict
from torchref.layers.attention import Attention as TorchAttention


class _Zoo(nn.Module):
    """Every conversion rule at once: dense, conv (2-D and 1-D), norm scale, embedding, list items."""

    @nn.compact
    def __call__(self, tokens: jax.Array, image: jax.Array, seq: jax.Array) -> jax.Array:
        h = nn.Embed(11, 8, name="embed")(tokens)
        for i in range(2):
            h = nn.Dense(8, name=f"layers_{i}")(h)
        h = nn.LayerNorm(name="norm")(h)
        c = nn.Conv(4, (3, 3), name="conv")(image)
        s = nn.Conv(4, (3,), name="conv1d")(seq)
        return h.sum() + c.sum() + s.sum()


class _TorchZoo(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 8)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(2)])
        self.norm = torch.nn.LayerNorm(8)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv1d = torch.nn.Conv1d(5, 4, 3, padding=1)


def _zoo_params() -> dict:
    return _Zoo().init(
        jax.random.key(0), np.zeros((1, 2), np.int32), np.zeros((1, 6, 6, 3)), np.zeros((1, 7, 5))
    )["params"]


def test_round_trip_is_exact_and_keys_match_torch() -> None:
    params = _zoo_params()
    state = to_state_dict(params)
    module = _TorchZoo()
    assert set(state) == set(module.state_dict())
    for key, value in module.state_dict().items():
        assert tuple(state[key].shape) == tuple(value.shape), key
    back = from_state_dict(state, params)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, back
    )


def test_torch_to_jaxml_to_torch_is_exact() -> None:
    module = _TorchZoo()
    params = jaxml_params_from(module, _zoo_params())
    for key, value in to_state_dict(params).items():
        torch.testing.assert_close(value, module.state_dict()[key], rtol=0, atol=0)


def test_conv_weights_compute_the_same() -> None:
    params = _zoo_params()
    module = load_jaxml_params(_TorchZoo(), params)
    image = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype(np.float32)
    expected = nn.Conv(4, (3, 3)).apply({"params": params["conv"]}, image)
    actual = module.conv(torch.from_numpy(image).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(expected), actual.detach().numpy(), atol=1e-5, rtol=1e-5)


def test_shape_mismatch_raises() -> None:
    params = Attention(AttentionConfig(16, 4, "mha")).init(jax.random.key(0), np.zeros((1, 3, 16)))[
        "params"
    ]
    with pytest.raises(ValueError, match="k_proj"):
        load_jaxml_params(TorchAttention(AttentionConfig(16, 4, "mqa")), params)
    state = to_state_dict(params)
    state["k_proj.weight"] = state["k_proj.weight"][:4]
    with pytest.raises(ValueError, match="k_proj.weight"):
        from_state_dict(state, params)


def test_missing_and_unused_keys_raise() -> None:
    cfg = FFNConfig(8, 16, kind="swiglu")
    params = SwiGLU(cfg).init(jax.random.key(0), np.zeros((1, 8)))["params"]
    state = to_state_dict(params)
    with pytest.raises(ValueError, match="no 'w3.weight'"):
        from_state_dict({k: v for k, v in state.items() if k != "w3.weight"}, params)
    with pytest.raises(ValueError, match="extra.weight"):
        from_state_dict({**state, "extra.weight": torch.zeros(1)}, params)
