#!/usr/bin/env python
"""One self-contained HTML report of a sweep's cross-scale analysis.

    python analysis/report.py runs/grid/losses.zarr --out runs/grid/report [--reference xl]

Writes DIR/report.html (figures embedded, verdict per test set, tables, sweep config, missing
cells) and, beside it, the CSVs and PNGs of analysis/correlate.py. Exit 2 on a bad store.
"""
from __future__ import annotations

import argparse
import sys

from s2l.analysis import pipeline
from s2l.analysis.load import StoreError
from s2l.analysis.report import write_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", help="path to losses.zarr")
    ap.add_argument("--reference", help="reference scale (default: the one with most FLOPs)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    args = ap.parse_args(argv)
    try:
        a = pipeline.analyze(args.store, args.reference, n_boot=args.n_boot)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {write_report(a, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
