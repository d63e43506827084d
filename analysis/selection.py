#!/usr/bin/env python
"""Regenerate a selection study's report from its out dir (store + task timings only).

    python analysis/selection.py OUT [--out DIR]

Writes selection.csv, compute.csv, composition.csv and gain.png into DIR (default: OUT-report,
next to the study; never inside OUT) and prints selection.csv. Works on a partial study:
selections without done cells get NaN rows. Exit codes: 0 written, 2 not a readable selection
study (e.g. an LM sweep's store) or a DIR inside OUT (one `error:` line).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", type=Path, help="the study's out dir (holds losses.zarr and times/)")
    p.add_argument("--out", type=Path, help="where to write the report (default: STUDY-report)")
    args = p.parse_args(argv)
    study = args.study
    dest = args.out or study.resolve().parent / (study.resolve().name + "-report")
    if not (study / "losses.zarr").is_dir():
        print(f"error: {study / 'losses.zarr'} does not exist; run hpc/submit.py on the sweep first",
              file=sys.stderr)
        return 2
    if dest.resolve().is_relative_to(study.resolve()):
        print(f"error: --out {dest} is inside the study {study}; the report is written elsewhere",
              file=sys.stderr)
        return 2
    from s2l.selection.report import write_report

    try:
        table = write_report(study, dest)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:  # a corrupt study dir
        print(f"error: {study}: cannot read the study: {type(e).__name__}: {str(e)[:300]}",
              file=sys.stderr)
        return 2
    cols = ["selection", "holdout_loss", "loss_ci_low", "loss_ci_high", "gain_vs_random",
            "gain_ci_low", "gain_ci_high", "proxy_flops"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"report in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
