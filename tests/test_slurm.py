"""hpc.slurm and hpc.status: the plan (no cluster needed), then the real local Slurm cluster
(`hpc/slurm_local.sh up`): arrays, afterok stages, preemption + requeue + resume, cancel +
status + resubmit-only-that, 2-rank gloo DDP.

The `slurm` tests skip when no cluster answers, but FAIL when S2L_REQUIRE_SLURM=1 (CI).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from hpc import local, slurm, status
from hpc.resources import Resources, SlurmConfig
from s2l.tasks import Stage

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@pytest.fixture(autouse=True)
def importable_tasks(monkeypatch):
    """Jobs (local or sbatch, which exports the environment) must import `dispatch_tasks`."""
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), str(REPO)] + ([old] if old else [])))


from dispatch_tasks import DDP_RESOURCES, CountTask, DDPTask, FileTask  # noqa: E402


# ----------------------------------------------------------------------------- no cluster

def test_executor_params_map_every_resource():
    r = Resources(gpus=2, cpus=8, mem_gb=32, time_min=90, nodes=2, tasks_per_node=2,
                  partition="gpu", account="lab", qos="high", constraint="a100",
                  extra=(("exclusive", "user"),))
    cfg = SlurmConfig(array_parallelism=7, setup=("module load cuda",), env=(("HF_HOME", "/x y"),))
    p = slurm.executor_params(r, cfg, n_pack=3, name="s2l-train", dependency="afterok:12")
    flags = slurm.sbatch_flags(p)
    for f in ("--time=270", "--mem=32GB", "--cpus-per-task=8", "--gpus-per-node=2", "--nodes=2",
              "--ntasks-per-node=2", "--partition=gpu", "--account=lab", "--qos=high",
              "--constraint=a100", "--dependency=afterok:12", "--exclusive=user",
              "--kill-on-invalid-dep=yes"):
        assert f in flags, (f, flags)
    assert p["slurm_array_parallelism"] == 7
    assert p["slurm_setup"][0] == "module load cuda"
    assert "export OMP_NUM_THREADS=8" in p["slurm_setup"] and "export HF_HOME='/x y'" in p["slurm_setup"]
    assert "export RAYON_NUM_THREADS=8" in p["slurm_setup"]  # the tokenizers' thread pool too
    # submitit accepts them all and writes a valid sbatch script
    from submitit.slurm.slurm import _make_sbatch_string
    ex_params = {k.removeprefix("slurm_"): v for k, v in p.items() if k.startswith("slurm_")}
    text = _make_sbatch_string(command="x", folder="/tmp", map_count=3, **ex_params)
    assert "#SBATCH --array=0-2%3" in text and "#SBATCH --partition=gpu" in text


def _grid(n, root="/nonexistent"):
    return [FileTask(root, f"s{i % 4}/m{i // 4 % 50}/{i // 200}", group=f"s{i % 4}") for i in range(n)]


def test_describe_plan_splits_arrays_and_is_fast():
    tasks = _grid(10_000)
    small, big = Resources(cpus=2, mem_gb=8), Resources(gpus=1, cpus=8, mem_gb=64, time_min=600)
    cfg = SlurmConfig(submit_batch=500, pack=2, array_parallelism=64, default=small,
                      per_group=(("s3", big),))
    t0 = time.perf_counter()
    text = slurm.describe_plan([Stage("train", tasks), Stage("analyse", [FileTask("/x", "corr")])],
                               cfg, max_array=300)
    elapsed = time.perf_counter() - t0
    print(text, f"\n{elapsed:.3f}s")
    assert elapsed < 1.0
    assert "stage train: 10000 tasks -> 5000 jobs (pack 2) in 18 arrays" in text
    assert "12 x 300 + 1 x 150" in text  # 3750 small jobs cut at MaxArraySize 300
    assert "4 x 300 + 1 x 50" in text and "--gpus-per-node=1" in text and "--time=1200" in text
    assert "stage analyse: 1 tasks -> 1 jobs (pack 2) in 1 arrays, after stage train" in text


def test_sacct_parsing(monkeypatch):
    out = "12_0|COMPLETED\n12_1|CANCELLED by 0\n12_[2-4%2]|PENDING\n13|RUNNING\n13.batch|RUNNING\n"
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, out, ""))
    states = slurm.sacct_states(["12_0", "13"])
    assert states == {"12_0": "COMPLETED", "12_1": "CANCELLED", "12_2": "PENDING",
                      "12_3": "PENDING", "12_4": "PENDING", "13": "RUNNING"}


def test_status_after_local_run(tmp_path):
    stages = [Stage("train", [FileTask(tmp_path, "x/a/0"), FileTask(tmp_path, "x/b/0", fail=True)])]
    local.run_stages(stages, tmp_path / ".s2l", SlurmConfig(poll_s=0.2))
    rows = {r.key: r for r in status.collect(stages, tmp_path / ".s2l")}
    assert rows["x/a/0"].status == "done" and rows["x/b/0"].status == "failed"
    assert "told to fail" in rows["x/b/0"].error
    table = status.format_table(list(rows.values()))
    assert "x/b/0" in table and "told to fail" in table and "x/a/0" not in table


# ----------------------------------------------------------------------------- real Slurm

FAST = SlurmConfig(poll_s=1.0, array_parallelism=2, max_requeues=2,
                   default=Resources(cpus=1, mem_gb=0.5, time_min=5),
                   per_group=(("ddp", DDP_RESOURCES),))


def _sacct_rows(main_id: str) -> dict[str, str]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", main_id],
                         capture_output=True, text=True).stdout
    return dict(ln.split("|", 1) for ln in out.splitlines())


def _wait_until(cond, timeout, what):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


@pytest.mark.slurm
def test_array_and_afterok_stage(cluster, tmp_path):
    train = [FileTask(tmp_path, f"t{i}", sleep=1) for i in range(4)]
    analyse = [FileTask(tmp_path, "corr")]
    stages = [Stage("train", train), Stage("analyse", analyse)]
    out = slurm.run_stages(stages, tmp_path / ".s2l", FAST)
    assert out.ok, out.summary()
    infos = [json.loads(t.path.read_text()) for t in train]
    main_id = infos[0]["job"]  # SLURM_JOB_ID of one array task
    rec = json.loads((tmp_path / ".s2l" / "jobs.json").read_text())
    array_id = rec["train/t0"]["job_id"].split("_")[0]
    rows = _sacct_rows(array_id)
    assert {f"{array_id}_{i}" for i in range(4)} <= set(rows), rows
    assert all(v == "COMPLETED" for v in rows.values())
    assert main_id
    assert json.loads(analyse[0].path.read_text())["start"] >= max(i["end"] for i in infos)
    assert all(r.status == "done" for r in status.collect(stages, tmp_path / ".s2l"))


@pytest.mark.slurm
def test_preempted_task_requeues_and_resumes(cluster, tmp_path):
    (tmp_path / "ref").mkdir()
    ref = CountTask(tmp_path / "ref", "cell", steps=16, step_s=0)
    ref.run()
    task = CountTask(tmp_path, "cell", steps=16, step_s=0.5)
    stages = [Stage("train", [task])]
    out = slurm.run_stages(stages, tmp_path / ".s2l", FAST, wait=False)
    [job_id] = out.submitted.values()
    _wait_until(lambda: (tmp_path / "cell.ckpt").exists()
                and json.loads((tmp_path / "cell.ckpt").read_text())["step"] >= 3, 60, "progress")
    # what submitit's job._interrupt() does: signal the job's steps (the srun'ed python)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    _wait_until(lambda: (tmp_path / "cell.checkpointed").exists(), 30, "checkpoint")
    # A second submit adopts the requeued job (no duplicate submission) and waits for it.
    again = slurm.run_stages(stages, tmp_path / ".s2l", FAST)
    assert again.ok, again.summary()
    assert json.loads((tmp_path / ".s2l" / "jobs.json").read_text())["train/cell"]["job_id"] == job_id
    result = json.loads((tmp_path / "cell.result").read_text())
    assert result["starts"] == 2  # it really was restarted, from its checkpoint
    assert result["acc"] == json.loads((tmp_path / "ref" / "cell.result").read_text())["acc"]
    log = Path(json.loads((tmp_path / ".s2l" / "jobs.json").read_text())["train/cell"]["stderr"])
    assert "requeue" in log.read_text().lower()


@pytest.mark.slurm
def test_cancelled_task_shows_failed_and_only_it_is_resubmitted(cluster, tmp_path):
    tasks = [FileTask(tmp_path, "s/ok/0", sleep=1), FileTask(tmp_path, "s/slow/0", sleep=120)]
    stages = [Stage("train", tasks)]
    out = slurm.run_stages(stages, tmp_path / ".s2l", FAST, wait=False)
    slow_job = out.submitted["train/s/slow/0"]
    _wait_until(lambda: Path(tmp_path, "s_slow_0.started").exists(), 60, "slow task start")
    subprocess.run(["scancel", slow_job], check=True)
    _wait_until(lambda: tasks[0].is_done(), 60, "the other task")
    _wait_until(lambda: {r.key: r.status for r in status.collect(stages, tmp_path / ".s2l")}["s/slow/0"]
                == "failed", 60, "cancelled state in sacct")
    rows = status.collect(stages, tmp_path / ".s2l")
    text = status.format_table(rows)
    assert "s/slow/0" in text and "CANCELLED" in text and "failed" in text
    assert "1 done, 1 failed" in text
    tasks[1].sleep = 0  # the re-submission is quick this time
    again = slurm.run_stages(stages, tmp_path / ".s2l", FAST)
    assert again.ok, again.summary()
    assert again.done == ["train/s/slow/0"] and again.already_done == ["train/s/ok/0"]
    assert all(r.status == "done" for r in status.collect(stages, tmp_path / ".s2l"))


@pytest.mark.slurm
def test_status_cancel_cancels_every_unfinished_job_in_one_scancel(cluster, tmp_path, monkeypatch):
    tasks = [FileTask(tmp_path, f"s/slow/{i}", sleep=300) for i in range(3)]
    stages = [Stage("train", tasks[:2]), Stage("later", tasks[2:])]
    out = slurm.run_stages(stages, tmp_path / ".s2l", FAST, wait=False)
    _wait_until(lambda: Path(tmp_path, "s_slow_0.started").exists(), 60, "a task start")
    calls = []
    real_run = subprocess.run

    def spy(cmd, *a, **k):
        calls.append(cmd[0])
        return real_run(cmd, *a, **k)

    monkeypatch.setattr(slurm.subprocess, "run", spy)
    rows = status.collect(stages, tmp_path / ".s2l")
    assert "cancelled 3 Slurm jobs" in status.cancel(rows, tmp_path / ".s2l")
    assert calls.count("scancel") == 1
    _wait_until(lambda: all(r.status == "failed" for r in status.collect(stages, tmp_path / ".s2l")),
                60, "every job cancelled")
    states = slurm.sacct_states(list(out.submitted.values()))
    assert set(states.values()) == {"CANCELLED"}, states


@pytest.mark.slurm
def test_two_rank_gloo_ddp(cluster, tmp_path):
    pytest.importorskip("torch")
    task = DDPTask(tmp_path)
    out = slurm.run_stages([Stage("ddp", [task])], tmp_path / ".s2l", FAST)
    assert out.ok, out.summary()
    r0, r1 = (json.loads((tmp_path / f"ddp.rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["world"], r1["world"]) == (2, 2) and r0["env"]["WORLD_SIZE"] == "2"
    assert r0["params"] == r1["params"]


@pytest.mark.slurm
def test_refused_submission_names_the_reason(cluster, tmp_path):
    bad = Resources(cpus=1, mem_gb=0.5, time_min=5, partition="no-such-partition")
    cfg = SlurmConfig(poll_s=1.0, per_group=(("bad", bad),))
    with pytest.raises(slurm.SubmissionError, match="partition") as e:
        slurm.run_stages([Stage("train", [FileTask(tmp_path, "a", group="bad")])],
                         tmp_path / ".s2l", cfg, wait=False)
    assert "--partition=no-such-partition" in str(e.value)


def test_short_time_limit_gets_an_early_enough_warning():
    # submitit's fixed USR2@90 would signal a 1-minute job at once: it requeued itself in a loop
    cfg = SlurmConfig()
    assert "--signal=USR2@15" in slurm.sbatch_flags(slurm.executor_params(Resources(time_min=1), cfg, 1, "x"))
    assert "--signal=USR2@90" in slurm.sbatch_flags(slurm.executor_params(Resources(time_min=60), cfg, 1, "x"))
    assert slurm.executor_params(Resources(time_min=2), cfg, 2, "x")["slurm_signal_delay_s"] == 60
