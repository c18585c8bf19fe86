"""Sampling from explicit noise and the decode loop, on a tiny token model built from one layer."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxml.configs import AttentionConfig, DecodeConfig, SamplingConfig
from jaxml.decoding import loop, sampling
from jaxml.layers import kv_cache
from jaxml.layers.attention import Attention

VOCAB, BATCH, PROMPT = 11, 3, 5
ATTN = AttentionConfig(16, 4, "gqa", num_groups=2, apply_causal_mask=True, use_rope=True)


class TinyLM(nn.Module):
    """Embedding, one rotary attention layer, tied output projection: a token model for the loop."""

    config: AttentionConfig

    def setup(self) -> None:
        self.embed = nn.Embed(VOCAB, self.config.embed_dim)
        self.attn = Attention(self.config)

    def __call__(
        self, ids: jax.Array, positions: Any = None, mask: Any = None, cache: Any = None
    ) -> tuple[jax.Array, Any]:
        h = self.embed(ids)
        result = self.attn(h, positions=positions, cache=cache, mask=mask)
        return self.embed.attend(h + result.out), result.cache


MODEL = TinyLM(ATTN)
PROMPTS = np.random.default_rng(0).integers(0, VOCAB, (BATCH, PROMPT)).astype(np.int32)
PARAMS = MODEL.init(jax.random.key(0), PROMPTS)["params"]
TRACES = {"count": 0}


def _step(params: Any, cache: Any, ids: jax.Array, positions: jax.Array, mask: jax.Array) -> Any:
    TRACES["count"] += 1
    return MODEL.apply({"params": params}, ids, positions, mask, cache)


def _cache(cache_len: int, window: int | None = None, batch: int = BATCH) -> kv_cache.KVCache:
    return kv_cache.init(batch, cache_len, ATTN.num_kv_heads, ATTN.head_dim, window=window)


def _generate(prompts, lengths, key, *, steps, sampling_config, eos_id=None, stop_early=False):
    select = sampling.sampler(sampling_config)
    result = loop.decode(
        _step,
        PARAMS,
        _cache(PROMPT + steps - 1, batch=prompts.shape[0]),
        prompts,
        lengths,
        steps=steps,
        select=select,
        key=key,
        eos_id=eos_id,
        stop_early=stop_early,
        pad_value=-1,
    )
    return result.outputs, result.num_generated, result.cache.lengths


GENERATE = jax.jit(_generate, static_argnames=("steps", "sampling_config", "eos_id", "stop_early"))
GREEDY = SamplingConfig(temperature=0.0)
FULL = np.full((BATCH,), PROMPT, np.int32)


FORWARD = jax.jit(lambda ids: MODEL.apply({"params": PARAMS}, ids)[0])


def _greedy_recompute(prompt: np.ndarray, steps: int) -> np.ndarray:
    """The reference: a full causal forward pass for every token, over a fixed-size buffer
    (the unfilled tail cannot affect earlier positions), so it compiles once per batch size."""
    n = prompt.shape[1]
    ids = np.zeros((prompt.shape[0], PROMPT + steps), np.int32)
    ids[:, :n] = prompt
    for i in range(steps):
        ids[:, n + i] = np.argmax(FORWARD(ids)[:, n + i - 1], axis=-1)
    return ids[:, n : n + steps]


def test_probabilities_apply_top_k_top_p_min_p() -> None:
    probs = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    logits = jnp.log(jnp.asarray(probs, jnp.float32))
    cases = {
        SamplingConfig(top_k=2): [0.5, 0.2, 0, 0, 0],
        SamplingConfig(top_p=0.8): [0.5, 0.2, 0.15, 0, 0],  # mass before 0.1 is 0.85 >= 0.8
        SamplingConfig(min_p=0.25): [0.5, 0.2, 0.15, 0, 0],  # keeps p >= 0.25 * 0.5
        SamplingConfig(top_k=3, min_p=0.35): [0.5, 0.2, 0, 0, 0],
        SamplingConfig(temperature=0.5, top_k=2): [0.5**2, 0.2**2, 0, 0, 0],
    }
    for config, kept in cases.items():
        expected = np.asarray(kept) / np.sum(kept)
        np.testing.assert_allclose(sampling.probabilities(logits, config), expected, atol=1e-6)


def test_sample_draws_tokens_with_their_probabilities() -> None:
    logits = jnp.asarray([2.0, 1.0, 0.5, -1.0, 0.0])
    config = SamplingConfig(temperature=1.0, top_p=0.9)
    noise = sampling.exponential_noise(jax.random.key(1), (20000, 5))
    tokens = sampling.sample(jnp.broadcast_to(logits, (20000, 5)), noise, config)
    frequencies = np.bincount(np.asarray(tokens), minlength=5) / 20000
    np.testing.assert_allclose(frequencies, sampling.probabilities(logits, config), atol=0.012)
    greedy = sampling.sample(logits, noise[0], SamplingConfig(temperature=0.0))
    assert int(greedy) == 0


def test_sampling_and_decode_configs_validate() -> None:
    with pytest.raises(ValueError, match=r"SamplingConfig.temperature=-1.0 is invalid"):
        SamplingConfig(temperature=-1.0)
    with pytest.raises(ValueError, match=r"SamplingConfig.top_p=0.0 is invalid"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match=r"DecodeConfig.window=None is invalid: expanding_context"):
        DecodeConfig(expanding_context=False)
    with pytest.raises(
        ValueError, match=r"DecodeConfig.window=8 is invalid: .* larger than the cache"
    ):
        DecodeConfig(expanding_context=False, window=8, max_seq_len=4)
    with pytest.raises(ValueError, match="probabilities needs SamplingConfig.temperature > 0"):
        sampling.probabilities(jnp.zeros(3), SamplingConfig(temperature=0.0))


def test_cached_greedy_loop_equals_recompute_and_compiles_once() -> None:
    TRACES["count"] = 0
    out, count, lengths = GENERATE(
        PROMPTS, FULL, jax.random.key(0), steps=6, sampling_config=GREEDY
    )
    np.testing.assert_array_equal(out, _greedy_recompute(PROMPTS, 6))
    np.testing.assert_array_equal(count, [6, 6, 6])
    np.testing.assert_array_equal(lengths, [PROMPT + 5] * BATCH)
    traces = TRACES["count"]
    assert traces == 2  # the prefill and the scanned decode step, traced once each
    GENERATE((PROMPTS + 1) % VOCAB, FULL, jax.random.key(1), steps=6, sampling_config=GREEDY)
    assert TRACES["count"] == traces  # same shapes, new values: no retrace


def test_ragged_rows_with_eos_equal_each_row_alone() -> None:
    lengths = np.array([5, 2, 3], np.int32)
    free, _, _ = GENERATE(PROMPTS, lengths, jax.random.key(0), steps=6, sampling_config=GREEDY)
    eos = int(free[0, 2])  # row 0 emits it at step 2 (or earlier)
    out, count, cache_lengths = GENERATE(
        PROMPTS, lengths, jax.random.key(0), steps=6, sampling_config=GREEDY, eos_id=eos
    )
    for row, n in enumerate(lengths):
        alone = _greedy_recompute(PROMPTS[row : row + 1, :n], 6)[0]
        stop = list(alone).index(eos) + 1 if eos in alone else 6
        assert int(count[row]) == stop
        np.testing.assert_array_equal(out[row, :stop], alone[:stop])
        assert np.all(np.asarray(out[row, stop:]) == -1)
    np.testing.assert_array_equal(cache_lengths, lengths + 5)  # scan: every step runs


def test_decoding_continues_a_cache_that_already_holds_context() -> None:
    full, _, _ = GENERATE(PROMPTS, FULL, jax.random.key(0), steps=4, sampling_config=GREEDY)
    cache = loop.run_step(_step, PARAMS, _cache(PROMPT + 3), PROMPTS[:, :2])[1]
    result = jax.jit(
        lambda cache: loop.decode(
            _step, PARAMS, cache, PROMPTS[:, 2:], FULL - 2, steps=4,
            select=sampling.sampler(GREEDY), key=jax.random.key(0),
        )
    )(cache)  # fmt: skip
    np.testing.assert_array_equal(result.outputs, full)
    np.testing.assert_array_equal(result.cache.lengths, [PROMPT + 3] * BATCH)
    with pytest.raises(ValueError, match="already holds 2 positions"):
        loop.decode(
            _step, PARAMS, cache, PROMPTS[:, 2:], FULL - 2, steps=5,
            select=sampling.sampler(GREEDY), key=jax.random.key(0),
        )  # fmt: skip


def test_while_loop_stops_when_every_row_is_done() -> None:
    free, _, _ = GENERATE(PROMPTS, FULL, jax.random.key(0), steps=6, sampling_config=GREEDY)
    eos_rows = [list(np.asarray(r)).index(int(free[0, 1])) for r in free if int(free[0, 1]) in r]
    out, count, cache_lengths = GENERATE(
        PROMPTS[:1], FULL[:1], jax.random.key(0), steps=6, sampling_config=GREEDY,
        eos_id=int(free[0, 1]), stop_early=True,
    )  # fmt: skip
    stop = eos_rows[0] + 1
    assert int(count[0]) == stop
    assert int(cache_lengths[0]) == PROMPT + stop - 1  # no decode step after the EOS
    np.testing.assert_array_equal(out[0, :stop], free[0, :stop])


def test_sampled_loop_is_reproducible_from_the_key() -> None:
    config = SamplingConfig(temperature=1.0, top_k=5)
    a, _, _ = GENERATE(PROMPTS, FULL, jax.random.key(3), steps=6, sampling_config=config)
    b, _, _ = GENERATE(PROMPTS, FULL, jax.random.key(3), steps=6, sampling_config=config)
    c, _, _ = GENERATE(PROMPTS, FULL, jax.random.key(4), steps=6, sampling_config=config)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("prompt_len", "cache", "lengths", "match"),
    [
        (0, _cache(8), [0, 0, 0], "empty prompt"),
        (5, _cache(4, window=2), [5, 5, 5], "longer than the cache"),
        (5, _cache(6), [5, 5, 5], "need cache_len >= 8"),
        (5, _cache(8), [5, 6, 5], r"prompt_lengths must be in \[1, 5\]"),
    ],
)
def test_loop_refuses_bad_requests(prompt_len: int, cache: Any, lengths: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        loop.decode(
            _step,
            PARAMS,
            cache,
            PROMPTS[:, :prompt_len],
            jnp.asarray(lengths),
            steps=4,
            select=sampling.sampler(GREEDY),
            key=jax.random.key(0),
        )
