"""LDS of TRAK on proxies of several widths: `lds.csv` and figures from an attribution study.

    python analysis/lds.py runs/attribution-digits [--out DIR]

Reads the study directory written by `python hpc/submit.py sweeps/attribution.yaml` (also while
partial: widths without LDS yet are left out) and writes, into --out (default: the study dir),
lds.csv (proxy, width, params, compute_ratio, lds, ci_lo, ci_hi, n_targets), lds_vs_width.png,
score_spearman.csv and score_spearman.png. See s2l/attribution/report.py.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="attribution study directory (has study.json)")
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: STUDY)")
    args = ap.parse_args(argv)
    if not (args.study / "study.json").exists():
        print(f"{args.study}: no study.json; is this an attribution study directory?", file=sys.stderr)
        return 2
    from s2l.attribution.report import write_report

    rows = write_report(args.study)
    if args.out and args.out.resolve() != args.study.resolve():
        args.out.mkdir(parents=True, exist_ok=True)
        for f in ("lds.csv", "lds_vs_width.png", "score_spearman.csv", "score_spearman.png"):
            if (args.study / f).exists():
                shutil.copy(args.study / f, args.out / f)
    for r in rows:
        print(f"{r['proxy']:>9} {r['params']:>10,} params  {r['compute_ratio']:>7.1f}x  "
              f"LDS {r['lds']:.3f} [{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
