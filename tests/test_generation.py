"""The classic models decode with the KV cache exactly as the full-recompute references do."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxml.configs import DecodeConfig, TransformerConfig
from jaxml.models import generation
from jaxml.models.transformer import AutoregressiveTransformerModel, EncoderDecoder, init_cache

STEPS = 5
RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 6, 2)).astype(np.float32)
SOURCE_MASK = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0]], bool)


def _config(attention_type: str) -> TransformerConfig:
    groups = 2 if attention_type == "gqa" else None
    return TransformerConfig(
        input_dim=2, embed_dim=16, ffn_latent_dim=16, num_heads=4, output_dim=2, num_layers=2,
        attention_type=attention_type, num_groups=groups, max_seq_len=12,
    )  # fmt: skip


def _params(model: Any, *inputs: Any) -> Any:
    return model.init(jax.random.key(0), *inputs)["params"]


@pytest.mark.parametrize("attention_type", ["mha", "mqa", "gqa"])
def test_cached_equals_recompute(attention_type: str) -> None:
    cfg = _config(attention_type)
    ar = AutoregressiveTransformerModel(cfg)
    params = _params(ar, X)
    np.testing.assert_allclose(
        generation.predict_autoregressively(ar, params, X[:, :4], STEPS),
        generation.predict_autoregressively_recompute(ar, params, X[:, :4], STEPS),
        atol=2e-5,
        rtol=2e-5,
    )
    ed = EncoderDecoder(cfg)
    params = _params(ed, X, X)
    np.testing.assert_allclose(
        generation.generate(ed, params, X, STEPS, None, SOURCE_MASK),
        generation.generate_recompute(ed, params, X, STEPS, None, SOURCE_MASK),
        atol=2e-5,
        rtol=2e-5,
    )


def test_cached_equals_recompute_in_float64() -> None:
    with jax.enable_x64(True):
        cfg = _config("gqa")
        x = X.astype(np.float64)
        for model, inputs, run, reference in [
            (
                AutoregressiveTransformerModel(cfg),
                (x,),
                lambda m, p: generation.predict_autoregressively(m, p, x[:, :4], STEPS),
                lambda m, p: generation.predict_autoregressively_recompute(m, p, x[:, :4], STEPS),
            ),
            (
                EncoderDecoder(cfg),
                (x, x),
                lambda m, p: generation.generate(m, p, x, STEPS, None, SOURCE_MASK),
                lambda m, p: generation.generate_recompute(m, p, x, STEPS, None, SOURCE_MASK),
            ),
        ]:
            params = jax.tree_util.tree_map(
                lambda a: a.astype(jnp.float64), _params(model, *inputs)
            )
            cached = run(model, params)
            assert cached.dtype == jnp.float64
            np.testing.assert_allclose(cached, reference(model, params), atol=1e-12, rtol=1e-12)


def _banded_recompute(model: Any, params: Any, prefix: np.ndarray, window: int) -> np.ndarray:
    """Full passes (fresh cache, whole sequence) with keys restricted to the last `window`."""
    seq = prefix
    for _ in range(STEPS):
        batch, n, _ = seq.shape
        positions = jnp.broadcast_to(jnp.arange(n), (batch, n))
        q, k = positions[:, :, None], positions[:, None, :]
        cache = init_cache(model.config, model.config.num_layers, batch, n)
        out, _ = model.apply(
            {"params": params},
            seq,
            positions,
            (k <= q) & (k > q - window),
            cache,
            method=AutoregressiveTransformerModel.decode_step,
        )
        seq = np.concatenate([seq, np.asarray(out[:, -1:])], axis=1)
    return seq[:, prefix.shape[1] :]


def test_sliding_window_equals_full_attention_on_the_last_window() -> None:
    model = AutoregressiveTransformerModel(_config("mqa"))
    params = _params(model, X)
    for max_seq_len in (None, 5):  # ring of max(window, prompt) = 4 slots, or 5 slots
        config = DecodeConfig(expanding_context=False, window=3, max_seq_len=max_seq_len)
        np.testing.assert_allclose(
            generation.predict_autoregressively(model, params, X[:, :4], STEPS, None, config),
            _banded_recompute(model, params, X[:, :4], 3),
            atol=2e-5,
            rtol=2e-5,
        )


def test_ragged_prefixes_equal_each_row_alone() -> None:
    model = AutoregressiveTransformerModel(_config("gqa"))
    params = _params(model, X)
    lengths = np.array([4, 2, 3])
    batched = generation.predict_autoregressively(model, params, X[:, :4], STEPS, lengths)
    for row, n in enumerate(lengths):
        alone = generation.predict_autoregressively_recompute(
            model, params, X[row : row + 1, :n], STEPS
        )
        np.testing.assert_allclose(batched[row], alone[0], atol=2e-5, rtol=2e-5)


def test_generation_refuses_bad_requests() -> None:
    model = AutoregressiveTransformerModel(_config("mha"))
    params = _params(model, X)
    with pytest.raises(ValueError, match="reaches position 12, but the sinusoidal table"):
        generation.predict_autoregressively(model, params, X, 8)
    with pytest.raises(ValueError, match="empty prompt"):
        generation.predict_autoregressively(model, params, X[:, :0], 2)
    with pytest.raises(ValueError, match="need cache_len >= 8"):
        generation.predict_autoregressively(
            model, params, X[:, :4], 5, decode_config=DecodeConfig(max_seq_len=6)
        )
    with pytest.raises(ValueError, match="ragged prefixes"):
        generation.predict_autoregressively(
            model, params, X, 2, np.array([6, 5, 4]), DecodeConfig(use_kv_cache=False)
        )
