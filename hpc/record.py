"""The study's own memory of what was dispatched, as data only (JSON and YAML, never pickles).

In the dispatch folder `OUT/.s2l`:
- `jobs.json`: one entry per task ("stage/key"): the cluster, the scheduler job id (Slurm:
  "ARRAY_INDEX", local: the controller pid), and the job's stdout/stderr files. `hpc/status.py`
  and a re-run of `submit.py` read it to show log files of failed tasks and to avoid
  resubmitting a task whose Slurm job is still pending or running. Written atomically
  (tmp + rename) because a status command may read it while a submitter writes it.
- `sweep.yaml`: the sweep file as submitted, and `dispatch.json`: {"cluster", "tracking_uri"
  (the --tracking-uri override, or null), "time"}. From these two `hpc/status.py OUT`
  re-derives the study and its stages (`s2l.tasks.load_study`) with nothing but the out dir.

Whoever can write an out dir can change these files; reading them must never run code as
whoever reads them, so they are plain data, checked when read.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

FILE = "jobs.json"
SWEEP_FILE = "sweep.yaml"
DISPATCH_FILE = "dispatch.json"
CLUSTERS = ("local", "slurm")


class RecordError(ValueError):
    """A dispatch record is missing or not what submit.py writes. The message names the file."""


def task_id(stage: str, key: str) -> str:
    return f"{stage}/{key}"


def load(folder: str | Path) -> dict[str, dict]:
    """The job record; entries that are not what `update` writes are left out, and log paths
    outside `folder` are dropped (status prints the tail of a failed task's log: a tampered
    record must not make it print some other file)."""
    path = Path(folder) / FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # absent, unreadable, torn by an old version
        return {}
    if not isinstance(data, dict):
        return {}
    fields = ("cluster", "job_id", "stdout", "stderr")
    root = Path(folder).resolve()
    out = {}
    for k, v in data.items():
        if not isinstance(v, dict) or not all(v.get(f) is None or isinstance(v.get(f), str)
                                              for f in fields):
            continue
        out[k] = {**v, **{f: v[f] if _inside(v.get(f), root) else None for f in ("stdout", "stderr")}}
    return out


def _inside(path: str | None, root: Path) -> bool:
    if not path:
        return False
    try:
        return Path(path).resolve().is_relative_to(root)
    except (OSError, ValueError, RuntimeError):  # NUL in the path, a symlink loop
        return False


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
    _write(folder / FILE, json.dumps(data, indent=1, sort_keys=True))


def save_dispatch(folder: str | Path, sweep_text: str, cluster: str,
                  tracking_uri: str | None) -> None:
    """Remember how the study was dispatched: the sweep as submitted and the overrides."""
    if cluster not in CLUSTERS:
        raise ValueError(f"cluster must be one of {CLUSTERS}, got {cluster!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / SWEEP_FILE, sweep_text)
    _write(folder / DISPATCH_FILE, json.dumps({"cluster": cluster, "tracking_uri": tracking_uri,
                                               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}))


def load_dispatch(folder: str | Path) -> dict:
    """{"cluster", "tracking_uri", "time", "sweep": path of the sweep copy}; RecordError when
    nothing was dispatched there or the record is not what `save_dispatch` writes."""
    folder = Path(folder)
    path = folder / DISPATCH_FILE
    if not path.is_file():
        raise RecordError(f"nothing was dispatched to {folder.parent} (no {path})")
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise RecordError(f"{path}: not text") from None
    except (ValueError, RecursionError) as e:
        raise RecordError(f"{path}: not valid JSON ({str(e)[:100]})") from None
    except OSError as e:
        raise RecordError(f"{path}: cannot be read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    if data.get("cluster") not in CLUSTERS:
        raise RecordError(f"{path}: cluster must be one of {list(CLUSTERS)}, "
                          f"got {str(data.get('cluster'))[:40]!r}")
    uri = data.get("tracking_uri")
    if uri is not None and not isinstance(uri, str):
        raise RecordError(f"{path}: tracking_uri must be a string or null")
    sweep = folder / SWEEP_FILE
    if not sweep.is_file():
        raise RecordError(f"{sweep}: missing (the copy of the sweep that was submitted)")
    return {"cluster": data["cluster"], "tracking_uri": uri, "time": str(data.get("time", "")),
            "sweep": sweep}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:  # disk full, interrupted: leave no temp file behind
        tmp.unlink(missing_ok=True)
        raise
