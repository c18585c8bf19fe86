"""`experiments.bench speculative` runs end to end on a tiny pair (speed itself is never asserted)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments.bench_speculative import Model, bench_batch
from jaxml.configs.lm import LMConfig
from jaxml.models.lm import LM


def tiny(seed: int, layers: int) -> Model:
    config = LMConfig(vocab_size=64, embed_dim=32, num_layers=layers, num_heads=2, max_seq_len=64)
    params = LM(config).init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"]
    return Model(config, params)


def test_rows_hold_speed_acceptance_and_the_round_model() -> None:
    prompt = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)
    rows = bench_batch(tiny(0, 2), tiny(1, 1), "tiny", prompt, max_new=6, ks=(2,), repeats=1)
    assert [row["case"] for row in rows] == ["tiny b2 target only", "tiny b2 k=2"]
    spec = rows[1]
    assert spec["tok_s"] > 0 and spec["speedup"] > 0 and spec["predicted"] > 0
    assert 0 <= spec["acceptance"] <= 1 and 1 <= spec["tokens/round"] <= 3
