"""How evenly a partitioning strategy spreads records over reduce partitions.

For one key per record, `PartitionAnalyzer` computes per-partition loads, max/mean, the
coefficient of variation (population std / mean), hot keys (the top-k keys whose count exceeds
`hot_key_factor` x the median key count) and skewed partitions (load > `hot_key_factor` x the
median partition load, Spark AQE's rule), compares strategies in a table and draws a bar chart.

Strategies compared by `compare_strategies`: `hash`, `range` (cut points from a weighted
reservoir sample of the keys), `user_tier` (the top 1% keys get their own tier of partitions),
`salted` (hot keys split over `salts` sub-keys; the loads shown are stage one's) and, when given,
`custom`.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mapreduce.partitioning.partitioners import (
    CustomPartitioner,
    KeySalter,
    RangePartitioner,
    UserTierPartitioner,
    hash_partitioner,
    weighted_reservoir_sample,
)


@dataclass
class PartitionStats:
    """Load picture of one strategy."""

    strategy: str
    loads: list[int]
    effective_partitions: int
    max_over_mean: float
    cv: float
    hot_keys: list[tuple[Any, int]] = field(default_factory=list)
    skewed_partitions: list[int] = field(default_factory=list)
    note: str = ""

    def row(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "partitions": self.effective_partitions,
            "max_load": max(self.loads),
            "max/mean": self.max_over_mean,
            "cv": self.cv,
            "skewed": len(self.skewed_partitions),
            "note": self.note,
        }


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class PartitionAnalyzer:
    """Partition-load analysis for `num_partitions` reduce partitions."""

    def __init__(
        self,
        num_partitions: int = 8,
        *,
        hot_key_factor: float = 5.0,
        top_k: int = 10,
        salts: int | None = None,
        power_fraction: float = 0.01,
        sample_per_source: int = 1000,
        sources: int = 4,
        seed: int = 0,
    ):
        if num_partitions < 2:
            raise ValueError(f"num_partitions={num_partitions} must be >= 2 to compare strategies")
        self.num_partitions = num_partitions
        self.hot_key_factor = hot_key_factor
        self.top_k = top_k
        self.salts = salts or num_partitions
        self.power_fraction = power_fraction
        self.sample_per_source = sample_per_source
        self.sources = sources
        self.seed = seed

    # ------------------------------------------------------------------ measures
    def hot_keys(self, counts: Counter[Any]) -> list[tuple[Any, int]]:
        """Top-k keys whose count is above `hot_key_factor` x the median key count."""
        if not counts:
            return []
        threshold = self.hot_key_factor * statistics.median(counts.values())
        return [(k, c) for k, c in counts.most_common(self.top_k) if c > threshold]

    def stats(
        self, name: str, loads: Sequence[int], counts: Counter[Any], effective: int, note: str = ""
    ) -> PartitionStats:
        mean = statistics.fmean(loads)
        median = statistics.median(loads)
        return PartitionStats(
            strategy=name,
            loads=list(loads),
            effective_partitions=effective,
            max_over_mean=max(loads) / mean if mean else 0.0,
            cv=statistics.pstdev(loads) / mean if mean else 0.0,
            hot_keys=self.hot_keys(counts),
            skewed_partitions=[
                p for p, load in enumerate(loads) if load > self.hot_key_factor * median
            ],
            note=note,
        )

    def analyze(
        self, keys: Sequence[Any], partitioner: Callable[[Any, int], int], name: str = "custom"
    ) -> PartitionStats:
        """Loads when each of `keys` (one per record) goes to `partitioner(key, R)`."""
        counts = Counter(keys)
        loads = [0] * self.num_partitions
        for key, count in counts.items():
            loads[partitioner(key, self.num_partitions)] += count
        effective = getattr(partitioner, "effective_partitions", self.num_partitions)
        note = partitioner.describe() if isinstance(partitioner, RangePartitioner) else ""
        return self.stats(name, loads, counts, effective, note)

    def analyze_salted(
        self, keys: Sequence[Any], salter: KeySalter, name: str = "salted"
    ) -> PartitionStats:
        """Stage-one loads when hot keys are salted (record i gets salt `hash(i) % salts`)."""
        loads = [0] * self.num_partitions
        for i, key in enumerate(keys):
            loads[hash_partitioner(salter(key, i), self.num_partitions)] += 1
        note = f"{len(salter.hot_keys)} hot keys x {salter.salts} salts, then a small second stage"
        return self.stats(name, loads, Counter(keys), self.num_partitions, note)

    # ------------------------------------------------------------------ strategies
    def build_strategies(self, keys: Sequence[Any]) -> dict[str, Any]:
        """hash, range (weighted reservoir sample of `sources` equal slices of the keys),
        user_tier (top `power_fraction` keys) and the salter for the salted strategy."""
        n = len(keys)
        step = -(-n // self.sources)
        slices = [keys[i : i + step] for i in range(0, n, step)]
        sample = weighted_reservoir_sample(slices, self.sample_per_source, self.seed)
        counts = Counter(keys)
        return {
            "hash": hash_partitioner,
            "range": RangePartitioner.from_sample(sample, self.num_partitions),
            "user_tier": UserTierPartitioner.from_counts(
                counts, self.num_partitions, self.power_fraction
            ),
            "salted": KeySalter(frozenset(k for k, _ in self.hot_keys(counts)), self.salts),
        }

    def compare_keys(
        self, keys: Sequence[Any], custom: Callable[[Any, int], int] | None = None
    ) -> dict[str, PartitionStats]:
        results: dict[str, PartitionStats] = {}
        for name, strategy in self.build_strategies(keys).items():
            if isinstance(strategy, KeySalter):
                results[name] = self.analyze_salted(keys, strategy, name)
            else:
                results[name] = self.analyze(keys, strategy, name)
        if custom is not None:
            results["custom"] = self.analyze(keys, CustomPartitioner(custom), "custom")
        return results

    def compare_strategies(
        self,
        data: str | Iterable[dict[str, Any]],
        key_fn: Callable[[dict[str, Any]], Any],
        custom: Callable[[Any, int], int] | None = None,
    ) -> dict[str, PartitionStats]:
        """Every strategy on the keys `key_fn(record)` of a JSONL file (or of records)."""
        records = read_jsonl(data) if isinstance(data, str) else data
        return self.compare_keys([key_fn(r) for r in records], custom)

    # ------------------------------------------------------------------ output
    @staticmethod
    def comparison_table(results: dict[str, PartitionStats]) -> str:
        from mapreduce.report import format_table

        return format_table([s.row() for s in results.values()])

    def print_detailed_analysis(self, results: dict[str, PartitionStats]) -> None:
        print(self.comparison_table(results))
        first = next(iter(results.values()))
        print(f"hot keys (> {self.hot_key_factor:g}x median key count): {first.hot_keys}")
        for stats in results.values():
            flagged = (
                f"; skewed partitions {stats.skewed_partitions}" if stats.skewed_partitions else ""
            )
            print(f"{stats.strategy:>10}: loads {stats.loads}{flagged}")

    def visualize_partition_loads(
        self,
        results: dict[str, PartitionStats],
        path: str = "partition_loads.png",
        title: str | None = None,
    ) -> str:
        """Bar chart of load / mean load per partition, one panel per strategy; returns `path`."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(
            1, len(results), figsize=(2.2 * len(results), 2.6), sharey=True, dpi=80
        )
        for ax, stats in zip(axes, results.values(), strict=True):
            mean = statistics.fmean(stats.loads) or 1.0
            ax.bar(range(len(stats.loads)), [x / mean for x in stats.loads], color="tab:blue")
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
            ax.set_title(
                f"{stats.strategy}\nmax/mean {stats.max_over_mean:.2f}, CV {stats.cv:.2f}",
                fontsize=8,
            )
            ax.set_xlabel("partition", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0].set_ylabel("load / mean", fontsize=8)
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path
