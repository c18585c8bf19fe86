"""Mixture of Experts: config validation, routing semantics, dispatch, aux losses, Mixtral interop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxml.configs import FFNConfig
from jaxml.interop.mixtral import (
    load_mixtral_moe,
    mixtral_moe_config,
    moe_from_mixtral,
    moe_to_mixtral,
    save_mixtral_moe,
)
from jaxml.layers.ffn import make_ffn
from jaxml.layers.moe import MoE, route

X = np.random.default_rng(0).standard_normal((3, 8, 16)).astype(np.float32)


def moe_config(**changes: Any) -> FFNConfig:
    base: dict[str, Any] = dict(use_moe=True, num_experts=4, topk=2)
    base.update(changes)
    return FFNConfig(16, 12, **base)


def init(cfg: FFNConfig, x: np.ndarray = X, seed: int = 0) -> dict[str, Any]:
    return MoE(cfg).init(jax.random.key(seed), x)["params"]


def reference_mixture(params: dict[str, Any], cfg: FFNConfig, x: np.ndarray) -> np.ndarray:
    """The dense mixture written as an explicit loop over tokens and their chosen experts."""
    tokens = x.reshape(-1, x.shape[-1]).astype(np.float64)
    p = {k: np.asarray(v, np.float64) for k, v in params.items() if k != "gate"}
    logits = tokens @ np.asarray(params["gate"]["kernel"], np.float64)
    out = np.zeros_like(tokens)
    for t, row in enumerate(logits):
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        chosen = np.argsort(-probs, kind="stable")[: cfg.topk]
        weights = probs[chosen] / (probs[chosen].sum() if cfg.norm_topk_prob else 1.0)
        for e, w in zip(chosen, weights, strict=True):
            h = tokens[t] @ p["w1"][e] + (p["b1"][e] if cfg.use_bias else 0)
            if cfg.kind == "swiglu":
                up = tokens[t] @ p["w3"][e] + (p["b3"][e] if cfg.use_bias else 0)
                h = h / (1 + np.exp(-h)) * up
            else:
                h = np.maximum(h, 0)
            out[t] += w * (h @ p["w2"][e] + (p["b2"][e] if cfg.use_bias else 0))
    return out.reshape(x.shape)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(topk=5), r"topk=5 .*<= num_experts=4"),
        (dict(num_experts=0), r"num_experts=0 .*positive integer"),
        (dict(capacity=0), r"capacity=0 .*positive integer"),
        (dict(capacity=2.5), r"capacity=2.5 .*integer"),
        (dict(capacity_factor=0.0), r"capacity_factor=0.0 .*> 0"),
        (dict(capacity_factor=float("nan")), r"capacity_factor=nan"),
        (dict(capacity=4, capacity_factor=1.0), r"either capacity or capacity_factor"),
        (dict(alpha=-0.1), r"alpha=-0.1 .*in \[0.0, "),
        (dict(z_loss_coef=float("inf")), r"z_loss_coef=inf"),
        (dict(overflow_policy="spill"), r"overflow_policy='spill' .*drop, overflow_expert"),
        (dict(overflow_policy="overflow_expert"), r"needs capacity or capacity_factor"),
        (dict(dispatch="sort"), r"dispatch='sort' .*gather, einsum"),
        (dict(norm_topk_prob=1), r"norm_topk_prob=1 .*True or False"),
    ],
)
def test_moe_config_rejects(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        moe_config(**changes)


def test_expert_capacity() -> None:
    assert moe_config(capacity=5).expert_capacity(100) == 5
    assert moe_config(capacity=500).expert_capacity(100) == 100  # never more than the tokens
    assert moe_config(capacity_factor=1.0).expert_capacity(100) == 50  # 2 · 100 / 4
    assert moe_config(capacity_factor=1.1, topk=1).expert_capacity(10) == 3  # ceil(2.75)
    assert moe_config(capacity_factor=0.01).expert_capacity(10) == 1
    assert moe_config().expert_capacity(37) == 37  # dropless


# --------------------------------------------------------------------------- semantics
@pytest.mark.parametrize(
    "changes",
    [
        dict(topk=1, dispatch="einsum"),
        dict(topk=2, dispatch="gather", kind="swiglu", activation="silu"),
        dict(topk=3, dispatch="einsum", norm_topk_prob=False, use_bias=False),
    ],
)
def test_dropless_equals_per_token_loop(changes: dict[str, Any]) -> None:
    cfg = moe_config(**changes)
    params = init(cfg)
    y, aux = MoE(cfg).apply({"params": params}, X)
    np.testing.assert_allclose(y, reference_mixture(params, cfg, X), atol=2e-5, rtol=1e-5)
    assert float(aux["dropped_fraction"]) == 0.0
    assert float(jnp.sum(aux["tokens_per_expert"])) == X.shape[0] * X.shape[1] * cfg.topk


def _skewed_params(cfg: FFNConfig) -> dict[str, Any]:
    """Params whose router sends most tokens to expert 0 (so a small capacity must overflow)."""
    params = init(cfg)
    kernel = np.asarray(params["gate"]["kernel"]).copy()
    kernel[:, 0] += 0.5 * X.reshape(-1, 16).mean(axis=0) / np.square(X).mean()
    return {**params, "gate": {"kernel": kernel}}


@pytest.mark.parametrize("topk,capacity", [(1, 3), (2, 5), (2, 1)])
def test_capacity_is_never_exceeded_and_dispatches_agree(topk: int, capacity: int) -> None:
    outputs = []
    for dispatch in ("einsum", "gather"):
        cfg = moe_config(topk=topk, capacity=capacity, dispatch=dispatch)
        params = _skewed_params(cfg)
        y, aux = MoE(cfg).apply({"params": params}, X)
        outputs.append(np.asarray(y))
        logits = X.reshape(-1, 16) @ np.asarray(params["gate"]["kernel"])
        routing, _ = route(jnp.asarray(logits), cfg, capacity)
        kept_experts = np.asarray(routing.expert)[np.asarray(routing.kept)]
        received = np.bincount(kept_experts, minlength=cfg.num_experts)
        assert received.max() <= capacity
        np.testing.assert_array_equal(aux["tokens_per_expert"], received)
        choices = X.shape[0] * X.shape[1] * topk
        assert float(aux["dropped_fraction"]) == pytest.approx(1 - received.sum() / choices)
        assert float(aux["dropped_fraction"]) > 0
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-6)


def test_priority_first_choices_then_token_order() -> None:
    """Expert 1 (capacity 3) gets the first choices of tokens 2 and 3 before token 0's second."""
    cfg = FFNConfig(4, 4, use_moe=True, num_experts=3, topk=2, capacity=3)
    logits = jnp.array(
        [
            [3.0, 2.0, 0.0],  # token 0: expert 0, then 1
            [3.0, 0.0, 2.0],  # token 1: expert 0, then 2
            [0.0, 3.0, 2.0],  # token 2: expert 1, then 2
            [0.0, 3.0, 2.0],  # token 3: expert 1, then 2
            [2.0, 3.0, 0.0],  # token 4: expert 1, then 0
        ]
    )
    routing, aux = route(logits, cfg, capacity=3)
    np.testing.assert_array_equal(routing.expert, [[0, 0, 1, 1, 1], [1, 2, 2, 2, 0]])
    np.testing.assert_array_equal(routing.slot, [[0, 1, 0, 1, 2], [3, 0, 1, 2, 2]])
    np.testing.assert_array_equal(routing.kept, [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(aux["tokens_per_expert"], [3, 3, 3])
    assert float(aux["dropped_fraction"]) == pytest.approx(0.1)


def test_overflow_expert_processes_exactly_the_overflow() -> None:
    drop = moe_config(capacity=2)
    spill = drop.replace(overflow_policy="overflow_expert")
    params = init(spill)
    y_spill, aux = MoE(spill).apply({"params": params}, X)
    dense_params = {k: v for k, v in params.items() if k != "overflow_expert"}
    y_drop, aux_drop = MoE(drop).apply({"params": dense_params}, X)
    tokens = X.reshape(-1, 16)
    routing, _ = route(jnp.asarray(tokens @ np.asarray(params["gate"]["kernel"])), spill, 2)
    overflow_weight = np.sum(np.where(routing.kept, 0.0, routing.weight), axis=0)
    dense = make_ffn(spill).apply({"params": params["overflow_expert"]}, tokens)
    expected = np.asarray(y_drop).reshape(-1, 16) + overflow_weight[:, None] * np.asarray(dense)
    np.testing.assert_allclose(np.asarray(y_spill).reshape(-1, 16), expected, atol=1e-5)
    assert 0 < float(aux["dropped_fraction"]) == float(aux_drop["dropped_fraction"])


def test_router_gradients() -> None:
    """Top-2 output trains the router; renormalised top-1 weights are 1, so only aux losses do."""

    def router_grad(cfg: FFNConfig, with_aux: bool) -> float:
        params = init(cfg)

        def loss(p: Any) -> Any:
            y, aux = MoE(cfg).apply({"params": p}, X)
            return jnp.sum(y**2) + (aux["aux_loss"] if with_aux else 0.0)

        return float(jnp.abs(jax.grad(loss)(params)["gate"]["kernel"]).max())

    top2 = router_grad(moe_config(topk=2, alpha=0.0), with_aux=False)
    assert top2 > 1e-3
    top1 = moe_config(topk=1, capacity=6, alpha=1.0, z_loss_coef=0.1)
    output_only = router_grad(top1, with_aux=False)  # d(p / p)/dp: 0 up to rounding
    assert output_only < 1e-5 * top2
    assert router_grad(top1, with_aux=True) > 100 * output_only
    assert router_grad(moe_config(topk=1, norm_topk_prob=False), with_aux=False) > 1e-3


def test_aux_losses_of_a_uniform_router() -> None:
    """Zero router: every P_e = 1/E, ties go to experts 0..k-1, so the balance loss is exactly 1."""
    cfg = moe_config(topk=2, alpha=0.5, z_loss_coef=0.1, capacity=10)
    params = init(cfg)
    params = {**params, "gate": {"kernel": np.zeros((16, 4), np.float32)}}
    _, aux = MoE(cfg).apply({"params": params}, X)
    z = np.log(4.0) ** 2
    assert float(aux["load_balance_loss"]) == pytest.approx(1.0)
    assert float(aux["z_loss"]) == pytest.approx(z)
    assert float(aux["aux_loss"]) == pytest.approx(0.5 + 0.1 * z)
    np.testing.assert_array_equal(aux["tokens_per_expert"], [10, 10, 0, 0])
    assert float(aux["dropped_fraction"]) == pytest.approx(1 - 20 / 48)
    assert {k: v.dtype for k, v in aux.items()} == dict.fromkeys(aux, jnp.float32)


def test_jit_traces_once_for_new_data_and_keeps_dtype() -> None:
    cfg = moe_config(capacity_factor=1.0)
    params = init(cfg)
    traces = []

    @jax.jit
    def apply(p: Any, x: Any) -> Any:
        traces.append(1)
        return MoE(cfg).apply({"params": p}, x)

    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal(X.shape).astype(np.float32)
        y, _ = apply(params, x)
    assert len(traces) == 1
    y16, _ = apply(params, X.astype(jnp.bfloat16))
    assert y.shape == X.shape and y16.dtype == jnp.bfloat16


# --------------------------------------------------------------------------- Mixtral interop
def test_mixtral_round_trip_through_safetensors(tmp_path: Path) -> None:
    cfg = moe_config(kind="swiglu", activation="silu", use_bias=False, num_experts=3)
    params = jax.tree_util.tree_map(np.asarray, init(cfg))
    tensors = moe_to_mixtral(params, prefix="model.layers.1.")
    assert tensors["model.layers.1.block_sparse_moe.gate.weight"].shape == (3, 16)
    assert tensors["model.layers.1.block_sparse_moe.experts.2.w1.weight"].shape == (12, 16)
    assert tensors["model.layers.1.block_sparse_moe.experts.0.w2.weight"].shape == (16, 12)
    np.testing.assert_array_equal(
        tensors["model.layers.1.block_sparse_moe.experts.1.w3.weight"], params["w3"][1].T
    )
    path = tmp_path / "moe.safetensors"
    save_mixtral_moe(path, params, prefix="model.layers.1.")
    loaded = load_mixtral_moe(path, prefix="model.layers.1.")
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
    assert mixtral_moe_config(loaded) == cfg.replace(topk=2)
    y, _ = MoE(mixtral_moe_config(loaded)).apply({"params": loaded}, X)
    np.testing.assert_allclose(y, reference_mixture(params, cfg, X), atol=2e-5, rtol=1e-5)


def test_mixtral_conversion_rejects_what_it_cannot_hold() -> None:
    biased = jax.tree_util.tree_map(np.asarray, init(moe_config(kind="swiglu")))
    with pytest.raises(ValueError, match=r"exactly \['gate', 'w1', 'w2', 'w3'\]"):
        moe_to_mixtral(biased)
    params = {k: v for k, v in biased.items() if not k.startswith("b")}
    tensors = moe_to_mixtral(params)
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        moe_from_mixtral({k: v for k, v in tensors.items() if ".1.w2" not in k})
    with pytest.raises(ValueError, match="unknown key block_sparse_moe.experts.0.w4.weight"):
        moe_from_mixtral(
            {
                **tensors,
                "block_sparse_moe.experts.0.w4.weight": tensors["block_sparse_moe.gate.weight"],
            }
        )
    with pytest.raises(ValueError, match="no model.layers.0.block_sparse_moe.gate.weight"):
        moe_from_mixtral(tensors, prefix="model.layers.0.")


# --------------------------------------------------------------------------- experiments
def test_routing_run_reports_the_layer_statistics() -> None:
    from experiments.bench_moe import routing_run

    rows = routing_run(alpha=0.1, steps=2, log_every=1)
    assert [row["step"] for row in rows] == [0, 1, 2]
    for row in rows:
        load = [int(n) for n in row["tokens_per_expert"].split()]
        assert len(load) == 8 and max(load) <= 128  # capacity = 2 · 512 / 8
        assert row["dropped"] == pytest.approx(1 - sum(load) / 1024)
        assert np.isfinite(row["task_loss"]) and row["balance_loss"] > 0
