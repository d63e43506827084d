#!/usr/bin/env python
"""Replay tracking records that compute nodes kept offline (server unreachable) into MLflow.

    python hpc/sync_tracking.py OUT [--tracking-uri URI]

The URI and experiment default to those the sweep used: the sweep as submitted and the
--tracking-uri given to submit.py, both recorded in OUT/.s2l (`hpc.record`; an out dir from
before those records: OUT/sweep.yaml and its own URI). Each synced
record file is renamed `*.synced`, so running it twice logs nothing twice. Exit 2, with one
`error:` line, when OUT holds no sweep that tracks runs or a record file is not one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpc import record  # noqa: E402
from s2l.config import ConfigError  # noqa: E402
from s2l.tasks import load_study  # noqa: E402
from s2l.tracking import (OfflineRecordError, offline_dir, offline_records,  # noqa: E402
                          sync_offline)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the sweep's out dir (holds sweep.yaml)")
    p.add_argument("--tracking-uri", help="MLflow URI (default: the sweep's)")
    args = p.parse_args(argv)
    out = Path(args.out)
    sweep, uri = out / "sweep.yaml", args.tracking_uri
    if (out / ".s2l" / record.DISPATCH_FILE).exists():  # else: the sweep's own URI
        try:
            saved = record.load_dispatch(out / ".s2l")
        except record.RecordError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        sweep, uri = saved["sweep"], uri or saved["tracking_uri"]
    try:
        study = load_study(sweep, out=out, tracking_uri=uri)
    except ConfigError as e:
        print(f"error: {out}: {e}", file=sys.stderr)
        return 2
    uri, experiment = getattr(study, "tracking_uri", None), getattr(study, "experiment", None)
    if not uri or not experiment:
        print(f"error: {out}: this kind of study keeps no tracking records", file=sys.stderr)
        return 2
    pending = offline_records(out)
    if not pending:
        print(f"nothing to sync in {offline_dir(out)}")
        return 0
    try:
        n = sync_offline(out, uri, experiment)
    except OfflineRecordError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    print(f"synced {n} runs from {len(pending)} offline records into {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
