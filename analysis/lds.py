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

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    from s2l.analysis.cli import study_report
    from s2l.attribution.report import write_report

    def show(rows) -> str:
        return "\n".join(f"{r['proxy']:>9} {r['params']:>10,} params  {r['compute_ratio']:>7.1f}x  "
                         f"LDS {r['lds']:.3f} [{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]" for r in rows)

    return study_report(argv, __doc__.splitlines()[0], "study.json",
                        "is this an attribution study directory?", write_report, show)


if __name__ == "__main__":
    sys.exit(main())
