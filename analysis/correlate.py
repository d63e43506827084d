#!/usr/bin/env python
"""Cross-scale correlation of a sweep's loss store (PAPER.md section 1, DataDecide).

    python analysis/correlate.py runs/grid/losses.zarr --out runs/grid/analysis [--reference xl]

Writes DIR/correlation.csv (per proxy x test set: pearson, spearman, r2 with 95% bootstrap CIs,
compute_ratio, noise ceiling, per-sample R^2), DIR/decision_accuracy.csv, DIR/missing_cells.csv
for a partial store, and the PNG figures. Exit 2 on a bad store or reference.
"""
from __future__ import annotations

import argparse
import sys

from s2l.analysis import pipeline, summary
from s2l.analysis.load import StoreError


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", help="path to losses.zarr")
    ap.add_argument("--reference", help="reference scale (default: the one with most FLOPs)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        a = pipeline.analyze(args.store, args.reference, n_boot=args.n_boot, seed=args.seed)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    written = pipeline.write_outputs(a, args.out)
    print(summary.format_correlations(a))
    print(f"wrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
