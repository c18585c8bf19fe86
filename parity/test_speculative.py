"""Speculative decoding parity: jaxml and torchref emit the same tokens for the same noise.

The round decision (`verify`) on random float32 probabilities; the whole loop on the table-driven
models of `tests/test_speculative_loop.py` (ragged prompts, EOS, a length budget reached mid-round)
and on the tiny real LMs of `tests/test_speculative_lm.py` (weights converted), with jaxml's
per-row noise handed to the torch twin round by round.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxml.decoding.speculative as spec
import torchref.decoding.speculative as tspec
from jaxml.configs import SpeculativeConfig
from tests.test_speculative_lm import DRAFT, LENGTHS, TARGET
from tests.test_speculative_lm import RAGGED as LM_PROMPTS
from tests.test_speculative_lm import generate as lm_generate
from tests.test_speculative_loop import (
    BOS,
    MAX_NEW,
    RAGGED,
    RAGGED_LENGTHS,
    SAMPLE,
    SEEDS,
    K,
    random_table,
    run,
)
from torchref.convert import load_jaxml_params
from torchref.layers import kv_cache
from torchref.models.lm import LM as TorchLM
from torchref.models.lm import init_cache as torch_init_cache


def test_verify_gives_the_same_tokens_for_the_same_noise() -> None:
    rng = np.random.default_rng(0)
    batch, k, vocab = 64, 4, 7
    p = rng.dirichlet(np.full(vocab, 0.3), size=(batch, k + 1)).astype(np.float32)
    q = rng.dirichlet(np.full(vocab, 0.3), size=(batch, k)).astype(np.float32)
    drafts = np.stack([[rng.choice(vocab, p=row / row.sum()) for row in rows] for rows in q])
    uniforms = rng.uniform(size=(batch, k)).astype(np.float32)
    noise = rng.exponential(size=(batch, vocab)).astype(np.float32)
    arrays = (p, q, drafts.astype(np.int32), uniforms, noise)
    tokens, n = spec.verify(*(jnp.asarray(a) for a in arrays))
    t_tokens, t_n = tspec.verify(*(torch.from_numpy(a) for a in arrays))
    np.testing.assert_array_equal(np.asarray(n), t_n.numpy())
    assert 0 < np.asarray(n).mean() < k  # both accepted and rejected drafts occur
    for row in range(batch):
        emitted = int(n[row]) + 1
        np.testing.assert_array_equal(np.asarray(tokens)[row, :emitted], t_tokens[row, :emitted])


def torch_table_step(
    log_table: torch.Tensor,
    cache: kv_cache.KVCache,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, kv_cache.KVCache]:
    """The torch twin of `tests.test_speculative_loop.table_step`."""
    ids = tokens.float()[..., None, None]
    cache = kv_cache.append(cache, ids, ids)
    wanted = (positions - 1)[:, :, None]
    held = (cache.positions[:, None, :] == wanted) & (wanted >= 0)
    prev = torch.where(held, cache.k[:, None, :, 0, 0], 0.0).sum(-1).long()
    prev = torch.where(held.any(-1), prev, BOS)
    return log_table[prev, tokens], cache


def torch_generate(
    target: np.ndarray, draft: np.ndarray, *, eos_id: int | None, max_new_tokens: int
) -> tuple[np.ndarray, np.ndarray, tspec.SpeculativeStats]:
    """`run` on the torch twin, fed jaxml's noise for the same seeds."""
    k, vocab = K, target.shape[-1]
    keys = jax.vmap(jax.random.key)(jnp.asarray(SEEDS))
    round_noise = jax.jit(spec.round_noise, static_argnums=(2, 3))

    def noise(round_index: int) -> tspec.RoundNoise:
        jax_noise = round_noise(keys, jnp.int32(round_index), k, vocab)
        return tspec.RoundNoise(*(torch.from_numpy(np.array(a)) for a in jax_noise))

    batch = len(RAGGED)
    tokens, num, stats = tspec.speculative_generate(
        partial(torch_table_step, torch.log(torch.from_numpy(target).float())),
        partial(torch_table_step, torch.log(torch.from_numpy(draft).float())),
        kv_cache.init(batch, 32, 1, 1),
        kv_cache.init(batch, 32, 1, 1),
        torch.from_numpy(RAGGED),
        torch.from_numpy(RAGGED_LENGTHS),
        noise,
        config=SpeculativeConfig(draft_steps=k, sampling=SAMPLE),
        max_new_tokens=max_new_tokens,
        eos_id=eos_id,
    )
    return tokens.numpy(), num.numpy(), stats


@pytest.mark.parametrize("eos_id,max_new_tokens", [(None, MAX_NEW), (0, MAX_NEW), (None, 5)])
def test_the_loop_gives_the_same_tokens_and_statistics(
    eos_id: int | None, max_new_tokens: int
) -> None:
    target, draft = random_table(20, 0.5), random_table(21, 0.5)
    tokens, num, stats = run(target, draft, eos_id=eos_id, max_new_tokens=max_new_tokens)
    t_tokens, t_num, t_stats = torch_generate(
        target, draft, eos_id=eos_id, max_new_tokens=max_new_tokens
    )
    np.testing.assert_array_equal(t_num, num)
    np.testing.assert_array_equal(t_tokens, tokens)
    for name in ("rounds", "drafted", "accepted", "emitted"):
        np.testing.assert_array_equal(getattr(t_stats, name).numpy(), getattr(stats, name))
    assert (t_stats.target_calls, t_stats.draft_calls) == (
        int(stats.target_calls),
        int(stats.draft_calls),
    )


def test_torch_seeded_noise_is_per_row_and_per_round() -> None:
    batched = tspec.seeded_noise([5, 6], draft_steps=3, vocab=4)
    alone = tspec.seeded_noise([6], draft_steps=3, vocab=4)
    for field, ours, single in zip(tspec.RoundNoise._fields, batched(2), alone(2), strict=True):
        torch.testing.assert_close(ours[1], single[0], msg=field)
    assert not torch.equal(batched(2).uniforms, batched(3).uniforms)
    assert float(batched(0).draft.min()) > 0  # never 0: argmax(probs / noise) stays finite


def test_real_lms_give_the_same_tokens_for_the_same_noise() -> None:
    """The tiny LM pair of `tests/test_speculative_lm.py` in both frameworks (weights converted)."""
    seeds, k, max_new = np.arange(4), 3, 8
    tokens, num, stats = lm_generate(LM_PROMPTS, LENGTHS, seeds, k=k, max_new=max_new)
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    round_noise = jax.jit(spec.round_noise, static_argnums=(2, 3))

    def noise(round_index: int) -> tspec.RoundNoise:
        jax_noise = round_noise(keys, jnp.int32(round_index), k, TARGET[0].vocab_size)
        return tspec.RoundNoise(*(torch.from_numpy(np.array(a)) for a in jax_noise))

    target, draft = (load_jaxml_params(TorchLM(c), p).eval() for c, p in (TARGET, DRAFT))
    room = LM_PROMPTS.shape[1] + max_new + k
    t_tokens, t_num, t_stats = tspec.speculative_generate(
        lambda cache, ids, positions, mask: target.step(ids, positions, cache, mask),
        lambda cache, ids, positions, mask: draft.step(ids, positions, cache, mask),
        torch_init_cache(TARGET[0], 4, room),
        torch_init_cache(DRAFT[0], 4, room),
        torch.from_numpy(LM_PROMPTS),
        torch.from_numpy(LENGTHS),
        noise,
        config=SpeculativeConfig(draft_steps=k, sampling=SAMPLE),
        max_new_tokens=max_new,
    )
    np.testing.assert_array_equal(t_num.numpy(), num)
    np.testing.assert_array_equal(t_tokens.numpy(), tokens)
    np.testing.assert_array_equal(t_stats.accepted.numpy(), stats.accepted)
