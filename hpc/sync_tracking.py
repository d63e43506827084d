#!/usr/bin/env python
"""Replay tracking records that compute nodes kept offline (server unreachable) into MLflow.

    python hpc/sync_tracking.py OUT [--tracking-uri URI]

The URI and experiment default to those of the sweep in OUT (OUT/sweep.yaml). Each synced
record file is renamed `*.synced`, so running it twice logs nothing twice.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s2l.config import ConfigError  # noqa: E402
from s2l.study import load_study  # noqa: E402
from s2l.tracking import offline_dir, sync_offline  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the sweep's out dir (holds sweep.yaml)")
    p.add_argument("--tracking-uri", help="MLflow URI (default: the sweep's)")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        study = load_study(out / "sweep.yaml", out=out, tracking_uri=args.tracking_uri)
    except ConfigError as e:
        print(f"error: {out}: {e}", file=sys.stderr)
        return 2
    pending = sorted(offline_dir(out).glob("*.json"))
    if not pending:
        print(f"nothing to sync in {offline_dir(out)}")
        return 0
    n = sync_offline(out, study.tracking_uri, study.experiment)
    print(f"synced {n} runs from {len(pending)} offline records into {study.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
