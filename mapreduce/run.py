"""Command line: `python -m mapreduce.run [JOB] [INPUT...] [--workers N] [--engine ...]`.

Runs one word-statistics job (`word_count` by default; `sum_of_word_lengths`,
`average_word_length`, `topk`, `freq_count`) and prints a summary, the first rows of the result and
where the output and the JSON report are. Without INPUT it counts the words of CPython's own
documentation (`mapreduce.corpus`). Every flag is checked before the job starts (exit status 2);
exit status 1 if the job fails (the report says why).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import sys

from mapreduce.cli import (
    fraction,
    fresh_output_dir,
    non_negative_int,
    positive_float,
    positive_int,
    text_encoding,
)
from mapreduce.corpus import SPLITS, corpus_split_bytes, python_docs_corpus
from mapreduce.engine import JobFailedError, JobResult, check_output_outside_inputs, run_job
from mapreduce.executors import ENGINES
from mapreduce.job import OUTPUT_FORMATS, FaultPlan, JobConfig
from mapreduce.report import shuffle_report, summary
from mapreduce.splits import expand_inputs
from mapreduce.word_stats import JOBS, get_job

EXAMPLES = f"""\
examples:
  python -m mapreduce.run --workers 8
      word_count over CPython's documentation text (pydoc_data.topics, ~470 KB, cut into
      {SPLITS} splits); the result goes to a new runs/mapreduce/word_count-YYYYmmdd-HHMMSS/
  python -m mapreduce.run topk README.md docs/ --k 20 --workers 4
      the 20 most frequent words of README.md and every file in docs/
  python -m mapreduce.run word_count old_logs/ --encoding latin-1 --output runs/logs_wc
      input that is not UTF-8: name its encoding, or its lines are bad records and the job
      fails once more than --max-bad-fraction of them are skipped
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mapreduce.run",
        usage="%(prog)s [JOB] [INPUT ...] [--workers N] [--engine ENGINE] [options]",
        description="Run one word-statistics job and print a summary, its first rows and where\n"
        "the output went. Without INPUT it counts the words of CPython's documentation text.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "job",
        nargs="?",
        choices=list(JOBS),
        default="word_count",
        metavar="JOB",
        help=f"one of {', '.join(JOBS)} (default word_count)",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="text files or directories of text files (default: CPython's documentation text)",
    )
    parser.add_argument("--engine", choices=ENGINES, default="processes")
    parser.add_argument(
        "--workers", type=positive_int, default=os.cpu_count(), help="workers (default: CPUs)"
    )
    parser.add_argument(
        "--scheduler", help="dask scheduler address, e.g. tcp://10.0.0.5:8786 (engine dask)"
    )
    parser.add_argument(
        "--partitions", type=positive_int, default=4, help="reduce partitions R (default 4)"
    )
    parser.add_argument(
        "--output",
        help="output directory (default: a new runs/mapreduce/JOB-TIME); "
        "one holding a finished output is refused unless --overwrite",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a finished output in --output"
    )
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="tsv")
    parser.add_argument("--k", type=positive_int, default=10, help="how many words topk keeps")
    parser.add_argument(
        "--split-mb",
        type=positive_float,
        help="input split size in MiB (default: a quarter of the input, 1..128 MiB)",
    )
    parser.add_argument(
        "--encoding",
        type=text_encoding,
        default="utf-8",
        help="encoding of the input text, e.g. latin-1 (default utf-8)",
    )
    parser.add_argument(
        "--max-attempts", type=positive_int, default=4, help="attempts per task before failing"
    )
    parser.add_argument(
        "--max-bad-records", type=non_negative_int, help="fail if more records are skipped"
    )
    parser.add_argument(
        "--max-bad-fraction",
        type=fraction,
        default=JobConfig.max_bad_fraction,
        help="fail if more than this fraction of the records are skipped (default %(default)s)",
    )
    parser.add_argument(
        "--no-combiner", action="store_true", help="disable combiners (same output, more shuffle)"
    )
    parser.add_argument(
        "--shuffle-report", action="store_true", help="print what the shuffle moved"
    )
    parser.add_argument("--show", type=non_negative_int, default=10, help="result rows to print")
    parser.add_argument("--work-dir", help="where intermediate files go (shared by all workers)")
    parser.add_argument(
        "--crash-map-task",
        type=non_negative_int,
        action="append",
        default=[],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Check the inputs, --output and --work-dir before any work; returns the output directory
    (a fresh one unless --output is given)."""
    try:
        expand_inputs(args.inputs)
    except ValueError as exc:
        parser.error(f"argument INPUT: {exc}")
    if args.work_dir is not None and not os.path.isdir(args.work_dir):
        parser.error(f"argument --work-dir: {args.work_dir} is not a directory")
    output = args.output
    if output is not None and os.path.exists(output) and not os.path.isdir(output):
        parser.error(f"argument --output: {output} is a file, not a directory")
    if output is not None and os.path.exists(os.path.join(output, "_SUCCESS")):
        if not args.overwrite:
            parser.error(
                f"argument --output: {output} already holds a finished job output; "
                "choose a new directory or pass --overwrite"
            )
    try:
        check_output_outside_inputs(output or fresh_output_dir(args.job, create=False), args.inputs)
    except ValueError as exc:
        parser.error(f"argument --output: {exc}")
    return output or fresh_output_dir(args.job)


def print_result(result: JobResult, args: argparse.Namespace) -> None:
    """The summary, the shuffle report if asked, `--show` rows (for word_count the most frequent
    words) and where the output is."""
    print(summary(result.report))
    if args.shuffle_report:
        print(shuffle_report(result.report))
    if args.show and args.job == "word_count":
        print(f"the {args.show} most frequent words:")
        rows = heapq.nsmallest(args.show, result.records(), key=lambda kv: (-kv[1], kv[0]))
    else:
        if args.show:
            print(f"first {args.show} result rows (partition order, keys sorted in a partition):")
        rows = list(itertools.islice(result.records(), args.show))
    for key, value in rows:
        print(f"{key}\t{value}")
    print(
        f"output: {result.output_dir} ({len(result.files)} part files), "
        f"report: {result.output_dir}/report.json"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.scheduler and args.engine != "dask":
        parser.error(f"argument --scheduler: needs --engine dask, not {args.engine}")
    split_bytes = max(1, round(args.split_mb * (1 << 20))) if args.split_mb else None
    default_input = not args.inputs
    if default_input:
        args.inputs = [python_docs_corpus()]
        split_bytes = split_bytes or corpus_split_bytes(args.inputs[0])
    output = _check_paths(parser, args)
    config = JobConfig(
        num_partitions=args.partitions,
        split_bytes=split_bytes,
        max_attempts=args.max_attempts,
        max_bad_records=args.max_bad_records,
        max_bad_fraction=args.max_bad_fraction,
        encoding=args.encoding,
        use_combiner=not args.no_combiner,
        output_format=args.format,
        faults=FaultPlan(crash=frozenset(("map", t) for t in args.crash_map_task)),
    )
    if default_input:
        print(f"input: {args.inputs[0]} (CPython's documentation text, pydoc_data.topics)")
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
    print_result(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
