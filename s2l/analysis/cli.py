"""What `analysis/correlate.py` and `analysis/report.py` share: their options, the checks
made before anything is read or written, and the one-line error report (exit 2)."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from s2l.analysis import pipeline, stats
from s2l.analysis.load import StoreError

MAX_BOOT = 100_000  # n_boot x mixtures indices are held at once


def bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    """argparse type: an int in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text[:40]!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], got {value}")
        return value
    return parse


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("store", help="path to losses.zarr (read only)")
    ap.add_argument("--reference", help="reference scale (default: the one with most FLOPs)")
    ap.add_argument("--out", required=True, help="output directory, outside the store")
    ap.add_argument("--n-boot", type=bounded_int(1, MAX_BOOT), default=stats.N_BOOT,
                    help=f"bootstrap resamples (default {stats.N_BOOT})")
    ap.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=stats.BOOT_SEED,
                    help=f"bootstrap seed (default {stats.BOOT_SEED})")
    return ap


def error(e: Exception) -> int:
    """Report a bad input as exactly one line on stderr; return the exit code for it."""
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return 2


def run(argv: list[str] | None, description: str,
        write: Callable[[pipeline.Analysis, str], str]) -> int:
    """Parse, check --out, analyse the store, then `write(analysis, out)` and print what it
    returns. A StoreError (bad store, reference or --out) exits 2 before anything is
    written; the store is only ever read."""
    args = parser(description).parse_args(argv)
    try:
        pipeline.check_out(args.store, args.out)
        a = pipeline.analyze(args.store, args.reference, n_boot=args.n_boot, seed=args.seed)
    except StoreError as e:
        return error(e)
    print(write(a, args.out))
    return 0


def study_report(argv: list[str] | None, description: str, marker: str, missing: str,
                 write: Callable, show: Callable[[object], str]) -> int:
    """The CLI of a study's report (`analysis/lds.py`, `analysis/selection.py`): read the
    study directory, write the report into `--out` (default: STUDY-report beside it, never
    inside it), print `show(what write returned)`. A study without `marker` (a file or
    directory it must hold), an --out inside it, or a corrupt study: one `error:` line, exit 2.
    """
    from pathlib import Path

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("study", type=Path, help="the study's output directory (read only)")
    ap.add_argument("--out", type=Path, help="where to write the report (default: STUDY-report)")
    args = ap.parse_args(argv)
    study = args.study
    dest = args.out or study.resolve().parent / (study.resolve().name + "-report")
    if not (study / marker).exists():
        return error(ValueError(f"{study}: no {marker}; {missing}"))
    if dest.resolve().is_relative_to(study.resolve()):
        return error(ValueError(f"--out {dest} is inside the study {study}; the report is "
                                "written elsewhere"))
    try:
        result = write(study, dest)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:  # a corrupt study dir
        return error(ValueError(f"{study}: cannot read the study: {type(e).__name__}: "
                                f"{str(e)[:300]}"))
    print(show(result))
    print(f"report in {dest}")
    return 0
