#!/usr/bin/env python
"""Run a sweep on this machine and say how much of its CPU went into the cells' own work.

    python benchmarks/grid_overhead.py sweeps/grid.yaml --out /tmp/grid [--fresh]

Runs `hpc/submit.py SWEEP --out OUT --cluster local` as a child process and measures its wall
time and CPU-seconds (user + sys of the driver and every job, all reaped children: RUSAGE_CHILDREN).
Each cell's record (`OUT/tracking-offline/*.json[.synced]`, written by `s2l.lm.cell`) holds
the CPU-seconds of its training (`train_cpu_s`) and evaluation (`eval_cpu_s`); the overhead
fraction is 1 - sum(train + eval) / total. Everything else (data preparation, imports, data
loading, store writes, tracking, process exits, the summary) is overhead. With `--fresh` the
out dir is removed first (the data cache is kept: give S2L_CACHE an empty dir to include it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cell_cpu(out: Path) -> tuple[int, float, float]:
    """(cells, train CPU-s, eval CPU-s) summed over the cell records under `out`."""
    n, train, ev = 0, 0.0, 0.0
    for path in sorted((out / "tracking-offline").glob("*.json*")):
        runs = json.loads(path.read_text())
        for r in runs.values():
            m = {k: v for k, v, _ in r.get("metrics", [])}
            if "train_cpu_s" in m:
                n += 1
                train += m["train_cpu_s"]
                ev += m.get("eval_cpu_s", 0.0)
    return n, train, ev


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep")
    p.add_argument("--out", required=True)
    p.add_argument("--fresh", action="store_true", help="remove OUT first")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    load0 = os.getloadavg()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "hpc" / "submit.py"), args.sweep,
                           "--out", str(out), "--cluster", "local"], cwd=ROOT)
    wall = time.time() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    n, train, ev = cell_cpu(out)
    print(f"\nCPU: {cpu_model()}, {os.cpu_count()} cores; load average before "
          f"{load0[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"sweep exit {proc.returncode}: wall {wall:.0f} s, {cpu:.0f} CPU-s in all")
    if n:
        print(f"{n} cells: train {train:.0f} CPU-s + eval {ev:.0f} CPU-s = {train + ev:.0f} "
              f"CPU-s of work = {(train + ev) / cpu:.1%} of the total; overhead "
              f"{cpu - train - ev:.0f} CPU-s ({1 - (train + ev) / cpu:.1%})")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
