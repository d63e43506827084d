#!/usr/bin/env python
"""Proxy planner: the cheapest proxy scale that ranks mixtures like the reference, with a
stated probability, and what the next sweep should add when none does.

    python analysis/plan.py runs/grid/losses.zarr --target-decision-accuracy 0.9 \
        [--test-set T] [--probability 0.8] [--out DIR] [--reference xl] [--n-boot N] [--seed N]

Decision accuracy (share of mixture pairs a proxy orders like the reference, by test-set
loss) is bootstrapped over mixtures and seeds and fitted by a monotone logistic curve in
log-compute. Prints, per test set, each proxy's decision accuracy with its 95% CI and the
probability that it reaches the target; the recommendation (use a scale; add mixtures or
seeds when a CI is too wide; add a larger scale, at the extrapolated compute, when all are
below target); and a leave-one-scale-out back-test of the curve. With --out, writes
DIR/plan.json with the same. Reads the store only. Exit 2, with one `error:` line and
nothing written, on a bad store, option or --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s2l.analysis import cli, load, pipeline, planner, stats


def _fraction(lo: float, hi: float, name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text[:40]!r}") from None
        if not lo < value < hi:
            raise argparse.ArgumentTypeError(f"{name} must be in ({lo}, {hi}), got {value}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", help="path to losses.zarr (read only)")
    ap.add_argument("--target-decision-accuracy", required=True, dest="target",
                    type=_fraction(0.5, 1.0, "a decision accuracy target"),
                    help="decision accuracy the proxy must reach, in (0.5, 1)")
    ap.add_argument("--probability", type=_fraction(0.0, 1.0, "a probability"), default=0.8,
                    help="how sure the plan must be that the target is met (default 0.8)")
    ap.add_argument("--test-set", action="append", dest="test_sets", metavar="T",
                    help="plan for this test set (repeatable; default: every test set)")
    ap.add_argument("--reference", help="reference scale (default: the one with most FLOPs)")
    ap.add_argument("--out", help="write DIR/plan.json (outside the store)")
    ap.add_argument("--n-boot", type=cli.bounded_int(10, cli.MAX_BOOT), default=stats.N_BOOT,
                    help=f"bootstrap replicates (default {stats.N_BOOT})")
    ap.add_argument("--seed", type=cli.bounded_int(0, 2**32 - 1), default=stats.BOOT_SEED,
                    help=f"bootstrap seed (default {stats.BOOT_SEED})")
    args = ap.parse_args(argv)
    try:
        if args.out is not None:
            pipeline.check_out(args.store, args.out)
        ds = load.open_store(args.store)
        reduced = load.reduce_store(ds, load.pick_reference(ds, args.reference),
                                    per_sample=False)
        p = planner.plan(reduced, ds["flops"].load(), args.target, args.probability,
                         args.test_sets, args.n_boot, args.seed)
    except load.StoreError as e:
        return cli.error(e)
    print(planner.describe(p))
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(planner.to_json(p), encoding="utf-8")
        print(f"wrote {out / 'plan.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
