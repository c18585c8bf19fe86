"""jaxml Attention == torchref Attention: outputs, weights, input and parameter gradients."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from jaxml.configs import AttentionConfig
from jaxml.layers.attention import Attention
from parity.harness import assert_close, check_parity, to_torch, tolerance
from torchref.layers.attention import Attention as TorchAttention

BATCH, SEQ, KV_SEQ, EMBED, HEADS = 2, 6, 5, 32, 4
VARIANTS = {
    "mha": dict(attention_type="mha"),
    "mqa": dict(attention_type="mqa"),
    "gqa": dict(attention_type="gqa", num_groups=2),
    "mha-causal": dict(attention_type="mha", apply_causal_mask=True),
    "gqa-causal-rope": dict(attention_type="gqa", apply_causal_mask=True, use_rope=True),
    "mqa-rope-nobias": dict(attention_type="mqa", use_rope=True, use_bias=False),
}


def _init(cfg: AttentionConfig, x: np.ndarray, context: np.ndarray | None = None):
    return Attention(cfg).init(jax.random.key(0), x, context)["params"]


@pytest.mark.parametrize("weights", [False, True], ids=["fused", "explicit"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_self_attention(variant: str, weights: bool, device: str) -> None:
    cfg = AttentionConfig(EMBED, HEADS, **VARIANTS[variant])
    x = np.random.default_rng(1).standard_normal((BATCH, SEQ, EMBED)).astype(np.float32)
    check_parity(
        lambda p, x: Attention(cfg).apply({"params": p}, x).out,
        _init(cfg, x),
        TorchAttention(cfg),
        lambda m, x: m(x, return_weights=weights).out,
        [x],
        device=device,
    )


@pytest.mark.parametrize("variant", ["gqa-causal-rope", "mqa"])
def test_fused_kernel_with_padding(variant: str, device: str) -> None:
    """kernel='fused' (jax.nn.dot_product_attention) against torch's SDPA, padded keys."""
    cfg = AttentionConfig(EMBED, HEADS, kernel="fused", **VARIANTS[variant])
    x = np.random.default_rng(6).standard_normal((BATCH, SEQ, EMBED)).astype(np.float32)
    kv_mask = np.ones((BATCH, SEQ), bool)
    kv_mask[1, 4:] = False
    check_parity(
        lambda p, x, m: Attention(cfg).apply({"params": p}, x, kv_mask=m).out,
        _init(cfg, x),
        TorchAttention(cfg),
        lambda mod, x, m: mod(x, kv_mask=m).out,
        [x, kv_mask],
        device=device,
    )


@pytest.mark.parametrize("kernel", ["fused", "cudnn"])
def test_fused_kernels_refuse_alike(kernel: str) -> None:
    """Both sides refuse weights (and cudnn on a CPU / in float32) with the same message."""
    cfg = AttentionConfig(EMBED, HEADS, kernel=kernel)
    x = np.random.default_rng(7).standard_normal((BATCH, SEQ, EMBED)).astype(np.float32)
    params = _init(AttentionConfig(EMBED, HEADS), x)
    with pytest.raises(ValueError) as jax_error:
        Attention(cfg).apply({"params": params}, x, return_weights=True)
    with pytest.raises(ValueError) as torch_error:
        TorchAttention(cfg)(torch.from_numpy(x), return_weights=True)
    jax_message, torch_message = str(jax_error.value), str(torch_error.value)
    assert jax_message.startswith(f"AttentionConfig.kernel={kernel!r} cannot serve")
    assert jax_message.split(" (")[0] == torch_message.split(" (")[0]


@pytest.mark.parametrize("attention_type", ["mha", "gqa"])
def test_cross_attention_with_padding(attention_type: str, device: str) -> None:
    cfg = AttentionConfig(EMBED, HEADS, attention_type=attention_type)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((BATCH, SEQ, EMBED)).astype(np.float32)
    context = rng.standard_normal((BATCH, KV_SEQ, EMBED)).astype(np.float32)
    kv_mask = np.ones((BATCH, KV_SEQ), bool)
    kv_mask[1, 3:] = False
    check_parity(
        lambda p, x, c, m: Attention(cfg).apply({"params": p}, x, c, kv_mask=m).out,
        _init(cfg, x, context),
        TorchAttention(cfg),
        lambda mod, x, c, m: mod(x, c, kv_mask=m).out,
        [x, context, kv_mask],
        device=device,
    )


@pytest.mark.parametrize("variant", ["mha-causal", "gqa-causal-rope"])
def test_attention_weights_match(variant: str, device: str) -> None:
    cfg = AttentionConfig(EMBED, HEADS, **VARIANTS[variant])
    x = np.random.default_rng(3).standard_normal((BATCH, SEQ, EMBED)).astype(np.float32)
    params = _init(cfg, x)
    jax_weights = Attention(cfg).apply({"params": params}, x, return_weights=True).weights
    torch_module = TorchAttention(cfg)
    from torchref.convert import load_jaxml_params

    load_jaxml_params(torch_module, params).to(device)
    with torch.no_grad():
        torch_weights = torch_module(to_torch(x, device, "float32"), return_weights=True).weights
    assert_close("attention weights", jax_weights, torch_weights, tolerance("float32", device))


@pytest.mark.parametrize("attention_type", ["mha", "gqa"])
def test_long_causal_self_attention_blockwise_path(attention_type: str, device: str) -> None:
    """64 positions: jaxml takes the blockwise custom-VJP path, torch the fused SDPA kernel."""
    cfg = AttentionConfig(EMBED, HEADS, attention_type, apply_causal_mask=True, use_rope=True)
    x = np.random.default_rng(5).standard_normal((BATCH, 64, EMBED)).astype(np.float32)
    check_parity(
        lambda p, x: Attention(cfg).apply({"params": p}, x).out,
        _init(cfg, x),
        TorchAttention(cfg),
        lambda m, x: m(x).out,
        [x],
        device=device,
    )


@pytest.mark.parametrize("variant,seq", [("gqa-causal-rope", 64), ("mqa-rope-nobias", SEQ)])
def test_float64_self_attention(variant: str, seq: int, device: str) -> None:
    """float64 on both sides (skipped on MPS, which has no float64): agreement to 1e-12.

    64 causal positions take jaxml's blockwise path; the other case the dense one.
    """
    cfg = AttentionConfig(EMBED, HEADS, **VARIANTS[variant])
    x = np.random.default_rng(6).standard_normal((BATCH, seq, EMBED))
    with jax.enable_x64(True):
        check_parity(
            lambda p, x: Attention(cfg).apply({"params": p}, x).out,
            _init(cfg, x.astype(np.float32)),
            TorchAttention(cfg),
            lambda m, x: m(x).out,
            [x],
            device=device,
            dtype="float64",
        )


def test_bfloat16_self_attention(device: str) -> None:
    """bf16 on both sides with the table's looser bf16 tolerance (8-bit mantissa)."""
    cfg = AttentionConfig(EMBED, HEADS, attention_type="gqa", apply_causal_mask=True, use_rope=True)
    x = np.random.default_rng(4).standard_normal((BATCH, SEQ, EMBED)).astype(np.float32)
    check_parity(
        lambda p, x: Attention(cfg).apply({"params": p}, x).out,
        _init(cfg, x),
        TorchAttention(cfg),
        lambda m, x: m(x).out,
        [x],
        device=device,
        dtype="bfloat16",
    )
