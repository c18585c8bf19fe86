"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023) with per-sequence acceptance.

A cheap draft model Q proposes `k` tokens, the target P scores all `k + 1` positions in one call,
and each row keeps the longest prefix of drafts that passes the ratio test, then adds one token of
its own: the residual at the first rejection, or a bonus token from P when all `k` pass. The
emitted tokens are distributed exactly as if sampled from P one at a time.

This module's core is pure functions of probabilities and explicit noise (no PRNG inside), so
the same noise gives the same tokens in the torchref twin:
- `accept_draft`: u < min(1, P(x)/Q(x)), written u·Q(x) < P(x) (no division, no NaN);
- `count_accepted`: the leading run of accepted drafts per row;
- `correction_probs`: normalise(max(0, P − Q)) at the first rejection, P itself for the bonus;
- `verify`: one round's decision, the tokens emitted and how many drafts each row kept.

`speculative_generate` runs the rounds in one compiled `lax.while_loop` (static shapes, no host
sync): the draft's k cached steps in a `lax.scan`, one cached target call on k + 1 tokens, then
per row its emitted count (EOS and the length budget may cut the run), its positions and the
rollback of both caches with `kv_cache.truncate`. See docs/speculative.md.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax

from jaxml.configs import SamplingConfig, SpeculativeConfig
from jaxml.decoding.loop import StepFn, layer_caches, map_caches, run_step
from jaxml.decoding.sampling import probabilities
from jaxml.layers import kv_cache


def distribution(logits: Array, sampling: SamplingConfig) -> Array:
    """P or Q from logits `[..., vocab]`: `sampling.probabilities`, one-hot on the argmax if greedy."""
    if sampling.greedy:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)
    return probabilities(logits, sampling)


def sample_from_probs(probs: Array, noise: Array) -> Array:
    """`argmax(probs / noise)` with `noise ~ Exponential(1)` draws token i with prob. probs_i/Σprobs.

    probs, noise: [..., vocab] (probs need not be normalised). Returns int32 [...].
    """
    return jnp.argmax(probs / noise, axis=-1).astype(jnp.int32)


def accept_draft(p_draft: Array, q_draft: Array, uniforms: Array) -> Array:
    """Ratio test per drafted token: accept when u < min(1, P(x)/Q(x)).

    p_draft, q_draft: [batch, k] target/draft probability of each drafted token; uniforms:
    [batch, k] in [0, 1). Written u·Q(x) < P(x): Q(x) = 0 < P(x) accepts, P(x) = 0 rejects.
    Returns bool [batch, k].
    """
    return uniforms * q_draft < p_draft


def count_accepted(accepted: Array) -> Array:
    """Length of the leading run of accepted drafts: bool [batch, k] -> int32 [batch] in 0..k."""
    return jnp.sum(jnp.cumprod(accepted.astype(jnp.int32), axis=-1), axis=-1)


def correction_probs(p: Array, q: Array, num_accepted: Array) -> Array:
    """Distribution of the token each row adds after its accepted drafts: [batch, vocab].

    p: [batch, k+1, vocab] target probabilities after each draft prefix; q: [batch, k, vocab]
    draft probabilities; num_accepted: int32 [batch]. Row with n < k accepted: the residual
    normalise(max(0, P_n − Q_n)); n = k: the bonus distribution P_k. A residual that sums to
    zero means P_n <= Q_n everywhere, i.e. P_n == Q_n up to rounding, where a rejection has
    probability zero: it falls back to P_n (no 0/0).
    """
    q_padded = jnp.concatenate([q, jnp.zeros_like(q[:, :1])], axis=1)  # Q_k := 0 -> bonus = P_k
    index = num_accepted[:, None, None]
    p_n = jnp.take_along_axis(p, index, axis=1)[:, 0]
    q_n = jnp.take_along_axis(q_padded, index, axis=1)[:, 0]
    residual = jnp.maximum(p_n - q_n, 0.0)
    total = jnp.sum(residual, axis=-1, keepdims=True)
    return jnp.where(total > 0, residual / jnp.where(total > 0, total, 1.0), p_n)


def verify(
    p: Array, q: Array, draft_tokens: Array, uniforms: Array, noise: Array
) -> tuple[Array, Array]:
    """One round's decision for every row.

    p: [batch, k+1, vocab] target probabilities after each draft prefix (position i conditions on
    the drafts before i); q: [batch, k, vocab] the draft's; draft_tokens: int32 [batch, k];
    uniforms: [batch, k] in [0, 1); noise: [batch, vocab] Exponential(1) for the added token.
    Returns tokens int32 [batch, k+1] (row r emits `tokens[r, :num_accepted[r] + 1]`: its
    accepted drafts then the correction or bonus token; later entries repeat the drafts) and
    num_accepted int32 [batch].
    """
    p_draft = jnp.take_along_axis(p[:, :-1], draft_tokens[..., None], axis=-1)[..., 0]
    q_draft = jnp.take_along_axis(q, draft_tokens[..., None], axis=-1)[..., 0]
    num_accepted = count_accepted(accept_draft(p_draft, q_draft, uniforms))
    added = sample_from_probs(correction_probs(p, q, num_accepted), noise)
    tokens = jnp.concatenate([draft_tokens, draft_tokens[:, -1:]], axis=1).astype(jnp.int32)
    slot = jnp.arange(tokens.shape[1])[None, :] == num_accepted[:, None]
    return jnp.where(slot, added[:, None], tokens), num_accepted


# --------------------------------------------------------------------------- the decode loop
class RoundNoise(NamedTuple):
    """All the randomness of one round; row r's depends only on its own key and the round."""

    draft: Array  # [batch, k, vocab] Exponential(1): one draw per drafted token
    uniforms: Array  # [batch, k] U[0, 1): the ratio tests
    added: Array  # [batch, vocab] Exponential(1): the correction or bonus token


def round_noise(keys: Array, round_index: Array, draft_steps: int, vocab: int) -> RoundNoise:
    """Noise of round `round_index` from per-row keys `[batch]` (so batched == each row alone)."""
    tiny = jnp.finfo(jnp.float32).tiny  # an exponential draw of exactly 0 would give 0/0

    def row(key: Array) -> RoundNoise:
        k_draft, k_uniform, k_added = jax.random.split(jax.random.fold_in(key, round_index), 3)
        return RoundNoise(
            jnp.maximum(jax.random.exponential(k_draft, (draft_steps, vocab)), tiny),
            jax.random.uniform(k_uniform, (draft_steps,)),
            jnp.maximum(jax.random.exponential(k_added, (vocab,)), tiny),
        )

    return jax.vmap(row)(keys)


class SpeculativeStats(NamedTuple):
    rounds: Array  # int32 [batch]: rounds in which the row was still generating
    drafted: Array  # int32 [batch]: draft tokens proposed to the row (k per round)
    accepted: Array  # int32 [batch]: draft tokens that passed the ratio test
    emitted: Array  # int32 [batch]: tokens generated
    target_calls: Array  # int32 []: target model calls (prefill + one per round)
    draft_calls: Array  # int32 []: draft model calls (prefill + k + 1 per round)

    @property
    def acceptance_rate(self) -> Array:
        """[batch] accepted / drafted."""
        return self.accepted / jnp.maximum(self.drafted, 1)

    @property
    def tokens_per_round(self) -> Array:
        """[batch] emitted / rounds (1..k+1)."""
        return self.emitted / jnp.maximum(self.rounds, 1)


class _State(NamedTuple):
    target_cache: Any
    draft_cache: Any
    last: Array  # int32 [batch]: the newest token, emitted but not yet fed to either model
    tokens: Array  # int32 [batch, max_new_tokens]
    num_tokens: Array  # int32 [batch]
    done: Array  # bool [batch]
    round: Array  # int32 []
    stats: SpeculativeStats


def _truncate(cache: Any, lengths: Array) -> Any:
    return map_caches(lambda c: kv_cache.truncate(c, lengths), cache)


def _draft(
    step: StepFn, params: Any, cache: Any, last: Array, noise: Array, sampling: SamplingConfig
) -> tuple[Any, Array, Array]:
    """k cached draft steps from `last`, then feed the k-th draft so the cache holds all of them.

    Returns the cache (k + 1 tokens longer), q [batch, k, vocab] and the drafts int32 [batch, k].
    """

    def one(
        carry: tuple[Any, Array], noise_i: Array
    ) -> tuple[tuple[Any, Array], tuple[Array, Array]]:
        cache, token = carry
        logits, cache = run_step(step, params, cache, token[:, None])
        q = distribution(logits[:, 0], sampling)
        drafted = sample_from_probs(q, noise_i)
        return (cache, drafted), (q, drafted)

    (cache, last_draft), (q, drafts) = lax.scan(one, (cache, last), jnp.swapaxes(noise, 0, 1))
    _, cache = run_step(step, params, cache, last_draft[:, None])
    return cache, jnp.swapaxes(q, 0, 1), jnp.swapaxes(drafts, 0, 1)


class _Models(NamedTuple):
    """The static part of a speculative decode (hashable: a `jax.jit` static argument)."""

    target_step: StepFn
    draft_step: StepFn
    config: SpeculativeConfig
    eos_id: int | None


def _round(
    models: _Models, vocab: int, params: tuple[Any, Any], keys: Array, state: _State
) -> _State:
    """Draft k tokens, score k + 1 positions, keep each row's accepted run plus one, roll back."""
    k, sampling = models.config.draft_steps, models.config.sampling
    max_new = state.tokens.shape[1]
    target_params, draft_params = params
    start = layer_caches(state.target_cache)[0].lengths  # == the draft cache's
    noise = round_noise(keys, state.round, k, vocab)
    draft_cache, q, drafts = _draft(
        models.draft_step, draft_params, state.draft_cache, state.last, noise.draft, sampling
    )
    fed = jnp.concatenate([state.last[:, None], drafts], axis=1)  # [batch, k + 1]
    logits, target_cache = run_step(models.target_step, target_params, state.target_cache, fed)
    p = distribution(logits, sampling)
    tokens, num_accepted = verify(p, q, drafts, noise.uniforms, noise.added)

    slot = jnp.arange(k + 1)[None, :]
    active = ~state.done
    emit = jnp.where(active, jnp.minimum(num_accepted + 1, max_new - state.num_tokens), 0)
    ended = jnp.zeros_like(active)
    if models.eos_id is not None:  # stop after the first EOS inside the emitted run
        is_eos = (tokens == models.eos_id) & (slot < emit[:, None])
        ended = jnp.any(is_eos, axis=1)
        emit = jnp.where(ended, jnp.argmax(is_eos, axis=1) + 1, emit)
    rows = jnp.arange(tokens.shape[0])[:, None]
    index = jnp.where(slot < emit[:, None], state.num_tokens[:, None] + slot, max_new)
    num_tokens = state.num_tokens + emit
    # the caches keep `last` and the emitted drafts: `emit` fed tokens per row; the newest
    # emitted token becomes `last`, fed next round
    lengths = start + emit
    newest = jnp.take_along_axis(tokens, jnp.maximum(emit - 1, 0)[:, None], axis=1)[:, 0]
    stats = state.stats
    return _State(
        target_cache=_truncate(target_cache, lengths),
        draft_cache=_truncate(draft_cache, lengths),
        last=jnp.where(emit > 0, newest, state.last),
        tokens=state.tokens.at[rows, index].set(tokens, mode="drop"),
        num_tokens=num_tokens,
        done=state.done | ended | (num_tokens >= max_new),
        round=state.round + 1,
        stats=stats._replace(
            rounds=stats.rounds + active,
            drafted=stats.drafted + k * active,
            accepted=stats.accepted + jnp.where(active, num_accepted, 0),
            emitted=num_tokens,
        ),
    )


@partial(jax.jit, static_argnums=(0, 1))
def _generate(
    models: _Models,
    max_new_tokens: int,
    params: tuple[Any, Any],
    caches: tuple[Any, Any],
    prompt: Array,
    prompt_lengths: Array,
    keys: Array,
) -> tuple[Array, Array, SpeculativeStats]:
    target_logits, target_cache = run_step(models.target_step, params[0], caches[0], prompt)
    draft_logits, draft_cache = run_step(models.draft_step, params[1], caches[1], prompt)
    if target_logits.shape[-1] != draft_logits.shape[-1]:
        raise ValueError(
            f"draft vocab_size={draft_logits.shape[-1]} differs from the target's "
            f"{target_logits.shape[-1]}: speculative decoding needs one shared vocabulary"
        )
    # the prefill keeps each row's prompt but its last token, which the first round feeds
    kept = layer_caches(target_cache)[0].lengths - prompt.shape[1] + prompt_lengths - 1
    batch = prompt.shape[0]
    zeros = jnp.zeros((batch,), jnp.int32)
    state = _State(
        target_cache=_truncate(target_cache, kept),
        draft_cache=_truncate(draft_cache, kept),
        last=jnp.take_along_axis(prompt, (prompt_lengths - 1)[:, None], axis=1)[:, 0],
        tokens=jnp.zeros((batch, max_new_tokens), jnp.int32),
        num_tokens=zeros,
        done=jnp.zeros((batch,), bool),
        round=jnp.zeros((), jnp.int32),
        stats=SpeculativeStats(zeros, zeros, zeros, zeros, *2 * [jnp.ones((), jnp.int32)]),
    )
    body = partial(_round, models, target_logits.shape[-1], params, keys)
    state = lax.while_loop(lambda s: ~jnp.all(s.done), body, state)
    stats = state.stats._replace(
        target_calls=1 + state.round, draft_calls=1 + (models.config.draft_steps + 1) * state.round
    )
    return state.tokens, state.num_tokens, stats


def speculative_generate(
    target_step: StepFn,
    draft_step: StepFn,
    target_params: Any,
    draft_params: Any,
    target_cache: Any,
    draft_cache: Any,
    prompt: Array,
    prompt_lengths: Array,
    keys: Array,
    *,
    config: SpeculativeConfig,
    max_new_tokens: int,
    eos_id: int | None = None,
) -> tuple[Array, Array, SpeculativeStats]:
    """Generate up to `max_new_tokens` per row, distributed exactly as sampling the target.

    prompt: int32 [batch, t], right-padded; prompt_lengths: int32 [batch] in 1..t; keys: one
    PRNG key per row `[batch]` (a row's tokens depend only on its own key). Both caches start
    empty with room for `t + max_new_tokens + k` tokens per row (`k = config.draft_steps`; a row
    that finished keeps being fed `k + 1` tokens while others go on).
    `config.sampling` (temperature, top-k, top-p, min-p; greedy at temperature 0) turns both
    models' logits into P and Q alike. A row stops after `eos_id` or `max_new_tokens` tokens. Returns tokens int32 [batch, max_new_tokens] (0 past a row's
    end), num_tokens int32 [batch] and the statistics.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} is invalid: must be >= 1")
    draft_steps = config.draft_steps
    batch, width = prompt.shape
    if prompt_lengths.shape != (batch,) or keys.shape != (batch,):
        raise ValueError(
            f"prompt_lengths and keys must be [batch]=[{batch}], "
            f"got {prompt_lengths.shape} and {keys.shape}"
        )
    if not isinstance(prompt_lengths, jax.core.Tracer):  # checkable unless called under jit
        lengths = jax.device_get(prompt_lengths)
        if lengths.min() < 1 or lengths.max() > width:
            raise ValueError(
                f"prompt_lengths must be in 1..{width} (the prompt width), got {lengths}"
            )
    needed = width + max_new_tokens + draft_steps
    for name, cache in (("target", target_cache), ("draft", draft_cache)):
        layer = layer_caches(cache)[0]
        if layer.window is None and layer.cache_len < needed:
            raise ValueError(
                f"the {name} cache holds {layer.cache_len} tokens per row; this run needs "
                f"prompt width {width} + max_new_tokens {max_new_tokens} + draft_steps "
                f"{draft_steps} = {needed}"
            )
        if layer.window is not None and layer.cache_len - layer.window < draft_steps + 1:
            raise ValueError(
                f"the {name} cache is a window of {layer.window} in {layer.cache_len} slots; "
                f"rolling back a round needs cache_len >= window + draft_steps + 1 = "
                f"{layer.window + draft_steps + 1}"
            )
    models = _Models(target_step, draft_step, config, eos_id)
    return _generate(
        models,
        max_new_tokens,
        (target_params, draft_params),
        (target_cache, draft_cache),
        jnp.asarray(prompt, jnp.int32),
        jnp.asarray(prompt_lengths, jnp.int32),
        keys,
    )
