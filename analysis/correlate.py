#!/usr/bin/env python
"""Cross-scale correlation of a sweep's loss store (decision accuracy as in DataDecide, Ai2 2025).

    python analysis/correlate.py runs/grid/losses.zarr --out runs/grid/analysis [--reference xl]

Writes DIR/correlation.csv (per proxy x test set: pearson, spearman, r2 with 95% bootstrap CIs,
compute_ratio, noise ceiling, per-sample R^2), DIR/decision_accuracy.csv, DIR/missing_cells.csv
for a partial store, and the PNG figures. Reads the store only, never writes into it. Exit 2,
with one `error:` line and nothing written, on a missing, unreadable or off-schema store, an
unknown reference, or an --out inside the store.
"""
from __future__ import annotations

import sys

from s2l.analysis import cli, pipeline, summary


def write(a: pipeline.Analysis, out: str) -> str:
    written = pipeline.write_outputs(a, out)
    return f"{summary.format_correlations(a)}\nwrote {len(written)} files to {out}"


def main(argv: list[str] | None = None) -> int:
    return cli.run(argv, __doc__.split("\n\n")[0], write)


if __name__ == "__main__":
    sys.exit(main())
