"""Config validation: every bad value raises ValueError naming the field and what is allowed."""

from __future__ import annotations

import pytest

from jaxml.configs import AttentionConfig, FFNConfig


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(embed_dim=0, num_heads=1), r"embed_dim=0 .*positive"),
        (dict(embed_dim=32, num_heads=-2), r"num_heads=-2 .*positive"),
        (dict(embed_dim=30, num_heads=4), r"embed_dim=30 .*divisible by num_heads=4"),
        (
            dict(embed_dim=32, num_heads=4, attention_type="mla"),
            r"attention_type='mla' .*mha, mqa, gqa",
        ),
        (
            dict(embed_dim=32, num_heads=4, attention_type="gqa", num_groups=3),
            r"num_groups=3 .*divide num_heads=4",
        ),
        (
            dict(embed_dim=32, num_heads=4, attention_type="gqa", num_groups=0),
            r"num_groups=0 .*positive",
        ),
        (
            dict(embed_dim=32, num_heads=4, attention_type="mha", num_groups=2),
            r"num_groups=2 .*implies num_groups=4",
        ),
        (
            dict(embed_dim=32, num_heads=4, attention_type="mqa", num_groups=2),
            r"num_groups=2 .*implies num_groups=1",
        ),
        (dict(embed_dim=12, num_heads=4, use_rope=True), r"use_rope=True .*even head_dim"),
        (dict(embed_dim=32, num_heads=4, rope_theta=0.0), r"rope_theta=0.0"),
        (dict(embed_dim=32.0, num_heads=4), r"embed_dim=32.0 .*integer"),
    ],
)
def test_attention_config_rejects(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AttentionConfig(**kwargs)


@pytest.mark.parametrize(
    "attention_type,num_groups,expected",
    [
        ("mha", None, 8),
        ("mha", 8, 8),
        ("mqa", None, 1),
        ("mqa", 1, 1),
        ("gqa", None, 4),
        ("gqa", 2, 2),
        ("gqa", 8, 8),
    ],
)
def test_num_groups_resolution(attention_type: str, num_groups: int | None, expected: int) -> None:
    cfg = AttentionConfig(64, 8, attention_type=attention_type, num_groups=num_groups)
    assert cfg.num_groups == cfg.num_kv_heads == expected
    assert cfg.head_dim == 8


def test_gqa_default_with_one_head_is_one_group() -> None:
    assert AttentionConfig(16, 1, "gqa").num_groups == 1


def test_configs_are_frozen_and_hashable() -> None:
    cfg = AttentionConfig(32, 4, "gqa")
    assert hash(cfg) == hash(AttentionConfig(32, 4, "gqa", num_groups=2))
    with pytest.raises(AttributeError):
        cfg.num_heads = 8  # type: ignore[misc]
    assert cfg.replace(num_heads=8, num_groups=None).num_groups == 4
    assert {FFNConfig(8, 16): 1}[FFNConfig(8, 16)] == 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(embed_dim=8, ffn_latent_dim=0), r"ffn_latent_dim=0"),
        (
            dict(embed_dim=8, ffn_latent_dim=16, activation="swish"),
            r"activation='swish' .*relu, gelu",
        ),
        (dict(embed_dim=8, ffn_latent_dim=16, kind="glu"), r"kind='glu' .*mlp, swiglu"),
    ],
)
def test_ffn_config_rejects(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FFNConfig(**kwargs)
