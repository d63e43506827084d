#!/usr/bin/env python
"""Regenerate a selection study's report from its out dir (store + task timings only).

    python analysis/selection.py OUT [--out DIR]

Writes selection.csv, compute.csv, composition.csv and gain.png (into DIR, default OUT) and
prints selection.csv. Works on a partial study: selections without done cells get NaN rows.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the study's out dir (holds losses.zarr and times/)")
    p.add_argument("--out", dest="dest", help="where to write the report (default: OUT)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not (out / "losses.zarr").exists():
        print(f"error: {out / 'losses.zarr'} does not exist; run hpc/submit.py on the sweep first",
              file=sys.stderr)
        return 2
    from s2l.selection.report import write_report

    table = write_report(out)
    if args.dest and Path(args.dest).resolve() != out.resolve():
        dest = Path(args.dest)
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("selection.csv", "compute.csv", "composition.csv", "gain.png"):
            shutil.copy(out / name, dest / name)
    cols = ["selection", "holdout_loss", "loss_ci_low", "loss_ci_high", "gain_vs_random",
            "gain_ci_low", "gain_ci_high", "proxy_flops"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
