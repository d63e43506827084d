#!/usr/bin/env python
"""Where every task of a dispatched study stands: done / running / pending / failed / not submitted.

    python hpc/status.py OUT [--all] [--retry-failed] [--wait]

Reads what the last `hpc/submit.py` dispatched (`OUT/.s2l/study.pkl`, `OUT/.s2l/jobs.json`),
asks each task whether it is done (its own files) and Slurm about the rest with ONE `sacct`
call, and prints one row per task key (LM cells: "scale/mixture/seed"); failed tasks come with
their log file and the last lines of the error. `--retry-failed` resubmits every task that is
neither done nor still pending/running (what a re-run of submit.py does). Exit code: 0 when
every task is done, 1 otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `hpc` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpc import record  # noqa: E402
from hpc.dispatch import load_saved_study, tail  # noqa: E402

RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING"}


@dataclasses.dataclass
class Row:
    stage: str
    key: str
    status: str  # done | running | pending | failed | not submitted
    job_id: str | None = None
    state: str = ""  # scheduler state
    log: str | None = None
    error: str = ""


def collect(folder: str | Path) -> list[Row]:
    """One Row per task of the saved study, in stage order."""
    from hpc.slurm import FINAL, sacct_states

    saved = load_saved_study(folder)
    rec = record.load(folder)
    rows, ask = [], []
    for stage in saved["stages"]:
        for t in stage.tasks:
            e = rec.get(record.task_id(stage.name, t.key))
            row = Row(stage.name, t.key, "done" if t.is_done() else "not submitted")
            if e:
                row.job_id, row.log = e.get("job_id"), e.get("stderr")
                if row.status != "done" and e.get("cluster") == "slurm":
                    ask.append(row)
                elif row.status != "done":  # local: the job lives as long as its controller
                    row.status = "running" if _pid_alive(row.job_id) else "failed"
                    row.state = "LOCAL"
            rows.append((row, e))
    states = sacct_states([r.job_id for r in ask]) if ask else {}
    for row in ask:
        row.state = states.get(row.job_id, "PENDING")  # not yet in accounting: just submitted
        if row.state in RUNNING:
            row.status = "running"
        elif row.state in FINAL:
            row.status = "failed"  # ended, yet the task says it is not done
        else:
            row.status = "pending"
    out = []
    for row, e in rows:
        if row.status == "failed":
            row.error = tail(e.get("stderr"), 8) or tail(e.get("stdout"), 8)
        out.append(row)
    return out


def _pid_alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (TypeError, ValueError, OSError):
        return False


def format_table(rows: list[Row], show_all: bool = False) -> str:
    """Counts per stage, then a row per task (only those not done unless `show_all`)."""
    lines = []
    for stage in dict.fromkeys(r.stage for r in rows):
        c = Counter(r.status for r in rows if r.stage == stage)
        lines.append(f"stage {stage}: " + ", ".join(
            f"{c[s]} {s}" for s in ("done", "running", "pending", "failed", "not submitted") if c[s]))
    shown = [r for r in rows if show_all or r.status != "done"]
    if shown:
        w = max(len(r.key) for r in shown)
        lines.append(f"{'task':<{w}}  {'status':<13} {'job':<12} state")
        for r in shown:
            lines.append(f"{r.key:<{w}}  {r.status:<13} {r.job_id or '-':<12} {r.state}")
            if r.status == "failed":
                lines.append(f"    log: {r.log}")
                lines += ["    | " + ln for ln in r.error.splitlines()]
    return "\n".join(lines)


def retry_failed(folder: str | Path, wait: bool = False):
    """Resubmit every task neither done nor pending/running, on the cluster used before."""
    from hpc.dispatch import ProgressPrinter, run_stages

    saved = load_saved_study(folder)
    return run_stages(saved["stages"], folder, cluster=saved["cluster"], slurm_cfg=saved["slurm"],
                      progress=ProgressPrinter() if wait else None, wait=wait)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the study's output dir (as given to submit.py --out)")
    p.add_argument("--all", action="store_true", help="list done tasks too")
    p.add_argument("--retry-failed", action="store_true",
                   help="resubmit tasks that failed or were cancelled (not the running ones)")
    p.add_argument("--wait", action="store_true", help="with --retry-failed: wait for them")
    args = p.parse_args(argv)
    folder = Path(args.out) / ".s2l"
    if not (folder / "study.pkl").exists():
        print(f"error: nothing was dispatched to {args.out} (no {folder / 'study.pkl'})",
              file=sys.stderr)
        return 2
    rows = collect(folder)
    print(format_table(rows, args.all))
    if args.retry_failed:
        outcome = retry_failed(folder, args.wait)
        print(outcome.summary())
        return 0 if outcome.ok or (outcome.submitted and not outcome.failed) else 1
    return 0 if all(r.status == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
