"""Property: a config given any value of any type in any field is either a valid, hashable config
or a ValueError naming that field — never a TypeError, an unhashable config or a silent coercion."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxml.configs import (
    AttentionConfig,
    CNNConfig,
    DecodeConfig,
    FFNConfig,
    LMConfig,
    LMTrainConfig,
    OptimizerConfig,
    RegressorConfig,
    SamplingConfig,
    SpeculativeConfig,
    TrainConfig,
    TransformerConfig,
)

VALID: dict[type, dict[str, Any]] = {
    AttentionConfig: dict(embed_dim=32, num_heads=4, attention_type="gqa", use_rope=True),
    FFNConfig: dict(embed_dim=8, ffn_latent_dim=16, use_moe=True, capacity_factor=1.5),
    RegressorConfig: dict(input_dim=3, latent_dims=(8, 4)),
    TransformerConfig: dict(input_dim=2, embed_dim=16, ffn_latent_dim=32, num_heads=4),
    CNNConfig: dict(in_channels=1, image_size=(8, 8)),
    OptimizerConfig: dict(name="adamw", lr=1e-3, weight_decay=0.1, clip_norm=1.0),
    TrainConfig: dict(epochs=2, batch_size=4, logdir="runs/x"),
    LMConfig: dict(vocab_size=32, embed_dim=16, num_layers=1, num_heads=4, use_moe=True),
    LMTrainConfig: dict(steps=10, batch_size=4, seq_len=8, optimizer=OptimizerConfig("adamw")),
    SpeculativeConfig: dict(draft_steps=3),
    DecodeConfig: dict(expanding_context=False, window=8, max_seq_len=32),
    SamplingConfig: dict(temperature=0.7, top_k=5, top_p=0.9),
}

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-3, 70), max_size=3),
    st.tuples(st.integers(-3, 70), st.text(max_size=2)),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.sampled_from([object(), b"x", 1j, "mha", "gqa", "swiglu", "adamw", "cosine", "mesh"]),
)


def _names_field(message: str, field: str) -> bool:
    return re.match(r"^\w+Config\.\w+=", message) is not None and field in message


@pytest.mark.parametrize("cls", list(VALID), ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data())
def test_any_value_in_any_field(cls: type, data: st.DataObject) -> None:
    field = data.draw(st.sampled_from([f.name for f in dataclasses.fields(cls)]))
    value = data.draw(ANY_VALUE)
    try:
        config = cls(**{**VALID[cls], field: value})
    except ValueError as error:
        assert _names_field(str(error), field), str(error)
        return
    hash(config)
    stored = getattr(config, field)
    if isinstance(value, bool) or value is None:
        assert stored is value or field in ("num_groups", "image_size", "ffn_latent_dim")
    elif isinstance(value, float):
        assert math.isfinite(stored) and stored == value
    assert config == cls(**{**VALID[cls], field: value})


def test_valid_baselines_construct() -> None:
    for cls, kwargs in VALID.items():
        hash(cls(**kwargs))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: AttentionConfig(8, 2, use_rope="no"), r"use_rope='no' .*True or False"),
        (lambda: AttentionConfig(8, 2, use_bias={}), r"use_bias=\{\} .*True or False"),
        (lambda: AttentionConfig(2**40, 2), r"embed_dim=1099511627776 .*int32"),
        (lambda: RegressorConfig(1, latent_dims=None), r"latent_dims=None .*tuple of integers"),
        (lambda: RegressorConfig(1, latent_dims="64,,32"), r"latent_dims='64,,32' .*no empty"),
        (lambda: OptimizerConfig(lr="1e-3"), r"lr='1e-3' .*finite number"),
        (lambda: OptimizerConfig(lr=float("inf")), r"lr=inf .*finite number"),
        (lambda: CNNConfig(1, 8, channels=4), r"channels=4 .*tuple of integers"),
        (lambda: FFNConfig(4, 8, alpha=1e30), r"alpha=1e\+30 .*\[0.0, 1000000.0\]"),
        (lambda: TrainConfig(checkpoint_dir=3), r"checkpoint_dir=3 .*string"),
        (lambda: TrainConfig(logdir={"a": 1}), r"logdir=\{'a': 1\} .*string"),
    ],
)
def test_fuzz_findings_are_named_value_errors(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()
