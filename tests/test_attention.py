"""Properties attention must have, beyond shapes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxml.configs import AttentionConfig
from jaxml.layers import kv_cache
from jaxml.layers.attention import Attention, causal_mask

EMBED, HEADS, SEQ = 32, 4, 7
X = np.random.default_rng(0).standard_normal((2, SEQ, EMBED)).astype(np.float32)


def _kv_params_for_groups(params: dict, groups: int, head_dim: int) -> dict:
    """Keep key/value heads 0..groups-1 (head index = slowest axis of the projection)."""
    cut = groups * head_dim
    new = dict(params)
    for name in ("k_proj", "v_proj"):
        new[name] = {"kernel": params[name]["kernel"][:, :cut], "bias": params[name]["bias"][:cut]}
    return new


def _expand_kv_heads(params: dict, groups: int, heads: int, head_dim: int) -> dict:
    """MHA params whose key/value heads copy the grouped ones (head h uses group h // (heads/groups))."""
    rep = heads // groups
    new = dict(params)
    for name in ("k_proj", "v_proj"):
        kernel = params[name]["kernel"].reshape(EMBED, groups, head_dim)
        bias = params[name]["bias"].reshape(groups, head_dim)
        new[name] = {
            "kernel": jnp.repeat(kernel, rep, axis=1).reshape(EMBED, heads * head_dim),
            "bias": jnp.repeat(bias, rep, axis=0).reshape(heads * head_dim),
        }
    return new


def test_gqa_with_all_groups_equals_mha() -> None:
    mha, gqa = (
        AttentionConfig(EMBED, HEADS, "mha"),
        AttentionConfig(EMBED, HEADS, "gqa", num_groups=HEADS),
    )
    params = Attention(mha).init(jax.random.key(1), X)
    np.testing.assert_array_equal(
        Attention(mha).apply(params, X).out, Attention(gqa).apply(params, X).out
    )


def test_gqa_with_one_group_equals_mqa() -> None:
    mqa, gqa = (
        AttentionConfig(EMBED, HEADS, "mqa"),
        AttentionConfig(EMBED, HEADS, "gqa", num_groups=1),
    )
    params = Attention(mqa).init(jax.random.key(2), X)
    np.testing.assert_array_equal(
        Attention(mqa).apply(params, X).out, Attention(gqa).apply(params, X).out
    )


@pytest.mark.parametrize("groups", [1, 2])
def test_grouped_attention_equals_mha_with_repeated_kv(groups: int) -> None:
    """K/V are shared by reshape, never copied: same numbers as MHA with explicitly repeated heads."""
    gqa = AttentionConfig(EMBED, HEADS, "gqa", num_groups=groups, apply_causal_mask=True)
    mha = AttentionConfig(EMBED, HEADS, "mha", apply_causal_mask=True)
    params = Attention(gqa).init(jax.random.key(3), X)["params"]
    expected = (
        Attention(mha)
        .apply({"params": _expand_kv_heads(params, groups, HEADS, gqa.head_dim)}, X)
        .out
    )
    np.testing.assert_allclose(
        Attention(gqa).apply({"params": params}, X).out, expected, atol=1e-5, rtol=1e-5
    )
    assert params["k_proj"]["kernel"].shape == (EMBED, groups * gqa.head_dim)


_causal = AttentionConfig(EMBED, HEADS, "gqa", apply_causal_mask=True, use_rope=True)
_causal_params = Attention(_causal).init(jax.random.key(4), X)
_causal_apply = jax.jit(lambda x: Attention(_causal).apply(_causal_params, x).out)


@settings(max_examples=20, deadline=None)
@given(t=st.integers(0, SEQ - 1), seed=st.integers(0, 2**16))
def test_causal_output_ignores_the_future(t: int, seed: int) -> None:
    changed = X.copy()
    changed[:, t + 1 :] = np.random.default_rng(seed).standard_normal(changed[:, t + 1 :].shape)
    np.testing.assert_allclose(
        _causal_apply(X)[:, : t + 1], _causal_apply(changed)[:, : t + 1], atol=1e-6
    )


def test_causal_weights_are_lower_triangular() -> None:
    weights = Attention(_causal).apply(_causal_params, X, return_weights=True).weights
    assert weights.shape == (2, HEADS, SEQ, SEQ)
    assert np.all(np.asarray(weights)[..., ~np.asarray(causal_mask(SEQ))] == 0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)


_cross_cfg = AttentionConfig(EMBED, HEADS, "gqa")
_cross_params = Attention(_cross_cfg).init(jax.random.key(5), X, X[:, :5])
_cross_apply = jax.jit(
    lambda p, x, c, m: Attention(_cross_cfg).apply(p, x, c, kv_mask=m, return_weights=True)
)


@settings(max_examples=15, deadline=None)
@given(valid=st.lists(st.integers(1, 5), min_size=2, max_size=2), seed=st.integers(0, 2**16))
def test_padded_keys_get_zero_weight_and_do_not_matter(valid: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    context = rng.standard_normal((2, 5, EMBED)).astype(np.float32)
    kv_mask = np.arange(5)[None, :] < np.array(valid)[:, None]
    result = _cross_apply(_cross_params, X, context, kv_mask)
    assert np.all(
        np.asarray(result.weights)[~np.broadcast_to(kv_mask[:, None, None], result.weights.shape)]
        == 0
    )
    garbage = np.where(
        kv_mask[..., None], context, rng.standard_normal(context.shape) * 100
    ).astype(np.float32)
    np.testing.assert_allclose(
        _cross_apply(_cross_params, X, garbage, kv_mask).out, result.out, atol=1e-5
    )


def test_cross_attention_shapes() -> None:
    context = np.zeros((2, 11, EMBED), np.float32)
    out = Attention(_cross_cfg).apply(_cross_params, X, context, return_weights=True)
    assert out.out.shape == X.shape and out.weights.shape == (2, HEADS, SEQ, 11)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda a, p: a.apply(p, X[..., :16]), r"embed_dim=32"),
        (lambda a, p: a.apply(p, X, np.zeros((3, 4, EMBED))), r"context must be"),
        (lambda a, p: a.apply(p, X, kv_mask=np.ones((2, 3), bool)), r"kv_mask must be"),
    ],
)
def test_bad_shapes_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(Attention(_cross_cfg), _cross_params)


def _fused_vs_dense(cfg: AttentionConfig, x: np.ndarray, **call) -> tuple:
    """Outputs and gradients (params and input) of `kernel='fused'` and `kernel='dense'`."""
    params = Attention(cfg).init(jax.random.key(0), x)
    results = []
    for kernel in ("fused", "dense"):
        layer = Attention(dataclasses.replace(cfg, kernel=kernel))

        def loss(p: dict, x: jax.Array, layer: Attention = layer) -> jax.Array:
            return jnp.sum(jnp.sin(layer.apply(p, x, **call).out))

        out = layer.apply(params, x, **call).out
        results.append((out, jax.grad(loss, argnums=(0, 1))(params, x)))
    return results


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("attention_type", ["mha", "mqa", "gqa"])
def test_fused_kernel_equals_dense(attention_type: str, causal: bool) -> None:
    """`jax.nn.dot_product_attention` (XLA on CPU) gives the dense numbers, with padded keys."""
    cfg = AttentionConfig(
        EMBED, HEADS, attention_type=attention_type, apply_causal_mask=causal, use_rope=True
    )
    kv_mask = jnp.arange(SEQ)[None, :] < jnp.array([[SEQ], [4]])
    for call in ({}, {"kv_mask": kv_mask}):
        (fused, fused_grads), (dense, dense_grads) = _fused_vs_dense(cfg, X, **call)
        np.testing.assert_allclose(fused, dense, atol=1e-5, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(fused_grads), jax.tree.leaves(dense_grads), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_fused_kernel_float64_keeps_dtype_but_softmax_is_float32() -> None:
    """jax's function takes its softmax in float32 even for float64 (dense stays float64)."""
    with jax.enable_x64(True):
        cfg = AttentionConfig(EMBED, HEADS, attention_type="gqa", apply_causal_mask=True)
        x = X.astype(np.float64)
        kv_mask = jnp.arange(SEQ)[None, :] < jnp.array([[SEQ], [5]])
        (fused, fused_grads), (dense, dense_grads) = _fused_vs_dense(cfg, x, kv_mask=kv_mask)
        assert fused.dtype == jnp.float64
        np.testing.assert_allclose(fused, dense, atol=1e-6, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(fused_grads), jax.tree.leaves(dense_grads), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_fused_kernel_serves_the_decode_cache() -> None:
    """Prefill + one decode step through the cache: the general mask path equals dense."""
    cfg = AttentionConfig(EMBED, HEADS, attention_type="gqa", apply_causal_mask=True, use_rope=True)
    params = Attention(cfg).init(jax.random.key(0), X)
    outs = []
    for kernel in ("fused", "dense"):
        layer = Attention(dataclasses.replace(cfg, kernel=kernel))
        cache = kv_cache.init(2, 16, cfg.num_kv_heads, cfg.head_dim)
        steps = []
        for chunk in (X[:, :5], X[:, 5:6]):
            n = chunk.shape[1]
            positions, mask = kv_cache.next_positions(cache, n), kv_cache.attention_mask(cache, n)
            out, cache, _ = layer.apply(params, chunk, cache=cache, positions=positions, mask=mask)
            steps.append(out)
        outs.append(np.concatenate(steps, axis=1))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kernel,dtype,match",
    [
        ("fused", jnp.float32, "kernel='fused' cannot serve a call with return_weights"),
        ("cudnn", jnp.float32, "kernel='cudnn' cannot serve .*dtype float32"),
        ("cudnn", jnp.bfloat16, "kernel='cudnn' cannot serve .*no CUDA GPU"),
    ],
)
def test_fused_kernel_refuses_what_it_cannot_serve(kernel: str, dtype: type, match: str) -> None:
    cfg = AttentionConfig(EMBED, HEADS, kernel=kernel)
    x = jnp.asarray(X, dtype)
    params = Attention(dataclasses.replace(cfg, kernel="dense")).init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    if jax.default_backend() == "gpu" and kernel == "cudnn" and dtype == jnp.bfloat16:
        pytest.skip("a CUDA GPU serves cudnn")
    with pytest.raises(ValueError, match=match):
        Attention(cfg).apply(params, x, return_weights=kernel == "fused")
