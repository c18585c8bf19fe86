"""Human-readable views of a job report (the JSON written by `run_job`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table; floats get 3 significant decimals."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 1e6 else f"{value:.3g}"
        return str(value)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    numeric = [all(isinstance(r.get(c), int | float) for r in rows) for c in columns]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        padded = (
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(row, widths, numeric, strict=True)
        )
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def shuffle_report(report: dict[str, Any]) -> str:
    """What the shuffle moved: map output before and after combining, and per-partition load."""
    counters = report["counters"]
    total_records = counters["shuffle"]["records"] or 1
    rows = [
        {
            "partition": p["partition"],
            "records": p["shuffle_records"],
            "share": p["shuffle_records"] / total_records,
            "bytes": p["shuffle_bytes"],
            "keys": p["keys"],
            "reduce_s": p["reduce_seconds"],
        }
        for p in report["partitions"]
    ]
    balance = report["partition_balance"]["records"]
    head = (
        f"shuffle of {report['job']} ({report['engine']}, {report['splits']} map tasks -> "
        f"{report['num_partitions']} partitions, partitioner {report['partitioner']})\n"
        f"map output records {counters['map']['map_output_records']:,} -> shuffled "
        f"{counters['shuffle']['records']:,} records / {counters['shuffle']['bytes']:,} bytes "
        f"after combining; load max/mean {balance['max_over_mean']:.2f}, CV {balance['cv']:.2f}"
    )
    return head + "\n" + format_table(rows)


def summary(report: dict[str, Any]) -> str:
    """A few lines: status, timings, counters, reconciliation, failures and bad records."""
    m = report["counters"]["map"]
    rec = report["reconciliation"]
    lines = [
        f"{report['job']}: {report['status']} in {report['wall_seconds']:.2f}s on {report['engine']} "
        f"(workers={report['workers']}), {report['splits']} map tasks, {report['num_partitions']} reduce partitions",
        f"records in {rec['records_in']:,} = processed {rec['records_processed']:,} + skipped "
        f"{rec['records_skipped']:,} ({'ok' if rec['ok'] else 'MISMATCH'}); bytes in {m['bytes_in']:,}; "
        f"shuffle {report['counters']['shuffle']['bytes']:,} bytes",
    ]
    retried = [t for t in report["tasks"] if t["attempts"] > 1]
    if report["failures"] or retried:
        lines.append(
            f"failed attempts {len(report['failures'])}; tasks that needed retries: "
            + ", ".join(f"{t['phase']} {t['task']} (attempt {t['attempts']})" for t in retried)
        )
    for bad in report["bad_records"]["listed"][:5]:
        lines.append(f"skipped {bad['path']}@{bad['offset']}: {bad['reason']}")
    return "\n".join(lines)
