"""The driver's side of exactly-once tracking, for study kinds that track (`kind: lm`).

A finished cell writes its whole run as an offline record before its marker and publishes it
after (`s2l.tracking`). What a kill leaves behind is replayed here, by every `hpc/submit.py`
before it dispatches and by every `hpc/status.py`: the unsynced records of cells that are
done and that no live worker holds (records of predictions and scores too) (`hpc.lease`: a worker publishes under its task lease, so
a record it is publishing right now is not published a second time). Replays never run two
at once: they take `OUT/.s2l/replay.lock`, and a replay that finds it held is skipped.

At the end of a submit the sweep's parent run is ended FINISHED, FAILED or KILLED with the
sweep's counts, wall time and CPU hours (`finish`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

from hpc.lease import Lease, LeaseBusy, live_holder, task_lease
from s2l import tracking
from s2l.tasks import Study, Task

REPLAY_LOCK = "replay.lock"


def tracks(study: Study) -> bool:
    """Whether the study logs runs to MLflow (it has a tracking URI and an experiment)."""
    return bool(getattr(study, "tracking_uri", None) and getattr(study, "experiment", None))


def replay(study: Study, folder: str | Path) -> int:
    """Publish the unsynced offline records of done cells no live worker holds; returns how
    many were published (0 when the study does not track or another replay runs)."""
    if not tracks(study) or not tracking.offline_records(study.out):
        return 0
    folder = Path(folder)
    unfinished = {t.fingerprint for s in study.stages() for t in s.tasks
                  if not t.is_done() or live_holder(task_lease(folder, s.name, t.key))}
    lock = Lease(folder / REPLAY_LOCK, what="tracking replay")
    try:
        lock.acquire()
    except LeaseBusy:
        return 0
    try:
        return tracking.replay_done(study.tracking_uri, study.experiment, study.out,
                                    lambda cell_id: cell_id in unfinished)
    finally:
        lock.release()


def publish_done(tasks: Iterable[Task], folder: str | Path | None, wait_s: float = 30.0) -> int:
    """The driver's half of a task whose node did not publish (`TaskRunner(publish=False)`,
    the local backend's jobs, so that no job imports mlflow): call `publish()` of each done
    task, under the replay lock so that a concurrent `hpc/status.py` replay does not log the
    same record twice. Waits up to `wait_s` for the lock; on timeout the records stay offline
    (a replay publishes them). Returns how many tasks were published."""
    tasks = [t for t in tasks if t.is_done()]
    if not tasks:
        return 0
    lock = Lease(Path(folder) / REPLAY_LOCK, what="tracking publish") if folder else None
    deadline = time.monotonic() + wait_s
    while lock is not None:
        try:
            lock.acquire()
            break
        except LeaseBusy:
            if time.monotonic() > deadline:
                return 0
            time.sleep(0.2)
    try:
        for t in tasks:
            t.publish()  # never raises for tracking trouble: the record stays offline
    finally:
        if lock is not None:
            lock.release()
    return len(tasks)


def parent_run(study: Study) -> str:
    """The sweep's parent run id as the study knows it after `prepare()`, else the run found
    by the sweep's name (the form `s2l.tracking` resolves for runs recorded offline)."""
    return getattr(study, "parent_run", None) or tracking.sweep_ref(study.name)


def finish(study: Study, status: str, metrics: dict[str, float]) -> bool:
    """End the sweep's parent run with `status`, `metrics` and the summary files present."""
    if not tracks(study):
        return False
    artifacts = {name: study.out / name for name in ("summary.png", "summary.csv")
                 if (study.out / name).is_file()}
    return tracking.finish_sweep_run(study.tracking_uri, study.experiment, study.out,
                                     parent_run(study), status, metrics, artifacts)
