"""The local backend: a study's stages as processes on this machine (submitit's local executor).

    outcome = run_stages(study.stages(), study.out / ".s2l", SlurmConfig.for_study(study))

submitit's local executor starts every job it is given at once, so jobs are started here, at
most `max_parallel` at a time (default: as many as fit the cores). Stages run one after
another, and a stage with failures stops the later ones (what Slurm's `afterok` does). A job
honours its resources' `cpus` (thread caps), `gpus` and `tasks_per_node` (DDP ranks); the
sweep's `setup` lines and `env` run before python, as on Slurm.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import submitit

from hpc import record
from hpc.dispatch import Job, Outcome, Progress, make_jobs, setup_lines, split_done, watch
from hpc.node import TaskRunner
from hpc.resources import SlurmConfig
from s2l.tasks import Stage

CLUSTER = "local"


def run_stages(stages: list[Stage], folder: str | Path, cfg: SlurmConfig | None = None,
               progress: Callable[[Progress], None] | None = None, wait: bool = True,
               max_parallel: int | None = None) -> Outcome:
    """Run every task that is not done; return what happened. Never raises for task failures.

    `wait` is accepted for a backend-neutral call and ignored: local jobs live as long as this
    process, so it always waits.
    """
    cfg = cfg or SlurmConfig()
    folder = Path(folder).absolute()
    out = Outcome()
    logs = folder / "logs" / time.strftime("local-%Y%m%d-%H%M%S")  # local ids are pids: reused
    for i, stage in enumerate(stages):
        todo = split_done(stage, out)
        if not todo:
            continue
        jobs = make_jobs(stage.name, todo, cfg)
        backend = LocalBackend(logs, cfg, max_parallel or default_parallel(jobs))
        try:
            watch(jobs, backend, progress, poll_s=min(cfg.poll_s, 1.0), out=out, folder=folder)
        finally:
            backend.cancel_all(jobs)
        if any(f.stage == stage.name for f in out.failed):
            out.blocked += [record.task_id(s.name, t.key) for s in stages[i + 1:]
                            for t in s.tasks if not t.is_done()]
            break
    return out


def default_parallel(jobs: list[Job]) -> int:
    """How many local jobs fit the cores: nproc // (cpus x ranks) of the largest job."""
    need = max(j.resources.cpus * j.resources.tasks_per_node for j in jobs)
    return max(1, (os.cpu_count() or 1) // max(1, need))


class LocalBackend:
    """Starts jobs with submitit's local executor, at most `cap` at a time."""

    def __init__(self, logs: Path, cfg: SlurmConfig, cap: int):
        self.logs, self.cfg, self.cap = logs, cfg, cap

    def _executor(self, job: Job) -> submitit.AutoExecutor:
        ex = submitit.AutoExecutor(folder=self.logs, cluster="local",
                                   local_max_num_timeout=self.cfg.max_requeues)
        r = job.resources
        ex.update_parameters(timeout_min=r.time_min * len(job.tasks), nodes=1,
                             tasks_per_node=r.tasks_per_node * r.nodes, gpus_per_node=r.gpus,
                             local_setup=setup_lines(self.cfg, r))
        return ex

    def start(self, jobs: list[Job]) -> dict[str, dict]:
        """Submit waiting jobs while slots are free; returns record entries of those started."""
        running = sum(1 for j in jobs if j.handle is not None and not j.finished)
        started = {}
        for job in jobs:
            if running >= self.cap:
                break
            if job.handle is not None or job.finished:
                continue
            runner = TaskRunner(job.tasks, job.resources, self.cfg.max_requeues)
            job.handle = self._executor(job).submit(runner)
            job.job_id = job.handle.job_id
            job.stdout, job.stderr = str(job.handle.paths.stdout), str(job.handle.paths.stderr)
            job.state = "RUNNING"
            running += 1
            for t in job.tasks:
                started[record.task_id(job.stage, t.key)] = job.entry(CLUSTER)
        return started

    def poll(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.handle is not None and not job.finished and job.handle.done():
                job.finished = True
                job.state = "FINISHED"

    def cancel_all(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.handle is not None and not job.finished:
                job.handle.cancel(check=False)
