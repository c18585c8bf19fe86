"""One registry of benchmarks, one command: `python -m experiments.bench [NAME ...] [--out FILE]`.

Each entry times jaxml (jitted, after warm-up, `block_until_ready`) against torchref (eager, and
`torch.compile` where it works) in the same process, and returns rows. The table printed at the end
gives medians and jax/torch ratios (< 1 means jaxml is faster); the same rows go to a JSON file.
`matmul_peak` measures this machine's float32 GFLOP/s, which other entries use to report MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

Row = dict[str, Any]


def median_seconds(
    fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 7, min_time: float = 0.0
) -> float:
    """Median wall time of `fn()`; `fn` must block until its work is done."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_time:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def try_compile(module: torch.nn.Module) -> torch.nn.Module | None:
    try:
        return torch.compile(module)  # type: ignore[return-value]
    except Exception:  # torch.compile is optional: report "n/a" where the backend is missing
        return None


# --------------------------------------------------------------------------- matmul peak
_PEAK: dict[str, float] = {}


def matmul_peak(args: argparse.Namespace) -> list[Row]:
    """float32 GFLOP/s of an n×n matmul in numpy, XLA and torch; the best is the machine's peak."""
    n = 1024 if args.quick else 2048
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    jmm = jax.jit(jnp.matmul)
    flops = 2 * n**3
    timings = {
        "numpy": median_seconds(lambda: a @ b),
        "jax": median_seconds(lambda: jmm(ja, jb).block_until_ready()),
        "torch": median_seconds(lambda: ta @ tb),
    }
    rows = [
        {"case": f"{name} {n}x{n}", "gflops": flops / t / 1e9, "ms": t * 1e3}
        for name, t in timings.items()
    ]
    _PEAK["gflops"] = max(flops / t / 1e9 for t in timings.values())
    return rows


def peak_gflops(args: argparse.Namespace) -> float:
    if "gflops" not in _PEAK:
        matmul_peak(args)
    return _PEAK["gflops"]


# --------------------------------------------------------------------------- attention
def attention_flops(batch: int, seq: int, embed: int, heads: int, groups: int) -> float:
    """Forward+backward FLOPs (backward = 2× forward) of the projections and both attention matmuls."""
    head_dim = embed // heads
    projections = 2 * batch * seq * embed * (2 * embed + 2 * groups * head_dim)
    attention = 2 * 2 * batch * heads * seq * seq * head_dim
    return 3.0 * (projections + attention)


def attention_case(
    batch: int, seq: int, embed: int, heads: int, attention_type: str, args: argparse.Namespace
) -> Row:
    from jaxml.configs import AttentionConfig
    from jaxml.layers.attention import Attention, AttentionOutput
    from torchref.convert import load_jaxml_params
    from torchref.layers.attention import Attention as TorchAttention

    cfg = AttentionConfig(
        embed, heads, attention_type, apply_causal_mask=True, use_rope=True, use_bias=False
    )
    x = np.random.default_rng(0).standard_normal((batch, seq, embed)).astype(np.float32)
    params = Attention(cfg).init(jax.random.key(0), x)
    jx = jnp.asarray(x)

    def loss(p: Any, x: jax.Array) -> jax.Array:
        out: AttentionOutput = Attention(cfg).apply(p, x)  # type: ignore[assignment]
        return out.out.sum()

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    jax_s = median_seconds(lambda: jax.block_until_ready(grad(params, jx)))

    module = load_jaxml_params(TorchAttention(cfg), params)
    tx = torch.from_numpy(x).requires_grad_(True)

    def torch_step(m: torch.nn.Module) -> None:
        m.zero_grad(set_to_none=True)
        m(tx).out.sum().backward()

    torch_s = median_seconds(lambda: torch_step(module))
    compiled_s = float("nan")
    compiled = None if args.no_compile else try_compile(module)
    if compiled is not None:
        try:
            compiled_s = median_seconds(lambda: torch_step(compiled), warmup=3)
        except Exception:  # the inductor backend can fail on some hosts (no C++ compiler)
            compiled_s = float("nan")
    gflops = attention_flops(batch, seq, embed, heads, cfg.num_kv_heads) / 1e9
    peak = peak_gflops(args)
    return {
        "case": f"{attention_type} b{batch} t{seq} d{embed} h{heads}",
        "jax_ms": jax_s * 1e3,
        "torch_ms": torch_s * 1e3,
        "torch_compile_ms": compiled_s * 1e3,
        "jax/torch": jax_s / torch_s,
        "jax/compile": jax_s / compiled_s,
        "jax_mfu": gflops / jax_s / peak,
        "torch_mfu": gflops / torch_s / peak,
    }


def attention(args: argparse.Namespace) -> list[Row]:
    """Causal self-attention with RoPE, forward+backward (input and param grads), mha/mqa/gqa, two sizes."""
    sizes = [(8, 256, 256, 8)] if args.quick else [(8, 256, 256, 8), (4, 1024, 512, 8)]
    return [attention_case(*size, kind, args) for size in sizes for kind in ("mha", "mqa", "gqa")]


def moe(args: argparse.Namespace) -> list[Row]:
    """MoE layer vs equal-FLOPs dense FFN, 8/16/64 experts (see `experiments/bench_moe.py`)."""
    from experiments import bench_moe

    return bench_moe.run_benchmark(quick=args.quick)


def mapreduce(args: argparse.Namespace) -> list[Row]:
    """word_count MB/s on generated Zipf text (see `mapreduce/bench.py`): 200 MB, 20 with --quick."""
    from mapreduce import bench as mapreduce_bench

    return mapreduce_bench.run_benchmark(size_mb=20.0 if args.quick else 200.0)


def train(args: argparse.Namespace) -> list[Row]:
    """One AdamW step of the LM (~5M and ~27M), jaxml vs torch eager vs torch.compile (see
    `experiments/bench_train.py`)."""
    from experiments import bench_train

    args.rounds, args.steps = (3, 1) if args.quick else (5, 2)
    return bench_train.run_benchmark(args)


def bandwidth(args: argparse.Namespace) -> list[Row]:
    """This machine's memory copy bandwidth (see `experiments/bench_decode.py`)."""
    from experiments import bench_decode

    return bench_decode.bandwidth_rows()


def decode(args: argparse.Namespace) -> list[Row]:
    """Cached vs recompute decoding, mha/gqa/mqa, jaxml vs torchref (`experiments/bench_decode.py`)."""
    from experiments import bench_decode

    return bench_decode.run_benchmark(quick=args.quick)


def speculative(args: argparse.Namespace) -> list[Row]:
    """Speculative vs target-only decoding tokens/s, k = 2/4/8, batch 1/8 (see `experiments/bench_speculative.py`)."""
    from experiments import bench_speculative

    return bench_speculative.run_benchmark(quick=args.quick)


REGISTRY: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "matmul_peak": matmul_peak,
    "bandwidth": bandwidth,
    "decode": decode,
    "attention": attention,
    "moe": moe,
    "mapreduce": mapreduce,
    "train": train,
    "speculative": speculative,
}


def format_table(name: str, rows: list[Row]) -> str:
    if not rows:
        return f"## {name}\n(no rows)"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [f"## {name}", "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[Row]]:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(REGISTRY)}"
    )
    parser.add_argument("--out", default="bench_results.json", help="JSON file for the results")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile timings")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; allowed: {', '.join(REGISTRY)}")
    try:
        check_writable(args.out)
    except OSError as error:
        parser.error(f"--out {args.out}: cannot write it ({error.strerror or error})")
    results: dict[str, list[Row]] = {}
    meta = {
        "machine": platform.machine(),
        "cpus": torch.get_num_threads(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        for name in args.names or list(REGISTRY):
            results[name] = REGISTRY[name](args)
            print(format_table(name, results[name]), flush=True)
    finally:  # a failing benchmark still leaves the finished ones on disk
        save_results({"meta": meta, "results": results}, args.out)
    return results


def check_writable(path: str) -> None:
    """OSError unless `path` can be written (checked by opening it; a new file is removed)."""
    existed = os.path.exists(path)
    if os.path.isdir(path):
        raise IsADirectoryError(21, "is a directory", path)
    with open(path, "a"):
        pass
    if not existed:
        os.remove(path)


def save_results(report: dict[str, Any], path: str) -> None:
    """Write the JSON report to `path`; if that fails after the run, to a temporary file
    instead (and say where), so measured results are never lost."""
    text = json.dumps(report, indent=2, allow_nan=True)
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as error:
        fd, fallback = tempfile.mkstemp(prefix="bench_results-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        print(f"could not write {path} ({error.strerror}); results saved to {fallback}")
        return
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
