"""The compiled speculative loop on table-driven models: exact distribution, greedy, per-row rules.

`table_step` is a model behind the same step interface as the LM (params, cache, tokens,
positions, mask) -> (logits, cache): its "params" are next-token log-probabilities indexed by the
two previous tokens, and its cache is a real `KVCache` holding token ids, so the loop's per-row
appends and `truncate` rollbacks are exercised exactly as with an LM.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import Array
from scipy import stats as scipy_stats

import jaxml.decoding.speculative as spec
from jaxml.configs import SamplingConfig, SpeculativeConfig
from jaxml.layers import kv_cache

VOCAB = 4
BOS = VOCAB


def table_step(
    log_table: Array, cache: kv_cache.KVCache, tokens: Array, positions: Array, mask: Array
) -> tuple[Array, kv_cache.KVCache]:
    """Next-token logits `log_table[token at p-1 (or BOS), token at p]` for each query at p."""
    del mask  # the table reads the cache by position
    ids = tokens.astype(jnp.float32)[..., None, None]
    cache = kv_cache.append(cache, ids, ids)
    wanted = (positions - 1)[:, :, None]  # [batch, t, 1]
    held = (cache.positions[:, None, :] == wanted) & (wanted >= 0)  # [batch, t, cache_len]
    prev = jnp.sum(jnp.where(held, cache.k[:, None, :, 0, 0], 0.0), axis=-1).astype(jnp.int32)
    prev = jnp.where(jnp.any(held, axis=-1), prev, BOS)
    return log_table[prev, tokens], cache


def random_table(seed: int, sharpness: float = 1.0) -> np.ndarray:
    """Next-token probabilities [prev2, prev1, token] (prev = BOS before the start)."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(VOCAB, sharpness), size=(VOCAB + 1, VOCAB + 1))


SAMPLE, GREEDY = SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.0)


def new_cache(batch: int, length: int = 32, window: int | None = None) -> kv_cache.KVCache:
    return kv_cache.init(batch, length, 1, 1, window=window)


def generate(
    target: np.ndarray,
    draft: np.ndarray,
    prompt: np.ndarray,
    prompt_lengths: np.ndarray,
    seeds: np.ndarray,
    *,
    draft_steps: int,
    max_new_tokens: int,
    sampling: SamplingConfig = SAMPLE,
    eos_id: int | None = None,
    cache_shape: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, spec.SpeculativeStats]:
    batch = len(prompt)
    cache_shape = cache_shape or {}
    tokens, num, stats = spec.speculative_generate(
        table_step,
        table_step,
        jnp.log(jnp.asarray(target, jnp.float32)),
        jnp.log(jnp.asarray(draft, jnp.float32)),
        new_cache(batch, **cache_shape),
        new_cache(batch, **cache_shape),
        jnp.asarray(prompt, jnp.int32),
        jnp.asarray(prompt_lengths, jnp.int32),
        jax.vmap(jax.random.key)(jnp.asarray(seeds)),
        config=SpeculativeConfig(draft_steps=draft_steps, sampling=sampling),
        max_new_tokens=max_new_tokens,
        eos_id=eos_id,
    )
    return np.asarray(tokens), np.asarray(num), stats


def filtered(table: np.ndarray, sampling: SamplingConfig) -> np.ndarray:
    """Temperature then top-k on a probability table (numpy, for the expected distribution)."""
    with np.errstate(divide="ignore"):
        logits = np.log(table) / sampling.temperature
    if sampling.top_k is not None:
        kth = np.sort(logits, axis=-1)[..., -sampling.top_k, None]
        logits = np.where(logits >= kth, logits, -np.inf)
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True)


def target_sequence_probs(target: np.ndarray, prompt: tuple[int, ...], length: int) -> np.ndarray:
    """Exact probability of each continuation (lexicographic order) of `length` tokens."""
    probs = []
    for seq in itertools.product(range(VOCAB), repeat=length):
        full = (BOS, *prompt, *seq)
        start = len(prompt) + 1
        probs.append(
            np.prod([target[full[t - 2], full[t - 1], full[t]] for t in range(start, len(full))])
        )
    return np.array(probs)


def sequence_index(tokens: np.ndarray) -> np.ndarray:
    return tokens @ (VOCAB ** np.arange(tokens.shape[1])[::-1])


def chi_square_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square goodness of fit; 0 when a cell the target never produces was sampled."""
    keep = probs > 1e-12
    if counts[~keep].sum() > 0:
        return 0.0
    expected = probs[keep] / probs[keep].sum() * counts.sum()
    return float(scipy_stats.chisquare(counts[keep], expected).pvalue)


SAMPLES = 8192


def sampled_pvalue(draft_steps: int, length: int, sampling: SamplingConfig = SAMPLE) -> float:
    target, draft = random_table(0), random_table(1)
    prompt = np.full((SAMPLES, 1), 2)
    tokens, num, _ = generate(
        target,
        draft,
        prompt,
        np.ones(SAMPLES),
        np.arange(SAMPLES),
        draft_steps=draft_steps,
        max_new_tokens=length,
        sampling=sampling,
    )
    assert (num == length).all()
    counts = np.bincount(sequence_index(tokens), minlength=VOCAB**length)
    return chi_square_pvalue(
        counts, target_sequence_probs(filtered(target, sampling), (2,), length)
    )


def test_sampled_sequences_follow_the_target_distribution() -> None:
    # 8192 seeded rows in one compiled call; 64 cells; a correct sampler fails at p < 1e-4 once
    # in 10^4 runs, and the seeds are fixed, so the test is deterministic
    assert sampled_pvalue(draft_steps=2, length=3) > 1e-4


def test_temperature_and_top_k_apply_to_both_models_before_the_ratio_test() -> None:
    # the output follows the target's filtered distribution (top-3 of 4 tokens at T = 0.7)
    assert sampled_pvalue(draft_steps=3, length=2, sampling=SamplingConfig(0.7, top_k=3)) > 1e-4


def whole_batch_count(accepted: Array) -> Array:
    """The original framework's rule: a draft is kept only when every row accepts it."""
    run = jnp.sum(jnp.cumprod(accepted.astype(jnp.int32), axis=-1), axis=-1)
    return jnp.broadcast_to(jnp.min(run), run.shape)


WRONG_SAMPLERS = {
    "always_accept": ("accept_draft", lambda p, q, u: jnp.ones(p.shape, bool)),
    "whole_batch_rule": ("count_accepted", whole_batch_count),
}


@pytest.mark.parametrize("variant", list(WRONG_SAMPLERS))
def test_the_statistical_test_rejects_a_wrong_sampler(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spec, *WRONG_SAMPLERS[variant])
    jax.clear_caches()
    try:
        assert sampled_pvalue(draft_steps=2, length=3) < 1e-8
    finally:
        jax.clear_caches()


def greedy_reference(target: np.ndarray, prompt: list[int], steps: int) -> list[int]:
    seq = [BOS, *prompt]
    for _ in range(steps):
        seq.append(int(np.argmax(target[seq[-2], seq[-1]])))
    return seq[len(prompt) + 1 :]


# The tests below share one shape (8 ragged rows, k = 3, 9 new tokens), so they share compilations.
RAGGED = np.array(
    [[1, 0, 0], [2, 3, 1], [3, 1, 0], [0, 2, 2], [1, 1, 1], [2, 0, 0], [0, 3, 0], [3, 3, 2]]
)
RAGGED_LENGTHS = np.array([1, 3, 2, 3, 3, 1, 2, 3])
SEEDS = np.arange(100, 108)
K, MAX_NEW = 3, 9


def run(
    target: np.ndarray, draft: np.ndarray, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray, spec.SpeculativeStats]:
    kwargs = {"draft_steps": K, "max_new_tokens": MAX_NEW, **kwargs}
    return generate(target, draft, RAGGED, RAGGED_LENGTHS, SEEDS, **kwargs)


def test_greedy_equals_the_target_greedy_output_batched_and_ragged() -> None:
    target, draft = random_table(2, sharpness=0.5), random_table(3)
    tokens, num, _ = run(target, draft, sampling=GREEDY)
    assert (num == MAX_NEW).all()
    for row, length in enumerate(RAGGED_LENGTHS):
        assert tokens[row].tolist() == greedy_reference(target, list(RAGGED[row, :length]), MAX_NEW)


def test_greedy_with_sliding_window_caches_rolls_back_within_the_ring() -> None:
    target, draft = random_table(2, sharpness=0.5), random_table(3)
    ring = {"length": 3 + K + 1, "window": 3}  # the table reads one token back: window 3 is plenty
    tokens, _, _ = run(target, draft, sampling=GREEDY, cache_shape=ring)
    for row, length in enumerate(RAGGED_LENGTHS):
        assert tokens[row].tolist() == greedy_reference(target, list(RAGGED[row, :length]), MAX_NEW)
    with pytest.raises(ValueError, match="needs cache_len >= window \\+ draft_steps \\+ 1 = 7"):
        run(target, draft, cache_shape={"length": 6, "window": 3})


def test_batched_equals_each_row_alone_with_the_same_keys() -> None:
    target, draft = random_table(4), random_table(5)
    tokens, num, stats = run(target, draft, eos_id=0)
    for row in range(len(RAGGED)):
        alone_tokens, alone_num, alone_stats = generate(
            target,
            draft,
            RAGGED[row : row + 1],
            RAGGED_LENGTHS[row : row + 1],
            SEEDS[row : row + 1],
            draft_steps=K,
            max_new_tokens=MAX_NEW,
            eos_id=0,
        )
        assert alone_num[0] == num[row]
        np.testing.assert_array_equal(alone_tokens[0], tokens[row])
        assert alone_stats.accepted[0] == stats.accepted[row]


def test_eos_inside_a_drafted_run_cuts_the_row_there() -> None:
    target = random_table(6)  # as its own draft (P == Q) every draft is accepted
    free, free_num, _ = run(target, target)
    cut, num, _ = run(target, target, eos_id=0)
    assert (free_num == MAX_NEW).all()
    for row in range(len(RAGGED)):
        hits = np.flatnonzero(free[row] == 0)
        end = hits[0] + 1 if len(hits) else MAX_NEW
        assert num[row] == end
        np.testing.assert_array_equal(cut[row, :end], free[row, :end])
        assert (cut[row, end:] == 0).all()
    assert len(set(num.tolist())) > 2  # rows finished in different rounds


def test_length_budget_reached_mid_round_keeps_the_prefix() -> None:
    target = random_table(7)  # P == Q: each round emits k + 1 = 4 tokens, so 5 ends mid-round
    long, _, _ = run(target, target)
    short, num, stats = run(target, target, max_new_tokens=5)
    assert (num == 5).all()
    np.testing.assert_array_equal(short, long[:, :5])
    assert int(stats.target_calls) == 1 + 2


def test_statistics_count_rounds_calls_and_acceptance() -> None:
    same = random_table(8)
    _, _, stats = run(same, same)
    np.testing.assert_array_equal(stats.acceptance_rate, np.ones(8))  # P == Q accepts all
    np.testing.assert_array_equal(stats.rounds, np.full(8, 3))  # 4 + 4 + 1 tokens
    np.testing.assert_allclose(stats.tokens_per_round, np.full(8, MAX_NEW / 3))
    assert int(stats.target_calls) == 1 + 3 and int(stats.draft_calls) == 1 + (K + 1) * 3
    _, num, stats = run(random_table(9, 0.2), random_table(10, 0.2))
    rate = np.asarray(stats.acceptance_rate)
    assert (rate >= 0).all() and (rate <= 1).all() and 0 < rate.mean() < 1
    np.testing.assert_array_equal(stats.drafted, K * np.asarray(stats.rounds))
    assert (np.asarray(stats.accepted) + np.asarray(stats.rounds) >= num).all()


def test_draft_with_another_vocabulary_is_a_clear_error() -> None:
    target = random_table(0)
    draft = np.ones((VOCAB + 1, VOCAB + 1, VOCAB + 2)) / (VOCAB + 2)
    with pytest.raises(ValueError, match="draft vocab_size=6 differs from the target's 4"):
        run(target, draft)


def test_a_cache_too_small_for_the_run_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs prompt width 3 \\+ max_new_tokens 30"):
        run(random_table(0), random_table(1), max_new_tokens=30)


def test_prompt_lengths_outside_the_prompt_are_a_clear_error() -> None:
    lengths = np.array([0, 3, 2, 3, 3, 1, 2, 3])
    with pytest.raises(ValueError, match="prompt_lengths must be in 1..3"):
        generate(
            random_table(0),
            random_table(1),
            RAGGED,
            lengths,
            SEEDS,
            draft_steps=K,
            max_new_tokens=4,
        )
