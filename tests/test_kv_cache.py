"""The per-sequence KV cache: per-row writes, ring buffer, rollback, and cached == full attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxml.configs import AttentionConfig
from jaxml.layers import kv_cache
from jaxml.layers.attention import Attention

CFG = AttentionConfig(32, 4, "gqa", num_groups=2, apply_causal_mask=True, use_rope=True)
X = np.random.default_rng(0).standard_normal((2, 9, 32)).astype(np.float32)
PARAMS = Attention(CFG).init(jax.random.key(0), X)
FULL = np.asarray(Attention(CFG).apply(PARAMS, X).out)


def _new_cache(cache_len: int, window: int | None = None, batch: int = 2) -> kv_cache.KVCache:
    return kv_cache.init(batch, cache_len, CFG.num_kv_heads, CFG.head_dim, window=window)


def _cached_step(cache: kv_cache.KVCache, x: jax.Array) -> tuple[kv_cache.KVCache, jax.Array]:
    """One decode-loop step: positions and mask built once, then the layer."""
    n = x.shape[1]
    positions, mask = kv_cache.next_positions(cache, n), kv_cache.attention_mask(cache, n)
    result = Attention(CFG).apply(PARAMS, x, positions=positions, cache=cache, mask=mask)
    return result.cache, result.out


def _decode(cache: kv_cache.KVCache, chunks: list[tuple[int, int]]) -> np.ndarray:
    step = jax.jit(_cached_step)
    outs = []
    for start, stop in chunks:
        cache, out = step(cache, X[:, start:stop])
        outs.append(np.asarray(out))
    return np.concatenate(outs, axis=1)


def test_prefill_then_decode_matches_full_forward() -> None:
    traces = 0

    def counted(cache, x):
        nonlocal traces
        traces += 1
        return _cached_step(cache, x)

    step = jax.jit(counted)
    cache, prefill = step(_new_cache(12), X[:, :4])
    outs = [np.asarray(prefill)]
    for t in range(4, 9):
        cache, out = step(cache, X[:, t : t + 1])
        outs.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), FULL, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(cache.lengths, [9, 9])
    np.testing.assert_array_equal(cache.positions[0], [*range(9), -1, -1, -1])
    assert traces == 2  # one compilation for the prefill shape, one serves every decode step


def test_rows_write_at_their_own_offsets() -> None:
    cache = _new_cache(6)
    ones = jnp.ones((2, 3, 2, 8))
    cache = kv_cache.truncate(kv_cache.append(cache, ones, ones), jnp.array([1, 3]))
    cache = kv_cache.append(cache, 2 * ones[:, :2], 2 * ones[:, :2])
    np.testing.assert_array_equal(cache.lengths, [3, 5])
    np.testing.assert_array_equal(cache.positions, [[0, 1, 2, -1, -1, -1], [0, 1, 2, 3, 4, -1]])
    np.testing.assert_array_equal(cache.k[:, :, 0, 0], [[1, 2, 2, 0, 0, 0], [1, 1, 1, 2, 2, 0]])


def test_wrapping_write_lands_in_the_ring_slots() -> None:
    cache = _new_cache(5, window=3)
    keys = jnp.arange(7, dtype=jnp.float32)[None, :, None, None] * jnp.ones((2, 7, 2, 8))
    cache = kv_cache.append(cache, keys[:, :4], keys[:, :4])
    assert bool(kv_cache.write_fits(cache, 3).all()) and not bool(
        kv_cache.write_fits(cache, 4).any()
    )
    cache = kv_cache.append(cache, keys[:, 4:], keys[:, 4:])  # positions 4, 5, 6 -> slots 4, 0, 1
    np.testing.assert_array_equal(cache.positions[0], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(cache.k[0, :, 0, 0], [5, 6, 2, 3, 4])
    mask = kv_cache.attention_mask(cache, 1)  # the query at position 7 sees 5, 6 and itself
    np.testing.assert_array_equal(mask[0, 0], [True, True, True, False, False])


@pytest.mark.parametrize("cache_len", [4, 6])
def test_sliding_window_equals_full_attention_restricted_to_the_window(cache_len: int) -> None:
    window = 3
    banded = np.tril(np.ones((9, 9), bool)) & ~np.tril(np.ones((9, 9), bool), -window)
    expected = Attention(CFG).apply(PARAMS, X, mask=jnp.broadcast_to(banded, (2, 9, 9))).out
    chunks = [(0, 4), *((t, t + 1) for t in range(4, 9))]
    got = _decode(_new_cache(cache_len, window), chunks)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_truncate_rolls_back_each_row() -> None:
    cache = _new_cache(12)
    step = jax.jit(_cached_step)
    cache, _ = step(cache, X[:, :6])
    cache = kv_cache.truncate(cache, jnp.array([4, 5]))
    rows = [step(kv_cache.truncate(cache, jnp.array([4, 4])), X[:, 4:5])[1][0]]
    rows.append(step(cache, X[:, 5:6])[1][1])
    np.testing.assert_allclose(np.stack(rows)[:, 0], FULL[[0, 1], [4, 5]], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="0 <= new_lengths <= lengths"):
        kv_cache.truncate(cache, jnp.array([5, 5]))


def test_overflow_raises_outside_jit_and_poisons_the_row_inside() -> None:
    cache = kv_cache.truncate(jax.jit(_cached_step)(_new_cache(10), X)[0], jnp.array([9, 7]))
    with pytest.raises(ValueError, match="cache overflow: row 0 holds 9 tokens, 2 more"):
        _cached_step(cache, X[:, :2])
    out = np.asarray(jax.jit(_cached_step)(cache, X[:, :2])[1])
    assert np.all(np.isnan(out[0])) and np.all(np.isfinite(out[1]))
    assert list(kv_cache.is_full(_new_cache(4, window=2))) == [False, False]


def test_invalid_caches_and_writes_are_refused() -> None:
    with pytest.raises(ValueError, match="window=5 is invalid.*larger than the cache"):
        _new_cache(4, window=5)
    with pytest.raises(ValueError, match="cache_len=0 is invalid"):
        _new_cache(0)
    with pytest.raises(ValueError, match="cache holds"):
        kv_cache.append(_new_cache(4), jnp.zeros((3, 1, 2, 8)), jnp.zeros((3, 1, 2, 8)))
    with pytest.raises(ValueError, match="cannot write 5 tokens"):
        kv_cache.append(_new_cache(4), jnp.zeros((2, 5, 2, 8)), jnp.zeros((2, 5, 2, 8)))


def test_attention_validates_cached_calls() -> None:
    cache = _new_cache(4)
    with pytest.raises(ValueError, match="with a cache, pass mask"):
        Attention(CFG).apply(PARAMS, X[:, :1], cache=cache)
    with pytest.raises(ValueError, match="cross-attention"):
        Attention(CFG).apply(PARAMS, X, X, cache=cache)
    blockwise = CFG.replace(kernel="blockwise")
    with pytest.raises(ValueError, match="kernel='blockwise' cannot serve a call with a cache"):
        Attention(blockwise).apply(
            PARAMS,
            X[:, :1],
            positions=kv_cache.next_positions(cache, 1),
            cache=cache,
            mask=kv_cache.attention_mask(cache, 1),
        )
