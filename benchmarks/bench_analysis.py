#!/usr/bin/env python
"""Benchmark: correlate + decision accuracy on a large synthetic store.

    python benchmarks/bench_analysis.py [--store /tmp/s2l_bench.zarr] [--samples 200000]

Store: 8 scales x 64 mixtures x 3 seeds x 200,000 samples (5 test sets; `loss` and `correct`,
1.2 GB each as float32), chunked 1 along scale/mixture/seed, created once and reused. The store
is written in a child process so that this process's peak RSS measures the analysis alone.
Target: < 60 s wall, < 4 GB peak memory.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEST_SETS = 5


def create(path: Path, scales: int, mixtures: int, seeds: int, samples: int) -> None:
    from s2l.analysis.synthetic import write_synthetic_store
    t = time.perf_counter()
    write_synthetic_store(path, scales, mixtures, seeds, samples // TEST_SETS)
    print(f"created {path} in {time.perf_counter() - t:.1f} s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "s2l_bench.zarr")
    ap.add_argument("--scales", type=int, default=8)
    ap.add_argument("--mixtures", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "s2l_bench_out")
    ap.add_argument("--create-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = (args.scales, args.mixtures, args.seeds, args.samples)
    if args.create_only:
        create(args.store, *shape)
        return 0
    if not (args.store / "zarr.json").exists():
        subprocess.run([sys.executable, __file__, "--create-only", "--store", str(args.store),
                        "--scales", str(args.scales), "--mixtures", str(args.mixtures),
                        "--seeds", str(args.seeds), "--samples", str(args.samples)], check=True)
    from s2l.analysis import pipeline
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    a = pipeline.analyze(args.store)
    t1 = time.perf_counter()
    written = pipeline.write_outputs(a, args.out)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    print(f"store {args.store}: loss {shape} float32 = {4 * _n(shape) / 2**30:.2f} GiB"
          " (plus `correct`, same size)")
    print(f"analyze (one chunked pass, per-sample R^2, correlations, decision accuracy, "
          f"1000 bootstraps): {t1 - t0:.1f} s")
    print(f"write CSVs + {len(written) - 2} files (figures): {t2 - t1:.1f} s")
    print(f"total wall: {t2 - t0:.1f} s   peak RSS: {peak:.2f} GiB "
          f"(after imports: {rss0:.2f} GiB)")
    print(f"rows: correlation {len(a.correlation)}, decision accuracy {len(a.decision)}")
    return 0


def _n(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


if __name__ == "__main__":
    sys.exit(main())
