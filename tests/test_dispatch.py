"""hpc.dispatch and the local backend (submitit's local executor): runs, skips done, reports
failures, packs, caps parallelism, sets thread env, resolves group tags to resources. Tasks are
in `dispatch_tasks` (importable by the jobs)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hpc.dispatch import ProgressPrinter
from hpc.local import run_stages
from hpc.resources import Resources, SlurmConfig
from s2l.tasks import Stage

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@pytest.fixture(autouse=True)
def importable_tasks(monkeypatch):
    """Job processes must import `dispatch_tasks` and the project: put both on PYTHONPATH."""
    extra = [str(HERE), str(REPO)]
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(extra + ([old] if old else [])))


from dispatch_tasks import DDP_RESOURCES, CountTask, DDPTask, FileTask  # noqa: E402

FAST = SlurmConfig(poll_s=0.2, per_group=(("ddp", DDP_RESOURCES),))


def test_runs_tasks_then_skips_done(tmp_path):
    tasks = [FileTask(tmp_path, f"s/m{i}/0") for i in range(3)]
    seen = []
    out = run_stages([Stage("train", tasks)], tmp_path / ".s2l", FAST,
                     progress=seen.append)
    assert out.ok, out.summary()
    assert sorted(out.done) == [f"train/s/m{i}/0" for i in range(3)]
    assert all(t.is_done() for t in tasks)
    assert seen[-1].done == 3 and seen[-1].failed == 0
    info = json.loads(tasks[0].path.read_text())
    assert info["omp"] == "1"  # threads capped to resources.cpus
    jobs = json.loads((tmp_path / ".s2l" / "jobs.json").read_text())
    assert set(jobs) == set(out.done)

    again = run_stages([Stage("train", tasks)], tmp_path / ".s2l", FAST)
    assert again.ok and again.done == [] and len(again.already_done) == 3


def test_failure_is_reported_and_loses_nothing(tmp_path):
    tasks = [FileTask(tmp_path, "a"), FileTask(tmp_path, "bad", fail=True), FileTask(tmp_path, "c")]
    later = [FileTask(tmp_path, "analysis")]
    out = run_stages([Stage("train", tasks), Stage("analyse", later)], tmp_path / ".s2l",
                     FAST)
    assert not out.ok
    assert sorted(out.done) == ["train/a", "train/c"]
    [f] = out.failed
    assert f.key == "bad" and f.stage == "train"
    assert "told to fail" in f.error and Path(f.stderr).exists()
    assert out.blocked == ["analyse/analysis"]  # later stage waits for a clean earlier one
    assert not later[0].is_done()


def test_packing_runs_several_tasks_per_job(tmp_path):
    tasks = [FileTask(tmp_path, f"t{i}") for i in range(5)]
    tasks[1].fail = True
    out = run_stages([Stage("train", tasks)], tmp_path / ".s2l", SlurmConfig(pack=3, poll_s=0.2))
    pids = {json.loads(t.path.read_text())["pid"] for t in tasks if t.is_done()}
    assert len(pids) == 2  # 5 tasks in packs of 3 -> 2 jobs
    assert sorted(out.done) == ["train/t0", "train/t2", "train/t3", "train/t4"]
    assert [f.key for f in out.failed] == ["t1"]  # t2 still ran after t1 failed in its pack
    assert "told to fail" in out.failed[0].error


def test_parallel_cap(tmp_path):
    tasks = [FileTask(tmp_path, f"t{i}", sleep=1.0) for i in range(4)]
    out = run_stages([Stage("train", tasks)], tmp_path / ".s2l", FAST, max_parallel=2)
    assert out.ok, out.summary()
    spans = [json.loads(t.path.read_text()) for t in tasks]
    events = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak == 2


def test_progress_printer_lines(tmp_path, capsys):
    import io
    buf = io.StringIO()
    tasks = [FileTask(tmp_path, "a", sleep=0.5)]
    run_stages([Stage("train", tasks)], tmp_path / ".s2l", FAST,
               progress=ProgressPrinter(buf, every_s=0.0))
    text = buf.getvalue()
    assert "[train] 1/1 done" in text and "a: sleeping" in text


def test_local_preemption_resumes_with_same_result(tmp_path):
    """SIGUSR2 to a local task process: checkpoint, requeue (the local controller restarts
    it), resume. (Local `job._interrupt()` signals the controller, which does not forward it.)"""
    import signal
    import time

    import submitit

    from hpc.node import TaskRunner

    ref = CountTask(tmp_path / "ref", "c", steps=8, step_s=0.05)
    (tmp_path / "ref").mkdir()
    ref.run()
    task = CountTask(tmp_path, "c", steps=8, step_s=0.25)
    ex = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="local")
    ex.update_parameters(timeout_min=5)
    job = ex.submit(TaskRunner([task], Resources(), max_requeues=2))
    deadline = time.time() + 30
    while not (tmp_path / "c.ckpt").exists() and time.time() < deadline:
        time.sleep(0.1)
    os.kill(int((tmp_path / "c.pid").read_text()), signal.SIGUSR2)
    job.wait()
    assert (tmp_path / "c.checkpointed").exists()
    res = json.loads((tmp_path / "c.result").read_text())
    assert res["starts"] == 2
    assert res["acc"] == json.loads((tmp_path / "ref" / "c.result").read_text())["acc"]


def test_local_ddp_two_ranks(tmp_path):
    pytest.importorskip("torch")
    task = DDPTask(tmp_path)
    out = run_stages([Stage("ddp", [task])], tmp_path / ".s2l", FAST)
    assert out.ok, out.summary()
    r0, r1 = (json.loads((tmp_path / f"ddp.rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["env"]["MASTER_ADDR"] == "127.0.0.1"
    assert r0["params"] == r1["params"]


def test_groups_resolve_to_resources_and_separate_jobs(tmp_path):
    from hpc.dispatch import make_jobs
    big = Resources(cpus=2)
    cfg = SlurmConfig(pack=4, per_group=(("m", big), ("s", Resources())))
    tasks = [FileTask(tmp_path, "a"), FileTask(tmp_path, "b", group="m"),
             FileTask(tmp_path, "c", group="s"), FileTask(tmp_path, "d", group="unknown")]
    jobs = make_jobs("train", tasks, cfg)
    # "s" resolves to resources equal to the defaults: one job with them
    assert [[t.key for t in j.tasks] for j in jobs] == [["a", "c", "d"], ["b"]]
    assert [j.resources for j in jobs] == [Resources(), big]


def test_packs_are_dealt_so_each_job_gets_a_share_of_every_part_of_the_stage(tmp_path):
    from hpc.dispatch import make_jobs
    tasks = [FileTask(tmp_path, str(i)) for i in range(7)]  # e.g. cells, smallest scale first
    jobs = make_jobs("train", tasks, SlurmConfig(pack=3))
    assert [[t.key for t in j.tasks] for j in jobs] == [["0", "3", "6"], ["1", "4"], ["2", "5"]]
    jobs = make_jobs("train", tasks, SlurmConfig(pack=7))
    assert [[t.key for t in j.tasks] for j in jobs] == [[str(i) for i in range(7)]]
    assert [len(j.tasks) for j in make_jobs("train", tasks, SlurmConfig(pack=1))] == [1] * 7
    # a backend running 2 jobs at once gets 2 jobs, however large the pack; never empty ones
    jobs = make_jobs("train", tasks, SlurmConfig(pack=10), min_jobs=2)
    assert [[t.key for t in j.tasks] for j in jobs] == [["0", "2", "4", "6"], ["1", "3", "5"]]
    assert len(make_jobs("train", tasks[:1], SlurmConfig(pack=10), min_jobs=2)) == 1
    assert len(make_jobs("train", tasks, SlurmConfig(pack=3), min_jobs=2)) == 3
    # jobs that train their pack as one vmapped model need same-shape neighbours together
    cut = [[t.key for t in j.tasks] for j in make_jobs("train", tasks, SlurmConfig(pack=3, pack_mode="vmap"))]
    assert cut == [["0", "1", "2"], ["3", "4", "5"], ["6"]]
    gpu = SlurmConfig(pack=4, default=Resources(gpus=1))
    assert [[t.key for t in j.tasks] for j in make_jobs("train", tasks, gpu, min_jobs=2)] == \
        [["0", "1", "2", "3"], ["4", "5", "6"]]


def test_env_reaches_the_task_quoted_and_runs_nothing(tmp_path):
    """A benign but odd env value reaches the local job exactly, as data: the shell that
    starts the job must not run the `touch` inside it."""
    canary = tmp_path / "canary"
    odd = f"/x y; touch {canary} && echo $(touch {canary})"
    cfg = SlurmConfig(poll_s=0.2, env=(("HF_HOME", odd),))
    task = FileTask(tmp_path, "a")
    out = run_stages([Stage("train", [task])], tmp_path / ".s2l", cfg)
    assert out.ok, out.summary()
    assert json.loads(task.path.read_text())["hf_home"] == odd
    assert not canary.exists()
