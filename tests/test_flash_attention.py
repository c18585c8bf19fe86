"""Blockwise causal attention == dense masked attention, values and gradients (custom VJP)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxml.configs import AttentionConfig
from jaxml.layers.attention import Attention, causal_mask, dot_product_attention
from jaxml.layers.flash_attention import causal_attention, pick_block_size

BATCH, SEQ, HEAD_DIM = 2, 64, 8


def _qkv(heads: int, groups: int, seed: int = 0) -> list[jax.Array]:
    rng = np.random.default_rng(seed)
    shapes = [
        (BATCH, SEQ, heads, HEAD_DIM),
        (BATCH, SEQ, groups, HEAD_DIM),
        (BATCH, SEQ, groups, HEAD_DIM),
    ]
    return [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]


@pytest.mark.parametrize("heads,groups,block_size", [(4, 4, 16), (4, 2, 32), (4, 1, 16)])
def test_values_and_gradients_match_dense(heads: int, groups: int, block_size: int) -> None:
    q, k, v = _qkv(heads, groups)
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)

    def dense(q, k, v):
        return jnp.sum(dot_product_attention(q, k, v, causal_mask(SEQ)[None])[0] * cotangent)

    def blockwise(q, k, v):
        return jnp.sum(causal_attention(q, k, v, block_size) * cotangent)

    expected = jax.jit(jax.value_and_grad(dense, argnums=(0, 1, 2)))(q, k, v)
    actual = jax.jit(jax.value_and_grad(blockwise, argnums=(0, 1, 2)))(q, k, v)
    for name, e, a in zip(
        ["loss", "dq", "dk", "dv"],
        jax.tree_util.tree_leaves(expected),
        jax.tree_util.tree_leaves(actual),
        strict=True,
    ):
        np.testing.assert_allclose(a, e, atol=2e-5, rtol=2e-5, err_msg=name)


def test_large_logits_stay_finite() -> None:
    q, k, v = _qkv(2, 2, seed=2)
    out, grads = jax.jit(
        jax.value_and_grad(lambda q: jnp.sum(causal_attention(q * 1e3, k, v, 16)))
    )(q)
    assert np.isfinite(float(out)) and np.all(np.isfinite(np.asarray(grads)))


def test_bfloat16_keeps_dtype() -> None:
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(4, 2))
    out = jax.jit(causal_attention, static_argnums=3)(q, k, v, 32)
    assert out.dtype == jnp.bfloat16
    reference = dot_product_attention(q, k, v, causal_mask(SEQ)[None])[0]
    np.testing.assert_allclose(
        out.astype(jnp.float32), reference.astype(jnp.float32), atol=3e-2, rtol=3e-2
    )


def test_block_size_choice() -> None:
    assert pick_block_size(256, 256) == 64
    assert pick_block_size(64, 64) == 32
    assert pick_block_size(96, 96) == 32
    assert pick_block_size(50, 50) is None  # not a whole number of blocks
    assert pick_block_size(32, 32) is None  # a single block: nothing to skip
    assert pick_block_size(64, 128) is None  # not square (cache, cross-attention)


def test_attention_module_takes_the_blockwise_path_with_same_numbers() -> None:
    cfg = AttentionConfig(32, 4, "gqa", apply_causal_mask=True, use_rope=True)
    x = np.random.default_rng(3).standard_normal((BATCH, SEQ, 32)).astype(np.float32)
    params = Attention(cfg).init(jax.random.key(0), x)
    fast = Attention(cfg).apply(params, x)
    dense = Attention(cfg).apply(params, x, return_weights=True)  # weights force the dense path
    np.testing.assert_allclose(fast.out, dense.out, atol=1e-5, rtol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda p: Attention(cfg).apply(p, x).out)(params))
    assert "custom_vjp_call" in jaxpr
