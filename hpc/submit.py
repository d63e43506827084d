#!/usr/bin/env python
"""Submit a sweep: every task not yet done runs on Slurm (job arrays) or on this machine.

    python hpc/submit.py sweeps/grid.yaml [--out DIR] [--cluster auto|local|slurm]
                         [--dry-run] [--tracking-uri URI] [--no-wait] [--max-parallel N]

Exit codes:
  0    every task done (or, with --no-wait, submitted); also a --dry-run
  1    some task failed (a summary names them and their log files); re-run to retry only them
  2    invalid input: the sweep file, its `slurm:` block or an option (the message names the
       YAML key path or the option); nothing is created or submitted
  3    the driver could not run: another submit.py is live on the same out dir (the message
       names it: host, pid, since when); an I/O error (disk full, permission, read-only file
       system: one line naming the path, the cause and the free space there); sbatch refused
       a submission or Slurm could not be asked; or the driver itself crashed (a traceback)
  130  interrupted (Ctrl-C, SIGTERM, SIGHUP): local jobs are stopped, finished tasks are kept
       and a re-run resumes the others from their checkpoints; Slurm jobs keep running on the
       cluster (`python hpc/status.py OUT --cancel` cancels them)
Running it again submits only what is not done. One driver per out dir: a second one on a busy
out dir exits 3 at once; follow the live one with `python hpc/status.py OUT --wait`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `hpc` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpc import record, tracked  # noqa: E402
from hpc.dispatch import ProgressPrinter, printable  # noqa: E402
from hpc.lease import Lease, LeaseBusy, describe  # noqa: E402
from hpc.resources import CONTROL, SlurmConfig  # noqa: E402
from s2l.config import ConfigError  # noqa: E402
from s2l.tasks import load_study  # noqa: E402

LOCK_FILE = "driver.lock"  # in OUT/.s2l: one live driver per out dir (`hpc.lease`)
NAME_MAX = 255  # bytes in one path component (Linux, most file systems)
PATH_MAX = 4096


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into exit 2)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__[__doc__.index("Exit codes"):])
    p.add_argument("sweep", help="sweep YAML file (e.g. sweeps/grid.yaml)")
    p.add_argument("--out", help="output dir (default: runs/<sweep name>)")
    p.add_argument("--cluster", choices=["auto", "local", "slurm"], default="auto",
                   help="auto: Slurm when sbatch is on PATH, else this machine")
    p.add_argument("--dry-run", action="store_true",
                   help="print the tasks, their size and total compute; change nothing")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the out dir)")
    p.add_argument("--no-wait", action="store_true",
                   help="Slurm: submit and exit instead of watching progress")
    p.add_argument("--max-parallel", type=positive_int,
                   help="local: tasks running at once (default: as many as fit the cores)")
    return p.parse_args(argv)


def resolve_cluster(choice: str) -> str:
    if choice != "auto":
        return choice
    return "slurm" if shutil.which("sbatch") else "local"


def check_option(key: str, value: str | None) -> None:
    """A string option the user gave: not empty, one line."""
    if value is None:
        return
    if not value.strip():
        raise ConfigError(key, "must not be empty")
    if CONTROL.search(value):
        raise ConfigError(key, "must not contain control characters (newline, ESC, ...)")


def check_out_dir(out: Path, key: str = "--out") -> None:
    """Refuse an out dir that cannot or must not be written, before anything is created:
    inside a `.git` directory, an existing file, absurdly long components, or whose nearest
    existing parent is not a writable directory."""
    check_option(key, str(out))
    path = Path(os.path.abspath(out))
    if len(os.fsencode(str(path))) > PATH_MAX:
        raise ConfigError(key, f"path is longer than {PATH_MAX} bytes")
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ConfigError(key, f"a path component is longer than {NAME_MAX} bytes: "
                                   f"{part[:40]!r}...")
    for p in (path, path.resolve()):  # a symlink may lead into a repository
        if ".git" in p.parts:
            raise ConfigError(key, f"{str(out)!r} is inside a .git directory (git's own files)")
    if path.exists() and not path.is_dir():
        raise ConfigError(key, f"{str(out)!r} is an existing file, not a directory")
    if os.path.lexists(path) and not path.exists():
        raise ConfigError(key, f"{str(out)!r} is a broken symbolic link")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(key, f"{str(parent)!r} (on the way to {str(out)!r}) is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{str(parent)!r} is not writable, so {str(out)!r} cannot be created")


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP reached the driver (a KeyboardInterrupt, so that every
    `finally` on the way out runs and no `except Exception` swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_signals():
    """SIGINT, SIGTERM and SIGHUP raise `Interrupted` while the driver runs, whatever the
    disposition it inherited (a shell's background job starts with SIGINT ignored, and then
    Python installs no KeyboardInterrupt of its own). Later signals are ignored while the
    first one is being handled (jobs being stopped). Previous handlers come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        if fired:
            return
        fired.append(signum)
        raise Interrupted(signum)

    old = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)


def io_error_line(e: OSError, default: Path | None = None) -> str:
    """One line for an I/O error: the path (`default` when the error names none, as a failed
    write does), the cause and the free space where it happened."""
    where = e.filename if e.filename is not None else default
    line = f"error: {printable(str(where) if where is not None else '?')}: {printable(e.strerror or str(e))}"
    if where is not None:
        p = Path(os.path.abspath(os.fsdecode(where)))
        while not p.exists() and p != p.parent:
            p = p.parent
        try:
            line += f" ({shutil.disk_usage(p).free / 2**20:.1f} MiB free on {p})"
        except OSError:
            pass
    return line


def main(argv=None) -> int:
    args = parse_args(argv)
    with stop_signals():
        try:
            return _main(args)
        except KeyboardInterrupt:  # a signal before the lock was taken: nothing to stop
            print("\ninterrupted", file=sys.stderr)
            return 130


def _main(args: argparse.Namespace) -> int:
    cluster = resolve_cluster(args.cluster)
    try:
        check_option("--out", args.out)
        check_option("--tracking-uri", args.tracking_uri)
        # Only overrides the user gave: not every study kind tracks to MLflow.
        overrides = {"tracking_uri": args.tracking_uri} if args.tracking_uri is not None else {}
        study = load_study(args.sweep, out=args.out, **overrides)
        sweep_text = Path(args.sweep).read_text()
        cfg = SlurmConfig.for_study(study)
        check_out_dir(study.out)
        # e.g. token budgets that repeat a domain (s2l.lm.budget): said, not refused
        warnings = [] if args.dry_run else getattr(study, "warnings", list)()
    except ConfigError as e:
        print(f"error: {printable(args.sweep)}: {printable(str(e))}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError, RecursionError) as e:  # an unreadable sweep file
        print(f"error: {printable(args.sweep)}: cannot be read ({printable(str(e))[:200]})",
              file=sys.stderr)
        return 2

    for w in warnings:
        print(w if w.startswith(" ") else f"warning: {printable(w)}", file=sys.stderr)
    if args.dry_run:  # takes no lock, writes nothing (the study's describe() has its warnings)
        print(study.describe())
        if cluster == "slurm":
            from hpc.slurm import describe_plan

            print(describe_plan(study.stages(), cfg))
        return 0

    folder = study.out / ".s2l"
    created = [p for p in (study.out, folder) if not p.exists()]
    lock = Lease(folder / LOCK_FILE, what=f"hpc/submit.py {printable(args.sweep)[:200]}",
                 on_lost=lambda: print(f"warning: {folder / LOCK_FILE} was taken over by another "
                                       "driver (this one looked dead to it)", file=sys.stderr))
    code = 3
    try:
        try:
            lock.acquire()
        except LeaseBusy as e:
            print(f"error: {printable(str(study.out))} is busy: another hpc/submit.py runs there "
                  f"({printable(describe(e.holder))}); follow it with "
                  f"`python hpc/status.py {printable(str(study.out))} --wait`", file=sys.stderr)
            return 3
        code = _drive(args, study, cfg, cluster, sweep_text, folder)
        return code
    except OSError as e:  # disk full, permission, read-only file system, ...
        print(io_error_line(e, study.out), file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        raise
    except Exception:  # a bug in the driver: not "a cell failed" (1)
        traceback.print_exc()
        print("error: the driver crashed (above); finished tasks are kept", file=sys.stderr)
        return 3
    finally:
        lock.release()
        if code in (2, 3):  # nothing was dispatched: leave no empty out dir behind
            for d in reversed(created):
                with contextlib.suppress(OSError):
                    (d / (LOCK_FILE + ".guard")).unlink(missing_ok=True)
                    d.rmdir()


def _drive(args, study, cfg, cluster: str, sweep_text: str, folder: Path) -> int:
    """Everything after the lock is taken: replay, prepare, dispatch, report, end the run."""
    from hpc.slurm import SlurmError

    replayed = tracked.replay(study, folder)
    if replayed:
        print(f"published {replayed} tracking records that an earlier run left offline")
    stages = study.stages()
    todo = [t for s in stages for t in s.tasks if not t.is_done()]
    n_tasks = sum(len(s.tasks) for s in stages)
    if not todo:
        print(f"nothing to do: all {n_tasks} tasks of {study.name} are done ({study.out})")
        print(study.summary())
        if tracked.tracks(study):
            tracked.finish(study, "FINISHED", {"cells_done": n_tasks, "cells_failed": 0})
        return 0

    t0 = time.time()
    cpu0 = _cpu_s()
    print(f"{study.name}: {len(todo)} of {n_tasks} tasks to run on {cluster}; preparing data and store...")
    outcome = None
    try:
        try:
            study.prepare()
        except ConfigError as e:  # found only when reading the data (e.g. a glob matching nothing)
            print(f"error: {printable(args.sweep)}: {printable(str(e))}", file=sys.stderr)
            return 2
        print(f"prepared in {time.time() - t0:.1f}s; out: {study.out}")
        record.save_dispatch(folder, sweep_text, cluster, args.tracking_uri)
        if cluster == "slurm":
            from hpc import slurm as backend
        else:
            from hpc import local as backend
        outcome = backend.run_stages(study.stages(), folder, cfg, progress=ProgressPrinter(),
                                     wait=not args.no_wait, max_parallel=args.max_parallel)
    except SlurmError as e:  # sbatch refused (names its reason and the options), sacct failed
        print(f"error: {printable(str(e))}", file=sys.stderr)
        _end_run(study, "FAILED", t0, cpu0, cluster, folder)
        return 3
    except KeyboardInterrupt:
        if cluster == "slurm":
            print(f"\ninterrupted: the submitted jobs keep running on the cluster; watch them with "
                  f"`python hpc/status.py {study.out}`, cancel them with "
                  f"`python hpc/status.py {study.out} --cancel`", file=sys.stderr)
        else:
            print("\ninterrupted: local jobs stopped; finished tasks are kept; re-run the same "
                  "command to run only what is missing (cells resume from their checkpoints)",
                  file=sys.stderr)
        _end_run(study, "KILLED", t0, cpu0, cluster, folder)
        return 130
    print(outcome.summary())
    print(f"wall time {time.time() - t0:.0f}s")
    if outcome.failed or outcome.blocked:
        print(f"re-run `python hpc/submit.py {args.sweep}` to retry only what is missing",
              file=sys.stderr)
        _end_run(study, "FAILED", t0, cpu0, cluster, folder)
        return 1
    if outcome.submitted:
        print(f"submitted {len(outcome.submitted)} tasks; watch with `python hpc/status.py {study.out}`")
        return 0  # the sweep runs on: its MLflow run stays RUNNING
    print(study.summary())
    _end_run(study, "FINISHED", t0, cpu0, cluster, folder)
    return 0


def _cpu_s() -> float:
    """CPU seconds of this process and its reaped children (local jobs and their workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _end_run(study, status: str, t0: float, cpu0: float, cluster: str, folder: Path) -> None:
    """End the sweep's MLflow run (lm studies) with its counts, wall time and CPU hours."""
    if not tracked.tracks(study):
        return
    tasks = [t for s in study.stages() for t in s.tasks]
    done = sum(t.is_done() for t in tasks)
    cpu = _cpu_s() - cpu0
    if cluster == "slurm":
        from hpc.slurm import cpu_seconds

        ids = [e["job_id"] for e in record.load(folder).values() if e.get("cluster") == "slurm"]
        cpu = cpu_seconds(ids)
    metrics = {"cells_done": done, "cells_failed": len(tasks) - done,
               "wall_s": round(time.time() - t0, 1)}
    if cpu is not None:
        metrics["cpu_hours"] = round(cpu / 3600, 4)
    tracked.finish(study, status, metrics)


if __name__ == "__main__":
    sys.exit(main())
