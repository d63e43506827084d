#!/usr/bin/env python
"""Submit a sweep: every task not yet done runs on Slurm (job arrays) or on this machine.

    python hpc/submit.py sweeps/grid.yaml [--out DIR] [--cluster auto|local|slurm]
                         [--dry-run] [--tracking-uri URI] [--no-wait] [--max-parallel N]

Exit codes: 0 every task done (or, with --no-wait, submitted), 1 some task failed (a summary
names them and their log files), 2 invalid input (the message names the YAML key path; nothing
is created or submitted). Running it again submits only what is not done.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `hpc` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s2l.config import ConfigError  # noqa: E402
from s2l.study import load_study  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="sweep YAML file (e.g. sweeps/grid.yaml)")
    p.add_argument("--out", help="output dir (default: runs/<sweep name>)")
    p.add_argument("--cluster", choices=["auto", "local", "slurm"], default="auto",
                   help="auto: Slurm when sbatch is on PATH, else this machine")
    p.add_argument("--dry-run", action="store_true",
                   help="print the tasks, their size and total compute; change nothing")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the out dir)")
    p.add_argument("--no-wait", action="store_true",
                   help="Slurm: submit and exit instead of watching progress")
    p.add_argument("--max-parallel", type=int, help="local: tasks running at once (default: cores)")
    return p.parse_args(argv)


def resolve_cluster(choice: str) -> str:
    if choice != "auto":
        return choice
    return "slurm" if shutil.which("sbatch") else "local"


def main(argv=None) -> int:
    args = parse_args(argv)
    cluster = resolve_cluster(args.cluster)
    try:
        # Only overrides the user gave: not every study kind tracks to MLflow.
        overrides = {"tracking_uri": args.tracking_uri} if args.tracking_uri else {}
        study = load_study(args.sweep, out=args.out, **overrides)
    except ConfigError as e:
        print(f"error: {args.sweep}: {e}", file=sys.stderr)
        return 2

    if args.dry_run:
        print(study.describe())
        if cluster == "slurm":
            from hpc.slurm import describe_plan

            print(describe_plan(study.stages(), study.slurm))
        return 0

    stages = study.stages()
    todo = [t for s in stages for t in s.tasks if not t.is_done()]
    n_tasks = sum(len(s.tasks) for s in stages)
    if not todo:
        print(f"nothing to do: all {n_tasks} tasks of {study.name} are done ({study.out})")
        print(study.summary())
        return 0

    t0 = time.time()
    print(f"{study.name}: {len(todo)} of {n_tasks} tasks to run on {cluster}; preparing data and store...")
    try:
        study.prepare()
    except ConfigError as e:  # found only when reading the data (e.g. a glob matching nothing)
        print(f"error: {args.sweep}: {e}", file=sys.stderr)
        return 2
    print(f"prepared in {time.time() - t0:.1f}s; out: {study.out}")

    from hpc.dispatch import ProgressPrinter, run_stages

    try:
        outcome = run_stages(study.stages(), study.out / ".s2l", cluster=cluster,
                             slurm_cfg=study.slurm, max_parallel=args.max_parallel,
                             progress=ProgressPrinter(), wait=not args.no_wait)
    except RuntimeError as e:  # hpc.slurm.SubmissionError: sbatch refused (names its reason)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # local jobs were cancelled on the way out; done cells stay done
        print(f"\ninterrupted: finished cells are kept in {study.out}; re-run the same "
              "command to run only what is missing", file=sys.stderr)
        return 130
    print(outcome.summary())
    print(f"wall time {time.time() - t0:.0f}s")
    if outcome.failed or outcome.blocked:
        print(f"re-run `python hpc/submit.py {args.sweep}` to retry only what is missing",
              file=sys.stderr)
        return 1
    if outcome.submitted:
        print(f"submitted {len(outcome.submitted)} tasks; watch with `python hpc/status.py {study.out}`")
        return 0
    print(study.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
