"""Experiment tracking: the one module that imports mlflow.

One MLflow experiment per sweep, one parent run per sweep, one child run per cell named
`scale/mixture/seed`, found again by its `s2l.cell_id` tag so a requeued or re-run cell reuses
its run instead of making a duplicate. Params are flat strings a user can filter on in the UI
(`params.scale = 'xs' and params.mixture = 'code-heavy'`).

Three trackers share one interface:
- `MlflowTracker`: the real thing, given an explicit tracking URI (a server, or
  `sqlite:///<out>/mlflow.db`; never the implicit default, which depends on the cwd).
- `RecordingTracker`: keeps everything in a dict and, given a path, in a JSON file. It is the
  in-process double for unit tests and the offline fallback on compute nodes that cannot reach
  the tracking server; `sync_offline` replays those files into MLflow later.
- `open_tracker` picks: MLflow when reachable, else a RecordingTracker under the out dir.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

SWEEP_TAG = "s2l.sweep"
CELL_TAG = "s2l.cell_id"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI uses to nest child runs


class CellRun(Protocol):
    run_id: str

    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_history(self, key: str, points: list[tuple[int, float]]) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


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
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            except mlflow.exceptions.MlflowException:  # created meanwhile by another process
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id

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

    def cell_run(self, parent_id: str | None, name: str, cell_id: str) -> CellRun:
        run = self._find(CELL_TAG, cell_id, parent_id)
        if run is None:
            tags = {CELL_TAG: cell_id}
            if parent_id:
                tags[PARENT_TAG] = parent_id
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        return _MlflowCellRun(self.client, run.info.run_id, self._mlflow)

    def finish_sweep(self, parent_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(parent_id, status)


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

    def log_history(self, key: str, points: list[tuple[int, float]]) -> None:
        """A whole curve in few requests (one call per point is slow on SQLite and servers)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log([Metric(key, float(v), now, int(step)) for step, v in points])

    def _log(self, batch) -> None:
        for lo in range(0, len(batch), 500):  # MLflow's per-request limit on metrics
            self.client.log_batch(self.run_id, metrics=batch[lo:lo + 500])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


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
        run_id = self._run(f"sweep:{name}", name, {SWEEP_TAG: name})
        _RecordedRun(self, run_id).log_params(params)
        return run_id

    def cell_run(self, parent_id: str | None, name: str, cell_id: str) -> CellRun:
        tags = {CELL_TAG: cell_id, **({PARENT_TAG: parent_id} if parent_id else {})}
        return _RecordedRun(self, self._run(f"cell:{cell_id}", name, tags))

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

    def log_history(self, key: str, points: list[tuple[int, float]]) -> None:
        self.record["metrics"] += [[key, float(v), int(step)] for step, v in points]
        self.tracker._save()

    def log_text(self, text: str, artifact_file: str) -> None:
        self.record["artifacts"][artifact_file] = text
        self.tracker._save()

    def finish(self, status: str = "FINISHED") -> None:
        self.record["status"] = status
        self.tracker._save()


# ------------------------------------------------------------------------- choosing, sync

def offline_dir(out: str | Path) -> Path:
    return Path(out) / "tracking-offline"


def open_tracker(uri: str, experiment: str, out: str | Path, offline_name: str = "submit"):
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


def sync_offline(out: str | Path, uri: str, experiment: str) -> int:
    """Replay every offline record under `<out>/tracking-offline/` into MLflow at `uri`;
    each synced file is renamed `*.synced`. Returns the number of runs replayed."""
    tracker = MlflowTracker(uri, experiment, artifact_root=Path(out) / "mlartifacts")
    count = 0
    for path in sorted(offline_dir(out).glob("*.json")):
        runs = json.loads(path.read_text())
        sweeps = {rid: r for rid, r in runs.items() if SWEEP_TAG in r["tags"]}
        parent_ids = {rid: tracker.sweep_run(r["name"], r["params"]) for rid, r in sweeps.items()}
        for rid, r in runs.items():
            if rid in sweeps:
                continue
            parent = r["tags"].get(PARENT_TAG)
            if parent and parent.startswith("sweep:") and parent not in parent_ids:
                parent_ids[parent] = tracker.sweep_run(parent[len("sweep:"):], {})
            run = tracker.cell_run(parent_ids.get(parent, parent), r["name"], r["tags"][CELL_TAG])
            run.log_params(r["params"])
            curves: dict[str, list] = {}
            for key, value, step in r["metrics"]:
                curves.setdefault(key, []).append((step, value))
            for key, points in curves.items():
                run.log_history(key, points)
            for name, text in r["artifacts"].items():
                run.log_text(text, name)
            run.finish(r["status"] if r["status"] != "RUNNING" else "FAILED")
            count += 1
        path.rename(path.with_suffix(".json.synced"))
    return count
