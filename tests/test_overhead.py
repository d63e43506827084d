"""What a job pays besides its cells' work, and the sweeps at the edges of the default demo:
- a job whose tasks succeeded skips the interpreter's teardown (after submitit's result
  pickle is written); a failing job exits as before, with its error;
- on the local backend no job imports mlflow (the driver publishes each cell's record) nor
  scipy.stats, and every cell's MLflow run is still logged exactly once;
- a sweep with a single scale ends with exit 0 and says there is nothing to correlate;
- `reference: {seeds: [...]}` gives the reference scale more seeds than its proxies, and the
  summary does not count the proxies' unplanned seed slots as missing.
"""
from __future__ import annotations

import copy
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from submitit.local.local import LocalExecutor

from conftest import ROOT, run_cli
from hpc.node import TaskRunner
from s2l import store as loss_store
from s2l.analysis import summary, synthetic
from s2l.config import ConfigError
from s2l.lm.config import parse_sweep

HERE = Path(__file__).resolve().parent
SMOKE = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())


@pytest.fixture
def importable(monkeypatch):
    """Job processes must import `exit_tasks` and the project: put both on PYTHONPATH."""
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), str(ROOT)] + ([old] if old else [])))


def _wait(job, timeout_s=120.0) -> float:
    deadline = time.time() + timeout_s
    while not job.done():
        assert time.time() < deadline, "job did not end"
        time.sleep(0.05)
    return time.time()


def test_a_successful_job_skips_teardown_and_a_failing_one_does_not(tmp_path, importable):
    from exit_tasks import TeardownTask

    ex = LocalExecutor(tmp_path / "logs")
    ex.update_parameters(timeout_min=5)
    ok = ex.submit(TaskRunner([TeardownTask(tmp_path, "ok", sleep_s=4.0)]))
    ended = _wait(ok)
    ran = json.loads((tmp_path / "ok.ran").read_text())
    # the result pickle was written before the process went: the driver reads the result
    assert ok.result() == {"ok": {"key": "ok"}}
    assert (tmp_path / "ok.marker").exists()
    # the 4 s atexit handler (a stand-in for freeing torch & co.) never ran
    assert not (tmp_path / "ok.teardown").exists()
    assert ended - ran["end"] < 3.5, f"job ended {ended - ran['end']:.1f}s after its task"
    assert "Exiting after successful completion" in Path(ok.paths.stdout).read_text()

    bad = ex.submit(TaskRunner([TeardownTask(tmp_path, "bad", sleep_s=0.5, fail=True)]))
    _wait(bad)
    # a failure takes the normal exit: its handlers run, and the error reaches the driver
    assert (tmp_path / "bad.teardown").exists()
    with pytest.raises(Exception, match="was told to fail"):
        bad.result()
    assert not (tmp_path / "bad.marker").exists()


def _one_scale(tmp_path: Path) -> Path:
    raw = copy.deepcopy(SMOKE)
    raw["name"] = "one-scale"
    raw["scales"] = {"xs": {**raw["scales"]["xs"], "tokens": 20000}}
    raw["mixtures"]["even"] = {"weights": {"code": 1, "scripture": 1, "quotes": 1}}
    raw["slurm"]["pack"] = 2  # two jobs for three cells: one of them runs two
    path = tmp_path / "one-scale.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_one_scale_sweep_exits_0_and_its_jobs_never_import_mlflow_or_transformers(tmp_path):
    out = tmp_path / "out"
    # every process reports its imports on stderr: the jobs' land in their own logs
    proc = run_cli("hpc/submit.py", str(_one_scale(tmp_path)), "--out", str(out),
                   "--cluster", "local", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "nothing to correlate" in proc.stdout and "only one scale (xs)" in proc.stdout
    assert "Traceback" not in proc.stderr

    jobs = json.loads((out / ".s2l" / "jobs.json").read_text())  # task -> its job's logs
    logs = sorted({Path(e["stderr"]) for k, e in jobs.items() if k.startswith("cells/")})
    assert len(logs) == 2
    for log in logs:
        text = log.read_text()
        imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", text, re.M))
        assert {"torch", "s2l.lm.cell", "s2l.train"} <= imported, "import profile missing"
        # nor transformers (s2l.gpt2 is the model), nor the prediction's statistics
        assert not {m for m in imported if m.split(".")[0] in ("mlflow", "transformers")
                    or m.startswith("scipy.stats")}, log
    # ... and yet every cell's run is in MLflow once, FINISHED, records marked synced
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = client.get_experiment_by_name("one-scale")
    runs = [r for r in client.search_runs([exp.experiment_id]) if "/" in r.info.run_name]
    assert sorted(r.info.run_name for r in runs) == ["xs/code-heavy/0", "xs/even/0",
                                                     "xs/prose-heavy/0"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        m = r.data.metrics
        assert m["train_cpu_s"] > 0 and m["eval_cpu_s"] > 0 and "loss.cloze" in m
        assert r.data.params["precision"] in ("fp32", "bf16")
        assert r.data.params["eval_precision"] in ("fp32", "bf16")
    offline = sorted(p.name for p in (out / "tracking-offline").iterdir())
    assert offline == [f"xs__{m}__0.json.synced" for m in ("code-heavy", "even", "prose-heavy")]
    # the progress display ends with one final line, not one per poll while jobs wind down
    finals = [ln for ln in proc.stderr.splitlines() if ln.startswith("[cells] 3/3 done")]
    assert len(finals) == 1, finals


def _with_reference(seeds, ref_seeds):
    raw = copy.deepcopy(SMOKE)
    raw["seeds"] = seeds
    raw["reference"] = {"scale": "s", **({"seeds": ref_seeds} if ref_seeds is not None else {})}
    return parse_sweep(raw, Path("x.yaml"))


def test_reference_seeds_give_the_reference_more_seeds_than_its_proxies():
    cfg = _with_reference([0], [0, 1])
    keys = sorted(c.key for c in cfg.cells())
    assert keys == sorted([f"xs/{m}/0" for m in ("code-heavy", "prose-heavy")]
                          + [f"s/{m}/{k}" for m in ("code-heavy", "prose-heavy") for k in (0, 1)])
    assert cfg.seeds == (0, 1)  # the store's seed axis
    assert cfg.seeds_for("xs") == (0,) and cfg.seeds_for("s") == (0, 1)
    # the extra seed changes no other cell: same ids as without it
    plain = {c.key: c.id for c in _with_reference([0], None).cells()}
    assert {c.key: c.id for c in cfg.cells() if c.key in plain} == plain
    # seed 1 of the reference is its own cell, not a copy of seed 0
    ids = {c.key: c.id for c in cfg.cells()}
    assert ids["s/code-heavy/0"] != ids["s/code-heavy/1"]


@pytest.mark.parametrize("ref_seeds, message", [
    ([1], "must include every seed of `seeds:` [0]; lacks [0]"),
    ([0, 0], "has duplicates"),
    ([], "must not be empty"),
    ("x", "must be a list"),
])
def test_bad_reference_seeds_name_their_key_path(ref_seeds, message):
    with pytest.raises(ConfigError) as e:
        _with_reference([0], ref_seeds)
    assert str(e.value).startswith("reference.seeds"), str(e.value)
    assert message in str(e.value)


def test_summary_counts_only_planned_cells_as_missing(tmp_path):
    # 3 scales x 6 mixtures x 2 seeds; the proxies (s0, s1) planned seed 0 only
    ds = synthetic.synthetic_dataset(n_scales=3, n_mixtures=6, n_seeds=2, n_per_test_set=10,
                                     not_done=[(i, m, 1) for i in (0, 1) for m in range(6)])
    scales, mixtures = [str(s) for s in ds.scale.values], [str(m) for m in ds.mixture.values]
    planned = {f"{s}/{m}/{k}": "id" for s in scales for m in mixtures for k in (0, 1)
               if s == scales[-1] or k == 0}
    ds.attrs["cell_ids"] = planned
    path = loss_store.write_dataset(tmp_path / "a.zarr", ds)
    text = summary.summarize(path)
    assert "r=" in text and "partial store" not in text, text
    # the reference's two seeds give each test set its noise ceiling, as the table has it
    table = summary._quick(path).correlation
    ceil = table.groupby("test_set", sort=False)["noise_ceiling"].first()
    for t, c in ceil.items():
        assert f"  {t}  (noise ceiling of {scales[-1]} across seeds: {c:.2f})" in text
    # a planned cell not done is still named
    ds["done"][2, 3, 1] = False
    ds["loss"][2, 3, 1] = np.nan
    path = loss_store.write_dataset(tmp_path / "b.zarr", ds)
    text = summary.summarize(path)
    assert f"partial store: 1 of {len(planned)} cells not done ({scales[2]}/{mixtures[3]}/seed 1)" in text
