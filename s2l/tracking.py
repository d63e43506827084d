"""Experiment tracking: the one module that imports mlflow.

One MLflow experiment per sweep, one parent run per sweep, one child run per cell named
`scale/mixture/seed`, found again by its `s2l.cell_id` tag so a requeued or re-run cell reuses
its run instead of making a duplicate. Params are flat strings a user can filter on in the UI
(`params.scale = 'xs' and params.mixture = 'code-heavy'`).

`Tracker` is the interface (sweep_run, cell_run, finish_sweep); two implementations:
- `MlflowTracker`: the real thing, given an explicit tracking URI (a server, or
  `sqlite:///<out>/mlflow.db`; never the implicit default, which depends on the cwd).
- `RecordingTracker`: keeps everything in a dict and, given a path, in a JSON file. It is the
  in-process double for unit tests and the offline fallback on compute nodes that cannot reach
  the tracking server; `sync_offline` replays those files into MLflow later.
`open_tracker` picks: MLflow when reachable, else a RecordingTracker under the out dir.
A sweep run recorded offline has a placeholder id that an MlflowTracker resolves to the real
run by name, so the run ids callers hand around work with either implementation.

Exactly once, whatever is killed when: a finished cell first writes its whole run as an
offline record (`record_cell`: durable before the cell's completion marker), then, after the
marker, logs it online and renames the record `*.synced` (`publish_record`). A record left
unsynced by a kill or an unreachable server is replayed by the next submit or status
(`replay_done`, only for cells whose marker says done). A replay finds the cell's run by its
`s2l.cell_id` tag: a FINISHED run is not logged again, a half-logged one is replaced. Child
runs carry the cell's real start and end times, so the UI shows how long training took.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)

SWEEP_TAG = "s2l.sweep"
CELL_TAG = "s2l.cell_id"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI uses to nest child runs
_OFFLINE_PARENT = "sweep:"  # id prefix of a sweep run recorded offline (resolved on sync)
_STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED", "SCHEDULED")  # MLflow's run states
# MLflow 3's UI opens an experiment on its GenAI (traces) overview unless this tag says the
# experiment holds model-training runs.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


class CellRun(Protocol):
    run_id: str

    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_curves(self, curves: dict[str, list[tuple[int, float]]]) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def finish(self, status: str = "FINISHED", end_time: int | None = None) -> None: ...


@runtime_checkable
class Tracker(Protocol):
    """Where a sweep's runs are logged. Run ids are opaque strings to callers."""

    def sweep_run(self, name: str, params: dict) -> str:
        """The sweep's parent run, created with `params` or reused; returns its run id."""

    def cell_run(self, parent_id: str | None, name: str, cell_id: str,
                 start_time: int | None = None) -> CellRun:
        """The child run of the cell `cell_id` under `parent_id` (as `sweep_run` returned,
        from this tracker or another), created or reused; `start_time` in ms since the epoch."""

    def finish_sweep(self, parent_id: str, status: str = "FINISHED") -> None:
        """Mark the sweep's parent run as ended."""


def default_uri(out: str | Path) -> str:
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


# ----------------------------------------------------------------------------------- MLflow

class MlflowTracker:
    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None):
        # The client retries a dead server for minutes by default; fail within about a minute.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        import mlflow  # heavy: imported only when a real tracker is made
        from mlflow.tracking import MlflowClient

        self._mlflow = mlflow
        self._resolved: dict[str, str] = {}  # offline sweep run id -> MLflow run id
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is not None:
            self.experiment_id = exp.experiment_id
        else:
            # A file-backed store would otherwise put artifacts in ./mlruns of whatever the
            # cwd is; keep them beside the database instead.
            location = artifact_root.resolve().as_uri() if artifact_root and uri.startswith("sqlite") else None
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=location,
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except mlflow.exceptions.MlflowException:  # created meanwhile by another process
                exp = self.client.get_experiment_by_name(experiment)
                self.experiment_id = exp.experiment_id
        if exp is not None and exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

    def _find(self, tag: str, value: str, parent: str | None = None):
        query = f"tags.`{tag}` = '{value}'"
        if parent:
            query += f" and tags.`{PARENT_TAG}` = '{parent}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        return runs[0] if runs else None

    def sweep_run(self, name: str, params: dict) -> str:
        """The sweep's parent run (reused across re-submits). Returns its run id."""
        run = self._find(SWEEP_TAG, name)
        if run is None:
            run = self.client.create_run(self.experiment_id, run_name=name, tags={SWEEP_TAG: name})
            _MlflowCellRun(self.client, run.info.run_id, self._mlflow).log_params(params)
        return run.info.run_id

    def _parent(self, parent_id: str | None) -> str | None:
        if parent_id and parent_id.startswith(_OFFLINE_PARENT):  # the sweep run was recorded
            if parent_id not in self._resolved:  # offline: the real one, by name
                self._resolved[parent_id] = self.sweep_run(parent_id[len(_OFFLINE_PARENT):], {})
            parent_id = self._resolved[parent_id]
        return parent_id

    def cell_status(self, parent_id: str | None, cell_id: str) -> str | None:
        """The status of the cell's run (FINISHED, RUNNING, ...), None when there is none."""
        run = self._find(CELL_TAG, cell_id, self._parent(parent_id))
        return run.info.status if run else None

    def cell_run(self, parent_id: str | None, name: str, cell_id: str,
                 start_time: int | None = None) -> CellRun:
        parent_id = self._parent(parent_id)
        run = self._find(CELL_TAG, cell_id, parent_id)
        if run is not None and start_time is not None:
            # a replay of a whole record: a half-logged earlier attempt is replaced, so that
            # its points are not logged twice
            self.client.delete_run(run.info.run_id)
            run = None
        if run is None:
            tags = {CELL_TAG: cell_id}
            if parent_id:
                tags[PARENT_TAG] = parent_id
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags,
                                         start_time=start_time)
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        return _MlflowCellRun(self.client, run.info.run_id, self._mlflow)

    def finish_sweep(self, parent_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(self._parent(parent_id), status)


class _MlflowCellRun:
    def __init__(self, client, run_id: str, mlflow):
        self.client, self.run_id, self._mlflow = client, run_id, mlflow

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        # Params are write-once in MLflow: re-logging an equal value on resume is skipped.
        new = [Param(k, str(v)) for k, v in params.items() if k not in have]
        for lo in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[lo:lo + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log([Metric(k, float(v), now, step or 0) for k, v in metrics.items()])

    def log_curves(self, curves: dict[str, list[tuple[int, float]]]) -> None:
        """Whole curves {key: [(step, value)]} in few requests: one per 500 points, not one
        per point nor per curve (each request is a commit, an fsync on SQLite: a cell's 16
        curves one by one took 0.19 CPU-s of the driver per cell, with load 2)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log([Metric(key, float(v), now, int(step))
                   for key, points in curves.items() for step, v in points])

    def _log(self, batch) -> None:
        for lo in range(0, len(batch), 500):  # MLflow's per-request limit on metrics
            self.client.log_batch(self.run_id, metrics=batch[lo:lo + 500])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def finish(self, status: str = "FINISHED", end_time: int | None = None) -> None:
        self.client.set_terminated(self.run_id, status, end_time=end_time)


# --------------------------------------------------------------------- recording / offline

class RecordingTracker:
    """Everything logged kept in `self.runs` (run id -> record); written to `path` as JSON
    after every call when a path is given, so a killed process loses nothing logged."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else None
        self.runs: dict[str, dict] = {}
        if self.path and self.path.exists():
            self.runs = json.loads(self.path.read_text())

    def _save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.runs))
            os.replace(tmp, self.path)

    def _run(self, run_id: str, name: str, tags: dict) -> str:
        self.runs.setdefault(run_id, {"name": name, "tags": tags, "params": {}, "metrics": [],
                                      "artifacts": {}, "status": "RUNNING"})
        self._save()
        return run_id

    def sweep_run(self, name: str, params: dict) -> str:
        run_id = self._run(f"{_OFFLINE_PARENT}{name}", name, {SWEEP_TAG: name})
        _RecordedRun(self, run_id).log_params(params)
        return run_id

    def cell_run(self, parent_id: str | None, name: str, cell_id: str,
                 start_time: int | None = None) -> CellRun:
        tags = {CELL_TAG: cell_id, **({PARENT_TAG: parent_id} if parent_id else {})}
        run = _RecordedRun(self, self._run(f"cell:{cell_id}", name, tags))
        if start_time is not None:
            run.record["start_time"] = int(start_time)
            self._save()
        return run

    def finish_sweep(self, parent_id: str, status: str = "FINISHED") -> None:
        self.runs[parent_id]["status"] = status
        self._save()


class _RecordedRun:
    def __init__(self, tracker: RecordingTracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id
        self.record = tracker.runs[run_id]

    def log_params(self, params: dict) -> None:
        for k, v in params.items():
            self.record["params"].setdefault(k, str(v))
        self.tracker._save()

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.record["metrics"] += [[k, float(v), step or 0] for k, v in metrics.items()]
        self.tracker._save()

    def log_curves(self, curves: dict[str, list[tuple[int, float]]]) -> None:
        self.record["metrics"] += [[key, float(v), int(step)]
                                   for key, points in curves.items() for step, v in points]
        self.tracker._save()

    def log_text(self, text: str, artifact_file: str) -> None:
        self.record["artifacts"][artifact_file] = text
        self.tracker._save()

    def finish(self, status: str = "FINISHED", end_time: int | None = None) -> None:
        self.record["status"] = status
        if end_time is not None:
            self.record["end_time"] = int(end_time)
        self.tracker._save()


# ------------------------------------------------------------------------- choosing, sync

def offline_dir(out: str | Path) -> Path:
    return Path(out) / "tracking-offline"


def open_tracker(uri: str, experiment: str, out: str | Path,
                 offline_name: str = "submit") -> Tracker:
    """MLflow at `uri`; if it cannot be reached, a RecordingTracker writing
    `<out>/tracking-offline/<offline_name>.json` (replayed by `sync_offline`)."""
    try:
        if uri.startswith(("http://", "https://")):
            _check_reachable(uri)
        return MlflowTracker(uri, experiment, artifact_root=Path(out) / "mlartifacts")
    except Exception as e:  # noqa: BLE001 - any failure to reach tracking must not lose the cell
        log.warning("tracking server %s unreachable (%s); logging offline under %s",
                    uri, e, offline_dir(out))
        return RecordingTracker(offline_dir(out) / f"{offline_name}.json")


def _check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast: the MLflow client itself retries an unreachable server for minutes."""
    import urllib.request

    with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
        if r.status != 200:
            raise OSError(f"{uri}/health answered {r.status}")


def offline_records(out: str | Path) -> list[Path]:
    """The offline record files under `out` not synced yet, in name order."""
    return sorted(offline_dir(out).glob("*.json"))


class OfflineRecordError(ValueError):
    """An offline record file that is not what `RecordingTracker` writes."""


def sync_offline(out: str | Path, uri: str, experiment: str) -> int:
    """Replay every offline record under `<out>/tracking-offline/` into MLflow at `uri`;
    each synced file is renamed `*.synced`. Returns the number of runs replayed. A file
    that is not a record raises OfflineRecordError naming it (files before it stay synced)."""
    tracker = MlflowTracker(uri, experiment, artifact_root=Path(out) / "mlartifacts")
    count = 0
    for path in offline_records(out):
        count += _replay(tracker, _read_record(path))
        path.rename(path.with_suffix(".json.synced"))
    return count


def _read_record(path: Path) -> dict:
    """A record file as `RecordingTracker` writes it, checked before anything is replayed."""
    def need(ok: bool, what: str) -> None:
        if not ok:  # not `assert`: the check must hold under `python -O` too
            raise TypeError(what)

    try:
        runs = json.loads(path.read_text())
        need(isinstance(runs, dict), "not a mapping of runs")
        for r in runs.values():
            need(isinstance(r["name"], str) and r["status"] in _STATUSES, "name or status")
            need(all(isinstance(r[k], dict) for k in ("tags", "params", "artifacts")),
                 "tags, params or artifacts")
            need(SWEEP_TAG in r["tags"] or isinstance(r["tags"][CELL_TAG], str), "cell id")
            need(all(isinstance(r.get(k, 0), int) for k in ("start_time", "end_time")), "times")
            for key, value, step in r["metrics"]:
                need(isinstance(key, str) and isinstance(value, (int, float))
                     and isinstance(step, int), "metric")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise OfflineRecordError(f"{path}: not an offline tracking record "
                                 f"({type(e).__name__}: {e})") from None
    return runs


def _replay(tracker: MlflowTracker, runs: dict) -> int:
    """Log one record file's runs (sweep runs first, so they get their params); returns the
    number of cell runs."""
    for r in runs.values():
        if SWEEP_TAG in r["tags"]:
            tracker.sweep_run(r["name"], r["params"])
    count = 0
    for r in runs.values():
        if SWEEP_TAG in r["tags"]:
            continue
        parent, cell_id = r["tags"].get(PARENT_TAG), r["tags"][CELL_TAG]
        if tracker.cell_status(parent, cell_id) == "FINISHED":
            continue  # logged before, by a publish or replay that was cut off before its rename
        run = tracker.cell_run(parent, r["name"], cell_id, start_time=r.get("start_time", 0))
        run.log_params(r["params"])
        curves: dict[str, list] = {}
        for key, value, step in r["metrics"]:
            curves.setdefault(key, []).append((step, value))
        run.log_curves(curves)
        for name, text in r["artifacts"].items():
            run.log_text(text, name)
        run.finish(r["status"] if r["status"] != "RUNNING" else "FAILED", r.get("end_time"))
        count += 1
    return count


def record_path(out: str | Path, name: str) -> Path:
    """Where `record_cell` writes the record of the run `name` (unsynced; `*.json.synced`
    once published): known to the driver too, which publishes what a node recorded."""
    return offline_dir(out) / f"{name.replace('/', '__')}.json"


def record_cell(out: str | Path, parent: str | None, name: str, cell_id: str, params: dict,
                artifacts: dict[str, str], history: dict[str, list[tuple[int, float]]],
                metrics: dict[str, float], start_time: float, end_time: float) -> Path:
    """Write a finished cell's whole run as an offline record (replacing an older one of the
    same cell); returns its path. Times in seconds since the epoch. Call it before the
    cell's completion marker: then no done cell is ever without its run."""
    path = record_path(out, name)
    path.unlink(missing_ok=True)  # a record of an earlier, unfinished attempt
    run = RecordingTracker(path).cell_run(parent, name, cell_id, start_time=int(start_time * 1000))
    run.log_params(params)
    for file, text in artifacts.items():
        run.log_text(text, file)
    run.log_curves(history)
    run.log_metrics(metrics)
    run.finish("FINISHED", end_time=int(end_time * 1000))
    return path


def publish_record(uri: str, experiment: str, out: str | Path, path: Path) -> bool:
    """Log one offline record to MLflow at `uri` and mark it synced; False (with a line on
    stdout) when the server cannot be reached or fails: the record stays for a replay."""
    try:
        if uri.startswith(("http://", "https://")):
            _check_reachable(uri)
        tracker = MlflowTracker(uri, experiment, artifact_root=Path(out) / "mlartifacts")
        _replay(tracker, _read_record(path))
    except Exception as e:  # noqa: BLE001 - tracking must never fail a finished cell
        print(f"tracking not reached ({type(e).__name__}: {str(e)[:200]}); the record "
              f"{path} is kept for `hpc/sync_tracking.py` or the next submit", flush=True)
        return False
    path.rename(path.with_suffix(".json.synced"))
    return True


def replay_done(uri: str, experiment: str, out: str | Path, unfinished) -> int:
    """Publish the unsynced offline records under `out`, except those naming a cell for which
    `unfinished(cell_id)` is true (a task not done, or still held by a live worker: killed
    before its marker, its record is replaced by its re-run). Records of runs that are no
    task's (sweep runs, predictions, scores) are always published. Returns how many."""
    count = 0
    for path in offline_records(out):
        try:
            runs = _read_record(path)
        except OfflineRecordError:
            continue  # `hpc/sync_tracking.py` names it; a driver must not stop for it
        cells = [r["tags"][CELL_TAG] for r in runs.values() if SWEEP_TAG not in r["tags"]]
        if not any(unfinished(c) for c in cells) and publish_record(uri, experiment, out, path):
            count += 1
    return count


def sweep_ref(name: str) -> str:
    """A parent-run id for the sweep `name` that any tracker resolves (to the run found by
    the sweep's name), for callers that do not hold the id `sweep_run` returned."""
    return f"{_OFFLINE_PARENT}{name}"


def finish_sweep_run(uri: str, experiment: str, out: str | Path, parent: str | None,
                     status: str, metrics: dict[str, float],
                     artifacts: dict[str, Path] | None = None) -> bool:
    """End the sweep's parent run with `status` (FINISHED, FAILED, KILLED), its sweep-level
    metrics and artifact files; False (with a line) when tracking cannot be reached."""
    if not parent:
        return False
    try:
        if uri.startswith(("http://", "https://")):
            _check_reachable(uri)
        tracker = MlflowTracker(uri, experiment, artifact_root=Path(out) / "mlartifacts")
        run_id = tracker._parent(parent)
        _MlflowCellRun(tracker.client, run_id, tracker._mlflow).log_metrics(metrics)
        for path in (artifacts or {}).values():
            if Path(path).is_file():
                tracker.client.log_artifact(run_id, str(path))
        tracker.finish_sweep(run_id, status)
    except Exception as e:  # noqa: BLE001 - a finished sweep must not fail for its tracking
        print(f"could not end the sweep's MLflow run ({type(e).__name__}: {str(e)[:200]})",
              flush=True)
        return False
    return True


def log_cell(uri: str, experiment: str, out: str | Path, parent: str | None, name: str,
             cell_id: str, params: dict, artifacts: dict[str, str],
             history: dict[str, list[tuple[int, float]]], metrics: dict[str, float],
             start_time: float | None = None, end_time: float | None = None) -> bool:
    """`record_cell` then `publish_record`: one child run for a finished cell, kept offline
    under `out` when MLflow cannot be reached (replayed later). True when logged online."""
    import time

    now = time.time()
    path = record_cell(out, parent, name, cell_id, params, artifacts, history, metrics,
                       start_time if start_time is not None else now,
                       end_time if end_time is not None else now)
    return publish_record(uri, experiment, out, path)


def ui_page(uri: str, experiment: str) -> str:
    """Where the sweep's training runs open in the MLflow UI: the experiment's page in the
    "Model training" view (MLflow 3's UI opens on its GenAI overview unless the URL says
    `workflowType=machine_learning`). A server URI gives a full URL, a sqlite one the page to
    open after `mlflow ui --backend-store-uri URI` (http://127.0.0.1:5000 by default)."""
    page = "/#/experiments/{}?workflowType=machine_learning"
    try:
        from mlflow.tracking import MlflowClient

        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
        page = page.format(exp.experiment_id) if exp else page.format("")
    except Exception:  # noqa: BLE001 - a hint only; never fail a summary for it
        page = page.format("")
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return base + page
