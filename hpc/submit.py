#!/usr/bin/env python
"""Submit a sweep: every task not yet done runs on Slurm (job arrays) or on this machine.

    python hpc/submit.py sweeps/grid.yaml [--out DIR] [--cluster auto|local|slurm]
                         [--dry-run] [--tracking-uri URI] [--no-wait] [--max-parallel N]

Exit codes:
  0    every task done (or, with --no-wait, submitted); also a --dry-run
  1    some task failed (a summary names them and their log files); re-run to retry only them
  2    invalid input: the sweep file, its `slurm:` block or an option (the message names the
       YAML key path or the option); nothing is created or submitted
  3    the driver could not run: sbatch refused a submission, sacct failed, or the out dir or
       data cache could not be written (one line naming the path and the cause)
  130  interrupted (Ctrl-C): finished tasks are kept; a re-run submits only what is missing
Running it again submits only what is not done.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `hpc` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpc import record  # noqa: E402
from hpc.dispatch import ProgressPrinter, printable  # noqa: E402
from hpc.resources import CONTROL, SlurmConfig  # noqa: E402
from s2l.config import ConfigError  # noqa: E402
from s2l.tasks import load_study  # noqa: E402

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


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return _main(args)
    except KeyboardInterrupt:  # local jobs were cancelled on the way out; done tasks stay done
        print("\ninterrupted: finished tasks are kept; re-run the same command to run only "
              "what is missing", file=sys.stderr)
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
    except ConfigError as e:
        print(f"error: {printable(args.sweep)}: {printable(str(e))}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError, RecursionError) as e:  # an unreadable sweep file
        print(f"error: {printable(args.sweep)}: cannot be read ({printable(str(e))[:200]})",
              file=sys.stderr)
        return 2

    if args.dry_run:
        print(study.describe())
        if cluster == "slurm":
            from hpc.slurm import describe_plan

            print(describe_plan(study.stages(), cfg))
        return 0

    stages = study.stages()
    todo = [t for s in stages for t in s.tasks if not t.is_done()]
    n_tasks = sum(len(s.tasks) for s in stages)
    if not todo:
        print(f"nothing to do: all {n_tasks} tasks of {study.name} are done ({study.out})")
        print(study.summary())
        return 0

    from hpc.slurm import SlurmError

    t0 = time.time()
    print(f"{study.name}: {len(todo)} of {n_tasks} tasks to run on {cluster}; preparing data and store...")
    try:
        study.prepare()
        print(f"prepared in {time.time() - t0:.1f}s; out: {study.out}")
        folder = study.out / ".s2l"
        record.save_dispatch(folder, sweep_text, cluster, args.tracking_uri)
        if cluster == "slurm":
            from hpc import slurm as backend
        else:
            from hpc import local as backend
        outcome = backend.run_stages(study.stages(), folder, cfg, progress=ProgressPrinter(),
                                     wait=not args.no_wait, max_parallel=args.max_parallel)
    except ConfigError as e:  # found only when reading the data (e.g. a glob matching nothing)
        print(f"error: {printable(args.sweep)}: {printable(str(e))}", file=sys.stderr)
        return 2
    except SlurmError as e:  # sbatch refused (names its reason and the options), sacct failed
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return 3
    except OSError as e:  # the out dir or the data cache cannot be written
        where = e.filename if e.filename is not None else "?"
        print(f"error: {printable(str(where))}: {printable(e.strerror or str(e))}", file=sys.stderr)
        return 3
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
