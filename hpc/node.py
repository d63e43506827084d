"""The node side of dispatch: what runs inside one submitit job (local process or Slurm job).

`TaskRunner` wraps one or more `s2l.tasks.Task`s (several when `slurm.pack > 1`, so tiny
proxies share one job's start-up cost) and runs them one after another, each as
`s2l.tasks.run_task` does: skipped when done, else run, then (main rank only) marked done and
published. It is a submitit `Checkpointable`: on preemption or a time limit submitit calls
`checkpoint()`, which lets the current task save its state and pickles the runner again; the
requeued job calls the runner anew, skips the tasks that are already done and the current
task resumes from its checkpoint inside its own `run()`.

Before running, the runner sets up what every task expects of its process:
- thread count = `resources.cpus` of the job's resolved resources (OMP/MKL env and
  `torch.set_num_threads`), so parallel jobs on one machine do not oversubscribe the cores
  (the sweep's `slurm.env` is exported by the job's setup lines, `hpc.dispatch.setup_lines`);
- for multi-task jobs (DDP), the torchrun-style env `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
  `MASTER_ADDR`, `MASTER_PORT` from `submitit.JobEnvironment()`; the trainer initialises
  `torch.distributed` from those (`init_method="env://"`).

What a job pays besides its tasks is kept small: with `publish=False` (jobs of a driver that
waits for them: the local backend, Slurm without `--no-wait`) a task's `publish()` is left to
the driver, so no job imports mlflow (the task's record is durable before its marker, see
`s2l.tasks.run_task`); and a job whose tasks all succeeded skips the interpreter's teardown
(`_exit_now`, after submitit has written the result pickle).

One live worker per task: given the dispatch folder, the main rank holds the task's lease
(`hpc.lease.task_lease`: host, pid, heartbeat) from before `run()` until after `publish()`. A
task whose lease a live worker holds is not run a second time (`TaskBusy`), and a driver does
not start it (`hpc.local`) nor replay its tracking record (`hpc/submit.py`).

Local jobs die with their driver: `hpc.local` starts each job in a session of its own and
puts the driver's pid in `S2L_DRIVER_PID`; a daemon thread here kills the job's process group
within `DRIVER_POLL_S` of the driver's death (a `kill -9` gives the driver no chance to do it),
and SIGTERM (what the driver sends on Ctrl-C) ends a local task at once instead of being
ignored as submitit does for Slurm's preemption notice.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import submitit

from hpc.lease import Lease, LeaseBusy, pid_alive, task_lease
from hpc.resources import Resources, packs_vmapped
from s2l.tasks import Task, run_task, run_tasks_packed

DRIVER_ENV = "S2L_DRIVER_PID"  # "pid:start" of the local driver that started this job
DRIVER_POLL_S = 0.5

#: thread pools capped to the job's cpus: BLAS/OpenMP (torch, numpy) and rayon (the Rust pool of
#: `tokenizers`: uncapped, a 1-cpu data task ran BPE training and encoding on every core of the
#: node, and spent 10-15% more CPU-seconds on it than with one thread)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "RAYON_NUM_THREADS")


def thread_env(cpus: int) -> dict[str, str]:
    """Env that caps BLAS/OpenMP and rayon threads; also exported in the job's setup lines so that it is
    in place before the task's modules import torch."""
    return {k: str(max(1, cpus)) for k in THREAD_VARS}


def ddp_env(job_env: Any) -> dict[str, str]:
    """torchrun-style variables for the current rank of a multi-task submitit job.

    The port is derived from the job id so that two DDP jobs sharing a node do not collide:
    the raw id (SLURM_JOB_ID), which is unique per array task too; digits of "12_34" are not
    ("1_234" has the same).
    """
    try:
        raw = job_env.raw_job_id
    except (KeyError, AttributeError):
        raw = job_env.job_id
    job_id = "".join(c for c in str(raw) if c.isdigit()) or "0"
    try:
        master = job_env.hostnames[0]
    except Exception:  # local executor, or an unparsable node list: one node anyway
        master = "127.0.0.1"
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        master = "127.0.0.1"
    return {
        "RANK": str(job_env.global_rank),
        "WORLD_SIZE": str(job_env.num_tasks),
        "LOCAL_RANK": str(job_env.local_rank),
        "LOCAL_WORLD_SIZE": str(job_env.num_tasks // max(1, job_env.num_nodes)),
        "NODE_RANK": str(job_env.node),
        "MASTER_ADDR": master,
        "MASTER_PORT": str(20000 + int(job_id[-6:]) % 20000),
    }


class PackFailure(RuntimeError):
    """Some tasks of a packed job failed; the others ran to completion (their results are kept)."""


class TaskBusy(RuntimeError):
    """Another live worker runs this task (its lease is held): it is not run twice."""


def die_with_driver(value: str | None = None, poll_s: float = DRIVER_POLL_S) -> bool:
    """Local jobs only: a daemon thread that kills this job's process group once the driver
    named by `S2L_DRIVER_PID` ("pid:start") is gone. Returns whether it was started: only in
    a process that leads no group of its own but sits in a session made for the job (the
    group it kills is then the job's, never a user's shell)."""
    value = os.environ.get(DRIVER_ENV) if value is None else value
    if not value or os.environ.get("SUBMITIT_EXECUTOR") != "local":
        return False
    pid_text, _, start = value.partition(":")
    if not pid_text.isdigit() or os.getpgrp() != os.getsid(0):
        return False
    pid = int(pid_text)

    def watch() -> None:
        while pid_alive(pid, start):
            time.sleep(poll_s)
        print(f"[s2l] the driver (pid {pid}) is gone: ending this local job", flush=True)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="s2l driver watch").start()
    return True


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds `finally` blocks: leases released, temp files gone


class TaskRunner(submitit.helpers.Checkpointable):
    """Runs `tasks` (all with `resources`) in this job, in order; requeues at most
    `max_requeues` times.

    The return value is {task key: task.run()'s return value} for the tasks run here.
    """

    def __init__(self, tasks: list[Task], resources: Resources = Resources(), max_requeues: int = 3,
                 folder: str | Path | None = None, stage: str = "", publish: bool = True,
                 fast_exit: bool = True, pack_mode: str = "auto"):
        self.tasks = list(tasks)
        self.pack_mode = pack_mode  # slurm.pack_mode: auto | serial | vmap (see _packs)
        self.publish = publish  # False: the driver publishes each done task (hpc.local)
        self.fast_exit = fast_exit
        self.resources = resources
        self.max_requeues = max_requeues
        self.folder = str(folder) if folder is not None else None  # None: no task leases
        self.stage = stage
        self.requeues = 0
        self._current: int | None = None

    @contextlib.contextmanager
    def _leases(self, tasks: list[Task], is_main: bool):
        """Hold the leases of `tasks` (main rank; other ranks follow rank 0) while running
        them: a task whose lease a live worker holds raises TaskBusy, none is run twice."""
        if self.folder is None or not is_main:
            yield
            return
        job = os.environ.get("SLURM_ARRAY_JOB_ID", "") and \
            f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
        job = job or os.environ.get("SLURM_JOB_ID", "")  # a requeued job takes its lease back
        with contextlib.ExitStack() as held:
            for task in tasks:
                lease = Lease(task_lease(self.folder, self.stage, task.key),
                              what=f"task {task.key}", job=job)
                try:
                    lease.acquire()
                except LeaseBusy as e:
                    raise TaskBusy(f"task {task.key} is already running ({e}); not running it "
                                   "twice") from None
                held.callback(lease.release)
            yield

    def _run_one(self, task: Task, is_main: bool) -> Any:
        """`run_task` under the task's lease."""
        publish = getattr(self, "publish", True)  # a runner pickled before the flag existed
        with self._leases([task], is_main):
            return run_task(task, is_main, publish)

    def _packs(self, num_ranks: int) -> list[list[Task]]:
        """Groups of >= 2 unfinished tasks of this job with one `pack_key`, to run as one
        batched computation: with `pack_mode` "vmap", or "auto" on a job with a CUDA device
        (on a CPU, packing measured 0.6-1.1x: not worth it); never under DDP."""
        mode = getattr(self, "pack_mode", "auto")  # a runner pickled before the flag existed
        if num_ranks > 1 or len(self.tasks) < 2:
            return []
        gpus = self.resources.gpus if self.resources.gpus and _cuda_available() else 0
        if not packs_vmapped(mode, gpus):  # (no torch import on a CPU job: data tasks)
            return []
        groups: dict[str, list[Task]] = {}
        for task in self.tasks:
            key = None if task.is_done() else task.pack_key()
            if key is not None:
                groups.setdefault(key, []).append(task)
        return [g for g in groups.values() if len(g) > 1]

    def _run_packs(self, num_ranks: int, results: dict[str, Any], errors: list[str]) -> None:
        """Run each pack of `_packs`; a task that failed on its own is an error like a serial
        task's; a pack whose shared part fails leaves its tasks to the serial loop."""
        publish = getattr(self, "publish", True)
        for group in self._packs(num_ranks):
            keys = ", ".join(t.key for t in group)
            print(f"[s2l] training {len(group)} tasks as one packed model: {keys}", flush=True)
            try:
                with self._leases(group, True):
                    out = run_tasks_packed(group, publish)
            except TaskBusy:
                raise
            except Exception:  # noqa: BLE001 - fall back: the serial loop runs them one by one
                print(f"[s2l] packed run failed, running its tasks one by one:\n"
                      f"{traceback.format_exc()}", flush=True)
                continue
            for key, value in out.items():
                if isinstance(value, BaseException):
                    tb = "".join(traceback.format_exception(value))
                    print(f"[s2l] task {key} failed:\n{tb}", flush=True)
                    errors.append(f"task {key} failed:\n{tb}")
                else:
                    results[key] = value

    def __call__(self) -> dict[str, Any]:
        cpus = self.resources.cpus
        os.environ.update(thread_env(cpus))
        job_env = submitit.JobEnvironment()
        if job_env.num_tasks > 1:
            os.environ.update(ddp_env(job_env))
        is_main = job_env.global_rank == 0  # DDP: only rank 0 marks and publishes
        if die_with_driver():
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        _set_torch_threads(cpus)
        results: dict[str, Any] = {}
        errors: list[str] = []
        if is_main:
            self._run_packs(job_env.num_tasks, results, errors)
        for i, task in enumerate(self.tasks):
            if task.is_done() or task.key in results:  # done before a requeue, or packed
                continue
            if any(e.startswith(f"task {task.key} failed:") for e in errors):
                continue  # failed in its pack: reported once
            self._current = i
            if len(self.tasks) == 1:
                results[task.key] = self._run_one(task, is_main)  # a lone task's error is the job's
                continue
            try:
                results[task.key] = self._run_one(task, is_main)
            except Exception:  # keep going: the other packed tasks must not lose their turn
                tb = traceback.format_exc()
                print(f"[s2l] task {task.key} failed:\n{tb}", flush=True)
                errors.append(f"task {task.key} failed:\n{tb}")
        self._current = None
        if errors:
            raise PackFailure(f"{len(errors)} of {len(self.tasks)} packed tasks failed\n"
                              + "\n".join(errors))
        if getattr(self, "fast_exit", True) and job_env.num_tasks == 1 and _in_job_process():
            atexit.register(_exit_now)
        return results

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        """Called by submitit on SIGUSR2 (preemption / time limit), in rank 0 only."""
        if self._current is not None:
            self.tasks[self._current].checkpoint()
        self.requeues += 1
        if self.requeues > self.max_requeues:
            print(f"[s2l] not requeuing: already requeued {self.max_requeues} times", flush=True)
            return None  # submitit then ends the job as failed (UncompletedJobError)
        print(f"[s2l] checkpointed; requeue {self.requeues}/{self.max_requeues}", flush=True)
        self._current = None
        return super().checkpoint(*args, **kwargs)


def _cuda_available() -> bool:
    import torch  # the tasks of a GPU job import it anyway

    return torch.cuda.is_available()


def _in_job_process() -> bool:
    """This interpreter is a submitit job (`python -m submitit.core._submit`, on Slurm and
    locally), not a test or a user's session that called a runner in-process."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "submitit.core._submit"


def _exit_now() -> None:
    """At the exit of a job whose tasks all succeeded: skip the interpreter's teardown.

    Registered by `TaskRunner.__call__` when it returns normally; runs after submitit has
    written the job's result pickle (`submitit.core.submission.process_job` returns, then the
    interpreter exits and runs atexit handlers), so everything the driver reads is on disk
    (markers, store chunks and tracking records were written and closed by the tasks). A
    failure after the runner returned (the result pickle could not be written) leaves an
    uncaught exception, `sys.last_value`: then the normal exit runs, with its non-zero status.
    Freeing torch, transformers and the rest module by module costs ~1-2 CPU-s per job.
    """
    if getattr(sys, "last_value", None) is not None or getattr(sys, "last_exc", None) is not None:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    logging.shutdown()  # submitit logs to stdout through logging handlers: flush them too
    os._exit(0)


def _set_torch_threads(cpus: int) -> None:
    # Only if unpickling the tasks imported torch already: importing it here would cost every
    # job seconds; a torch imported later reads OMP_NUM_THREADS, which is set by then.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(max(1, cpus))
