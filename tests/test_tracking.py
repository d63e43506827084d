"""Tracking against a real `mlflow server`: parent/child runs, reuse, offline fallback + sync."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli
from s2l.tracking import (CELL_TAG, PARENT_TAG, MlflowTracker, OfflineRecordError,
                          RecordingTracker, Tracker, log_cell, offline_records, open_tracker,
                          sync_offline)

pytestmark = pytest.mark.mlflow_server


def test_parent_and_child_runs_are_reused(mlflow_server, tmp_path):
    tr = MlflowTracker(mlflow_server, "exp-reuse")
    parent = tr.sweep_run("sweep-a", {"cells": 2})
    assert tr.sweep_run("sweep-a", {"cells": 2}) == parent
    run = tr.cell_run(parent, "xs/uniform/0", "cell-1")
    run.log_params({"scale": "xs", "seed": 0, "weight.code": 0.5})
    run.log_metrics({"train_loss": 3.0}, step=10)
    run.log_metrics({"train_loss": 2.5}, step=20)
    run.log_text('{"a": 1}', "cell.json")
    run.finish()
    again = tr.cell_run(parent, "xs/uniform/0", "cell-1")  # a requeued cell
    assert again.run_id == run.run_id
    again.log_params({"scale": "xs"})  # equal value on resume: no MLflow error

    client = MlflowClient(mlflow_server)
    got = client.get_run(run.run_id)
    assert got.data.params == {"scale": "xs", "seed": "0", "weight.code": "0.5"}
    assert got.data.tags[PARENT_TAG] == parent and got.data.tags[CELL_TAG] == "cell-1"
    hist = client.get_metric_history(run.run_id, "train_loss")
    assert [(m.step, m.value) for m in hist] == [(10, 3.0), (20, 2.5)]
    exp = client.get_experiment_by_name("exp-reuse")
    found = client.search_runs([exp.experiment_id], "params.scale = 'xs'")
    assert [r.info.run_id for r in found] == [run.run_id]


def test_unreachable_server_falls_back_offline_then_syncs(mlflow_server, tmp_path):
    tr = open_tracker("http://127.0.0.1:9", "exp-offline", tmp_path, offline_name="xs__u__0")
    assert isinstance(tr, RecordingTracker)
    parent = tr.sweep_run("sweep-off", {"cells": 1})
    run = tr.cell_run(parent, "xs/u/0", "cell-off")
    run.log_params({"scale": "xs"})
    run.log_metrics({"loss.heldout-code": 4.25})
    run.finish()
    # the record survives the process: a new tracker reads it back
    assert RecordingTracker(tmp_path / "tracking-offline" / "xs__u__0.json").runs == tr.runs

    assert sync_offline(tmp_path, mlflow_server, "exp-offline") == 1
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("exp-offline")
    runs = client.search_runs([exp.experiment_id], f"tags.`{CELL_TAG}` = 'cell-off'")
    assert len(runs) == 1
    assert runs[0].data.metrics["loss.heldout-code"] == 4.25
    assert runs[0].info.status == "FINISHED"
    parent_run = client.get_run(runs[0].data.tags[PARENT_TAG])
    assert parent_run.info.run_name == "sweep-off"
    assert sync_offline(tmp_path, mlflow_server, "exp-offline") == 0  # nothing twice


def test_log_cell_resolves_an_offline_sweep_run_and_falls_back_offline(mlflow_server, tmp_path):
    # submit could not reach the server: the sweep run exists only in an offline record
    submit = RecordingTracker(tmp_path / "submit.json")
    offline_parent = submit.sweep_run("sweep-late", {"cells": 2})
    assert isinstance(submit, Tracker) and isinstance(MlflowTracker(mlflow_server, "e"), Tracker)
    args = dict(params={"scale": "xs"}, artifacts={"cell.json": "{}"},
                history={"train_loss": [(1, 4.0), (2, 3.5)]}, metrics={"loss.qa": 2.0})
    log_cell(mlflow_server, "exp-late", tmp_path, offline_parent, "xs/u/0", "cell-a", **args)
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("exp-late")
    (cell,) = client.search_runs([exp.experiment_id], f"tags.`{CELL_TAG}` = 'cell-a'")
    parent = client.get_run(cell.data.tags[PARENT_TAG])
    assert parent.info.run_name == "sweep-late"  # the placeholder became the real sweep run
    history = client.get_metric_history(cell.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 4.0), (2, 3.5)]

    # the server goes away: the next cell is kept offline, then replayed under the same sweep
    log_cell("http://127.0.0.1:9", "exp-late", tmp_path, offline_parent, "xs/u/1", "cell-b", **args)
    assert [p.name for p in offline_records(tmp_path)] == ["xs__u__1.json"]
    assert sync_offline(tmp_path, mlflow_server, "exp-late") == 1
    (cell_b,) = client.search_runs([exp.experiment_id], f"tags.`{CELL_TAG}` = 'cell-b'")
    assert cell_b.data.tags[PARENT_TAG] == parent.info.run_id
    assert cell_b.data.params == {"scale": "xs"} and cell_b.data.metrics["loss.qa"] == 2.0
    assert offline_records(tmp_path) == []


def test_a_file_that_is_not_a_record_is_named(mlflow_server, tmp_path):
    (tmp_path / "tracking-offline").mkdir()
    (tmp_path / "tracking-offline" / "bad.json").write_text('{"x": {"name": 1}}')
    with pytest.raises(OfflineRecordError, match=r"bad.json: not an offline tracking record"):
        sync_offline(tmp_path, mlflow_server, "exp-bad")
    assert [p.name for p in offline_records(tmp_path)] == ["bad.json"]  # kept for a look


def test_sync_cli_without_a_sweep_exits_2(tmp_path):
    res = run_cli("hpc/sync_tracking.py", str(tmp_path), timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "does not exist" in res.stderr
