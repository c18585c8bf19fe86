"""The KV-cache path of Attention reproduces the full forward pass, step by step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxml.configs import AttentionConfig
from jaxml.layers.attention import Attention
from jaxml.layers.kv_cache import append_kv, init_kv_cache

CFG = AttentionConfig(32, 4, "gqa", num_groups=2, apply_causal_mask=True, use_rope=True)
X = np.random.default_rng(0).standard_normal((2, 9, 32)).astype(np.float32)
PARAMS = Attention(CFG).init(jax.random.key(0), X)
FULL = np.asarray(Attention(CFG).apply(PARAMS, X).out)


def test_prefill_then_decode_matches_full_forward() -> None:
    traces = 0

    def step(cache, x):
        nonlocal traces
        traces += 1
        result = Attention(CFG).apply(PARAMS, x, cache=cache)
        return result.cache, result.out

    step = jax.jit(step)
    cache = init_kv_cache(CFG, batch=2, max_seq_len=12)
    cache, prefill = step(cache, X[:, :4])
    outs = [np.asarray(prefill)]
    for t in range(4, 9):
        cache, out = step(cache, X[:, t : t + 1])
        outs.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), FULL, atol=1e-5, rtol=1e-5)
    assert int(cache.end_index) == 9
    assert traces == 2  # one compilation for the prefill shape, one serves every decode step


def test_cache_without_causal_mask_sees_filled_slots_only() -> None:
    cfg = CFG.replace(apply_causal_mask=False, use_rope=False)
    params = Attention(cfg).init(jax.random.key(1), X)
    cache = init_kv_cache(cfg, batch=2, max_seq_len=16)
    result = Attention(cfg).apply(params, X, cache=cache, return_weights=True)
    np.testing.assert_allclose(
        result.out, Attention(cfg).apply(params, X).out, atol=1e-5, rtol=1e-5
    )
    assert np.all(np.asarray(result.weights)[..., 9:] == 0)


def test_overflowing_write_poisons_the_output() -> None:
    cache = init_kv_cache(CFG, batch=2, max_seq_len=10)
    cache = jax.jit(lambda c: Attention(CFG).apply(PARAMS, X, cache=c).cache)(cache)
    out = jax.jit(lambda c: Attention(CFG).apply(PARAMS, X[:, :2], cache=c).out)(cache)
    assert np.all(np.isnan(np.asarray(out)))


def test_append_validates_shapes() -> None:
    cache = init_kv_cache(CFG, batch=2, max_seq_len=4)
    with pytest.raises(ValueError, match="cache holds"):
        append_kv(cache, jnp.zeros((3, 1, 2, 8)), jnp.zeros((3, 1, 2, 8)))
    with pytest.raises(ValueError, match="cannot fit"):
        append_kv(cache, jnp.zeros((2, 5, 2, 8)), jnp.zeros((2, 5, 2, 8)))
    with pytest.raises(ValueError, match="max_seq_len >= 1"):
        init_kv_cache(CFG, batch=2, max_seq_len=0)


def test_cross_attention_refuses_a_cache() -> None:
    cfg = CFG.replace(use_rope=False)
    cache = init_kv_cache(cfg, batch=2, max_seq_len=4)
    with pytest.raises(ValueError, match="cross-attention"):
        Attention(cfg).apply(PARAMS, X, X, cache=cache)
