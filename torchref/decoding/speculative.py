"""Speculative decoding, PyTorch twin: per-row Python loops, same semantics and noise as jaxml.

A draft model Q proposes `k` tokens, the target P scores the `k + 1` positions, each row keeps its
drafts up to the first failed ratio test and adds one token: from normalise(max(0, P − Q)) at the
rejection, or a bonus from P when all `k` pass. Given the same noise, the tokens equal jaxml's.
"""

from __future__ import annotations

import torch


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
