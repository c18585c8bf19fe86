"""Partitioners: callables `(key, R) -> int in [0, R)` that decide which reduce task gets a key.

- `hash_partitioner`: `stable_hash(key) mod R` (the default; never Python's salted `hash`).
- `RangePartitioner`: sorted key ranges whose cut points come from a weighted reservoir sample
  (Hadoop's TotalOrderPartitioner / Spark's RangePartitioner); duplicate cut points are removed,
  so a hot key can leave fewer partitions than requested, which it reports.
- `UserTierPartitioner`: power users get a dedicated tier of partitions (each its own partition
  when there are few enough, else packed largest-first); everyone else is hashed over the rest.
- `CustomPartitioner`: any `(key, R) -> int` function, named and range-checked.
- `KeySalter`: salting for hot keys. A hot key `k` becomes `(k, salt)` with `salt` drawn from a
  stable hash of something else in the record, other keys become `(k, 0)`; stage one aggregates
  each salted key, stage two strips the salt and aggregates the few partial results again.

All of them are picklable (top-level classes holding plain data), so they travel to workers.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mapreduce.hashing import stable_hash


def hash_partitioner(key: Any, num_partitions: int) -> int:
    """`stable_hash(key) mod R`."""
    return stable_hash(key) % num_partitions


def partitioner_name(partitioner: Any) -> str:
    """A label for reports: the partitioner's `name`, else its function or class name."""
    return str(
        getattr(partitioner, "name", None)
        or getattr(partitioner, "__name__", type(partitioner).__name__)
    )


def reservoir_sample(items: Iterable[Any], k: int, rng: random.Random) -> tuple[list[Any], int]:
    """A uniform sample of at most `k` items (Algorithm R) and the number of items seen."""
    sample: list[Any] = []
    seen = 0
    for seen, item in enumerate(items, 1):
        if len(sample) < k:
            sample.append(item)
        else:
            j = rng.randrange(seen)
            if j < k:
                sample[j] = item
    return sample, seen


def weighted_reservoir_sample(
    sources: Iterable[Iterable[Any]], per_source: int, seed: int = 0
) -> list[tuple[Any, float]]:
    """Reservoir-sample each source (e.g. each input split) and weight every sampled key by
    `records in its source / sample size`, so big sources count for what they hold (Spark's
    RangePartitioner sketch)."""
    if per_source < 1:
        raise ValueError(f"per_source={per_source} must be >= 1")
    rng = random.Random(seed)
    weighted: list[tuple[Any, float]] = []
    for source in sources:
        sample, seen = reservoir_sample(source, per_source, rng)
        weighted.extend((key, seen / len(sample)) for key in sample)
    return weighted


@dataclass(frozen=True)
class RangePartitioner:
    """Key ranges: partition i holds keys in `(cut[i-1], cut[i]]`; the last holds keys above all cuts."""

    cut_points: tuple[Any, ...]
    requested: int
    hot_keys: tuple[Any, ...] = ()
    name = "range"

    @property
    def effective_partitions(self) -> int:
        return len(self.cut_points) + 1

    @classmethod
    def from_sample(
        cls, sample: Sequence[tuple[Any, float]], num_partitions: int
    ) -> RangePartitioner:
        """Cut points at the weighted quantiles `i/R` of `sample` (`(key, weight)` pairs).

        A key whose weight spans several quantiles yields one cut point, not several: the
        duplicates are removed and the partitioner has fewer partitions (`hot_keys` says why).
        """
        if num_partitions < 1:
            raise ValueError(f"num_partitions={num_partitions} must be >= 1")
        weights: dict[Any, float] = {}
        for key, weight in sample:
            weights[key] = weights.get(key, 0.0) + weight
        keys = sorted(weights)
        total = sum(weights.values())
        cuts: list[Any] = []
        hot: list[Any] = []
        target = 1
        cumulative = 0.0
        for key in keys[:-1]:  # the largest key cannot be an upper bound with anything above it
            if target >= num_partitions:
                break
            cumulative += weights[key]
            if cumulative < total * target / num_partitions:
                continue
            cuts.append(key)
            crossed = 0
            while target < num_partitions and cumulative >= total * target / num_partitions:
                target += 1
                crossed += 1
            if crossed > 1:
                hot.append(key)
        return cls(tuple(cuts), num_partitions, tuple(hot))

    def __call__(self, key: Any, num_partitions: int) -> int:
        if num_partitions != self.requested:
            raise ValueError(
                f"RangePartitioner built for R={self.requested}, called with R={num_partitions}"
            )
        return bisect.bisect_left(self.cut_points, key)

    def describe(self) -> str:
        text = (
            f"range: {self.requested} partitions requested, {self.effective_partitions} effective"
        )
        if self.effective_partitions < self.requested:
            text += f" (duplicate cut points removed; hot keys {list(self.hot_keys)[:5]})"
        return text


@dataclass(frozen=True)
class UserTierPartitioner:
    """Power users spread over the first `tier_partitions` partitions (largest load first, each to
    the least-loaded tier partition, so each power user has a partition to itself when they are
    no more than the tier); all other keys hashed over the remaining `R - tier_partitions`."""

    assignment: Mapping[Any, int]
    requested: int
    tier_partitions: int
    name = "user_tier"

    @classmethod
    def from_loads(
        cls,
        power_loads: Mapping[Any, float],
        num_partitions: int,
        tier_partitions: int | None = None,
    ) -> UserTierPartitioner:
        tier = tier_partitions if tier_partitions is not None else max(1, num_partitions // 2)
        if not 1 <= tier < num_partitions:
            raise ValueError(
                f"tier_partitions={tier} must be in [1, num_partitions={num_partitions}) so regular users keep a partition"
            )
        heap = [(0.0, p) for p in range(tier)]
        assignment: dict[Any, int] = {}
        for user, load in sorted(power_loads.items(), key=lambda kv: (-kv[1], str(kv[0]))):
            tier_load, p = heapq.heappop(heap)
            assignment[user] = p
            heapq.heappush(heap, (tier_load + load, p))
        return cls(assignment, num_partitions, tier)

    @classmethod
    def from_counts(
        cls,
        counts: Mapping[Any, float],
        num_partitions: int,
        power_fraction: float = 0.01,
        tier_partitions: int | None = None,
    ) -> UserTierPartitioner:
        """Power users = the top `power_fraction` of keys by count (at least one)."""
        n = max(1, round(len(counts) * power_fraction))
        top = heapq.nlargest(n, counts.items(), key=lambda kv: kv[1])
        return cls.from_loads(dict(top), num_partitions, tier_partitions)

    def __call__(self, key: Any, num_partitions: int) -> int:
        if num_partitions != self.requested:
            raise ValueError(
                f"UserTierPartitioner built for R={self.requested}, called with R={num_partitions}"
            )
        p = self.assignment.get(key)
        if p is not None:
            return p
        return self.tier_partitions + stable_hash(key) % (num_partitions - self.tier_partitions)


@dataclass(frozen=True)
class CustomPartitioner:
    """A user function `(key, R) -> int` with a name; results outside `[0, R)` raise ValueError."""

    fn: Callable[[Any, int], int]
    name: str = "custom"

    def __call__(self, key: Any, num_partitions: int) -> int:
        p = self.fn(key, num_partitions)
        if not isinstance(p, int) or not 0 <= p < num_partitions:
            raise ValueError(
                f"{self.name} partitioner returned {p!r} for key {key!r}; need [0, {num_partitions})"
            )
        return p


@dataclass(frozen=True)
class KeySalter:
    """Salting for hot keys: `salter(key, source)` is `(key, stable_hash(source) % salts)` for a hot
    key and `(key, 0)` otherwise (one key type for the whole job, so keys still sort)."""

    hot_keys: frozenset[Any] = field(default_factory=frozenset)
    salts: int = 8

    def __post_init__(self) -> None:
        if self.salts < 1:
            raise ValueError(f"KeySalter.salts={self.salts} must be >= 1")

    def __call__(self, key: Any, source: Any) -> tuple[Any, int]:
        if key in self.hot_keys:
            return key, stable_hash(source) % self.salts
        return key, 0
