"""What every backend shares: jobs made of tasks, watching them, and telling done from failed.

A backend (`hpc.local`: processes on this machine; `hpc.slurm`: job arrays) runs the tasks
of a study's stages that are not done yet. Both take the same path:

    todo = split_done(stage, outcome)          # tasks whose marker is missing or stale
    jobs = make_jobs(stage.name, todo, cfg)    # group tag -> Resources, equal ones packed
    watch(jobs, backend, progress, poll_s, outcome, folder)

`make_jobs` resolves each task's resource group tag with `SlurmConfig.resources_for`, groups
tasks with equal `Resources` (order kept) and deals them into jobs of at most `cfg.pack`
(`hpc.node.TaskRunner` runs a pack one task after another). `watch` asks the backend to start
and poll jobs until all have ended, then `classify` asks each task whether it is done (its
completion marker), never the exit code alone: a failed job of a pack loses nothing its
finished tasks wrote. `folder` is the study's dispatch folder (conventionally `OUT/.s2l`):
job logs go to `folder/logs`, and `folder/jobs.json` (`hpc.record`) remembers what was started.
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from hpc import record
from hpc.node import thread_env
from hpc.resources import CONTROL, ENV_NAME, Resources, SlurmConfig, packs_vmapped
from s2l.tasks import Stage, Task

TAIL_LINES = 15


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

    def entry(self, cluster: str) -> dict:
        """This job's record (`hpc.record`) for each of its tasks."""
        return {"cluster": cluster, "job_id": self.job_id, "stdout": self.stdout,
                "stderr": self.stderr}


class Backend(Protocol):
    """What `watch` needs of a backend."""

    def start(self, jobs: list[Job]) -> dict[str, dict]:
        """Start jobs that may start now; return record entries ("stage/key" -> entry)."""

    def poll(self, jobs: list[Job]) -> None:
        """Update `state` and `finished` of the jobs not finished yet."""

    # Optional: `settle(ended_jobs)`, called once for the jobs that just ended, after their
    # tasks were classified and free slots were refilled.


def split_done(stage: Stage, out: Outcome) -> list[Task]:
    """The tasks of `stage` still to run; the others are noted in `out.already_done`."""
    todo = []
    for t in stage.tasks:
        if t.is_done():
            out.already_done.append(record.task_id(stage.name, t.key))
        else:
            todo.append(t)
    return todo


def make_jobs(stage: str, tasks: Iterable[Task], cfg: SlurmConfig, min_jobs: int = 1) -> list[Job]:
    """Resolve each task's group to its Resources, group tasks with equal resources (order
    kept) and deal each group into ceil(n / `cfg.pack`) jobs of at most `cfg.pack` tasks, or
    into min(n, `min_jobs`) jobs where that is more (a backend that runs `min_jobs` jobs at
    once: packing saves start-ups, never at the price of an idle slot).

    Dealt, not cut: job j of J runs tasks j, j + J, j + 2J, ... A stage lists its tasks in
    sweep order (scale by scale), so consecutive packs would give one job all the smallest
    cells and another all the largest, and the stage would wait on the latter alone; dealt
    packs carry a like share of each. Except where the jobs train their packs as one vmapped
    model (`pack_mode` vmap, or auto on GPU jobs: hpc.node): that needs cells of one shape in
    one job, so there the packs are consecutive runs of the sweep's order."""
    groups: dict[Resources, list[Task]] = defaultdict(list)
    for t in tasks:
        groups[cfg.resources_for(t.group)].append(t)
    pack = max(1, cfg.pack)
    jobs = []
    for res, ts in groups.items():
        n_jobs = max(-(-len(ts) // pack), min(len(ts), min_jobs))
        if packs_vmapped(cfg.pack_mode, res.gpus):
            size = -(-len(ts) // n_jobs)
            jobs += [Job(stage, ts[i:i + size], res) for i in range(0, len(ts), size)]
        else:
            jobs += [Job(stage, ts[j::n_jobs], res) for j in range(n_jobs)]
    return jobs


def setup_lines(cfg: SlurmConfig, res: Resources) -> list[str]:
    """Shell lines run before python in every job: the user's setup, thread caps, env vars.

    The one place `cfg.env` is applied: exported here, it is in place before the task's
    modules are imported (HF_HOME, TORCH_HOME are read at import time). Names and values were
    checked when the sweep was read (`hpc.resources`); checked again here because a
    SlurmConfig may also be built in Python, and values are always quoted.
    """
    env = {**thread_env(res.cpus), **dict(cfg.env)}
    for k, v in env.items():
        if not ENV_NAME.fullmatch(k) or CONTROL.search(v):
            raise ValueError(f"refusing to export {k!r}={v!r}: not a name, or a control character")
    for line in cfg.setup:
        if CONTROL.search(line):
            raise ValueError(f"refusing setup line {line!r}: not a single line")
    return list(cfg.setup) + [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def watch(jobs: list[Job], backend: Backend, progress: Callable[[Progress], None] | None,
          poll_s: float, out: Outcome, folder: Path) -> None:
    """Poll until every job has ended; classify its tasks as done or failed; report progress."""
    t0 = time.time()
    total = sum(len(j.tasks) for j in jobs)
    stage = jobs[0].stage if jobs else ""
    while True:
        record.update(folder, backend.start(jobs))
        backend.poll(jobs)
        ended = [job for job in jobs if job.finished and job.n_done is None]
        for job in ended:
            classify(job, out)
        if ended:
            # fill the freed slots first, then the backend's own follow-up (the local
            # backend publishes what the ended jobs left to the driver)
            record.update(folder, backend.start(jobs))
            settle = getattr(backend, "settle", None)
            if settle is not None:
                settle(ended)
        if progress is not None:
            progress(snapshot(jobs, stage, total, time.time() - t0))
        if all(j.finished for j in jobs):
            return
        time.sleep(poll_s)


def classify(job: Job, out: Outcome) -> None:
    """A job has ended: each of its tasks is done (its marker says so) or failed."""
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


def printable(text: str) -> str:
    """`text` on one line: control characters (newlines, ESC, ...) written as escapes, for
    error messages that quote user input (a sweep key, a file name)."""
    return CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def tail(path: str | None, n: int = TAIL_LINES) -> str:
    """Last `n` non-empty lines of a log file ("" if it cannot be read), control characters
    shown as '?' (a log may hold terminal escape sequences; this text goes to a terminal)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except (OSError, ValueError):  # ValueError: a path with NUL, from a tampered record
        return ""
    lines = [CONTROL.sub("?", ln.replace("\t", "    ")) for ln in lines if ln.strip()]
    return "\n".join(lines[-n:])


class ProgressPrinter:
    """A default progress display: one rewritten line on a terminal, a line every `every_s`
    seconds otherwise (CI logs), plus the running tasks' own progress texts."""

    def __init__(self, stream=None, every_s: float = 10.0, max_tasks: int = 4):
        self.stream = stream or sys.stderr
        self.every_s, self.max_tasks = every_s, max_tasks
        self._last = 0.0
        self._shown: tuple | None = None
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, p: Progress) -> None:
        finished = p.done + p.failed == p.total
        if finished and self._shown == (p.stage, p.done, p.failed):
            return  # jobs still winding down: the final line was printed once
        if not self._tty and not finished and time.time() - self._last < self.every_s:
            return
        self._shown = (p.stage, p.done, p.failed) if finished else None
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
