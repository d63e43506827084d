"""The main job end to end, as a user runs it: hpc/submit.py on the smoke sweep, locally,
with a real MLflow server; then a re-run (does nothing) and an interrupted run (resumes)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
from mlflow.tracking import MlflowClient

from conftest import ROOT, run_cli

SMOKE = str(ROOT / "sweeps" / "smoke.yaml")
CELLS = [(s, m) for s in ("xs", "s") for m in ("code-heavy", "prose-heavy")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mlflow_server):
    """One uninterrupted smoke sweep logged to the MLflow server."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    t0 = time.time()
    proc = run_cli("hpc/submit.py", SMOKE, "--out", str(out), "--cluster", "local",
                   "--tracking-uri", mlflow_server)
    print(f"smoke sweep: {time.time() - t0:.1f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_store_follows_the_schema_with_every_cell_done(finished):
    out, _ = finished
    ds = xr.open_zarr(out / "losses.zarr", consolidated=False).load()
    assert ds["loss"].dims == ("scale", "mixture", "seed", "sample") and ds["loss"].dtype == np.float32
    assert ds["done"].dims == ("scale", "mixture", "seed") and ds["done"].values.all()
    assert ds["test_set"].dims == ("sample",) and ds["params"].dims == ("scale",)
    assert ds["flops"].dims == ("scale",) and ds["weight"].dims == ("mixture", "domain")
    loss = ds["loss"].values
    assert np.isfinite(loss).all() and (loss > 0).all()
    sets = set(ds["test_set"].values.tolist())
    assert {"heldout-code", "heldout-scripture", "heldout-quotes", "cloze", "choice"} <= sets
    # multiple choice: `correct` is 0/1 on choice samples and NaN elsewhere
    choice = (ds["test_set"] == "choice").values
    correct = ds["correct"].values
    assert set(np.unique(correct[..., choice])) <= {0.0, 1.0}
    assert np.isnan(correct[..., ~choice]).all()
    # FLOPs are 6 N D with the non-embedding N of each scale
    tokens = ds.attrs["tokens"]
    for s in ("xs", "s"):
        p = int(ds["params"].sel(scale=s))
        assert float(ds["flops"].sel(scale=s)) == pytest.approx(6 * p * tokens[s])
    # the mixture effect the whole study is about: code-heavy training lowers code loss
    by_set = ds["loss"].groupby("test_set").mean("sample")
    code = by_set.sel(test_set="heldout-code", seed=0)
    assert (code.sel(mixture="code-heavy") < code.sel(mixture="prose-heavy")).all()
    scripture = by_set.sel(test_set="heldout-scripture", seed=0)
    assert (scripture.sel(mixture="prose-heavy") < scripture.sel(mixture="code-heavy")).all()


def test_mlflow_has_one_child_run_per_cell_with_comparable_params(finished, mlflow_server):
    out, _ = finished
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(c.info.run_name for c in children) == sorted(f"{s}/{m}/0" for s, m in CELLS)
    for c in children:
        p = c.data.params
        for key in ("scale", "params", "tokens", "flops", "mixture", "seed", "cell_id",
                    "code_version", "weight.code", "weight.scripture", "weight.quotes"):
            assert key in p, key
        assert c.info.status == "FINISHED"
        assert {"loss.heldout-code", "loss.cloze", "acc.choice"} <= set(c.data.metrics)
        history = client.get_metric_history(c.info.run_id, "train_loss")
        assert len(history) >= 5 and history[-1].value < history[0].value
        art = client.list_artifacts(c.info.run_id)
        assert "cell.json" in [a.path for a in art]
    heavy = client.search_runs([exp.experiment_id], "params.mixture = 'code-heavy' and params.scale = 's'")
    assert len(heavy) == 1 and float(heavy[0].data.params["weight.code"]) == pytest.approx(0.8)


def test_rerun_does_nothing(finished, mlflow_server):
    out, _ = finished
    logs_before = sorted((out / ".s2l" / "logs").iterdir())
    proc = run_cli("hpc/submit.py", SMOKE, "--out", str(out), "--cluster", "local",
                   "--tracking-uri", mlflow_server)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do: all 4 tasks" in proc.stdout
    assert sorted((out / ".s2l" / "logs").iterdir()) == logs_before  # nothing was launched


def test_interrupted_sweep_reruns_only_missing_cells_with_equal_results(finished, tmp_path):
    ref_out, _ = finished
    out = tmp_path / "out"
    cmd = [sys.executable, "hpc/submit.py", SMOKE, "--out", str(out), "--cluster", "local"]
    # Started as a shell starts a background job: SIGINT ignored. The driver installs its own
    # handler, so Ctrl-C works whatever disposition it inherited.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.time() + 300
    done = lambda: list(out.glob("cells/*/*/*/DONE"))
    while len(done()) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text[-3000:]
    finished_first = {p.parent for p in done()}
    assert 1 <= len(finished_first) < 4

    again = run_cli("hpc/submit.py", SMOKE, "--out", str(out), "--cluster", "local")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"{4 - len(finished_first)} of 4 tasks to run" in again.stdout
    a = xr.open_zarr(ref_out / "losses.zarr", consolidated=False)
    b = xr.open_zarr(out / "losses.zarr", consolidated=False)
    assert b["done"].values.all()
    np.testing.assert_array_equal(a["loss"].values, b["loss"].values)
    np.testing.assert_array_equal(a["correct"].values, b["correct"].values)
    # without a server URI the sweep tracks into a SQLite file in its out dir
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = client.get_experiment_by_name("smoke")
    names = [r.info.run_name for r in client.search_runs([exp.experiment_id])]
    assert sorted(n for n in names if "/" in n) == sorted(f"{s}/{m}/0" for s, m in CELLS)
