"""The study's own memory of what it submitted: `OUT/.s2l/jobs.json`.

One entry per task ("stage/key"): the cluster, the scheduler job id (Slurm: "ARRAY_INDEX",
local: the controller pid), and the job's stdout/stderr files. `hpc/status.py` and a re-run of
`submit.py` read it to show log files of failed tasks and to avoid resubmitting a task whose
Slurm job is still pending or running. Written atomically (tmp + rename) because a status
command may read it while a submitter writes it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

FILE = "jobs.json"


def task_id(stage: str, key: str) -> str:
    return f"{stage}/{key}"


def load(folder: str | Path) -> dict[str, dict]:
    path = Path(folder) / FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError:  # a torn write from an older version: start afresh
        return {}


def update(folder: str | Path, entries: dict[str, dict]) -> None:
    """Merge `entries` into the record (later submissions of a task replace earlier ones)."""
    if not entries:
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = load(folder)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for k, v in entries.items():
        data[k] = {**v, "submitted": now}
    tmp = folder / f".{FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, folder / FILE)
