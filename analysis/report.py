#!/usr/bin/env python
"""One self-contained HTML report of a sweep's cross-scale analysis.

    python analysis/report.py runs/grid/losses.zarr --out runs/grid/report [--reference xl]

Writes DIR/report.html (figures embedded, verdict per test set, tables, sweep config, missing
cells) and, beside it, the CSVs and PNGs of analysis/correlate.py. Reads the store only. Exit
2, with one `error:` line and nothing written, on a bad store, reference or --out.
"""
from __future__ import annotations

import sys

from s2l.analysis import cli
from s2l.analysis.report import write_report


def main(argv: list[str] | None = None) -> int:
    return cli.run(argv, __doc__.split("\n\n")[0], lambda a, out: f"wrote {write_report(a, out)}")


if __name__ == "__main__":
    sys.exit(main())
