"""Speculative decoding with real (tiny, random) Llama-style LMs.

Target: 2 layers, width 32; draft: 1 layer, width 16, other weights. Both output projections are
scaled up so the next-token distributions are peaked and differ (untrained LMs are near uniform,
where any sampler looks right). Vocabulary 8, so exact distributions are cheap to enumerate.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import Array

import jaxml.decoding.speculative as spec
from jaxml.configs import SamplingConfig, SpeculativeConfig
from jaxml.configs.lm import LMConfig
from jaxml.models.lm import LM, LMStep, init_cache
from tests.test_speculative_loop import WRONG_SAMPLERS, chi_square_pvalue

VOCAB = 8
SAMPLE, GREEDY = SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.0)


def tiny_lm(seed: int, layers: int, width: int, heads: int) -> tuple[LMConfig, Any]:
    config = LMConfig(
        vocab_size=VOCAB, embed_dim=width, num_layers=layers, num_heads=heads, max_seq_len=64
    )
    params = LM(config).init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"]
    scale = lambda path, w: w * 5.0 if "lm_head" in jax.tree_util.keystr(path) else w  # noqa: E731
    return config, jax.tree_util.tree_map_with_path(scale, params)


TARGET = tiny_lm(0, layers=2, width=32, heads=4)
DRAFT = tiny_lm(1, layers=1, width=16, heads=2)


def generate(
    prompt: np.ndarray,
    lengths: np.ndarray,
    seeds: np.ndarray,
    *,
    k: int,
    max_new: int,
    sampling: SamplingConfig = SAMPLE,
) -> tuple[np.ndarray, np.ndarray, spec.SpeculativeStats]:
    batch, room = len(prompt), prompt.shape[1] + max_new + k
    tokens, num, stats = spec.speculative_generate(
        LMStep(TARGET[0]),
        LMStep(DRAFT[0]),
        TARGET[1],
        DRAFT[1],
        init_cache(TARGET[0], batch, room),
        init_cache(DRAFT[0], batch, room),
        jnp.asarray(prompt, jnp.int32),
        jnp.asarray(lengths, jnp.int32),
        jax.vmap(jax.random.key)(jnp.asarray(seeds)),
        config=SpeculativeConfig(draft_steps=k, sampling=sampling),
        max_new_tokens=max_new,
    )
    return np.asarray(tokens), np.asarray(num), stats


@jax.jit
def target_logits(ids: Array) -> Array:
    """Full causal forward pass, no cache: `[batch, t] -> [batch, t, vocab]`."""
    return LM(TARGET[0]).apply({"params": TARGET[1]}, ids)[0]


PROMPT = (3, 1, 4)


def exact_marginals(prompt: tuple[int, ...], positions: int) -> list[np.ndarray]:
    """The target's exact distribution of each of the first `positions` generated tokens."""
    prefixes = np.array(list(itertools.product(range(VOCAB), repeat=positions - 1)))
    full = np.concatenate([np.tile(prompt, (len(prefixes), 1)), prefixes], axis=1)
    probs = np.asarray(jax.nn.softmax(target_logits(jnp.asarray(full)), axis=-1), np.float64)
    start = len(prompt) - 1
    prefix_prob = np.ones(len(prefixes))
    marginals = []
    for i in range(positions):
        step = probs[:, start + i]  # [prefixes, vocab]: next-token distribution after i tokens
        marginals.append(np.einsum("n,nv->v", prefix_prob, step) / VOCAB ** (positions - 1 - i))
        if i < positions - 1:
            prefix_prob = prefix_prob * step[np.arange(len(prefixes)), prefixes[:, i]]
    return marginals


SAMPLES = 4096


def pvalues(positions: tuple[int, ...]) -> tuple[list[float], float]:
    """Chi-square p-values of the sampled tokens at `positions`, and the mean acceptance rate."""
    prompt = np.tile(PROMPT, (SAMPLES, 1))
    tokens, _, stats = generate(prompt, np.full(SAMPLES, 3), np.arange(SAMPLES), k=3, max_new=4)
    marginals = exact_marginals(PROMPT, max(positions) + 1)
    out = [
        chi_square_pvalue(np.bincount(tokens[:, i], minlength=VOCAB), marginals[i])
        for i in positions
    ]
    return out, float(np.mean(stats.acceptance_rate))


def test_first_and_later_positions_follow_the_target_distribution() -> None:
    # 4096 seeded rows in one call; fixed seeds, so deterministic; a correct sampler falls
    # below 1e-4 once in 10^4 runs
    (first, third), acceptance = pvalues((0, 2))
    assert first > 1e-4 and third > 1e-4
    assert 0.05 < acceptance < 0.95  # the pair disagrees, but not totally


@pytest.mark.parametrize("variant", list(WRONG_SAMPLERS))
def test_the_same_test_rejects_a_wrong_sampler(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spec, *WRONG_SAMPLERS[variant])
    jax.clear_caches()
    try:
        assert min(pvalues((0, 2))[0]) < 1e-8
    finally:
        jax.clear_caches()


RAGGED = np.array([[3, 1, 4, 1], [5, 0, 0, 0], [2, 6, 0, 0], [7, 7, 7, 7]])
LENGTHS = np.array([4, 1, 2, 4])


def greedy_reference(prompt: list[int], steps: int) -> list[int]:
    """The target's greedy continuation by full forward passes (no cache)."""
    seq = list(prompt)
    for _ in range(steps):
        padded = jnp.asarray([seq + [0] * (16 - len(seq))], jnp.int32)
        seq.append(int(jnp.argmax(target_logits(padded)[0, len(seq) - 1])))
    return seq[len(prompt) :]


@pytest.mark.parametrize("k", [4])
def test_greedy_speculative_equals_greedy_target_batched_and_ragged(k: int) -> None:
    tokens, num, stats = generate(RAGGED, LENGTHS, np.arange(4), k=k, max_new=8, sampling=GREEDY)
    assert (num == 8).all()
    for row in range(4):
        assert tokens[row].tolist() == greedy_reference(list(RAGGED[row, : LENGTHS[row]]), 8)


def test_batched_equals_each_row_alone_with_the_same_keys() -> None:
    seeds = np.array([5, 6, 7, 8])
    tokens, num, _ = generate(RAGGED, LENGTHS, seeds, k=3, max_new=8)
    for row in range(4):
        alone, alone_num, _ = generate(
            RAGGED[row : row + 1], LENGTHS[row : row + 1], seeds[row : row + 1], k=3, max_new=8
        )
        assert alone_num[0] == num[row]
        np.testing.assert_array_equal(alone[0], tokens[row])
