"""The local backend: a study's stages as processes on this machine (submitit's local executor).

    outcome = run_stages(study.stages(), study.out / ".s2l", SlurmConfig.for_study(study))

submitit's local executor starts every job it is given at once, so jobs are started here, at
most `max_parallel` at a time (default: as many as fit the cores). Stages run one after
another, and a stage with failures stops the later ones (what Slurm's `afterok` does). A job
honours its resources' `cpus` (thread caps), `gpus` and `tasks_per_node` (DDP ranks); the
sweep's `setup` lines and `env` run before python, as on Slurm.

Jobs live and die with this driver. Each job's controller starts in a session (and process
group) of its own, its shell `exec`s python (a `/bin/sh -c` wrapper would swallow signals),
and `cancel_all` stops whole groups: SIGTERM, then SIGKILL after `GRACE_S`. It runs when a
stage ends for any reason, Ctrl-C, SIGTERM and SIGHUP included (`hpc/submit.py` turns them
into exceptions). For a `kill -9` of the driver, each job watches the driver itself
(`hpc.node.die_with_driver`). A task whose lease a live worker holds (a job of a driver killed
a moment ago, still winding down) is not started until the lease is released; if it is done
by then, it is not started at all.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from submitit.local.local import LocalExecutor, LocalJob

from hpc import record, tracked
from hpc.dispatch import Job, Outcome, Progress, make_jobs, setup_lines, split_done, watch
from hpc.lease import live_holder, pid_start, task_lease
from hpc.node import DRIVER_ENV, TaskRunner
from hpc.resources import Resources, SlurmConfig
from s2l.tasks import Stage

CLUSTER = "local"
GRACE_S = 5.0  # after SIGTERM, before SIGKILL


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
        parallel = max_parallel or default_parallel([cfg.resources_for(t.group) for t in todo])
        # as many jobs as run at once, at least: a stage of 7 small data shards with pack 10
        # is 2 jobs on 2 cores, not one job on one core beside an idle one
        jobs = make_jobs(stage.name, todo, cfg, min_jobs=parallel)
        backend = LocalBackend(logs, cfg, parallel, folder)
        try:
            watch(jobs, backend, progress, poll_s=min(cfg.poll_s, 1.0), out=out, folder=folder)
        finally:
            backend.cancel_all(jobs)
        if any(f.stage == stage.name for f in out.failed):
            out.blocked += [record.task_id(s.name, t.key) for s in stages[i + 1:]
                            for t in s.tasks if not t.is_done()]
            break
    return out


def default_parallel(resources: list[Resources]) -> int:
    """How many local jobs fit the cores: nproc // (cpus x ranks) of the largest request."""
    need = max(r.cpus * r.tasks_per_node for r in resources)
    return max(1, (os.cpu_count() or 1) // max(1, need))


class GroupExecutor(LocalExecutor):
    """submitit's local executor, but every job's controller leads a session of its own (so
    its whole process group can be signalled), the setup shell `exec`s the controller (no
    `/bin/sh -c` in between to swallow signals; the controller's pid is the job id, as
    without setup lines), and the job knows its driver (`hpc.node.die_with_driver`).
    What submitit's `start_controller` does otherwise is kept as it is."""

    def _submit_command(self, command: str) -> LocalJob:
        ntasks = self.parameters.get("tasks_per_node", 1)
        gpus = range(self.parameters.get("gpus_per_node", 0))
        me = os.getpid()
        env = {**os.environ,
               "SUBMITIT_LOCAL_NTASKS": str(ntasks), "SUBMITIT_LOCAL_COMMAND": command,
               "SUBMITIT_LOCAL_TIMEOUT_S": str(int(60 * self.parameters.get("timeout_min", 2.0))),
               "SUBMITIT_LOCAL_SIGNAL_DELAY_S": str(int(self.parameters.get("signal_delay_s", 30))),
               "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
               "SUBMITIT_STDERR_TO_STDOUT": "", "SUBMITIT_EXECUTOR": "local",
               "CUDA_VISIBLE_DEVICES": ",".join(str(k) for k in gpus),
               "SUBMITIT_LOCAL_WITH_SHELL": "",  # exec: the controller is the shell's pid
               DRIVER_ENV: f"{me}:{pid_start(me)}"}
        cmd = shlex.join([sys.executable, "-m", "submitit.local._local", str(self.folder)])
        setup = list(self.parameters.get("setup", ()))
        process = subprocess.Popen(" && ".join(setup + [f"exec {cmd}"]), shell=True, env=env,
                                   start_new_session=True)
        return LocalJob(folder=self.folder, job_id=str(process.pid), process=process,
                        tasks=list(range(ntasks)))


def stop_group(process: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """End a job's whole process group: SIGTERM, then SIGKILL what is left after `grace_s`."""
    pgid = process.pid  # the controller leads its own session and group
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            process.poll()
            return
        deadline = time.time() + wait_s
        while time.time() < deadline:
            process.poll()  # reap the controller, or it stays in the group as a zombie
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


class LocalBackend:
    """Starts jobs with submitit's local executor, at most `cap` at a time."""

    def __init__(self, logs: Path, cfg: SlurmConfig, cap: int, folder: Path | None = None):
        self.logs, self.cfg, self.cap = logs, cfg, cap
        self.folder = folder  # the dispatch folder: task leases; None: no leases

    def _executor(self, job: Job) -> GroupExecutor:
        ex = GroupExecutor(self.logs, max_num_timeout=self.cfg.max_requeues)
        r = job.resources
        ex.update_parameters(timeout_min=r.time_min * len(job.tasks), nodes=1,
                             tasks_per_node=r.tasks_per_node * r.nodes, gpus_per_node=r.gpus,
                             setup=setup_lines(self.cfg, r))
        return ex

    def _held_elsewhere(self, job: Job) -> bool:
        """Some task of `job` is run by a live worker this driver did not start."""
        return self.folder is not None and any(
            live_holder(task_lease(self.folder, job.stage, t.key)) for t in job.tasks)

    def start(self, jobs: list[Job]) -> dict[str, dict]:
        """Submit waiting jobs while slots are free; returns record entries of those started."""
        running = sum(1 for j in jobs if j.handle is not None and not j.finished)
        started = {}
        for job in jobs:
            if running >= self.cap:
                break
            if job.handle is not None or job.finished:
                continue
            if self._held_elsewhere(job):
                job.state = "WAITING"  # for the other worker; then started, or found done
                continue
            if all(t.is_done() for t in job.tasks):  # done by the worker waited for
                job.finished, job.state = True, "FINISHED"
                continue
            # The job leaves publishing (MLflow) to this driver: no job imports mlflow.
            runner = TaskRunner(job.tasks, job.resources, self.cfg.max_requeues,
                                folder=self.folder, stage=job.stage, publish=False,
                                pack_mode=self.cfg.pack_mode)
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

    def settle(self, ended: list[Job]) -> None:
        """Publish what the ended jobs left to this driver (`TaskRunner(publish=False)`)."""
        for job in ended:
            tracked.publish_done(job.tasks, self.folder)

    def cancel_all(self, jobs: list[Job]) -> None:
        """Stop every job still running: their process groups, whole."""
        for job in jobs:
            process = getattr(job.handle, "_process", None)
            if process is not None and process.poll() is None:
                stop_group(process)
