"""Transformer family: config validation, parameter layout, causality, padding, generation."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxml.configs import FFNConfig, TransformerConfig
from jaxml.models import (
    AutoregressiveTransformerModel,
    EncoderDecoder,
    TransformerModel,
    generate,
    predict_autoregressively,
)

CFG = TransformerConfig(
    input_dim=2,
    embed_dim=8,
    ffn_latent_dim=16,
    num_heads=2,
    output_dim=2,
    num_layers=1,
    max_seq_len=12,
)
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.standard_normal((2, 6, 2)), jnp.float32)
T = jnp.asarray(RNG.standard_normal((2, 5, 2)), jnp.float32)


def _shapes(model: Any, *inputs: Any) -> Any:
    return jax.tree_util.tree_map(jnp.shape, jax.eval_shape(model.init, jax.random.key(0), *inputs))


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"embed_dim": 7, "num_heads": 1}, "embed_dim"),
        ({"num_layers": 0}, "num_layers"),
        ({"num_decoder_layers": 0}, "num_decoder_layers"),
        ({"attention_type": "mla"}, "attention_type"),
        ({"num_heads": 4, "attention_type": "gqa", "num_groups": 3}, "num_groups"),
        ({"ffn_config": FFNConfig(16, 16)}, "ffn_config"),
        ({"ffn_config": FFNConfig(8, 32)}, "ffn_config"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
    ],
)
def test_config_rejects_bad_values(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"{field}="):
        CFG.replace(**changes)


def test_config_defaults_resolve_without_freezing_them() -> None:
    assert CFG.ffn == FFNConfig(8, 16) and not CFG.ffn.use_moe
    assert (CFG.encoder_depth, CFG.decoder_depth) == (1, 1)
    deeper = CFG.replace(num_layers=3, num_decoder_layers=2)
    assert (deeper.encoder_depth, deeper.decoder_depth) == (3, 2)
    assert CFG.replace(num_heads=4, attention_type="gqa").attention_config(True).num_kv_heads == 2
    hash(CFG)


def test_parameter_layout_matches_torch_names() -> None:
    cfg = CFG.replace(num_encoder_layers=2, num_decoder_layers=1)
    params = _shapes(EncoderDecoder(cfg), X, T)["params"]
    assert sorted(params) == ["decoder", "encoder", "head"]
    assert sorted(params["encoder"]) == ["input_proj", "layers_0", "layers_1"]
    assert sorted(params["decoder"]["layers_0"]) == [
        "cross_attn",
        "ffn",
        "norm1",
        "norm2",
        "norm3",
        "self_attn",
    ]
    assert params["head"]["kernel"] == (8, 2)
    regression = _shapes(TransformerModel(cfg), X)["params"]
    assert sorted(regression["encoder"]["layers_0"]) == ["ffn", "norm1", "norm2", "self_attn"]


def test_shape_checks() -> None:
    model = TransformerModel(CFG)
    with pytest.raises(ValueError, match="input_dim=2"):
        _shapes(model, jnp.zeros((2, 6, 3)))
    with pytest.raises(ValueError, match="max_seq_len=12"):
        _shapes(model, jnp.zeros((2, 13, 2)))


@pytest.fixture(scope="module")
def ar() -> tuple[AutoregressiveTransformerModel, Any]:
    model = AutoregressiveTransformerModel(CFG)
    return model, jax.jit(model.init)(jax.random.key(1), X)["params"]


@pytest.fixture(scope="module")
def encdec() -> tuple[EncoderDecoder, Any]:
    model = EncoderDecoder(CFG)
    return model, jax.jit(model.init)(jax.random.key(2), X, T)["params"]


def test_autoregressive_is_causal(ar: tuple) -> None:
    model, params = ar
    apply = jax.jit(lambda x: model.apply({"params": params}, x))
    out, aux = apply(X)
    assert out.shape == (2, 6, 2) and aux == {"aux_loss": 0.0}
    changed, _ = apply(X.at[:, 4:].set(9.0))
    np.testing.assert_array_equal(out[:, :4], changed[:, :4])
    assert not np.allclose(out[:, 4:], changed[:, 4:])
    nxt = model.apply({"params": params}, X, method="generate_next_token")
    np.testing.assert_allclose(nxt, out[:, -1:], rtol=1e-6, atol=1e-6)


def test_regression_pools_to_one_prediction_per_sequence() -> None:
    model = TransformerModel(CFG.replace(output_dim=3))
    params = jax.jit(model.init)(jax.random.key(3), X)
    out, aux = model.apply(params, X)
    assert out.shape == (2, 3) and float(aux["aux_loss"]) == 0.0


def test_encoder_decoder_padding_causality_and_split_calls(encdec: tuple) -> None:
    model, params = encdec
    mask = jnp.array([[True] * 6, [True] * 4 + [False] * 2])
    apply = jax.jit(lambda s, t: model.apply({"params": params}, s, t, mask))
    out, aux = apply(X, T)
    assert out.shape == (2, 5, 2) and float(aux["aux_loss"]) == 0.0
    # padded source positions are invisible; later target positions do not leak backwards
    np.testing.assert_allclose(apply(X.at[1, 4:].set(5.0), T)[0], out, rtol=1e-6, atol=1e-6)
    changed = apply(X, T.at[:, 3:].set(5.0))[0]
    np.testing.assert_array_equal(changed[:, :3], out[:, :3])
    assert not np.allclose(changed[:, 3:], out[:, 3:])
    memory, _ = model.apply({"params": params}, X, mask, method="encode")
    assert memory.shape == (2, 6, 8)
    split, _ = model.apply({"params": params}, T, memory, mask, method="decode")
    np.testing.assert_allclose(split, out, rtol=1e-6, atol=1e-6)


def test_predict_autoregressively_matches_repeated_forward_passes(ar: tuple) -> None:
    model, params = ar
    prefix, steps = X[:, :3], 2
    preds = predict_autoregressively(model, params, prefix, steps)
    seq = prefix
    for i in range(steps):
        nxt = model.apply({"params": params}, seq, method="generate_next_token")
        np.testing.assert_allclose(preds[:, i : i + 1], nxt, rtol=1e-5, atol=1e-5)
        seq = jnp.concatenate([seq, nxt], axis=1)


def test_generate_matches_repeated_decoding(encdec: tuple) -> None:
    model, params = encdec
    start = jnp.ones((2, 1, 2))
    preds = generate(model, params, X, 2, start)
    variables = {"params": params}
    memory, _ = model.apply(variables, X, method="encode")
    target = start
    for i in range(2):
        out, _ = model.apply(variables, target, memory, method="decode")
        np.testing.assert_allclose(preds[:, i], out[:, -1], rtol=1e-5, atol=1e-5)
        target = jnp.concatenate([target, out[:, -1:]], axis=1)


def test_generation_needs_matching_input_and_output_dims() -> None:
    model = AutoregressiveTransformerModel(CFG.replace(output_dim=1))
    with pytest.raises(ValueError, match="output_dim=1 must equal input_dim=2"):
        predict_autoregressively(model, {}, X, 2)


def test_moe_aux_collects_every_moe_layer_in_order() -> None:
    moe = FFNConfig(8, 16, use_moe=True, num_experts=3, topk=1, capacity=3, z_loss_coef=0.1)
    model = EncoderDecoder(CFG.replace(ffn_config=moe, num_encoder_layers=2))
    # one compilation: init_with_output also returns the captured per-module outputs
    (_, aux), variables = jax.jit(
        lambda key: model.init_with_output(key, X, T, capture_intermediates=True)
    )(jax.random.key(4))
    found = variables["intermediates"]
    layers = [
        found[stack][f"layers_{i}"]["ffn"]["__call__"][0][1]
        for stack, i in (("encoder", 0), ("encoder", 1), ("decoder", 0))
    ]
    assert sorted(aux) == ["aux_loss", "dropped_fraction", "tokens_per_expert"]
    assert aux["aux_loss"].dtype == jnp.float32 and float(aux["aux_loss"]) > 0
    assert float(aux["dropped_fraction"]) > 0  # 12 source tokens, 3 experts x 3 slots
    np.testing.assert_allclose(aux["aux_loss"], sum(a["aux_loss"] for a in layers), rtol=1e-6)
    np.testing.assert_allclose(
        aux["dropped_fraction"], np.mean([a["dropped_fraction"] for a in layers]), rtol=1e-6
    )
    np.testing.assert_array_equal(
        aux["tokens_per_expert"], np.stack([a["tokens_per_expert"] for a in layers])
    )
    assert aux["tokens_per_expert"].shape == (3, 3)
