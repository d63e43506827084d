#!/usr/bin/env python
"""Where every task of a dispatched study stands: done / running / pending / failed / not submitted.

    python hpc/status.py OUT [--all] [--wait] [--retry-failed] [--cancel]

Re-derives the study from what the last `hpc/submit.py` recorded as data in `OUT/.s2l`
(`sweep.yaml`, the sweep as submitted; `dispatch.json`, the cluster and overrides; and
`jobs.json`, the jobs), asks each task whether it is done (its marker) and Slurm about the
rest with ONE `sacct` call, and prints one row per task key (LM cells: "scale/mixture/seed");
failed tasks come with their log file and the last lines of the error. `--retry-failed`
resubmits every task that is neither done nor still pending/running (what a re-run of
submit.py does; it takes the out dir's driver lock like one). `--wait` alone follows a live
driver (or the Slurm jobs) until nothing runs any more. `--cancel` stops what runs: the Slurm
jobs recorded and not finished, in ONE scancel call, and a local driver holding the out dir
(SIGTERM: it stops its jobs and exits 130). Every call first publishes the MLflow runs of done
cells that a kill left offline (`hpc.tracked`). Nothing in OUT is unpickled or executed:
whoever can write an out dir must not run code as whoever reads its status.

Exit codes: 0 every task done; 1 some task is not; 2 nothing was dispatched to OUT, or its
record is not valid (one `error:` line naming the file); 3 the scheduler could not be asked,
or (--retry-failed) another driver holds the out dir.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `hpc` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpc import record, tracked  # noqa: E402
from hpc.dispatch import Outcome, ProgressPrinter, printable, tail  # noqa: E402
from hpc.lease import Lease, LeaseBusy, describe, live_holder  # noqa: E402
from hpc.resources import SlurmConfig  # noqa: E402
from s2l.config import ConfigError  # noqa: E402
from s2l.tasks import Stage, Study, load_study  # noqa: E402

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


@dataclasses.dataclass
class Dispatched:
    """A study as it was dispatched to an out dir."""

    study: Study
    cfg: SlurmConfig
    cluster: str


def load_dispatched(out: str | Path) -> Dispatched:
    """The study of `out` re-derived from its dispatch record (data only). Raises
    `record.RecordError`, whose message starts with the file at fault."""
    out = Path(out)
    saved = record.load_dispatch(out / ".s2l")
    overrides = {"tracking_uri": saved["tracking_uri"]} if saved["tracking_uri"] else {}
    try:
        study = load_study(saved["sweep"], out=out, **overrides)
        cfg = SlurmConfig.for_study(study)
    except ConfigError as e:
        raise record.RecordError(f"{saved['sweep']}: {e}") from None
    return Dispatched(study, cfg, saved["cluster"])


def collect(stages: list[Stage], folder: str | Path) -> list[Row]:
    """One Row per task of `stages`, in stage order, from the tasks' markers, the job record
    in `folder` and ONE sacct call."""
    from hpc.slurm import FINAL, JOB_ID, sacct_states

    rec = record.load(folder)
    rows, ask = [], []
    for stage in stages:
        for t in stage.tasks:
            e = rec.get(record.task_id(stage.name, t.key))
            row = Row(stage.name, t.key, "done" if t.is_done() else "not submitted")
            if e:
                row.job_id, row.log = e.get("job_id"), e.get("stderr")
                if row.status != "done" and e.get("cluster") == "slurm" and JOB_ID.fullmatch(str(row.job_id)):
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
        pid = int(pid)
        if pid <= 0:  # kill(0) / kill(-1) would ask about process groups, not one process
            return False
        os.kill(pid, 0)
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
            lines.append(f"{r.key:<{w}}  {r.status:<13} {printable(r.job_id or '-'):<12} {r.state}")
            if r.status == "failed":
                lines.append(f"    log: {printable(str(r.log))}")
                lines += ["    | " + ln for ln in r.error.splitlines()]
    return "\n".join(lines)


DRIVER_LOCK = "driver.lock"  # hpc/submit.py's LOCK_FILE


def retry_failed(d: Dispatched, folder: Path, wait: bool = False) -> Outcome:
    """Resubmit every task neither done nor pending/running, on the cluster used before,
    holding the out dir's driver lock (LeaseBusy when a driver holds it)."""
    if d.cluster == "slurm":
        from hpc import slurm as backend
    else:
        from hpc import local as backend
    with Lease(folder / DRIVER_LOCK, what="hpc/status.py --retry-failed"):
        d.study.prepare()  # idempotent; what a re-run of submit.py does before dispatching
        return backend.run_stages(d.study.stages(), folder, d.cfg,
                                  progress=ProgressPrinter() if wait else None, wait=wait)


def cancel(rows: list[Row], folder: Path) -> str:
    """Stop what runs: ONE scancel for every recorded Slurm job not finished; SIGTERM to a
    local driver holding the out dir on this host. Returns what was done, as a line."""
    from hpc.slurm import cancel as scancel

    said = []
    ids = sorted({r.job_id for r in rows if r.status in ("running", "pending")
                  and r.state != "LOCAL" and r.job_id})
    if ids:
        scancel(ids)
        said.append(f"cancelled {len(ids)} Slurm jobs")
    holder = live_holder(folder / DRIVER_LOCK)
    if holder and holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        os.kill(holder["pid"], signal.SIGTERM)
        said.append(f"asked the driver ({describe(holder)}) to stop its jobs")
    elif holder:
        said.append(f"the driver runs on another host ({describe(holder)}): stop it there")
    return "; ".join(said) or "nothing to cancel"


def follow(d: Dispatched, folder: Path, every_s: float = 10.0) -> list[Row]:
    """Print the table whenever it changes until no driver holds the out dir and no task is
    running or pending; returns the last rows."""
    last = None
    while True:
        rows = collect(d.study.stages(), folder)
        table = format_table(rows)
        if table != last:
            print(table + "\n", flush=True)
            last = table
        busy = live_holder(folder / DRIVER_LOCK)
        if not busy and not any(r.status in ("running", "pending") for r in rows):
            return rows
        time.sleep(every_s)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the study's output dir (as given to submit.py --out)")
    p.add_argument("--all", action="store_true", help="list done tasks too")
    p.add_argument("--retry-failed", action="store_true",
                   help="resubmit tasks that failed or were cancelled (not the running ones)")
    p.add_argument("--wait", action="store_true",
                   help="follow the live driver / jobs until nothing runs (with --retry-failed: "
                        "wait for the resubmitted tasks)")
    p.add_argument("--cancel", action="store_true",
                   help="cancel the recorded Slurm jobs not finished (one scancel) and stop a "
                        "local driver holding OUT")
    args = p.parse_args(argv)
    folder = Path(args.out) / ".s2l"
    try:
        d = load_dispatched(args.out)
    except record.RecordError as e:
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return 2
    from hpc.slurm import SlurmError

    try:
        replayed = tracked.replay(d.study, folder)
        if replayed:
            print(f"published {replayed} tracking records left offline")
        rows = collect(d.study.stages(), folder)
        if args.cancel:
            print(cancel(rows, folder))
            return 0
        if args.wait and not args.retry_failed:
            rows = follow(d, folder)
        print(format_table(rows, args.all))
        if args.retry_failed:
            outcome = retry_failed(d, folder, args.wait)
            print(outcome.summary())
            return 0 if outcome.ok or (outcome.submitted and not outcome.failed) else 1
    except SlurmError as e:
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return 3
    except LeaseBusy as e:
        print(f"error: {printable(str(args.out))} is busy: a driver runs there "
              f"({printable(describe(e.holder))})", file=sys.stderr)
        return 3
    return 0 if all(r.status == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
