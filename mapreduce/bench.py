"""Word-count throughput: `python -m mapreduce.bench [--size-mb 200] [--workers 1 2] [--out FILE]`.

On ~`size_mb` MB of generated Zipf text (cached under the data directory, seeded) it times:

- `counter_lines`: the plain loop `for line in f: counts.update(line.split())`;
- `counter_blocks`: `counts.update("".join(f.readlines(8 MiB)).split())` per 8 MiB of lines;
- the engine's `word_count` on the sequential executor, the process pool with each worker count,
  and the Dask executor on a 2-worker `LocalCluster`;
- `dask.bag` written the idiomatic way on the same cluster:
  `db.read_text(path, blocksize=...).str.split().flatten().frequencies()`.

MB/s is input MB (10^6 bytes) per second of wall time, best of `repeats` round-robin rounds
(the first round also starts the pools). Ratios: against the faster Counter loop, against the
sequential executor, and (dask) against `dask.bag`.
Goals from the issue: 2 workers >= 1.8x sequential; sequential >= 0.8x Counter loop; our dask
>= 1.5x dask.bag. The engine's tokenizer is Unicode-aware and case-folding, `str.split` is not.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from mapreduce.cli import new_file, positive_float, positive_int
from mapreduce.engine import run_job
from mapreduce.executors import DaskExecutor, Executor, ProcessExecutor, SequentialExecutor
from mapreduce.job import JobConfig
from mapreduce.report import format_table
from mapreduce.word_stats import word_count_job

Row = dict[str, Any]
_SYLLABLES = "ka to ri na se mo lu pe an ex ti ro ve da mi sun or el qu ba ne".split()
_ACCENTED = ["café", "naïve", "über", "señor", "façade", "déjà", "straße", "smörgås"]


def _vocabulary(size: int, rng: np.random.Generator) -> list[str]:
    words: set[str] = set(_ACCENTED)
    ordered = list(_ACCENTED)
    while len(ordered) < size:
        n = int(rng.integers(1, 5))
        word = "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), n))
        if word not in words:
            words.add(word)
            ordered.append(word)
    order = rng.permutation(len(ordered))  # accented words land at random Zipf ranks
    return [ordered[i] for i in order]


def write_zipf_text(
    path: str, size_mb: float, *, seed: int = 0, vocab_size: int = 100_000, exponent: float = 1.1
) -> str:
    """Write about `size_mb` MB (10^6 bytes, plus the rest of the last line) of text:
    Zipf(`exponent`)-distributed words from a seeded vocabulary of syllable words (a few
    accented), 12 words a line, ~1% capitalized."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(vocab_size, rng)
    probs = 1.0 / np.arange(1, vocab_size + 1) ** exponent
    probs /= probs.sum()
    forms = [w + " " for w in vocab] + [w + "\n" for w in vocab]
    forms += [w.capitalize() + " " for w in vocab] + [w.capitalize() + "\n" for w in vocab]
    target = int(size_mb * 1e6)
    written = 0
    chunk_words = 1_200_000
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        while written < target:
            idx = rng.choice(vocab_size, chunk_words, p=probs)
            idx += np.where(np.arange(chunk_words) % 12 == 11, vocab_size, 0)
            idx += np.where(rng.random(chunk_words) < 0.01, 2 * vocab_size, 0)
            data = "".join([forms[i] for i in idx.tolist()]).encode("utf-8")
            if written + len(data) > target:  # stop at the first line end past the target size
                data = data[: data.find(b"\n", target - written) + 1 or len(data)]
            written += f.write(data)
    os.replace(tmp, path)
    return path


def zipf_file(size_mb: float, data_dir: str) -> str:
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, f"zipf_{size_mb:g}mb.txt")
    if not os.path.exists(path):
        write_zipf_text(path, size_mb)
    return path


def counter_lines(path: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            counts.update(line.split())
    return counts


def counter_blocks(path: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    with open(path, encoding="utf-8") as f:
        while lines := f.readlines(8 << 20):
            counts.update("".join(lines).split())
    return counts


def dask_bag_frequencies(path: str, client: Any) -> dict[str, int]:
    import dask.bag as db

    bag = db.read_text(path, blocksize="25MB")
    return dict(client.compute(bag.str.split().flatten().frequencies()).result())


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc (Linux; 0.0 where unavailable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _digest(files: list[str]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for path in files:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def run_benchmark(
    size_mb: float = 200.0,
    workers: list[int] | None = None,
    data_dir: str | None = None,
    repeats: int = 3,
) -> list[Row]:
    """Rows `{name, seconds, mb_per_s, vs_counter, vs_sequential, vs_dask_bag, cpu_s,
    critical_cpu_s, vs_sequential_cpu, goal, met, ...}`.

    The cases run round-robin `repeats` times (so a burst of load from elsewhere hits one round,
    not one case); `seconds` is each case's best round. `cpu_s` is the CPU time the case used in
    all its processes, `critical_cpu_s` the largest share of it in one process (the driver or one
    worker): on a machine shared with other work, `vs_sequential_cpu` (sequential critical CPU /
    this case's) estimates the speedup the wall clock would show with the cores to itself."""
    workers = workers or [1, 2]
    data_dir = data_dir or os.path.join(tempfile.gettempdir(), "mapreduce_bench")
    path = zipf_file(size_mb, data_dir)
    mb = os.path.getsize(path) / 1e6
    job = word_count_job()
    config = JobConfig(num_partitions=4)
    digests: dict[str, str] = {}

    def engine(name: str, executor: Executor) -> Callable[[], None]:
        def case() -> None:
            result = run_job(
                job, [path], os.path.join(out_root, name), executor=executor, config=config
            )
            digests[name] = _digest(result.files)

        return case

    with contextlib.ExitStack() as stack:
        out_root = stack.enter_context(tempfile.TemporaryDirectory(prefix="mapreduce-bench-out-"))
        pools = {n: stack.enter_context(ProcessExecutor(n)) for n in workers}
        dask_ex = stack.enter_context(DaskExecutor(2))

        def dask_pids() -> list[int]:
            return list(dask_ex.client.run(os.getpid).values())

        cases: dict[str, tuple[Callable[[], Any], Callable[[], list[int]]]] = {
            "counter_lines": (lambda: counter_lines(path), list),
            "counter_blocks": (lambda: counter_blocks(path), list),
            "sequential": (engine("sequential", SequentialExecutor()), list),
            **{
                f"processes_{n}": (engine(f"processes_{n}", pool), pool.worker_pids)
                for n, pool in pools.items()
            },
            "dask_2": (engine("dask_2", dask_ex), dask_pids),
            "dask_bag_2": (lambda: dask_bag_frequencies(path, dask_ex.client), dask_pids),
        }
        timings = {name: float("inf") for name in cases}
        cpu = {name: float("inf") for name in cases}
        critical = {name: float("inf") for name in cases}
        for _ in range(repeats):
            for name, (case, pids) in cases.items():
                before = {pid: _cpu_seconds(pid) for pid in pids()}
                cpu_start, start = time.process_time(), time.perf_counter()
                case()
                timings[name] = min(timings[name], time.perf_counter() - start)
                driver = time.process_time() - cpu_start
                # workers started during the case (a pool's first round) count in full
                worker = [_cpu_seconds(pid) - before.get(pid, 0.0) for pid in pids()]
                cpu[name] = min(cpu[name], driver + sum(worker))
                critical[name] = min(critical[name], max([driver, *worker]))

    counter = min(timings["counter_lines"], timings["counter_blocks"])
    goals = {
        "sequential": ("vs_counter", 0.8),
        "processes_2": ("vs_sequential", 1.8),
        "dask_2": ("vs_dask_bag", 1.5),
    }
    rows: list[Row] = []
    for name, seconds in timings.items():
        row: Row = {
            "name": name,
            "seconds": round(seconds, 3),
            "mb_per_s": round(mb / seconds, 2),
            "vs_counter": round(counter / seconds, 3),
            "vs_sequential": round(timings["sequential"] / seconds, 3),
            "vs_dask_bag": round(timings["dask_bag_2"] / seconds, 3),
            "cpu_s": round(cpu[name], 3),
            "critical_cpu_s": round(critical[name], 3),
            "vs_sequential_cpu": round(critical["sequential"] / critical[name], 3),
            "output_digest": digests.get(name, ""),
        }
        if name in goals:
            ratio, target = goals[name]
            row["goal"] = f"{ratio} >= {target}"
            row["met"] = bool(row[ratio] >= target)
        rows.append(row)
    engine_digests = set(digests.values())
    if len(engine_digests) != 1:
        raise RuntimeError(f"executors disagree on the output: {digests}")
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(
        prog="python -m mapreduce.bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--size-mb", type=positive_float, default=200.0)
    parser.add_argument("--workers", type=positive_int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--data-dir", help="where the generated text is cached (default: TMP/mapreduce_bench)"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="rounds; each case reports its best"
    )
    parser.add_argument("--out", type=new_file, default="bench_results_mapreduce.json")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    rows = run_benchmark(args.size_mb, args.workers, args.data_dir, args.repeats)
    columns = ["name", "seconds", "mb_per_s", "vs_counter", "vs_sequential", "vs_dask_bag"]
    columns += ["cpu_s", "critical_cpu_s", "vs_sequential_cpu", "goal", "met"]
    print(format_table(rows, columns))
    meta = {
        "size_mb": args.size_mb,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "results": {"mapreduce": rows}}, f, indent=2)
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
