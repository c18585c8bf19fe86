"""jaxml == torchref for the transformer family: same weights => same outputs and gradients.

One attention type per mode, rotated so mha, mqa and gqa each meet every kind of block:
regression/mha (2 layers), autoregressive/gqa, encoder-decoder/mqa, and encoder-decoder/gqa
with a padded source. With MoE FFNs (capacity small enough to drop choices) the rotation shifts:
regression/mqa, autoregressive/mha, encoder-decoder/gqa padded; the compared output there is
`prediction + aux_loss`, so the aux-loss gradient is checked too, and the aux statistics must agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import pytest

from jaxml.configs import FFNConfig, TransformerConfig
from jaxml.models import generation as jgen
from jaxml.models import transformer as jtr
from parity.harness import assert_close, check_parity, to_torch, tolerance
from torchref.convert import jaxml_params_from
from torchref.models import generation as tgen
from torchref.models import transformer as ttr

RNG = np.random.default_rng(0)
SOURCE = RNG.standard_normal((2, 5, 3)).astype(np.float32)
TARGET = RNG.standard_normal((2, 4, 3)).astype(np.float32)
SOURCE_MASK = np.array([[True] * 5, [True, True, True, False, False]])


def _config(attention_type: str, **changes: Any) -> TransformerConfig:
    base: dict[str, Any] = {
        "input_dim": 3,
        "embed_dim": 8,
        "ffn_latent_dim": 12,
        "num_heads": 4,
        "output_dim": 2,
        "num_layers": 1,
        "attention_type": attention_type,
        "num_groups": 2 if attention_type == "gqa" else None,
        "max_seq_len": 16,
    }
    return TransformerConfig(**{**base, **changes})


def _first(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Keep the prediction of a `(prediction, aux)` model output."""
    return lambda *args: fn(*args)[0]


CASES = {
    "regression-mha": (
        jtr.TransformerModel,
        ttr.TransformerModel,
        "mha",
        {"num_layers": 2},
        [SOURCE],
    ),
    "autoregressive-gqa": (
        jtr.AutoregressiveTransformerModel,
        ttr.AutoregressiveTransformerModel,
        "gqa",
        {},
        [SOURCE],
    ),
    "encdec-mqa": (
        jtr.EncoderDecoder,
        ttr.EncoderDecoder,
        "mqa",
        {"num_decoder_layers": 2},
        [SOURCE, TARGET],
    ),
    "encdec-gqa-padded": (
        jtr.EncoderDecoder,
        ttr.EncoderDecoder,
        "gqa",
        {},
        [SOURCE, TARGET, SOURCE_MASK],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_transformer(case: str, device: str) -> None:
    jax_cls, torch_cls, attention_type, changes, inputs = CASES[case]
    cfg = _config(attention_type, **changes)
    model, torch_model = jax_cls(cfg), torch_cls(cfg)
    # torch's initial weights, converted: cheaper than an eager Flax init and checks torch -> jax.
    params = jaxml_params_from(torch_model, jax.eval_shape(model.init, jax.random.key(0), *inputs))
    check_parity(
        jax.jit(_first(lambda p, *xs: model.apply({"params": p}, *xs))),
        params,
        torch_model,
        _first(lambda m, *xs: m(*xs)),
        inputs,
        device=device,
    )


MOE = FFNConfig(
    8, 12, use_moe=True, num_experts=4, topk=2, capacity_factor=1.0, alpha=0.01, z_loss_coef=1e-3
)
MOE_CASES = {
    "regression-mqa": (jtr.TransformerModel, ttr.TransformerModel, "mqa", [SOURCE]),
    "autoregressive-mha": (
        jtr.AutoregressiveTransformerModel,
        ttr.AutoregressiveTransformerModel,
        "mha",
        [SOURCE],
    ),
    "encdec-gqa-padded": (
        jtr.EncoderDecoder,
        ttr.EncoderDecoder,
        "gqa",
        [SOURCE, TARGET, SOURCE_MASK],
    ),
}


@pytest.mark.parametrize("case", list(MOE_CASES))
def test_transformer_moe(case: str, device: str) -> None:
    jax_cls, torch_cls, attention_type, inputs = MOE_CASES[case]
    cfg = _config(attention_type, ffn_config=MOE)
    model, torch_model = jax_cls(cfg), torch_cls(cfg)
    params = jaxml_params_from(torch_model, jax.eval_shape(model.init, jax.random.key(0), *inputs))
    apply = jax.jit(lambda p, *xs: model.apply({"params": p}, *xs))
    check_parity(
        lambda p, *xs: (lambda out: out[0] + out[1]["aux_loss"])(apply(p, *xs)),
        params,
        torch_model,
        lambda m, *xs: (lambda out: out[0] + out[1]["aux_loss"])(m(*xs)),
        inputs,
        device=device,
    )
    j_aux = apply(params, *inputs)[1]
    t_aux = torch_model(*(to_torch(x, device, "float32") for x in inputs))[1]
    assert sorted(j_aux) == sorted(t_aux) == ["aux_loss", "dropped_fraction", "tokens_per_expert"]
    for key in j_aux:
        assert_close(key, j_aux[key], t_aux[key], tolerance("float32", device))


def test_generation(device: str) -> None:
    """Fed-back predictions agree too (errors would compound over the steps if they did not).

    The autoregressive model uses dropless MoE FFNs, the encoder-decoder dense ones.
    """
    tol = tolerance("float32", device)
    cfg = _config("mqa", output_dim=3)
    moe_cfg = cfg.replace(ffn_config=FFNConfig(8, 12, use_moe=True, num_experts=3, topk=1))
    ar_jax, ar_torch = (
        jtr.AutoregressiveTransformerModel(moe_cfg),
        ttr.AutoregressiveTransformerModel(moe_cfg),
    )
    params = jaxml_params_from(ar_torch, jax.eval_shape(ar_jax.init, jax.random.key(0), SOURCE))
    assert_close(
        "predict_autoregressively",
        jgen.predict_autoregressively(ar_jax, params, SOURCE[:, :3], 4),
        tgen.predict_autoregressively(
            ar_torch.to(device), to_torch(SOURCE[:, :3], device, "float32"), 4
        ),
        tol,
    )
    ed_jax, ed_torch = jtr.EncoderDecoder(cfg), ttr.EncoderDecoder(cfg)
    params = jaxml_params_from(
        ed_torch, jax.eval_shape(ed_jax.init, jax.random.key(0), SOURCE, TARGET)
    )
    assert_close(
        "generate",
        jgen.generate(ed_jax, params, SOURCE, 4, None, SOURCE_MASK),
        tgen.generate(
            ed_torch.to(device),
            to_torch(SOURCE, device, "float32"),
            4,
            source_mask=to_torch(SOURCE_MASK, device, "float32"),
        ),
        tol,
    )
