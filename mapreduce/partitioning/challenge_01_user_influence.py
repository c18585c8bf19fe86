"""Challenge 1: per-user influence on skewed engagement data, under each partitioning strategy.

Influence of an author = `engagement * log2(1 + reach)`, where engagement is the weighted sum of
the engagements their posts received (like 1, comment 2, share 3) and reach the number of
distinct users who engaged. Reach needs every engager of an author in one place, so there is no
cheap combiner and a viral author's whole history lands on one reduce task: the straggler.

Strategies (same input, same R, same result):
- `hash`, `range`, `user_tier`: one job, different partitioners (a single hot key cannot be split
  by any partitioner, only moved);
- `salted`: stage one keys hot authors by `(author, stable_hash(event_id) % salts)`, spreading
  their records evenly, and reduces each salted key to its engagement sum and its sorted distinct
  engagers; stage two strips the salt, adds the sums and unions the engager lists (work
  proportional to distinct engagers, not to records).

`python -m mapreduce.partitioning.challenge_01_user_influence FILE.jsonl [--engine processes]
[--workers 2] [--partitions 8] [--chart docs/mapreduce_skew.png] [--report report.json]`
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mapreduce.cli import at_least_two, fresh_output_dir, new_file, positive_int
from mapreduce.engine import JobResult, check_output_outside_inputs, load_stats, run_job
from mapreduce.executors import ENGINES, Executor, make_executor
from mapreduce.job import Job, JobConfig, Pair
from mapreduce.partitioning.partition_analyzer import PartitionAnalyzer
from mapreduce.partitioning.partitioners import (
    KeySalter,
    RangePartitioner,
    UserTierPartitioner,
    hash_partitioner,
    weighted_reservoir_sample,
)
from mapreduce.report import format_table
from mapreduce.splits import (
    auto_split_bytes,
    expand_inputs,
    lines_with_offsets,
    make_splits,
    read_blocks,
)

WEIGHTS = {"like": 1, "comment": 2, "share": 3}
JOB_NAME = "user_influence"
OUTPUTS = ("hash", "range", "user_tier", "salted_stage1", "salted")  # one job output each


def influence(engagement: int, reach: int) -> dict[str, Any]:
    return {
        "score": round(engagement * math.log2(1 + reach), 3),
        "engagement": engagement,
        "reach": reach,
    }


def influence_map(record: dict[str, Any]) -> list[Pair]:
    return [(record["author_id"], (WEIGHTS[record["engagement"]], record["user_id"]))]


def influence_reduce(author: Any, values: list[tuple[int, str]]) -> dict[str, Any]:
    return influence(sum(v[0] for v in values), len({v[1] for v in values}))


@dataclass(frozen=True)
class SaltedInfluenceMap:
    """Stage-one map: hot authors are split by a salt drawn from the event id."""

    salter: KeySalter

    def __call__(self, record: dict[str, Any]) -> list[Pair]:
        key = self.salter(record["author_id"], record["event_id"])
        return [(key, (WEIGHTS[record["engagement"]], record["user_id"]))]


def partial_reduce(salted_author: Any, values: list[tuple[int, str]]) -> list[Any]:
    """`[engagement sum, sorted distinct engagers]` of one salted author."""
    return [sum(v[0] for v in values), sorted({v[1] for v in values})]


def unsalt_map(record: dict[str, Any]) -> list[Pair]:
    """Stage-two map over stage one's JSON output `{"key": [author, salt], "value": [e, users]}`."""
    return [(record["key"][0], record["value"])]


def total_reduce(author: Any, values: list[list[Any]]) -> dict[str, Any]:
    return influence(sum(v[0] for v in values), len({u for v in values for u in v[1]}))


INFLUENCE_JOB = Job("user_influence", influence_map, influence_reduce, input_format="jsonl")
STAGE_TWO_JOB = Job("user_influence_stage2", unsalt_map, total_reduce, input_format="jsonl")


class BadRecord(ValueError):
    """An input line that is not a JSON object with an `author_id`; the message names the file
    and the byte offset."""


def author_of(line: bytes, path: str, offset: int) -> Any:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRecord(f"{path} at byte {offset} is not a JSON line ({exc})") from exc
    if not isinstance(record, dict) or "author_id" not in record:
        raise BadRecord(f"{path} at byte {offset} is not a JSON object with an author_id")
    return record["author_id"]


def sample_authors(paths: Sequence[str], per_split: int, seed: int = 0) -> list[tuple[Any, float]]:
    """Weighted reservoir sample of `author_id` over the input splits (the sampling pre-pass)."""
    split_bytes = auto_split_bytes(sum(os.path.getsize(p) for p in paths))

    def authors(split: Any) -> Any:
        for offset, block in read_blocks(split, 1 << 22):
            for at, line in lines_with_offsets(offset, block):
                if line.strip():
                    yield author_of(line, split.path, at)

    return weighted_reservoir_sample(
        (authors(s) for s in make_splits(paths, split_bytes)), per_split, seed
    )


def _stage_row(result: JobResult) -> dict[str, Any]:
    r = result.report
    return {
        "loads": [p["shuffle_records"] for p in r["partitions"]],
        "reduce_seconds": [p["reduce_seconds"] for p in r["partitions"]],
        "wall": r["wall_seconds"],
    }


def run_challenge(
    inputs: Sequence[str],
    *,
    executor: str | Executor = "processes",
    workers: int = 2,
    num_partitions: int = 8,
    salts: int | None = None,
    sample_per_split: int = 2000,
    output_dir: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the influence job under every strategy; returns the comparison rows, the per-partition
    loads of each strategy and whether all strategies gave the same influence for every author."""
    paths = expand_inputs(inputs)
    sample = sample_authors(paths, sample_per_split, seed)  # first: it also checks every record
    output_dir = output_dir or fresh_output_dir(JOB_NAME)
    sample_counts: Counter[Any] = Counter()
    for key, weight in sample:
        sample_counts[key] += weight  # type: ignore[assignment]
    analyzer = PartitionAnalyzer(num_partitions, seed=seed)
    hot = frozenset(k for k, _ in analyzer.hot_keys(sample_counts))
    salter = KeySalter(hot, salts or num_partitions)
    config = JobConfig(num_partitions=num_partitions, output_format="json")
    strategies: dict[str, Any] = {
        "hash": hash_partitioner,
        "range": RangePartitioner.from_sample(sample, num_partitions),
        "user_tier": UserTierPartitioner.from_counts(sample_counts, num_partitions),
    }
    ex = make_executor(executor, workers) if isinstance(executor, str) else executor
    rows: list[dict[str, Any]] = []
    loads: dict[str, list[int]] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, partitioner in strategies.items():
            out = run_job(
                INFLUENCE_JOB,
                paths,
                os.path.join(output_dir, name),
                executor=ex,
                config=config,
                partitioner=partitioner,
            )
            stages = [_stage_row(out)]
            results[name] = dict(out.records())
            rows.append(_comparison_row(name, stages, partitioner))
            loads[name] = stages[0]["loads"]
        stage_one_job = Job(
            "user_influence_stage1",
            SaltedInfluenceMap(salter),
            partial_reduce,
            input_format="jsonl",
        )
        one = run_job(
            stage_one_job,
            paths,
            os.path.join(output_dir, "salted_stage1"),
            executor=ex,
            config=config,
        )
        two = run_job(
            STAGE_TWO_JOB, one.files, os.path.join(output_dir, "salted"), executor=ex, config=config
        )
        results["salted"] = dict(two.records())
        rows.append(_comparison_row("salted", [_stage_row(one), _stage_row(two)], salter))
        loads["salted"] = _stage_row(one)["loads"]
    finally:
        if isinstance(executor, str):
            ex.close()
    reference = results["hash"]
    identical = all(r == reference for r in results.values())
    return {
        "rows": rows,
        "loads": loads,
        "hot_keys": sorted(hot),
        "authors": len(reference),
        "identical_results": identical,
        "top_authors": sorted(reference.items(), key=lambda kv: -kv[1]["score"])[:5],
        "output_dir": output_dir,
    }


def _comparison_row(name: str, stages: list[dict[str, Any]], partitioner: Any) -> dict[str, Any]:
    first = stages[0]
    seconds = first["reduce_seconds"]
    balance = load_stats(first["loads"])
    effective = getattr(partitioner, "effective_partitions", len(first["loads"]))
    return {
        "strategy": name,
        "stages": len(stages),
        "partitions": effective,
        "max/mean load": balance["max_over_mean"],
        "cv": balance["cv"],
        "reduce max s": max(seconds),
        "reduce mean s": sum(seconds) / len(seconds),
        "straggler": load_stats(seconds)["max_over_mean"],
        "wall s": sum(s["wall"] for s in stages),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m mapreduce.partitioning.challenge_01_user_influence",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("inputs", nargs="+", help="content_engagement_*.jsonl files")
    parser.add_argument("--engine", choices=ENGINES, default="processes")
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--partitions", type=at_least_two, default=8)
    parser.add_argument(
        "--salts", type=positive_int, help="salts per hot key (default: partitions)"
    )
    parser.add_argument(
        "--output",
        help="where each strategy's output goes (default: a new runs/mapreduce/user_influence-TIME)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace finished outputs in --output"
    )
    parser.add_argument(
        "--chart", type=new_file, help="write a bar chart of the reduce loads (PNG)"
    )
    parser.add_argument("--report", type=new_file, help="write the comparison as JSON")
    args = parser.parse_args(argv)
    try:
        expand_inputs(args.inputs)
    except ValueError as exc:
        parser.error(f"argument inputs: {exc}")
    output = args.output or fresh_output_dir(JOB_NAME, create=False)
    try:
        check_output_outside_inputs(output, args.inputs)
    except ValueError as exc:
        parser.error(f"argument --output: {exc}")
    finished = [
        name or "."
        for name in ("", *OUTPUTS)
        if args.output is not None and os.path.exists(os.path.join(output, name, "_SUCCESS"))
    ]
    if finished and not args.overwrite:
        parser.error(
            f"argument --output: {output} already holds finished outputs ({', '.join(finished)}); "
            "choose a new directory or pass --overwrite"
        )
    try:
        outcome = run_challenge(
            args.inputs,
            executor=args.engine,
            workers=args.workers,
            num_partitions=args.partitions,
            salts=args.salts,
            output_dir=args.output,
        )
    except BadRecord as exc:  # found by the sampling pre-pass, before any job runs
        parser.error(f"argument inputs: {exc}")
    print(format_table(outcome["rows"]))
    print(f"hot keys salted: {outcome['hot_keys']}")
    print(
        f"{outcome['authors']} authors; identical results across strategies: {outcome['identical_results']}"
    )
    print("top authors:", ", ".join(f"{a} {v['score']:.0f}" for a, v in outcome["top_authors"]))
    if args.chart:
        analyzer = PartitionAnalyzer(args.partitions)
        stats = {
            name: analyzer.stats(name, loads, Counter(), len(loads))
            for name, loads in outcome["loads"].items()
        }
        analyzer.visualize_partition_loads(
            stats, args.chart, title="user influence: records per reduce partition"
        )
        print(f"chart: {args.chart}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(outcome, f, indent=2, default=str)
    return outcome


if __name__ == "__main__":
    main()
