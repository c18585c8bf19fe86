"""Command line: `python -m mapreduce.analyze FILE.jsonl [--key user_id] [--partitions 8]
[--chart loads.png] [--report stats.json]` compares partitioning strategies on one key field."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from mapreduce.cli import at_least_two, new_file, positive_int
from mapreduce.partitioning.partition_analyzer import PartitionAnalyzer, PartitionStats


def read_keys(parser: argparse.ArgumentParser, path: str, key: str) -> list[Any]:
    """The `key` field of every record of a JSON-lines file; anything else is a usage error
    (`parser.error`: one line, exit status 2) naming the file, the line and the flag."""
    keys: list[Any] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    parser.error(
                        f"argument input: {path} line {number} is not JSON ({exc.msg}); "
                        "give a JSON-lines file"
                    )
                if not isinstance(record, dict):
                    parser.error(
                        f"argument input: {path} line {number} is a JSON "
                        f"{type(record).__name__}, not an object"
                    )
                if key not in record:
                    parser.error(
                        f"argument --key: {path} line {number} has no field {key!r} "
                        f"(fields: {', '.join(record)})"
                    )
                value = record[key]
                if not isinstance(value, str | int | float):
                    parser.error(
                        f"argument --key: {path} line {number}: field {key!r} holds "
                        f"{type(value).__name__} {value!r}; keys must be strings or numbers"
                    )
                keys.append(value)
    except OSError as exc:
        parser.error(f"argument input: cannot read {path}: {exc.strerror}")
    except UnicodeDecodeError as exc:
        parser.error(f"argument input: {path} is not UTF-8 ({exc.reason} at byte {exc.start})")
    if not keys:
        parser.error(f"argument input: {path} holds no records")
    if len({isinstance(k, str) for k in keys}) > 1:
        parser.error(
            f"argument --key: field {key!r} of {path} mixes strings and numbers; "
            "range partitioning needs keys of one kind"
        )
    return keys


def main(argv: list[str] | None = None) -> dict[str, PartitionStats]:
    parser = argparse.ArgumentParser(
        prog="python -m mapreduce.analyze", description=__doc__.splitlines()[0]
    )
    parser.add_argument("input", help="a JSONL file, e.g. social_data/user_activity_1.jsonl")
    parser.add_argument("--key", default="user_id", help="record field to partition by")
    parser.add_argument("--partitions", type=at_least_two, default=8)
    parser.add_argument(
        "--top-k", type=positive_int, default=10, help="hot keys to report (and salt)"
    )
    parser.add_argument("--chart", type=new_file, help="write a bar chart of partition loads (PNG)")
    parser.add_argument("--report", type=new_file, help="write the per-strategy statistics as JSON")
    args = parser.parse_args(argv)
    keys = read_keys(parser, args.input, args.key)
    analyzer = PartitionAnalyzer(args.partitions, top_k=args.top_k)
    results = analyzer.compare_keys(keys)
    analyzer.print_detailed_analysis(results)
    if args.chart:
        title = f"{args.input} by {args.key}"
        print(f"chart: {analyzer.visualize_partition_loads(results, args.chart, title=title)}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump({name: asdict(s) for name, s in results.items()}, f, indent=2, default=str)
    return results


if __name__ == "__main__":
    main()
