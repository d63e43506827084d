#!/usr/bin/env python
"""LDS of TRAK on proxies of several widths: `lds.csv` and figures from an attribution study.

    python analysis/lds.py runs/attribution-digits [--out DIR]

Reads the study directory written by `python hpc/submit.py sweeps/attribution.yaml` (also while
partial: widths without LDS yet are left out) and writes lds.csv (proxy, width, params,
compute_ratio, lds, ci_lo, ci_hi, n_targets), lds_vs_width.png, score_spearman.csv and
score_spearman.png into --out (default: STUDY-report, next to the study). It never writes into
the study directory. Exit codes: 0 written, 2 not a readable attribution study or an --out
inside it (one `error:` line).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="attribution study directory (has study.json)")
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: STUDY-report)")
    args = ap.parse_args(argv)
    study = args.study
    dest = args.out or study.resolve().parent / (study.resolve().name + "-report")
    if not (study / "study.json").is_file():
        print(f"error: {study}: no study.json; is this an attribution study directory?", file=sys.stderr)
        return 2
    if dest.resolve().is_relative_to(study.resolve()):
        print(f"error: --out {dest} is inside the study {study}; the report is written elsewhere",
              file=sys.stderr)
        return 2
    from s2l.attribution.report import write_report

    try:
        rows = write_report(study, dest)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:  # a corrupt study dir
        print(f"error: {study}: cannot read the study: {type(e).__name__}: {str(e)[:300]}",
              file=sys.stderr)
        return 2
    for r in rows:
        print(f"{r['proxy']:>9} {r['params']:>10,} params  {r['compute_ratio']:>7.1f}x  "
              f"LDS {r['lds']:.3f} [{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]")
    print(f"report in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
