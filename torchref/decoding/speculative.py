"""Speculative decoding, PyTorch twin: per-row Python loops, same semantics and noise as jaxml.

A draft model Q proposes `k` tokens, the target P scores the `k + 1` positions, each row keeps its
drafts up to the first failed ratio test and adds one token: from normalise(max(0, P − Q)) at the
rejection, or a bonus from P when all `k` pass. Given the same noise, the tokens equal jaxml's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from jaxml.configs import SamplingConfig, SpeculativeConfig
from torchref.decoding.loop import StepFn, layer_caches, map_caches, run_step
from torchref.decoding.sampling import probabilities
from torchref.layers import kv_cache


def distribution(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """P or Q from logits `[..., vocab]`: `sampling.probabilities`, one-hot on the argmax if greedy."""
    if sampling.greedy:
        one_hot = torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1])
        return one_hot.to(torch.float32)
    return probabilities(logits, sampling)


def sample_from_probs(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """`argmax(probs / noise)` with `noise ~ Exponential(1)`: token i with prob. probs_i/Σprobs.

    probs, noise: [..., vocab] (probs need not be normalised). Returns int64 [...].
    """
    return torch.argmax(probs / noise, dim=-1)


def accept_draft(p_x: torch.Tensor, q_x: torch.Tensor, u: torch.Tensor) -> bool:
    """Ratio test for one drafted token x (0-d tensors): u < min(1, P(x)/Q(x)), i.e. u·Q(x) < P(x)."""
    return bool(u * q_x < p_x)


def correction_probs(p_row: torch.Tensor, q_row: torch.Tensor, n: int) -> torch.Tensor:
    """One row's added-token distribution: [vocab].

    p_row: [k+1, vocab], q_row: [k, vocab]. n < k accepted: normalise(max(0, P_n − Q_n)), falling
    back to P_n when the residual sums to zero (P_n == Q_n up to rounding); n == k: bonus P_k.
    """
    if n == q_row.shape[0]:
        return p_row[n]
    residual = torch.clamp(p_row[n] - q_row[n], min=0.0)
    total = residual.sum()
    return residual / total if total > 0 else p_row[n]


def verify(
    p: torch.Tensor,
    q: torch.Tensor,
    draft_tokens: torch.Tensor,
    uniforms: torch.Tensor,
    noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One round's decision, row by row.

    p: [batch, k+1, vocab]; q: [batch, k, vocab]; draft_tokens: [batch, k]; uniforms: [batch, k]
    in [0, 1); noise: [batch, vocab] Exponential(1). Returns tokens int64 [batch, k+1] (row r
    emits `tokens[r, :num_accepted[r] + 1]`; later entries repeat the drafts) and num_accepted
    int64 [batch].
    """
    batch, k = draft_tokens.shape
    tokens = torch.cat([draft_tokens, draft_tokens[:, -1:]], dim=1).long()
    num_accepted = torch.zeros(batch, dtype=torch.long)
    for row in range(batch):
        n = 0
        while n < k:
            x = int(draft_tokens[row, n])
            if not accept_draft(p[row, n, x], q[row, n, x], uniforms[row, n]):
                break
            n += 1
        probs = correction_probs(p[row], q[row], n)
        tokens[row, n] = sample_from_probs(probs, noise[row])
        num_accepted[row] = n
    return tokens, num_accepted


# --------------------------------------------------------------------------- the decode loop
class RoundNoise(NamedTuple):
    """All the randomness of one round (the same layout as jaxml's)."""

    draft: torch.Tensor  # [batch, k, vocab] Exponential(1): one draw per drafted token
    uniforms: torch.Tensor  # [batch, k] U[0, 1): the ratio tests
    added: torch.Tensor  # [batch, vocab] Exponential(1): the correction or bonus token


def seeded_noise(seeds: list[int], draft_steps: int, vocab: int) -> Callable[[int], RoundNoise]:
    """Round index -> noise, row r's drawn from a generator seeded by (seeds[r], round)."""
    tiny = torch.finfo(torch.float32).tiny

    def row(seed: int, round_index: int) -> RoundNoise:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + round_index)
        draft = torch.empty(draft_steps, vocab).exponential_(generator=gen).clamp_(min=tiny)
        uniforms = torch.rand(draft_steps, generator=gen)
        added = torch.empty(vocab).exponential_(generator=gen).clamp_(min=tiny)
        return RoundNoise(draft, uniforms, added)

    def noise(round_index: int) -> RoundNoise:
        rows = [row(seed, round_index) for seed in seeds]
        return RoundNoise(*(torch.stack(parts) for parts in zip(*rows, strict=True)))

    return noise


@dataclass
class SpeculativeStats:
    rounds: torch.Tensor  # int32 [batch]: rounds in which the row was still generating
    drafted: torch.Tensor  # int32 [batch]: draft tokens proposed to the row (k per round)
    accepted: torch.Tensor  # int32 [batch]: draft tokens that passed the ratio test
    emitted: torch.Tensor  # int32 [batch]: tokens generated
    target_calls: int  # prefill + one per round
    draft_calls: int  # prefill + k + 1 per round

    @property
    def acceptance_rate(self) -> torch.Tensor:
        """[batch] accepted / drafted."""
        return self.accepted / self.drafted.clamp(min=1)

    @property
    def tokens_per_round(self) -> torch.Tensor:
        """[batch] emitted / rounds (1..k+1)."""
        return self.emitted / self.rounds.clamp(min=1)


def _truncate(cache: Any, lengths: torch.Tensor) -> Any:
    return map_caches(lambda c: kv_cache.truncate(c, lengths), cache)


def _check_run(
    prompt: torch.Tensor,
    prompt_lengths: torch.Tensor,
    caches: tuple[Any, Any],
    needed: int,
    rollback: int,
) -> None:
    width = prompt.shape[1]
    if prompt_lengths.shape != (prompt.shape[0],):
        raise ValueError(
            f"prompt_lengths must be [batch]=[{prompt.shape[0]}], got {tuple(prompt_lengths.shape)}"
        )
    if int(prompt_lengths.min()) < 1 or int(prompt_lengths.max()) > width:
        raise ValueError(
            f"prompt_lengths must be in 1..{width} (the prompt width), got {prompt_lengths.tolist()}"
        )
    for name, cache in zip(("target", "draft"), caches, strict=True):
        layer = layer_caches(cache)[0]
        if layer.window is None and layer.cache_len < needed:
            raise ValueError(
                f"the {name} cache holds {layer.cache_len} tokens per row; this run needs {needed}"
            )
        if layer.window is not None and layer.cache_len - layer.window < rollback:
            raise ValueError(
                f"the {name} cache is a window of {layer.window} in {layer.cache_len} slots; "
                f"rolling back a round needs cache_len >= window + draft_steps + 1 = "
                f"{layer.window + rollback}"
            )


def _draft(
    step: StepFn, cache: Any, last: torch.Tensor, noise: torch.Tensor, sampling: SamplingConfig
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """k cached draft steps from `last`, then feed the k-th draft so the cache holds all of them.

    Returns the cache (k + 1 tokens longer), q [batch, k, vocab] and the drafts [batch, k].
    """
    q, drafts, token = [], [], last
    for i in range(noise.shape[1]):
        logits, cache = run_step(step, cache, token[:, None])
        q.append(distribution(logits[:, 0], sampling))
        token = sample_from_probs(q[-1], noise[:, i])
        drafts.append(token)
    _, cache = run_step(step, cache, token[:, None])
    return cache, torch.stack(q, dim=1), torch.stack(drafts, dim=1)


def _kept(emitted: list[int], budget: int, eos_id: int | None) -> list[int]:
    """A row's round output cut to its remaining budget and just after its first EOS."""
    emitted = emitted[:budget]
    return emitted[: emitted.index(eos_id) + 1] if eos_id in emitted else emitted


@torch.no_grad()
def speculative_generate(
    target_step: StepFn,
    draft_step: StepFn,
    target_cache: Any,
    draft_cache: Any,
    prompt: torch.Tensor,
    prompt_lengths: torch.Tensor,
    noise: Callable[[int], RoundNoise],
    *,
    config: SpeculativeConfig,
    max_new_tokens: int,
    eos_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, SpeculativeStats]:
    """Generate up to `max_new_tokens` per row, distributed exactly as sampling the target.

    Same contract as `jaxml.decoding.speculative.speculative_generate`, with steps that hold
    their parameters (`step(cache, tokens, positions, mask)`, as in `torchref.decoding.loop`) and
    `noise(round)` in place of per-row keys. Returns tokens int64 [batch, max_new_tokens] (0 past a row's end),
    num_tokens int64 [batch] and the statistics.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} is invalid: must be >= 1")
    prompt, prompt_lengths = prompt.long(), prompt_lengths.long()
    (k, sampling), (batch, width) = (config.draft_steps, config.sampling), prompt.shape
    caches = (target_cache, draft_cache)
    _check_run(prompt, prompt_lengths, caches, width + max_new_tokens + k, k + 1)
    target_logits, target_cache = run_step(target_step, target_cache, prompt)
    draft_logits, draft_cache = run_step(draft_step, draft_cache, prompt)
    if target_logits.shape[-1] != draft_logits.shape[-1]:
        raise ValueError(
            f"draft vocab_size={draft_logits.shape[-1]} differs from the target's "
            f"{target_logits.shape[-1]}: speculative decoding needs one shared vocabulary"
        )
    lengths = layer_caches(target_cache)[0].lengths.long() - width + prompt_lengths - 1
    target_cache, draft_cache = _truncate(target_cache, lengths), _truncate(draft_cache, lengths)
    last = prompt[torch.arange(batch), prompt_lengths - 1]
    tokens = torch.zeros(batch, max_new_tokens, dtype=torch.long)
    num_tokens = torch.zeros(batch, dtype=torch.long)
    done = [False] * batch
    zeros = torch.zeros(batch, dtype=torch.int32)
    stats = SpeculativeStats(zeros, zeros.clone(), zeros.clone(), zeros.clone(), 1, 1)
    round_index = 0
    while not all(done):
        round_noise = noise(round_index)
        draft_cache, q, drafts = _draft(draft_step, draft_cache, last, round_noise.draft, sampling)
        fed = torch.cat([last[:, None], drafts], dim=1)
        logits, target_cache = run_step(target_step, target_cache, fed)
        round_tokens, num_accepted = verify(
            distribution(logits, sampling), q, drafts, round_noise.uniforms, round_noise.added
        )
        for row in range(batch):
            if done[row]:
                continue  # its caches go back to where they were
            n, start = int(num_accepted[row]), int(num_tokens[row])
            kept = _kept(round_tokens[row, : n + 1].tolist(), max_new_tokens - start, eos_id)
            tokens[row, start : start + len(kept)] = torch.tensor(kept)
            num_tokens[row] += len(kept)
            lengths[row] += len(kept)
            last[row] = kept[-1]
            done[row] = kept[-1] == eos_id or int(num_tokens[row]) >= max_new_tokens
            stats.rounds[row] += 1
            stats.drafted[row] += k
            stats.accepted[row] += n
        target_cache, draft_cache = (
            _truncate(target_cache, lengths),
            _truncate(draft_cache, lengths),
        )
        round_index += 1
    stats.emitted = num_tokens.int()
    stats.target_calls, stats.draft_calls = 1 + round_index, 1 + (k + 1) * round_index
    return tokens, num_tokens, stats
