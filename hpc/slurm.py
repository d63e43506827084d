"""The Slurm backend: job arrays, per-group resources, afterok chains, one-call polling.

    outcome = run_stages(study.stages(), study.out / ".s2l", SlurmConfig.for_study(study))

How a study becomes Slurm jobs (`run_stages`):
- per stage, the tasks not done are grouped by their resolved `Resources` and packed
  `cfg.pack` per job (`hpc.dispatch.make_jobs`);
- each group becomes job arrays (`executor.batch()`), cut at the cluster's `MaxArraySize` and at
  `cfg.submit_batch` array tasks per `sbatch`, with `%array_parallelism`;
- every stage is submitted at once, stage i+1 depending `afterok` on every array of stage i
  (`--kill-on-invalid-dep=yes`: if stage i fails, Slurm cancels stage i+1 instead of keeping it
  pending forever), so `submit.py` may exit right after submitting;
- a task whose recorded job (`OUT/.s2l/jobs.json`) is still pending or running is not
  resubmitted: it is watched (and depended on) as it is;
- waiting polls with ONE `sacct` call for all jobs being watched, never one per job.

The sbatch file is rendered by submitit (`make_executor`): every option value is
`shlex.quote`d on its `#SBATCH` line and the sweep's env values in the setup lines; what may
reach those lines at all is checked when the `slurm:` block is read (`hpc.resources`).
"""
from __future__ import annotations

import re
import shlex
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import submitit
from submitit.slurm.slurm import read_job_id

from hpc import record, tracked
from hpc.dispatch import Job, Outcome, Progress, make_jobs, setup_lines, split_done, watch
from hpc.node import TaskRunner
from hpc.resources import Resources, SlurmConfig, sbatch_option_problem, text_problem
from s2l.tasks import Stage

CLUSTER = "slurm"

# States after which a job will not run again (sacct shows the latest instance of a job).
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"}
SIGNAL_DELAY_S = 90  # submitit's default: USR2 this long before the time limit (checkpoint + requeue)
DEFAULT_MAX_ARRAY = 1001  # Slurm's default MaxArraySize, assumed when no cluster answers
SUBMIT_PAUSE_S = 0.2  # between sbatch calls: a 10,000-task sweep must not flood slurmctld

#: a Slurm job id as s2l records it: "123" or, for an array task, "123_4"
JOB_ID = re.compile(r"\d{1,12}(?:_\d{1,9})?")

_max_array: int | None = None


class SlurmError(RuntimeError):
    """The scheduler could not be asked (sacct failed) or refused (sbatch)."""


class SubmissionError(SlurmError):
    """Slurm refused a submission; the message has sbatch's own reason and the options used.
    Arrays submitted before it stay submitted (and recorded): a re-run will not duplicate them."""


def max_array_size() -> int:
    """The cluster's MaxArraySize (array indices are 0..MaxArraySize-1), read once."""
    global _max_array
    if _max_array is None:
        try:
            text = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                                  timeout=30).stdout
            values = [ln.split("=", 1)[1].strip() for ln in text.splitlines()
                      if ln.split("=")[0].strip() == "MaxArraySize"]
            _max_array = int(values[0]) if values else DEFAULT_MAX_ARRAY
        except (OSError, subprocess.SubprocessError, ValueError):
            _max_array = DEFAULT_MAX_ARRAY
    return _max_array


def executor_params(r: Resources, cfg: SlurmConfig, n_pack: int, name: str,
                    dependency: str | None = None) -> dict[str, Any]:
    """submitit AutoExecutor parameters for one array of jobs with resources `r`.

    A packed job runs `n_pack` tasks one after another, so it asks for `n_pack` times the time.
    The USR2 warning comes `signal_delay(...)` seconds before the limit: submitit's fixed 90 s
    would signal a job with a 1-minute limit at once, and it would requeue itself in a loop.
    """
    extra = dict(r.extra)
    # checked when the sweep was read; again here for Resources built in Python
    for key, value in extra.items():
        problem = sbatch_option_problem(key) or text_problem(str(value))
        if problem:
            raise ValueError(f"sbatch option {key!r}: {problem}")
    for key in ("partition", "account", "qos", "constraint"):
        problem = getattr(r, key) and text_problem(str(getattr(r, key)))
        if problem:
            raise ValueError(f"{key} {getattr(r, key)!r}: {problem}")
    if dependency:
        extra.setdefault("kill-on-invalid-dep", "yes")
    p: dict[str, Any] = dict(name=name, timeout_min=r.time_min * n_pack, mem_gb=r.mem_gb,
                             cpus_per_task=r.cpus, nodes=r.nodes, tasks_per_node=r.tasks_per_node,
                             slurm_array_parallelism=cfg.array_parallelism,
                             slurm_setup=setup_lines(cfg, r),
                             slurm_signal_delay_s=signal_delay(r.time_min * n_pack))
    if r.gpus:
        p["gpus_per_node"] = r.gpus
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(r, key):
            p[f"slurm_{key}"] = getattr(r, key)
    if dependency:
        p["slurm_dependency"] = dependency
    if extra:
        p["slurm_additional_parameters"] = extra
    return p


def signal_delay(time_min: int) -> int:
    """Seconds before the time limit at which a job gets USR2: 90 s, but at most a quarter of
    the limit (Slurm may also send it up to 60 s early: limits under ~2 min get no warning
    worth the name)."""
    return max(1, min(SIGNAL_DELAY_S, time_min * 60 // 4))


_FLAG = {"timeout_min": "time", "mem_gb": "mem", "cpus_per_task": "cpus-per-task",
         "nodes": "nodes", "tasks_per_node": "ntasks-per-node", "gpus_per_node": "gpus-per-node"}
_FORMAT = {"slurm_signal_delay_s": ("signal", lambda v: f"USR2@{v}")}


def sbatch_flags(p: dict[str, Any]) -> str:
    """The sbatch options a parameter dict amounts to, for plans and messages."""
    out = []
    for k, v in p.items():
        if k in ("name", "slurm_setup", "slurm_array_parallelism"):
            continue
        if k == "slurm_additional_parameters":
            out += [f"--{a}={b}" for a, b in v.items()]
            continue
        if k == "mem_gb":
            v = f"{v:g}GB"
        if k in _FORMAT:
            k, v = _FORMAT[k][0], _FORMAT[k][1](v)
        out.append(f"--{_FLAG.get(k, k.removeprefix('slurm_').replace('_', '-'))}={v}")
    return " ".join(out)


def arrays_of(jobs: list[Job], cfg: SlurmConfig, max_array: int) -> list[list[Job]]:
    """Cut jobs (already grouped by resources, in order) into arrays of equal resources, each at
    most min(MaxArraySize, submit_batch) long."""
    size = max(1, min(max_array, cfg.submit_batch))
    groups: dict[Resources, list[Job]] = defaultdict(list)
    for j in jobs:
        groups[j.resources].append(j)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """{job id ("123" or "123_4"): state} for the given jobs, in ONE sacct call.

    Jobs not (yet) known to accounting are absent; callers treat them as pending.
    """
    mains = sorted({j.split("_")[0] for j in job_ids if j and JOB_ID.fullmatch(j)})
    if not mains:
        return {}
    try:
        res = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(mains)],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        raise SlurmError(f"sacct could not run: {e}") from e
    if res.returncode != 0:
        raise SlurmError(f"sacct failed ({res.returncode}): {res.stderr.strip()}")
    states: dict[str, str] = {}
    for line in res.stdout.splitlines():
        jid, _, state = line.partition("|")
        state = state.split(" ")[0]  # "CANCELLED by 0" -> "CANCELLED"
        if not jid or "." in jid:
            continue
        for parts in read_job_id(jid):  # expands "123_[4-9%2]" (pending array tasks)
            if len(parts) == 3:
                for i in range(int(parts[1]), int(parts[2]) + 1):
                    states[f"{parts[0]}_{i}"] = state
            else:
                states["_".join(parts[:2])] = state
    return states


class SlurmBackend:
    """Watches already submitted jobs for `hpc.dispatch.watch`; publishes what the ended
    jobs left to the driver (`settle`: jobs submitted by a waiting driver do not import
    mlflow; a record a job published itself is synced already and skipped)."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder

    def settle(self, ended: list[Job]) -> None:
        for job in ended:
            tracked.publish_done(job.tasks, self.folder)

    def start(self, jobs: list[Job]) -> dict[str, dict]:
        return {}  # Slurm schedules; nothing to start here

    def poll(self, jobs: list[Job]) -> None:
        live = [j for j in jobs if not j.finished]
        states = sacct_states([j.job_id for j in live])
        for j in live:
            j.state = states.get(j.job_id, j.state)  # unknown to sacct yet: unchanged
            if j.state in FINAL:
                j.finished = True


def adopt_active(stage: str, todo: list, folder: Path, cfg: SlurmConfig) -> tuple[list[Job], list]:
    """Tasks of `todo` whose recorded Slurm job is still pending/running become Jobs to watch
    (not resubmitted); returns (those jobs, the tasks left to submit)."""
    rec = load_slurm_record(folder)
    ids = {t.key: rec[record.task_id(stage, t.key)]["job_id"] for t in todo
           if record.task_id(stage, t.key) in rec}
    if not ids:
        return [], todo
    states = sacct_states(list(ids.values()))
    by_job: dict[str, Job] = {}
    rest = []
    for t in todo:
        jid = ids.get(t.key)
        state = states.get(jid or "", "")
        if jid and state and state not in FINAL:
            e = rec[record.task_id(stage, t.key)]
            job = by_job.setdefault(jid, Job(stage, [], cfg.resources_for(t.group), job_id=jid, state=state,
                                             stdout=e.get("stdout"), stderr=e.get("stderr")))
            job.tasks.append(t)
        else:
            rest.append(t)
    return list(by_job.values()), rest


def load_slurm_record(folder: Path) -> dict[str, dict]:
    """The Slurm entries of `jobs.json` whose job id is well formed (a tampered record must
    not put options on a `scancel` line)."""
    return {k: v for k, v in record.load(folder).items()
            if v.get("cluster") == CLUSTER and JOB_ID.fullmatch(str(v.get("job_id")))}


def make_executor(folder: Path, cfg: SlurmConfig, params: dict[str, Any]) -> submitit.AutoExecutor:
    """The submitit executor that writes and submits the sbatch files of one array."""
    try:
        ex = submitit.AutoExecutor(folder=folder / "logs", cluster="slurm",
                                   slurm_max_num_timeout=cfg.max_requeues)
    except RuntimeError as e:  # no srun on PATH: not on a Slurm cluster
        raise SlurmError(f"cannot submit to Slurm here: {e}") from None
    ex.update_parameters(**params)
    return ex


def submit_stage(stage: str, jobs: list[Job], folder: Path, cfg: SlurmConfig,
                 dependency: str | None, publish: bool = True) -> list[str]:
    """Submit `jobs` as arrays; fills job ids and log paths; returns the array (main) ids.
    `publish=False`: the jobs leave publishing (MLflow) to the driver that waits for them."""
    mains = []
    for array in arrays_of(jobs, cfg, max_array_size()):
        n_pack = max(len(j.tasks) for j in array)
        res = array[0].resources
        ex = make_executor(folder, cfg, executor_params(res, cfg, n_pack, f"s2l-{stage}", dependency))
        try:
            with ex.batch():
                for j in array:
                    j.handle = ex.submit(TaskRunner(j.tasks, res, cfg.max_requeues, folder=folder,
                                                    stage=stage, publish=publish,
                                                    pack_mode=cfg.pack_mode))
        except Exception as e:  # sbatch refused (unknown partition/account, too much memory...)
            flags = sbatch_flags(executor_params(array[0].resources, cfg, n_pack, "", dependency))
            raise SubmissionError(f"sbatch refused {len(array)} jobs of stage {stage!r} "
                                  f"({flags}): {_last_line(e)}") from e
        entries = {}
        for j in array:
            j.job_id = j.handle.job_id
            j.stdout, j.stderr = str(j.handle.paths.stdout), str(j.handle.paths.stderr)
            entries.update({record.task_id(stage, t.key): j.entry(CLUSTER) for t in j.tasks})
        record.update(folder, entries)  # at once: a crash later must not forget these jobs
        mains.append(array[0].job_id.split("_")[0])
        time.sleep(SUBMIT_PAUSE_S)
    return mains


def _last_line(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")


def run_stages(stages: list[Stage], folder: str | Path, cfg: SlurmConfig | None = None,
               progress: Callable[[Progress], None] | None = None, wait: bool = True,
               max_parallel: int | None = None) -> Outcome:
    """Submit every stage (chained with afterok); with `wait`, watch them to the end.

    Never raises for task failures; raises `SlurmError` when sbatch refuses or sacct fails.
    `max_parallel` is accepted for a backend-neutral call and ignored (Slurm schedules;
    `cfg.array_parallelism` caps each array).
    """
    cfg = cfg or SlurmConfig()
    folder = Path(folder).absolute()
    out = Outcome()
    plan: list[tuple[Stage, list[Job]]] = []
    dependency = None
    for stage in stages:
        todo = split_done(stage, out)
        adopted, todo = adopt_active(stage.name, todo, folder, cfg)
        jobs = make_jobs(stage.name, todo, cfg)
        # a driver that waits publishes each ended job's records itself (no mlflow import
        # on the nodes); one that exits leaves it to the jobs
        mains = submit_stage(stage.name, jobs, folder, cfg, dependency, publish=not wait)
        mains += sorted({j.job_id.split("_")[0] for j in adopted})
        plan.append((stage, adopted + jobs))
        if mains:
            dependency = "afterok:" + ":".join(mains)
    if not wait:
        out.submitted = {record.task_id(j.stage, t.key): j.job_id
                         for _, jobs in plan for j in jobs for t in j.tasks}
        return out
    for i, (stage, jobs) in enumerate(plan):
        if not jobs:
            continue
        watch(jobs, SlurmBackend(folder), progress, cfg.poll_s, out, folder)
        if any(f.stage == stage.name for f in out.failed):
            later = [j for _, js in plan[i + 1:] for j in js]
            try:
                cancel([j.job_id for j in later])  # kill-on-invalid-dep does it too; be sure
            except SlurmError:
                pass  # those jobs end anyway: their dependency can no longer be met
            out.blocked += [record.task_id(j.stage, t.key) for j in later for t in j.tasks]
            break
    return out


def cancel(job_ids: list[str]) -> list[str]:
    """Cancel the given jobs in ONE scancel call; returns the ids asked for. Raises SlurmError
    when scancel cannot run or refuses."""
    ids = sorted({j for j in job_ids if j and JOB_ID.fullmatch(j)})
    if not ids:
        return []
    try:
        res = subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        raise SlurmError(f"scancel could not run: {e}") from e
    if res.returncode != 0:
        raise SlurmError(f"scancel failed ({res.returncode}): {res.stderr.strip()[:300]}")
    return ids


def cpu_seconds(job_ids: list[str]) -> float | None:
    """CPU time allocated to the given jobs (sacct CPUTimeRAW: cores x elapsed), in ONE sacct
    call; None when accounting cannot be asked."""
    mains = sorted({j.split("_")[0] for j in job_ids if j and JOB_ID.fullmatch(j)})
    if not mains:
        return 0.0
    try:
        res = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "CPUTimeRAW", "-j", ",".join(mains)],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    return float(sum(int(x) for x in res.stdout.split() if x.isdigit()))


def describe_plan(stages: list[Stage], cfg: SlurmConfig, max_array: int | None = None,
                  skip_done: bool = True) -> str:
    """The sbatch plan for a dry run: per stage and resource group, the arrays and options.

    Touches no scheduler except (once) `scontrol show config` for MaxArraySize when `max_array`
    is not given. With `skip_done`, tasks already done are left out (as a submission would).
    """
    max_array = max_array or max_array_size()
    lines = []
    total_jobs = total_arrays = 0
    prev = None
    for stage in stages:
        tasks = [t for t in stage.tasks if not (skip_done and t.is_done())]
        jobs = make_jobs(stage.name, tasks, cfg)
        arrays = arrays_of(jobs, cfg, max_array)
        lines.append(f"stage {stage.name}: {len(tasks)} tasks -> {len(jobs)} jobs "
                     f"(pack {cfg.pack}) in {len(arrays)} arrays"
                     + (f", after stage {prev} (afterok)" if prev and arrays else ""))
        by_res: dict[Resources, list[list[Job]]] = defaultdict(list)
        for a in arrays:
            by_res[a[0].resources].append(a)
        for res, arrs in by_res.items():
            n_pack = max(len(j.tasks) for a in arrs for j in a)
            flags = sbatch_flags(executor_params(res, cfg, n_pack, "", "afterok:X" if prev else None))
            sizes = defaultdict(int)
            for a in arrs:
                sizes[len(a)] += 1
            shape = " + ".join(f"{c} x {s}" for s, c in sorted(sizes.items(), reverse=True))
            n_tasks = sum(len(j.tasks) for a in arrs for j in a)
            lines.append(f"  {n_tasks} tasks, arrays {shape} (%{cfg.array_parallelism}): "
                         f"sbatch {flags}")
        total_jobs += len(jobs)
        total_arrays += len(arrays)
        prev = stage.name if arrays else prev
    if cfg.setup or cfg.env:
        lines.append("  setup: " + "; ".join(list(cfg.setup) +
                                             [f"export {k}={shlex.quote(v)}" for k, v in cfg.env]))
    lines.append(f"total: {total_jobs} jobs in {total_arrays} sbatch calls "
                 f"(MaxArraySize {max_array}, submit_batch {cfg.submit_batch})")
    return "\n".join(lines)
