#!/usr/bin/env python
"""Regenerate a selection study's report from its out dir (store + task timings only).

    python analysis/selection.py OUT [--out DIR]

Writes selection.csv, compute.csv, composition.csv and gain.png into DIR (default: OUT-report,
next to the study; never inside OUT) and prints selection.csv. Works on a partial study:
selections without done cells get NaN rows. Exit codes: 0 written, 2 not a readable selection
study (e.g. an LM sweep's store) or a DIR inside OUT (one `error:` line).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    from s2l.analysis.cli import study_report
    from s2l.selection.report import write_report

    cols = ["selection", "holdout_loss", "loss_ci_low", "loss_ci_high", "gain_vs_random",
            "gain_ci_low", "gain_ci_high", "proxy_flops"]

    def show(table) -> str:
        return table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")

    return study_report(argv, __doc__.split("\n\n")[0], "losses.zarr",
                        "run hpc/submit.py on the sweep first", write_report, show)


if __name__ == "__main__":
    sys.exit(main())
