"""Tracking against a real `mlflow server`: parent/child runs, reuse, offline fallback + sync."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from s2l.tracking import (CELL_TAG, PARENT_TAG, MlflowTracker, RecordingTracker, open_tracker,
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
