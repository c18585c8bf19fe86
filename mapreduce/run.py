"""Command line: `python -m mapreduce.run JOB INPUT... [--workers N] [--engine ...]`.

Runs one word-statistics job (`word_count`, `sum_of_word_lengths`, `average_word_length`, `topk`,
`freq_count`) and prints a summary, the first rows of the result and where the output and the
JSON report are. Exit status 1 if the job fails (the report says why).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

from mapreduce.engine import JobFailedError, run_job
from mapreduce.executors import ENGINES
from mapreduce.job import OUTPUT_FORMATS, FaultPlan, JobConfig
from mapreduce.report import shuffle_report, summary
from mapreduce.word_stats import JOBS, get_job


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mapreduce.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("job", choices=list(JOBS))
    parser.add_argument("inputs", nargs="+", help="text files or directories of text files")
    parser.add_argument("--engine", choices=ENGINES, default="processes")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count(), help="worker processes (default: CPUs)"
    )
    parser.add_argument(
        "--scheduler", help="dask scheduler address, e.g. tcp://10.0.0.5:8786 (engine dask)"
    )
    parser.add_argument("--partitions", type=int, default=4, help="reduce partitions R (default 4)")
    parser.add_argument("--output", help="output directory (default runs/mapreduce/JOB)")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="tsv")
    parser.add_argument("--k", type=int, default=10, help="how many words topk keeps")
    parser.add_argument(
        "--split-mb", type=float, help="input split size in MiB (default: input/8, 1..64 MiB)"
    )
    parser.add_argument(
        "--max-attempts", type=int, default=4, help="attempts per task before failing"
    )
    parser.add_argument("--max-bad-records", type=int, help="fail if more records are skipped")
    parser.add_argument(
        "--no-combiner", action="store_true", help="disable combiners (same output, more shuffle)"
    )
    parser.add_argument(
        "--shuffle-report", action="store_true", help="print what the shuffle moved"
    )
    parser.add_argument("--show", type=int, default=10, help="result rows to print")
    parser.add_argument("--work-dir", help="where intermediate files go (shared by all workers)")
    parser.add_argument(
        "--crash-map-task", type=int, action="append", default=[], help=argparse.SUPPRESS
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = JobConfig(
        num_partitions=args.partitions,
        split_bytes=int(args.split_mb * (1 << 20)) if args.split_mb else None,
        max_attempts=args.max_attempts,
        max_bad_records=args.max_bad_records,
        use_combiner=not args.no_combiner,
        output_format=args.format,
        faults=FaultPlan(crash=frozenset(("map", t) for t in args.crash_map_task)),
    )
    output = args.output or os.path.join("runs", "mapreduce", args.job)
    try:
        result = run_job(
            get_job(args.job, args.k),
            args.inputs,
            output,
            executor=args.engine,
            workers=args.workers,
            scheduler=args.scheduler,
            config=config,
            work_dir=args.work_dir,
            progress=not args.no_progress,
        )
    except JobFailedError as exc:
        print(f"job failed: {exc}; see {os.path.join(output, 'report.json')}", file=sys.stderr)
        return 1
    print(summary(result.report))
    if args.shuffle_report:
        print(shuffle_report(result.report))
    if args.show:
        print(f"first {args.show} result rows (partition order, keys sorted within a partition):")
    for key, value in itertools.islice(result.records(), args.show):
        print(f"{key}\t{value}")
    print(
        f"output: {result.output_dir} ({len(result.files)} part files), report: {result.output_dir}/report.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
