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
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array


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
