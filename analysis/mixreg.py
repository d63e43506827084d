#!/usr/bin/env python
"""Mixture regression over a sweep's loss store, and the mixture it proposes (RegMix-style).

    python analysis/mixreg.py runs/regmix/losses.zarr --out runs/regmix/mixreg \
        [--scale S] [--objective TEST_SET | --weights 'a=0.5,b=0.5'] [--seed N]

Per scale and test set, fits loss = f(mixture weights) with ridge (weights and their logs)
and gradient-boosted trees, and keeps the better by k-fold CV. Writes DIR/mixreg.csv (each
model's CV RMSE and Spearman per scale x test set), DIR/proposal.json (the mixture minimising
the objective at --scale, default the most expensive scale with enough done mixtures, with a
90% interval; the sweep's best mixture as a control) and DIR/proposal.yaml (the store's sweep
with those two mixtures: `python hpc/submit.py DIR/proposal.yaml` runs it). The objective is
one test set's loss (--objective), a weighted sum (--weights) or, by default, the mean over
test sets. Reads the store only. Exit 2, with one `error:` line and nothing written, on a bad
store, option or --out.
"""
from __future__ import annotations

import argparse
import sys

from s2l.analysis import cli, load, pipeline, proposal


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", help="path to losses.zarr (read only)")
    ap.add_argument("--out", required=True, help="output directory, outside the store")
    ap.add_argument("--scale", help="scale to propose at (default: the most expensive one "
                                    "with enough done mixtures)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--objective", metavar="TEST_SET", help="minimise this test set's loss")
    group.add_argument("--weights", metavar="T=W,...",
                       help="minimise a weighted sum of test sets' losses")
    ap.add_argument("--seed", type=cli.bounded_int(0, 2**32 - 1), default=0,
                    help="seed of the CV folds, the boosted trees and the search (default 0)")
    args = ap.parse_args(argv)
    try:
        pipeline.check_out(args.store, args.out)
        ds = load.open_store(args.store)
        test_sets, _ = load.test_set_codes(ds)
        objective = proposal.parse_objective(args.weights, args.objective, test_sets)
        m = proposal.analyze_mixtures(args.store, args.scale, objective, args.seed)
    except load.StoreError as e:
        return cli.error(e)
    written = proposal.write_mixture_outputs(m, args.out)
    print(f"{proposal.describe(m)}\nwrote {', '.join(p.name for p in written)} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
