"""Trivial picklable tasks for the dispatch tests (local and Slurm).

They live in an importable module, not in a test file, because submitit pickles tasks by
reference: the job's python must be able to `import dispatch_tasks` (the tests put this folder
on PYTHONPATH). Every task keeps its state in files under `root`, as real cells do, and its
completion marker at `root/<key>.marker` (written by the runner, `s2l.tasks.run_task`).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hpc.resources import Resources
from s2l.tasks import DEFAULT_GROUP, Task

#: what a DDPTask's group must resolve to: two ranks of one CPU each
DDP_RESOURCES = Resources(cpus=1, tasks_per_node=2, mem_gb=1.0, time_min=10)


def _name(key: str) -> str:
    return key.replace("/", "_")


class _Marked(Task):
    @property
    def marker(self) -> Path:
        return Path(self.root) / f"{_name(self.key)}.marker"


class FileTask(_Marked):
    """Sleeps, then writes `root/<key>.done` with its start/end times, pid and env."""

    def __init__(self, root, key, sleep=0.0, fail=False, group=DEFAULT_GROUP):
        self.root, self.key, self.sleep, self.fail = str(root), key, sleep, fail
        self.group = group

    @property
    def path(self) -> Path:
        return Path(self.root) / f"{_name(self.key)}.done"

    def run(self):
        start = time.time()
        Path(self.root, f"{_name(self.key)}.started").write_text(str(start))
        time.sleep(self.sleep)
        if self.fail:
            raise ValueError(f"task {self.key} was told to fail")
        info = {"start": start, "end": time.time(), "pid": os.getpid(),
                "omp": os.environ.get("OMP_NUM_THREADS"), "job": os.environ.get("SLURM_JOB_ID"),
                "hf_home": os.environ.get("HF_HOME")}
        self.path.write_text(json.dumps(info))
        return self.key

    def progress(self):
        return (0.5, "sleeping") if Path(self.root, f"{_name(self.key)}.started").exists() else None


class CountTask(_Marked):
    """Counts `steps` steps of `step_s` seconds; the result is a deterministic function of all
    steps. State is saved every step and on `checkpoint()`; `run()` resumes from it, so a
    preempted-and-requeued run must end with the same result as an uninterrupted one."""

    def __init__(self, root, key, steps=20, step_s=0.25):
        self.root, self.key, self.steps, self.step_s = str(root), key, steps, step_s

    def _p(self, suffix):
        return Path(self.root) / f"{_name(self.key)}.{suffix}"

    def run(self):
        state = {"step": 0, "acc": 0, "starts": 0}
        if self._p("ckpt").exists():
            state = json.loads(self._p("ckpt").read_text())
        state["starts"] += 1
        self._state = state
        self._p("pid").write_text(str(os.getpid()))
        while state["step"] < self.steps:
            time.sleep(self.step_s)
            state["acc"] = (state["acc"] * 31 + state["step"] + 7) % 1_000_003
            state["step"] += 1
            self._save()
        self._p("result").write_text(json.dumps({"acc": state["acc"], "starts": state["starts"]}))
        return state["acc"]

    def _save(self):
        tmp = self._p("ckpt.tmp")
        tmp.write_text(json.dumps(self._state))
        os.replace(tmp, self._p("ckpt"))

    def checkpoint(self):
        Path(self.root, f"{_name(self.key)}.checkpointed").touch()
        if getattr(self, "_state", None) is not None:
            self._save()

    def progress(self):
        if self._p("ckpt").exists():
            s = json.loads(self._p("ckpt").read_text())
            return s["step"] / self.steps, f"step {s['step']}/{self.steps}"
        return None


class DDPTask(_Marked):
    """Two ranks train a tiny linear model with gloo DDP (all-reduced gradients); each rank
    writes its final parameters so the test can check they are identical. Its group "ddp"
    must resolve to 2 tasks per node (`DDP_RESOURCES`)."""

    group = "ddp"

    def __init__(self, root, key="ddp"):
        self.root, self.key = str(root), key

    def run(self):
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method="env://")
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
        for _ in range(20):
            x = torch.randn(8, 4, generator=g)
            loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        params = [p.detach().flatten().tolist() for p in model.parameters()]
        Path(self.root, f"ddp.rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "world": world, "params": params,
             "env": {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                     "MASTER_ADDR", "MASTER_PORT")}}))
        dist.barrier()
        dist.destroy_process_group()
        return rank
