"""The cluster-grade dispatch checks (issue 3) with the real LM cells, as a user runs them:
`python hpc/submit.py SWEEP --cluster slurm --out DIR` in a subprocess, against the local Slurm
cluster (`hpc/slurm_local.sh up`), with the default tracking URI (sqlite in the out dir) and
the session's shared data cache (S2L_CACHE, set by conftest's `s2l_cache`).

- the smoke sweep as a job array; one of its cells cancelled while it runs: submit exits 1
  naming it and its log, status shows it CANCELLED, a re-run submits only it and ends with
  exit 0, every cell done and finite in the store, `sacct` showing the array tasks; a further
  re-run has nothing to do and submits nothing;
- an LM cell preempted (`scancel --signal=USR2 JOB`) after its first checkpoint requeues,
  resumes and ends with losses equal to an uninterrupted run of the same cell;
- a 2-task gloo DDP cell (sweeps/ddp_smoke.yaml);
- the sbatch plan of a 10,000-cell grid (`--dry-run`), and bad Slurm blocks refused with exit 2
  before anything is submitted.

Sweeps here are copies of sweeps/smoke.yaml: only `slurm.poll_s` (not part of a cell's id) is
added, so that a waiting submit notices the end of a job within a second rather than ten.
The `slurm` tests skip without a cluster, but FAIL when S2L_REQUIRE_SLURM=1 (CI).
"""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, run_cli

SMOKE = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())


@pytest.fixture(scope="module", autouse=True)
def smoke_data(s2l_cache):
    """smoke.yaml's data prepared up front, in-process (`s2l.data.prepare_data`): these tests
    count the cells' jobs and arrays; the data stages have their own (test_prepare_stage.py)."""
    from s2l.data import prepare_data
    from s2l.lm.config import parse_sweep

    prepare_data(parse_sweep(copy.deepcopy(SMOKE), ROOT / "sweeps" / "smoke.yaml").data)


def _write_sweep(path: Path, raw: dict | None = None, **top) -> Path:
    raw = copy.deepcopy(raw or SMOKE)
    raw.setdefault("slurm", {}).setdefault("poll_s", 1)
    raw.update(top)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _submit(sweep: Path, out: Path, *extra: str, timeout: float = 300):
    r = run_cli("hpc/submit.py", str(sweep), "--cluster", "slurm", "--out", str(out), *extra,
                timeout=timeout)
    print(f"$ submit {sweep.name} {' '.join(extra)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def _popen_submit(sweep: Path, out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "hpc/submit.py", str(sweep), "--cluster", "slurm",
                             "--out", str(out)], cwd=ROOT, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, text=True)


def _jobs(out: Path) -> dict[str, dict]:
    try:
        return json.loads((out / ".s2l" / "jobs.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait_until(cond, timeout: float, what: str, every: float = 0.2):
    t0 = time.time()
    while True:
        value = cond()
        if value:
            return value
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def _sacct(job: str, *flags: str) -> list[tuple[str, str]]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", *flags, "-j", job],
                         capture_output=True, text=True, timeout=60).stdout
    return [tuple(ln.split("|", 1)) for ln in out.splitlines() if ln]


def _state(job: str) -> str:
    rows = dict(_sacct(job.split("_")[0]))
    return rows.get(job, "").split(" ")[0]


def _queued_under(path: Path) -> set[str]:
    """Jobs in `squeue` whose batch script lies under `path` (other people's jobs may come
    and go on the same cluster)."""
    r = subprocess.run(["squeue", "-h", "-o", "%i|%o"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return {ln.split("|")[0] for ln in r.stdout.splitlines() if str(path) in ln}


def _accounted_under(path: Path) -> set[str]:
    """Jobs in accounting (last day) submitted with a script under `path`."""
    r = subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-S", "now-1day", "-o", "JobIDRaw,SubmitLine"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return {ln.split("|")[0] for ln in r.stdout.splitlines() if str(path) in ln}


def _loss(out: Path, **sel) -> np.ndarray:
    import xarray as xr
    ds = xr.open_zarr(out / "losses.zarr", consolidated=False)
    return ds.loss.sel(**sel).values


# ------------------------------------------------------- smoke sweep: array, cancel, resubmit

VICTIM = "xs/prose-heavy/0"  # array task 1: among the first two to run on 2 cores, and cheap


@pytest.fixture(scope="module")
def smoke(cluster, tmp_path_factory):
    """Run the smoke sweep on Slurm as a user would, cancelling one cell while it runs, then
    re-run submit until done; returns what each step showed (the tests below check it)."""
    tmp = tmp_path_factory.mktemp("smoke")
    # The victim must still be training when Slurm's KillWait (5 s) after `scancel` ends: a
    # cancelled job ignores SIGTERM (submitit) and a cell that finishes meanwhile is done, not
    # failed. So its scale trains 25x longer than in smoke.yaml (10x was not enough once
    # training got 1.5x faster: the victim finished inside KillWait on a loaded machine), and
    # it is cancelled mid-training.
    raw = copy.deepcopy(SMOKE)
    raw["scales"]["xs"]["tokens"] = 1500000
    sweep, out = _write_sweep(tmp / "smoke.yaml", raw), tmp / "out"
    r = {"out": out, "t0": time.time()}
    first = _popen_submit(sweep, out, tmp / "submit1.log")
    try:
        key = f"cells/{VICTIM}"
        _wait_until(lambda: len(_jobs(out)) == 4, 120, "the array's submission")
        r["jobs1"] = _jobs(out)
        victim_job = r["jobs1"][key]["job_id"]
        _wait_until(lambda: _state(victim_job) == "RUNNING", 120, f"{victim_job} to run", 0.5)
        progress = out / key / "progress.json"
        _wait_until(progress.exists, 120, f"{VICTIM} to start training", 0.2)
        subprocess.run(["scancel", victim_job], check=True, timeout=60)
        r["rc1"] = first.wait(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    r["out1"] = (tmp / "submit1.log").read_text()
    print(r["out1"])
    r["array"] = r["jobs1"][key]["job_id"].split("_")[0]
    r["sacct1"] = dict(_sacct(r["array"]))
    st = run_cli("hpc/status.py", str(out), "--all")
    r["status_rc"], r["status"] = st.returncode, st.stdout + st.stderr
    print(r["status"])
    again = _submit(sweep, out)
    r["rc2"], r["out2"], r["jobs2"] = again.returncode, again.stdout + again.stderr, _jobs(out)
    before = _accounted_under(out)
    third = _submit(sweep, out)
    r["rc3"], r["out3"], r["jobs3"] = third.returncode, third.stdout + third.stderr, _jobs(out)
    r["new_jobs_after_third"] = _accounted_under(out) - before
    r["elapsed"] = time.time() - r["t0"]
    print(f"smoke flow: {r['elapsed']:.0f}s")
    return r


@pytest.mark.slurm
def test_smoke_sweep_runs_as_a_job_array(smoke):
    out = smoke["out"]
    # one array of 4 tasks, seen by sacct under the ids jobs.json recorded
    ids = {e["job_id"] for e in smoke["jobs1"].values()}
    assert ids == {f"{smoke['array']}_{i}" for i in range(4)}, ids
    states = {k: v.split(" ")[0] for k, v in smoke["sacct1"].items()}
    assert set(states) == ids, states
    victim = smoke["jobs1"][f"cells/{VICTIM}"]["job_id"]
    assert all(s == "COMPLETED" for j, s in states.items() if j != victim), states
    # the re-run (which ran the cancelled cell again) exits 0 with every cell done and finite
    assert smoke["rc2"] == 0, smoke["out2"]
    import xarray as xr
    ds = xr.open_zarr(out / "losses.zarr", consolidated=False)
    assert bool(ds.done.all()), ds.done.values
    loss = ds.loss.values
    assert loss.shape[:3] == (2, 2, 1) and loss.shape[3] > 0
    assert np.isfinite(loss).all()
    assert set(ds.scale.values) == {"xs", "s"} and set(ds.mixture.values) == {"code-heavy", "prose-heavy"}
    # and a further re-run has nothing to do: prints so, submits nothing, records nothing new
    assert smoke["rc3"] == 0, smoke["out3"]
    assert "nothing to do" in smoke["out3"]
    assert smoke["jobs3"] == smoke["jobs2"]
    assert not smoke["new_jobs_after_third"]


@pytest.mark.slurm
def test_cancelled_cell_fails_and_only_it_is_resubmitted(smoke):
    key = f"cells/{VICTIM}"
    victim = smoke["jobs1"][key]
    # the waiting submit exits 1 naming the cell, its state and its log file
    assert smoke["rc1"] == 1, smoke["out1"]
    failed = [ln for ln in smoke["out1"].splitlines() if "FAILED" in ln]
    assert len(failed) == 1 and VICTIM in failed[0], smoke["out1"]
    assert "CANCELLED" in failed[0] and victim["stderr"] in failed[0], failed
    assert smoke["sacct1"][victim["job_id"]].startswith("CANCELLED")
    # status: failed/cancelled, with the log; the others done
    assert smoke["status_rc"] == 1
    row = next(ln for ln in smoke["status"].splitlines() if ln.startswith(VICTIM))
    assert "failed" in row and "CANCELLED" in row, smoke["status"]
    assert f"log: {victim['stderr']}" in smoke["status"]
    assert "3 done, 1 failed" in smoke["status"]
    # the re-run submitted that cell alone (a new job), and left the others' records alone
    assert "1 of 4 tasks to run" in smoke["out2"], smoke["out2"]
    changed = {k for k in smoke["jobs2"] if smoke["jobs2"][k]["job_id"] != smoke["jobs1"][k]["job_id"]}
    assert changed == {key}, changed
    assert _state(smoke["jobs2"][key]["job_id"]) == "COMPLETED"


# ------------------------------------------------------- preemption of a real LM cell

@pytest.mark.slurm
def test_preempted_lm_cell_resumes_to_the_same_losses(cluster, tmp_path):
    """One cell long enough (~200 steps) to be caught between its first checkpoint (step 20)
    and its end; the same cell runs uninterrupted in another out dir at the same time."""
    t0 = time.time()
    raw = copy.deepcopy(SMOKE)
    raw["scales"] = {"s": dict(raw["scales"]["s"], tokens=200_000)}
    raw["mixtures"] = {"code-heavy": raw["mixtures"]["code-heavy"]}
    raw["train"]["checkpoint_every"] = 20
    sweep = _write_sweep(tmp_path / "preempt.yaml", raw, name="preempt")
    out, ref = tmp_path / "out", tmp_path / "ref"
    cell = out / "cells" / "s" / "code-heavy" / "0"
    proc = _popen_submit(sweep, out, tmp_path / "submit.log")
    ref_proc = None
    try:
        _wait_until(lambda: _jobs(out), 120, "submission")
        # the reference: same sweep, other out dir, submitted (not waited on) meanwhile
        ref_proc = subprocess.Popen([sys.executable, "hpc/submit.py", str(sweep), "--cluster",
                                     "slurm", "--out", str(ref), "--no-wait"], cwd=ROOT,
                                    stdout=open(tmp_path / "ref.log", "w"), stderr=subprocess.STDOUT)
        [entry] = _jobs(out).values()
        job = entry["job_id"]
        _wait_until(lambda: (cell / "ckpt.pt").exists(), 180, "the first checkpoint", 0.05)
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)
        signalled = time.time()
        at_signal = json.loads((cell / "progress.json").read_text())
        seen = []  # the cell's logged steps after the signal
        while proc.poll() is None and time.time() - signalled < 300:
            try:
                step = json.loads((cell / "progress.json").read_text())["step"]
            except (OSError, ValueError, KeyError):
                step = None
            if step is not None and (not seen or seen[-1] != step):
                seen.append(step)
            time.sleep(0.02)
        rc = proc.wait(timeout=10)
        assert ref_proc.wait(timeout=120) == 0, (tmp_path / "ref.log").read_text()
    finally:
        for p in (proc, ref_proc):
            if p is not None and p.poll() is None:
                p.kill()
    text = (tmp_path / "submit.log").read_text()
    print(text, f"\nprogress at the signal: {at_signal}; steps logged after it: {seen}")
    assert rc == 0, text
    total = at_signal["total"]
    assert 20 <= at_signal["step"] < total, at_signal  # preempted while training, after a checkpoint
    # requeued (same job, a REQUEUED record in accounting), not resubmitted; not run twice over
    assert list(_jobs(out).values())[0]["job_id"] == job
    history = [s.split(" ")[0] for _, s in _sacct(job, "-D")]
    assert history == ["REQUEUED", "COMPLETED"], history
    log = Path(entry["stdout"]).read_text()
    assert "[s2l] checkpointed; requeue 1/" in log and "Requeued job" in log, log
    # resumed from the checkpoint: a restart from scratch would log step 10 again (log_every
    # 10, first checkpoint at 20); training went on after the requeue, to the end
    assert min(seen) >= 20 and max(seen) == total, seen
    assert not (cell / "ckpt.pt").exists()  # a done cell drops its optimizer state
    # the uninterrupted reference finishes (a waiting re-run adopts its job) ...
    r = _submit(sweep, ref)
    assert r.returncode == 0, r.stdout + r.stderr
    [ref_entry] = _jobs(ref).values()
    assert [s.split(" ")[0] for _, s in _sacct(ref_entry["job_id"], "-D")] == ["COMPLETED"]
    # ... and both cells end with exactly the same per-sample losses
    a = _loss(out, scale="s", mixture="code-heavy", seed=0)
    b = _loss(ref, scale="s", mixture="code-heavy", seed=0)
    assert np.isfinite(a).all() and np.array_equal(a, b), np.abs(a - b).max()
    print(f"preemption test: {time.time() - t0:.0f}s")


# ------------------------------------------------------- 2-task gloo DDP cell

@pytest.mark.slurm
def test_two_task_gloo_ddp_lm_cell(cluster, tmp_path):
    """sweeps/ddp_smoke.yaml: the smoke sweep's xs/code-heavy/0 cell (same id) on 2 Slurm tasks.

    Sound evidence that both ranks trained together: the cell's losses are within float
    rounding of the single-process cell's (the mean of two half-batch gradients, all-reduced,
    is the full-batch gradient), yet not bit-identical (a lone process would be; a rank
    training alone on its half-batch would be far off)."""
    t0 = time.time()
    out, single_out = tmp_path / "out", tmp_path / "single"
    raw = yaml.safe_load((ROOT / "sweeps" / "ddp_smoke.yaml").read_text())
    raw["slurm"].pop("resources")  # the same cell in one process: the reference
    assert _submit(_write_sweep(tmp_path / "single.yaml", raw), single_out).returncode == 0
    r = _submit(ROOT / "sweeps" / "ddp_smoke.yaml", out, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    [entry] = _jobs(out).values()
    job = entry["job_id"]
    logs = Path(entry["stdout"]).parent
    for rank in (0, 1):  # submitit: one log per task; each rank started and finished
        text = (logs / f"{job}_{rank}_log.out").read_text()
        assert f"global_rank={rank}(2)" in text and "Job completed successfully" in text, text
    script = (logs / f"{job}_submission.sh").read_text()
    assert "--ntasks-per-node=2" in script and "--cpus-per-task=1" in script
    ddp = _loss(out, scale="xs", mixture="code-heavy", seed=0)
    single = _loss(single_out, scale="xs", mixture="code-heavy", seed=0)
    assert np.isfinite(ddp).all()
    np.testing.assert_allclose(ddp, single, rtol=1e-4)
    assert not np.array_equal(ddp, single), "bit-identical to one process: did rank 1 take part?"
    print(f"DDP test: {time.time() - t0:.0f}s; max |ddp - single| = {np.abs(ddp - single).max():.2e}")


# ------------------------------------------------------- dry run of a 10,000-cell grid

def test_dry_run_of_10000_cells_prints_the_sbatch_plan_fast(tmp_path):
    raw = copy.deepcopy(SMOKE)
    raw["name"] = "grid10k"
    raw["seeds"] = [0, 1, 2, 3]
    raw["scales"] = {f"p{i}": {"d_model": 16 * (i + 1), "n_layers": 1 + i // 3, "n_heads": 2}
                     for i in range(10)}
    raw["mixtures"] = {f"m{j:03d}": {"weights": {"code": 1 + j % 7, "scripture": 1 + j % 5,
                                                 "quotes": 1 + j % 3}} for j in range(250)}
    raw["slurm"] = {"array_parallelism": 64, "submit_batch": 400,
                    "defaults": {"cpus": 2, "mem_gb": 8, "time": "1:00:00"},
                    "resources": {f"p{i}": {"gpus": 1, "cpus": 8, "mem_gb": 64, "time": "12:00:00",
                                            "partition": "gpu"} for i in range(7, 10)}}
    sweep = _write_sweep(tmp_path / "grid10k.yaml", raw)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    r = _submit(sweep, out, "--dry-run")
    wall = time.perf_counter() - t0
    print(f"dry run of 10,000 cells: {wall:.2f}s wall (python start-up included)")
    assert r.returncode == 0, r.stderr
    assert wall < 15, f"{wall:.1f}s (target: under 5 s on an unloaded machine)"
    text = r.stdout
    assert "total: 10000 cells, 0 done" in text
    assert len([ln for ln in text.splitlines() if re.match(r"p\d ", ln)]) == 10_000
    assert "stage cells: 10000 tasks -> 10000 jobs (pack 1) in 26 arrays" in text
    small = next(ln for ln in text.splitlines() if ln.strip().startswith("7000 tasks"))
    big = next(ln for ln in text.splitlines() if ln.strip().startswith("3000 tasks"))
    assert "arrays 17 x 400 + 1 x 200 (%64)" in small and "--time=60 --mem=8GB --cpus-per-task=2" in small
    assert "arrays 7 x 400 + 1 x 200 (%64)" in big
    for flag in ("--time=720", "--mem=64GB", "--cpus-per-task=8", "--gpus-per-node=1", "--partition=gpu"):
        assert flag in big, big
    assert "total: 10000 jobs in 26 sbatch calls" in text
    assert not out.exists()  # a dry run changes nothing on disk


# ------------------------------------------------------- bad Slurm blocks

BAD_SLURM = [
    ({"defaults": {"partitionn": "gpu"}}, "slurm.defaults.partitionn"),
    ({"resources": {"s": {"gpus": -1}}}, "slurm.resources.s.gpus"),
    ({"defaults": {"time": "1:2:3:4"}}, "slurm.defaults.time"),
]


@pytest.mark.slurm
@pytest.mark.parametrize("block,where", BAD_SLURM, ids=[w for _, w in BAD_SLURM])
def test_bad_slurm_block_is_refused_before_submitting(cluster, tmp_path, block, where):
    sweep = _write_sweep(tmp_path / "bad.yaml", slurm=block)
    out = tmp_path / "out"
    r = _submit(sweep, out, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f": {where}:" in r.stderr, r.stderr
    assert not out.exists()
    assert not _queued_under(tmp_path) and not _accounted_under(tmp_path), "submitted anyway"
