"""Speculative decoding is exact: proof by enumeration over explicit probability tables.

Target P and draft Q are next-token tables over a 3-token vocabulary conditioned on the two
previous tokens. For every context the test enumerates, without sampling, every way a round can
go: each draft run x (weight ∏ Q), each first-rejection index j (weight ∏_{i<j} min(1, P/Q) ·
(1 − min(1, P/Q)_j), tested with a uniform inside that region), and each added token y (weight
from the algorithm's own correction distribution, chosen by rigged exponential noise). The
tokens come from the implementation's `verify`; the total probability of every output sequence of
length 2-3 must equal the target's product of conditionals to 1e-12 in float64. The same proof
runs on the torchref twin, and deliberately wrong variants must fail it.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxml.decoding.speculative as spec
import torchref.decoding.speculative as tspec

VOCAB = 3
BOS = VOCAB  # table row used for positions before the start


def make_table(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Next-token probabilities [prev2, prev1, token] = [VOCAB+1, VOCAB+1, VOCAB]."""
    shape = (VOCAB + 1, VOCAB + 1)
    if kind == "dense":
        return rng.dirichlet(np.ones(VOCAB), size=shape)
    if kind == "one_hot":
        return np.eye(VOCAB)[rng.integers(0, VOCAB, size=shape)]
    if kind == "no_token_0":  # zero where the other model is positive
        table = np.zeros((*shape, VOCAB))
        table[..., 1:] = rng.dirichlet(np.ones(VOCAB - 1), size=shape)
        return table
    if kind == "only_token_0":  # support disjoint from "no_token_0"
        return np.broadcast_to(np.eye(VOCAB)[0], (*shape, VOCAB)).copy()
    raise ValueError(kind)


CASES = {  # name: (target kind, draft kind); "same" draft = the target's own table (P == Q)
    "dense": ("dense", "dense"),
    "p_equals_q": ("dense", "same"),
    "one_hot_target": ("one_hot", "dense"),
    "one_hot_draft": ("dense", "one_hot"),
    "draft_zero_where_target_positive": ("dense", "no_token_0"),
    "target_zero_where_draft_positive": ("no_token_0", "dense"),
    "disjoint_supports": ("no_token_0", "only_token_0"),
}


def tables(case: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target_kind, draft_kind = CASES[case]
    target = make_table(rng, target_kind)
    return target, target.copy() if draft_kind == "same" else make_table(rng, draft_kind)


def next_probs(table: np.ndarray, seq: tuple[int, ...]) -> np.ndarray:
    padded = (BOS, BOS, *seq)
    return table[padded[-2], padded[-1]]


# --------------------------------------------------------------------------- backends
def pad_rows(arrays: tuple[np.ndarray, ...]) -> tuple[jax.Array, ...]:
    """Pad the batch to a power of two (repeating row 0), so jit compiles a handful of shapes."""
    rows = len(arrays[0])
    size = max(256, 1 << (rows - 1).bit_length())
    return tuple(jnp.asarray(np.concatenate([a, np.repeat(a[:1], size - rows, 0)])) for a in arrays)


class JaxBackend:
    def verify(self, *arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens, n = jax.jit(spec.verify)(*pad_rows(arrays))
        return np.asarray(tokens)[: len(arrays[0])], np.asarray(n)[: len(arrays[0])]

    def correction(self, p: np.ndarray, q: np.ndarray, n: np.ndarray) -> np.ndarray:
        return np.asarray(jax.jit(spec.correction_probs)(*pad_rows((p, q, n))))[: len(p)]


class TorchBackend:
    def verify(self, *arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens, n = tspec.verify(*(torch.from_numpy(a) for a in arrays))
        return tokens.numpy(), n.numpy()

    def correction(self, p: np.ndarray, q: np.ndarray, n: np.ndarray) -> np.ndarray:
        rows = [
            tspec.correction_probs(torch.from_numpy(pr), torch.from_numpy(qr), int(nr)).numpy()
            for pr, qr, nr in zip(p, q, n, strict=True)
        ]
        return np.stack(rows)


BACKENDS = {"jaxml": JaxBackend, "torchref": TorchBackend}


# --------------------------------------------------------------------------- enumeration
def round_outcomes(
    backend: Any, target: np.ndarray, draft: np.ndarray, k: int, contexts: list[tuple[int, ...]]
) -> Iterator[tuple[int, tuple[int, ...], float]]:
    """Every (context index, emitted tokens, probability) of one round, through `backend`."""
    c_rows, p_rows, q_rows, x_rows, u_rows, weights = [], [], [], [], [], []
    for c, ctx in enumerate(contexts):
        for x in itertools.product(range(VOCAB), repeat=k):
            q = np.stack([next_probs(draft, ctx + x[:i]) for i in range(k)])
            p = np.stack([next_probs(target, ctx + x[:i]) for i in range(k + 1)])
            q_x, p_x = q[np.arange(k), x], p[np.arange(k), x]
            draft_weight = float(np.prod(q_x))
            if draft_weight == 0.0:
                continue
            accept = np.minimum(1.0, p_x / q_x)  # q_x > 0 for every drafted token
            for j in range(k + 1):  # index of the first rejection; j == k: all accepted
                u = np.full(k, 0.5)
                u[:j] = accept[:j] / 2  # inside the acceptance region [0, a)
                weight = draft_weight * float(np.prod(accept[:j]))
                if j < k:
                    u[j] = (1.0 + accept[j]) / 2  # inside the rejection region [a, 1)
                    weight *= 1.0 - accept[j]
                if weight > 0.0:
                    c_rows.append(c), p_rows.append(p), q_rows.append(q), x_rows.append(x)
                    u_rows.append(u), weights.append(weight)
    p, q, x, u = np.stack(p_rows), np.stack(q_rows), np.array(x_rows, np.int32), np.stack(u_rows)
    _, n = backend.verify(p, q, x, u, np.ones((len(x), VOCAB)))
    added_probs = backend.correction(p, q, n)  # the algorithm's own distribution
    rows, ys = np.nonzero(added_probs > 0)
    noise = np.ones((len(rows), VOCAB))
    noise[np.arange(len(rows)), ys] = 1e-300  # token y wins argmax(probs / noise)
    tokens, n = backend.verify(p[rows], q[rows], x[rows], u[rows], noise)
    for r, row in enumerate(rows):
        emitted = tuple(int(t) for t in tokens[r, : n[r] + 1])
        yield c_rows[row], emitted, weights[row] * float(added_probs[row, ys[r]])


def algorithm_distribution(
    backend: Any, target: np.ndarray, draft: np.ndarray, k: int, length: int
) -> dict[tuple[int, ...], float]:
    """Probability of every length-`length` output, summed over all rounds' outcomes."""
    done: dict[tuple[int, ...], float] = defaultdict(float)
    frontier: dict[tuple[int, ...], float] = {(): 1.0}
    while frontier:
        grown: dict[tuple[int, ...], float] = defaultdict(float)
        contexts = list(frontier)
        for c, emitted, weight in round_outcomes(backend, target, draft, k, contexts):
            seq = (contexts[c] + emitted)[:length]  # the length budget cuts a round short
            (done if len(seq) == length else grown)[seq] += frontier[contexts[c]] * weight
        frontier = grown
    return done


def target_distribution(target: np.ndarray, length: int) -> dict[tuple[int, ...], float]:
    return {
        seq: float(np.prod([next_probs(target, seq[:t])[seq[t]] for t in range(length)]))
        for seq in itertools.product(range(VOCAB), repeat=length)
    }


def max_error(
    algorithm: dict[tuple[int, ...], float], target: dict[tuple[int, ...], float]
) -> float:
    assert set(algorithm) <= set(target), f"impossible outputs {set(algorithm) - set(target)}"
    return max(abs(algorithm.get(seq, 0.0) - prob) for seq, prob in target.items())


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("k,length", [(1, 3), (2, 2), (2, 3), (3, 3)])
def test_every_output_sequence_has_the_target_probability(
    backend: str, case: str, k: int, length: int
) -> None:
    target, draft = tables(case)
    algorithm = algorithm_distribution(BACKENDS[backend](), target, draft, k, length)
    expected = target_distribution(target, length)
    assert max_error(algorithm, expected) < 1e-12
    assert abs(sum(algorithm.values()) - 1.0) < 1e-12


WRONG_VARIANTS: dict[str, tuple[str, Callable[..., Any]]] = {
    "always_accept": ("accept_draft", lambda p, q, u: jnp.ones(p.shape, bool)),
    "inverted_ratio": ("accept_draft", lambda p, q, u: u * p < q),
    "resample_from_target": (
        "correction_probs",
        lambda p, q, n: jnp.take_along_axis(p, n[:, None, None], axis=1)[:, 0],
    ),
}


@pytest.mark.parametrize("variant", list(WRONG_VARIANTS))
def test_the_proof_fails_for_a_wrong_algorithm(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, wrong = WRONG_VARIANTS[variant]
    monkeypatch.setattr(spec, name, wrong)
    jax.clear_caches()  # jit would reuse the trace of the correct algorithm
    target, draft = tables("dense")
    algorithm = algorithm_distribution(JaxBackend(), target, draft, 2, 3)
    jax.clear_caches()
    assert max_error(algorithm, target_distribution(target, 3)) > 1e-3


# --------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_residual_that_sums_to_zero_falls_back_to_the_target(backend: str) -> None:
    p = np.array([[[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]])
    q = p[:, :1].copy()
    added = BACKENDS[backend]().correction(p, q, np.array([0]))
    np.testing.assert_array_equal(added, p[:, 0])


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_draft_probability_zero_accepts_and_target_zero_rejects(backend: str) -> None:
    # row 0: Q(x) = 0 < P(x) (accept even at u -> 1); row 1: P(x) = 0 (reject even at u = 0)
    p = np.array([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]])
    q = np.array([[[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]]])
    x = np.array([[0], [0]], np.int32)
    u = np.array([[1.0 - 1e-12], [0.0]])
    with np.errstate(divide="ignore"):
        tokens, n = BACKENDS[backend]().verify(p, q, x, u, np.ones((2, 3)))
    np.testing.assert_array_equal(n, [1, 0])
    assert tokens[0, :2].tolist() == [0, 2]  # the draft, then the bonus (P_1 is one-hot on 2)
    assert tokens[1, 0] in (1, 2)  # the residual max(0, P − Q) excludes the rejected token 0


def test_verify_keeps_a_separate_count_per_row() -> None:
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(VOCAB), size=(4, 3))
    q = rng.dirichlet(np.ones(VOCAB), size=(4, 2))
    x = rng.integers(0, VOCAB, size=(4, 2)).astype(np.int32)
    u = rng.uniform(size=(4, 2))
    noise = rng.exponential(size=(4, VOCAB))
    tokens, n = JaxBackend().verify(p, q, x, u, noise)
    for r in range(4):  # each row alone gives the same decision as inside the batch
        row = tuple(a[r : r + 1] for a in (p, q, x, u, noise))
        alone_tokens, alone_n = JaxBackend().verify(*row)
        assert alone_n[0] == n[r]
        np.testing.assert_array_equal(alone_tokens[0, : n[r] + 1], tokens[r, : n[r] + 1])
