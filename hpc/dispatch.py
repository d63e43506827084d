"""Run a study's stages of tasks as submitit jobs, locally or on Slurm, with live progress.

    outcome = run_stages(study.stages(), study.out / ".s2l", cluster="local", slurm_cfg=study.slurm)

Both clusters take the same path: the tasks of a stage that are not done are grouped by
equal `Resources`, packed `slurm_cfg.pack` per job (`hpc.node.TaskRunner` runs them one after
another), and submitted through submitit. What differs:

- local: submitit's local executor starts every job at once, so jobs are started here, at most
  `max_parallel` at a time; stages run one after another and a stage with failures stops the
  later ones (what Slurm's `afterok` does).
- slurm (`hpc.slurm`): every stage is submitted at once as job arrays, later stages chained
  with `afterok`; with `wait=True` the jobs are then watched with one `sacct` call per poll.

Whether a task succeeded is decided by the task itself (`is_done()`) once its job has ended,
never by exit codes alone: a failed job of a pack loses nothing its finished tasks wrote.
`folder` is the study's dispatch folder (conventionally `OUT/.s2l`): submitit files go to
`folder/logs`, and `folder/jobs.json` (`hpc.record`) remembers what was submitted.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

import submitit

from hpc import record
from hpc.node import TaskRunner, thread_env
from s2l.config import SlurmConfig
from s2l.study import Resources, Stage, Task

TAIL_LINES = 15
STUDY_FILE = "study.pkl"  # the stages, SlurmConfig and cluster of the last dispatch


@dataclasses.dataclass
class Failure:
    stage: str
    key: str
    job_id: str | None
    state: str  # scheduler state of the job (FAILED, CANCELLED, TIMEOUT, ...) or "FINISHED"
    stdout: str | None
    stderr: str | None
    error: str  # last lines of the job's stderr (or stdout)

    def __str__(self) -> str:
        head = f"{self.stage}/{self.key}: job {self.job_id} {self.state}; log {self.stderr}"
        return head + ("\n    " + self.error.replace("\n", "\n    ") if self.error else "")


@dataclasses.dataclass
class Outcome:
    done: list[str] = dataclasses.field(default_factory=list)  # "stage/key" finished by this call
    already_done: list[str] = dataclasses.field(default_factory=list)
    failed: list[Failure] = dataclasses.field(default_factory=list)
    blocked: list[str] = dataclasses.field(default_factory=list)  # earlier stage failed
    submitted: dict[str, str] = dataclasses.field(default_factory=dict)  # task -> job id, not waited on

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked and not self.submitted

    def summary(self) -> str:
        lines = [f"{len(self.done)} tasks done now, {len(self.already_done)} were already done, "
                 f"{len(self.failed)} failed, {len(self.blocked)} not run"
                 + (f", {len(self.submitted)} submitted" if self.submitted else "")]
        lines += [f"  FAILED {f}" for f in self.failed]
        return "\n".join(lines)


@dataclasses.dataclass
class Progress:
    """What a progress display gets after every poll (per stage)."""

    stage: str
    total: int
    done: int
    running: int
    pending: int
    failed: int
    elapsed_s: float
    eta_s: float | None
    tasks: list[tuple[str, float, str]]  # running tasks: (key, fraction, text)


@dataclasses.dataclass
class Job:
    """One submitted (or to-be-submitted) job: a pack of tasks with equal resources."""

    stage: str
    tasks: list[Task]
    resources: Resources
    handle: Any = None  # the submitit Job, when submitted by this process
    job_id: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    state: str = "PENDING"
    finished: bool = False
    n_done: int | None = None  # set by classify() once the job has ended


def run_stages(stages: list[Stage], folder: str | Path, cluster: str = "local",
               slurm_cfg: SlurmConfig | None = None, max_parallel: int | None = None,
               progress: Callable[[Progress], None] | None = None, wait: bool = True) -> Outcome:
    """Run every task that is not done; return what happened. Never raises for task failures."""
    cfg = slurm_cfg or SlurmConfig()
    folder = Path(folder).absolute()
    out = Outcome()
    save_study(folder, stages, cfg, cluster)
    if cluster == "slurm":
        from hpc import slurm
        return slurm.run_stages(stages, folder, cfg, progress, wait, out)
    if cluster != "local":
        raise ValueError(f"cluster must be 'local' or 'slurm', got {cluster!r}")
    logs = folder / "logs" / time.strftime("local-%Y%m%d-%H%M%S")  # local ids are pids: reused
    for i, stage in enumerate(stages):
        todo = split_done(stage, out)
        if not todo:
            continue
        jobs = make_jobs(stage.name, todo, cfg.pack)
        cap = max_parallel or default_parallel(todo)
        backend = LocalBackend(logs, cfg, cap)
        try:
            watch(jobs, backend, progress, poll_s=min(cfg.poll_s, 1.0), out=out, folder=folder)
        finally:
            backend.cancel_all(jobs)
        if any(f.stage == stage.name for f in out.failed):
            out.blocked += [record.task_id(s.name, t.key) for s in stages[i + 1:]
                            for t in s.tasks if not t.is_done()]
            break
    return out


def save_study(folder: Path, stages: list[Stage], cfg: SlurmConfig, cluster: str) -> None:
    """Pickle what was dispatched, so `hpc/status.py OUT` needs nothing but the out dir."""
    import pickle
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STUDY_FILE}.{os.getpid()}"
    with open(tmp, "wb") as f:
        pickle.dump({"stages": stages, "slurm": cfg, "cluster": cluster}, f)
    os.replace(tmp, folder / STUDY_FILE)


def load_saved_study(folder: str | Path) -> dict:
    import pickle
    with open(Path(folder) / STUDY_FILE, "rb") as f:
        return pickle.load(f)


def split_done(stage: Stage, out: Outcome) -> list[Task]:
    """The tasks of `stage` still to run; the others are noted in `out.already_done`."""
    todo = []
    for t in stage.tasks:
        if t.is_done():
            out.already_done.append(record.task_id(stage.name, t.key))
        else:
            todo.append(t)
    return todo


def make_jobs(stage: str, tasks: Iterable[Task], pack: int) -> list[Job]:
    """Group tasks by equal resources (order kept) and cut each group into packs of `pack`."""
    groups: dict[Resources, list[Task]] = defaultdict(list)
    for t in tasks:
        groups[t.resources].append(t)
    return [Job(stage, ts[i:i + pack], res)
            for res, ts in groups.items() for i in range(0, len(ts), max(1, pack))]


def default_parallel(tasks: list[Task]) -> int:
    """How many local jobs fit the cores: nproc // (cpus x ranks) of the largest task."""
    need = max(t.resources.cpus * t.resources.tasks_per_node for t in tasks)
    return max(1, (os.cpu_count() or 1) // max(1, need))


def setup_lines(cfg: SlurmConfig, res: Resources) -> list[str]:
    """Shell lines run before python in every job: the user's setup, thread caps, env vars."""
    import shlex
    env = {**thread_env(res.cpus), **dict(cfg.env)}
    return list(cfg.setup) + [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


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
            runner = TaskRunner(job.tasks, self.cfg.max_requeues)
            job.handle = self._executor(job).submit(runner)
            job.job_id = job.handle.job_id
            job.stdout, job.stderr = str(job.handle.paths.stdout), str(job.handle.paths.stderr)
            job.state = "RUNNING"
            running += 1
            for t in job.tasks:
                started[record.task_id(job.stage, t.key)] = entry(job, "local")
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


def entry(job: Job, cluster: str) -> dict:
    return {"cluster": cluster, "job_id": job.job_id, "stdout": job.stdout, "stderr": job.stderr}


def watch(jobs: list[Job], backend: Any, progress: Callable[[Progress], None] | None,
          poll_s: float, out: Outcome, folder: Path) -> None:
    """Poll until every job has ended; classify its tasks as done or failed; report progress."""
    t0 = time.time()
    total = sum(len(j.tasks) for j in jobs)
    stage = jobs[0].stage if jobs else ""
    while True:
        record.update(folder, backend.start(jobs))
        backend.poll(jobs)
        for job in jobs:
            if job.finished and job.n_done is None:
                classify(job, out)
        if progress is not None:
            progress(snapshot(jobs, stage, total, time.time() - t0))
        if all(j.finished for j in jobs):
            return
        time.sleep(poll_s)


def classify(job: Job, out: Outcome) -> None:
    """A job has ended: each of its tasks is done (its own files say so) or failed."""
    error = None
    job.n_done = 0
    for t in job.tasks:
        tid = record.task_id(job.stage, t.key)
        if t.is_done():
            out.done.append(tid)
            job.n_done += 1
            continue
        if error is None:
            error = tail(job.stderr) or tail(job.stdout)
        out.failed.append(Failure(job.stage, t.key, job.job_id, job.state, job.stdout,
                                  job.stderr, error))


def snapshot(jobs: list[Job], stage: str, total: int, elapsed: float) -> Progress:
    done = failed = running = 0
    texts: list[tuple[str, float, str]] = []
    frac_sum = 0.0
    for job in jobs:
        if job.n_done is not None:
            done += job.n_done
            failed += len(job.tasks) - job.n_done
        elif job.state in ("RUNNING", "COMPLETING"):
            active = False  # a packed job runs its tasks one after another
            for t in job.tasks:  # a packed job's earlier tasks may be done already
                if t.is_done():
                    done += 1
                    continue
                if active:
                    continue  # queued behind the running one: counted as pending
                active = True
                running += 1
                p = t.progress()
                if p is not None:
                    frac_sum += p[0]
                    texts.append((t.key, p[0], p[1]))
    pending = total - done - failed - running
    effective = done + frac_sum
    eta = elapsed / effective * (total - failed - effective) if effective > 0 else None
    return Progress(stage, total, done, running, pending, failed, elapsed, eta, texts)


def tail(path: str | None, n: int = TAIL_LINES) -> str:
    """Last `n` non-empty lines of a log file ("" if it does not exist)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join([ln for ln in lines if ln.strip()][-n:])


class ProgressPrinter:
    """A default progress display: one rewritten line on a terminal, a line every `every_s`
    seconds otherwise (CI logs), plus the running tasks' own progress texts."""

    def __init__(self, stream=None, every_s: float = 10.0, max_tasks: int = 4):
        self.stream = stream or sys.stderr
        self.every_s, self.max_tasks = every_s, max_tasks
        self._last = 0.0
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, p: Progress) -> None:
        finished = p.done + p.failed == p.total
        if not self._tty and not finished and time.time() - self._last < self.every_s:
            return
        self._last = time.time()
        eta = f"ETA {fmt_s(p.eta_s)}" if p.eta_s is not None and not finished else ""
        line = (f"[{p.stage}] {p.done}/{p.total} done, {p.running} running, {p.pending} pending, "
                f"{p.failed} failed  {fmt_s(p.elapsed_s)} {eta}")
        tasks = "; ".join(f"{k}: {txt}" for k, _, txt in p.tasks[:self.max_tasks])
        if self._tty:
            self.stream.write("\r\x1b[K" + (line + "  " + tasks)[:200] + ("\n" if finished else ""))
        else:
            self.stream.write(line + ("\n    " + tasks if tasks else "") + "\n")
        self.stream.flush()


def fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
