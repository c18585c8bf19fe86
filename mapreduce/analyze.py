"""Command line: `python -m mapreduce.analyze FILE.jsonl [--key user_id] [--partitions 8]
[--chart loads.png] [--report stats.json]` compares partitioning strategies on one key field."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from operator import itemgetter

from mapreduce.partitioning.partition_analyzer import PartitionAnalyzer, PartitionStats


def main(argv: list[str] | None = None) -> dict[str, PartitionStats]:
    parser = argparse.ArgumentParser(
        prog="python -m mapreduce.analyze", description=__doc__.splitlines()[0]
    )
    parser.add_argument("input", help="a JSONL file, e.g. social_data/user_activity_1.jsonl")
    parser.add_argument("--key", default="user_id", help="record field to partition by")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=10, help="hot keys to report (and salt)")
    parser.add_argument("--chart", help="write a bar chart of partition loads (PNG)")
    parser.add_argument("--report", help="write the per-strategy statistics as JSON")
    args = parser.parse_args(argv)
    analyzer = PartitionAnalyzer(args.partitions, top_k=args.top_k)
    results = analyzer.compare_strategies(args.input, itemgetter(args.key))
    analyzer.print_detailed_analysis(results)
    if args.chart:
        print(
            f"chart: {analyzer.visualize_partition_loads(results, args.chart, title=f'{args.input} by {args.key}')}"
        )
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump({name: asdict(s) for name, s in results.items()}, f, indent=2, default=str)
    return results


if __name__ == "__main__":
    main()
