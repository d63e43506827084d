"""The sweep file's `slurm:` block: what each resource group of tasks asks of the scheduler.

Tasks carry a resource group tag (`s2l.tasks.Task.group`: a scale, width or proxy-size name,
or "default"); this module reads the `slurm:` block of the sweep and resolves each tag to the
`Resources` that `hpc.local` and `hpc.slurm` turn into processes or sbatch options. The
library (`s2l/`) knows nothing of any of this.

    slurm:
      defaults: {cpus: 1, mem_gb: 4, time: "1:00:00", partition: gpu}
      resources: {m: {gpus: 1, time: "4:00:00", sbatch: {exclusive: user}}}
      array_parallelism: 64
      pack: 3
      setup: ["module load cuda/12.1"]
      env: {HF_HOME: /scratch/hf}
      data: {mem_gb: 8, time: "2:00:00"}   # data-preparation tasks (tokenizer, shards, finalize)

Data-preparation tasks (`s2l.lm.prepare`: the tokenizer, one task per shard, finalize) carry
the group tag `DATA_GROUP`, which no scale can be named (names start with a letter or digit).
Their resources are the defaults' scheduler fields (partition, account, qos, constraint,
sbatch extras) with 1 cpu, no GPU, one node and one task, memory and time derived from the
largest shard (`data_resources`), and then whatever `slurm.data` sets.

Every value of the block ends up in a shell script (the sbatch file, or the shell line that
starts a local job), so the block is read as typed models (`s2l.config.ConfigModel`: wrong
types, unknown keys, infinities refused) plus the checks below; anything refused is a
`ConfigError` naming the key path (CLI exit 2, nothing created or submitted):

- Values that are data (`partition`, `account`, `qos`, `constraint`, `sbatch` values, `env`
  values) hold no control characters (NUL, newline, CR, ESC, ...). submitit quotes them with
  `shlex.quote` on `#SBATCH` lines and `setup_lines` quotes env values, but a newline inside
  quotes on a `#SBATCH` line still starts a new shell line, which bash would run.
- `env` keys are shell identifiers (`[A-Za-z_][A-Za-z0-9_]*`): they are written unquoted
  after `export`.
- `setup` lines are shell by design (module load, venv activate), written by the sweep's
  author, but each must be one line without control characters.
- Numbers are finite and bounded (`LIMITS`): a typo like `mem_gb: 64000000` is refused here
  rather than pending forever in the queue.
- `sbatch` extras: option names are long options (`[a-z][a-z0-9-]*`) checked against
  `DENIED`, a DENYLIST. Why a denylist and not an allowlist: sites need options s2l cannot
  foresee (`gres`, `reservation`, `licenses`, `exclusive`, `mail-type`, `hint`, `nodelist`,
  `exclude`, `tmp`, site plugins' own options) and sbatch gains options every release; an
  allowlist would force a code change for each. What a sweep must not set is small and
  known: options that change what runs, as whom, where or with which environment (`wrap`,
  `container`, `chdir`, `export`, `uid`, ...), options that s2l's own machinery owns (log
  files, arrays, dependencies, requeueing, signals, job names: changing them breaks status,
  resume and `afterok` chains), and options that duplicate a first-class key (`time`, `mem`,
  `partition`, ...: packing and plans need the real value). sbatch reads `#SBATCH` lines with
  getopt_long, which takes any unambiguous abbreviation (`--wra` is `--wrap`), so a name that
  is a prefix of a denied option is refused too, unless it is itself an sbatch option
  (`gpus`). The denylist guards the data fields against becoming code or breaking dispatch;
  it is no sandbox against the sweep's author, whose `setup` lines run as they are.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, Field, PlainValidator
from pydantic_core import PydanticCustomError

from s2l.config import ConfigError, ConfigModel, key_path, parse_model, shown
from s2l.tasks import DATA_GROUP

#: what may not appear in any string of the block (C0/C1 controls, Unicode line breaks)
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_TEXT = 4096  # characters in any one string of the block
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SBATCH_NAME = re.compile(r"[a-z][a-z0-9-]*")

#: upper bounds of the numbers (a sweep above them is almost surely a typo)
LIMITS = {"gpus": 64, "cpus": 1024, "mem_gb": 65536, "nodes": 10000, "tasks_per_node": 1024,
          "time_min": 366 * 24 * 60, "array_parallelism": 100_000, "pack": 10_000,
          "max_requeues": 100, "submit_batch": 100_000, "poll_s": 3600}

_RUNS = "changes what runs, as whom, where or with which environment; s2l decides that"
_OWNED = "is set by s2l's dispatch (logs, arrays, dependencies, requeue, signals, job names)"

#: sbatch options (long names) a sweep may not set in `sbatch:`, with the reason
DENIED: dict[str, str] = {
    **{k: _RUNS for k in ("wrap", "container", "container-id", "chdir", "input", "export",
                          "export-file", "get-user-env", "uid", "gid", "propagate", "batch",
                          "bb", "bbf", "clusters", "cluster-constraint")},
    **{k: _OWNED for k in ("output", "error", "open-mode", "array", "dependency",
                           "kill-on-invalid-dep", "job-name", "parsable", "wait", "test-only",
                           "hold", "signal", "requeue", "no-requeue")},
    **{k: f"duplicates the first-class key `{v}`; use that key instead" for k, v in (
        ("time", "time"), ("mem", "mem_gb"), ("cpus-per-task", "cpus"), ("nodes", "nodes"),
        ("ntasks", "tasks_per_node"), ("ntasks-per-node", "tasks_per_node"),
        ("gpus-per-node", "gpus"), ("partition", "partition"), ("account", "account"),
        ("qos", "qos"), ("constraint", "constraint"))},
}
#: real sbatch options that are also prefixes of a denied one (getopt_long prefers an exact match)
SBATCH_EXACT = frozenset({"gpus"})


#: derived data-task resources: a worker holds about 2x its shard (the text and its tokens)
#: plus the interpreter with tokenizers/datasets (~0.5 GB); tokenizing runs at >= ~1 MB/s per
#: core (measured ~3-4 MB/s, benchmarks/bench_prepare.py), so the time limit allows 4x that
DATA_BASE_GB = 1.0
DATA_MEM_PER_GB = 3.0
DATA_MIN_GB = 2.0
DATA_MIN_TIME = 30  # minutes
DATA_S_PER_MB = 1.0


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one task asks of the scheduler. Local runs use only `cpus` (threads) and `gpus`."""

    gpus: int = 0
    cpus: int = 1
    mem_gb: float = 4.0
    time_min: int = 60
    nodes: int = 1
    tasks_per_node: int = 1
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra: tuple[tuple[str, str], ...] = ()  # extra sbatch options, as (key, value) pairs


# ------------------------------------------------------------------------------ checks

def text_problem(value: str) -> str | None:
    """Why `value` may not go into a shell script line, or None."""
    m = CONTROL.search(value)
    if m:
        return (f"must be a single line without control characters (found {m.group()!r} "
                f"at position {m.start()})")
    if len(value) > MAX_TEXT:
        return f"must be at most {MAX_TEXT} characters, got {len(value)}"
    return None


def sbatch_option_problem(key: Any) -> str | None:
    """Why `key` may not be an extra sbatch option (see the module docstring), or None."""
    if not isinstance(key, str) or not SBATCH_NAME.fullmatch(key):
        return "sbatch option names are long options in lowercase letters, digits and '-'"
    if key in DENIED:
        return f"sbatch option --{key} {DENIED[key]}"
    hits = sorted(o for o in DENIED if o.startswith(key))
    if hits and key not in SBATCH_EXACT:
        return (f"sbatch reads --{key} as an abbreviation of --{hits[0]}, which "
                f"{DENIED[hits[0]].removeprefix('is ')}")
    return None


def env_name_problem(key: Any) -> str | None:
    if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
        return "environment variable names must be letters, digits and '_', not starting with a digit"
    return None


def _text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise PydanticCustomError("s2l_text", problem)
    return value


def _scalar(value: Any) -> str:
    """A string or a finite number, as the string it is rendered as."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PydanticCustomError("s2l_scalar", "must be a string or a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("s2l_scalar", "must be a finite number")
    return _text(str(value))


def _time(value: Any) -> int:
    try:
        return time_minutes(value)
    except ValueError as e:
        raise PydanticCustomError("s2l_time", str(e)) from None


Text = Annotated[str, AfterValidator(_text)]
Scalar = Annotated[Any, PlainValidator(_scalar)]
Time = Annotated[Any, PlainValidator(_time)]


# ------------------------------------------------------------------------------ time

_TIME_RE = re.compile(r"(?:(?P<days>\d{1,4})-(?P<dh>\d{1,5})(?::(?P<dm>\d{1,2})(?::(?P<ds>\d{1,2}))?)?)"
                      r"|(?P<a>\d{1,9})(?::(?P<b>\d{1,2})(?::(?P<c>\d{1,2}))?)?")
_TIME_HELP = ("use minutes (90), MM:SS (45:00), H:MM:SS (1:30:00), D-H (2-0), D-H:MM or "
              "D-H:MM:SS (2-00:00:00)")


def time_minutes(value: Any) -> int:
    """A Slurm time limit -> whole minutes (seconds round up); raises ValueError.

    An integer is minutes (as is "90"); strings take Slurm's formats: "MM:SS", "H:MM:SS",
    "D-H", "D-H:MM", "D-H:MM:SS". Note that "45:00" is 45 minutes (MM:SS), as in sbatch.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        minutes = value
    elif isinstance(value, str):
        m = _TIME_RE.fullmatch(value.strip())
        if not m:
            raise ValueError(f"malformed time; {_TIME_HELP}")
        g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
        if any(g.get(k, 0) >= 60 for k in ("dm", "ds", "c")) or ("c" in g and g["b"] >= 60):
            raise ValueError("malformed time: minutes and seconds must be < 60")
        if "days" in g:
            seconds = ((g["days"] * 24 + g["dh"]) * 60 + g.get("dm", 0)) * 60 + g.get("ds", 0)
        elif "c" in g:  # H:MM:SS
            seconds = (g["a"] * 60 + g["b"]) * 60 + g["c"]
        else:  # M or M:SS
            seconds = g["a"] * 60 + g.get("b", 0)
        minutes = -(-seconds // 60)
    else:
        raise ValueError("must be minutes (an integer) or a Slurm time string")
    if not 0 < minutes <= LIMITS["time_min"]:
        raise ValueError(f"must be positive and at most {LIMITS['time_min']} minutes (366 days)")
    return minutes


def parse_time_minutes(value: Any, where: str) -> int:
    """`time_minutes` with the error as a ConfigError at key path `where`."""
    try:
        return time_minutes(value)
    except ValueError as e:
        raise ConfigError(where, f"{e}, got {shown(value)}") from None


# ------------------------------------------------------------------------------ the block

def _bounded(low: float, key: str, strict_low: bool = False):
    return Field(None, gt=low, le=LIMITS[key]) if strict_low else Field(None, ge=low, le=LIMITS[key])


class ResourceBlock(ConfigModel):
    """`slurm.defaults` or `slurm.resources.<group>` as written; None: inherit."""

    gpus: Optional[int] = _bounded(0, "gpus")
    cpus: Optional[int] = _bounded(1, "cpus")
    mem_gb: Optional[float] = _bounded(0, "mem_gb", strict_low=True)
    time: Optional[Time] = None
    nodes: Optional[int] = _bounded(1, "nodes")
    tasks_per_node: Optional[int] = _bounded(1, "tasks_per_node")
    partition: Optional[Text] = None
    account: Optional[Text] = None
    qos: Optional[Text] = None
    constraint: Optional[Text] = None
    sbatch: Optional[dict[str, Scalar]] = None


class SlurmBlock(ConfigModel):
    """The `slurm:` block as written (`defaults`, `resources.<group>` and `data` are read as
    ResourceBlocks)."""

    defaults: Optional[dict] = None
    resources: Optional[dict] = None
    data: Optional[dict] = None
    array_parallelism: int = Field(256, ge=1, le=LIMITS["array_parallelism"])
    pack: int = Field(1, ge=1, le=LIMITS["pack"])
    pack_mode: Literal["auto", "serial", "vmap"] = "auto"
    max_requeues: int = Field(3, ge=0, le=LIMITS["max_requeues"])
    setup: Optional[list[Text]] = None
    env: Optional[dict[str, Scalar]] = None
    submit_batch: int = Field(500, ge=1, le=LIMITS["submit_batch"])
    poll_s: float = Field(10.0, gt=0, le=LIMITS["poll_s"])


def _check_keys(data: Any, path: str, problem) -> None:
    """Refuse a bad key of a user's mapping before pydantic puts it in a key path."""
    if isinstance(data, dict):
        for key in data:
            why = problem(key)
            if why:
                raise ConfigError(key_path(path, str(key)), why)


def resolve(data: Any, base: Resources, path: str) -> Resources:
    """A `defaults` or per-group block, keys not given falling back to `base`."""
    if isinstance(data, dict):
        _check_keys(data.get("sbatch"), f"{path}.sbatch", sbatch_option_problem)
    block = parse_model(ResourceBlock, data, path)
    given = {k: v for k, v in block.model_dump(exclude={"time", "sbatch"}).items() if v is not None}
    r = dataclasses.replace(base, **given)
    if block.time is not None:
        r = dataclasses.replace(r, time_min=block.time)
    if block.sbatch:
        r = dataclasses.replace(r, extra=tuple(sorted({**dict(base.extra), **block.sbatch}.items())))
    if r.gpus and r.tasks_per_node > 1 and r.tasks_per_node != r.gpus:
        raise ConfigError(f"{path}.tasks_per_node",
                          f"with gpus={r.gpus} use one task per GPU (tasks_per_node={r.gpus})")
    return r


def data_resources(default: Resources, task_bytes: int) -> Resources:
    """What a data-preparation task gets unless `slurm.data` says otherwise: the defaults'
    scheduler fields (partition, account, ...), 1 cpu, no GPU, one node and task, memory and
    time from `task_bytes` (the largest shard's text, or the tokenizer's sample)."""
    gb = max(0, task_bytes) / 2 ** 30
    mem = max(DATA_MIN_GB, math.ceil(2 * (DATA_BASE_GB + DATA_MEM_PER_GB * gb)) / 2)
    minutes = DATA_MIN_TIME + math.ceil(DATA_S_PER_MB * task_bytes / 2 ** 20 / 60)
    return dataclasses.replace(default, gpus=0, cpus=1, nodes=1, tasks_per_node=1,
                               mem_gb=min(mem, LIMITS["mem_gb"]),
                               time_min=min(minutes, LIMITS["time_min"]))


def packs_vmapped(pack_mode: str, gpus: int) -> bool:
    """Whether a job trains its packs as one vmapped model (s2l.packed) rather than one task
    after another: `pack_mode` "vmap", or "auto" on a job with GPUs (on a CPU, packing
    measured 0.6-1.1x). `hpc.dispatch` cuts such packs from one shape, `hpc.node` runs them."""
    return pack_mode == "vmap" or (pack_mode == "auto" and gpus > 0)


@dataclasses.dataclass(frozen=True)
class SlurmConfig:
    """How tasks become jobs. `per_group` maps group tags to their resources; `DATA_GROUP`
    gets `data` (None: derived from the defaults and `data_bytes`, see `data_resources`);
    every other tag (and "default") gets `default`."""

    default: Resources = Resources()
    per_group: tuple[tuple[str, Resources], ...] = ()
    data: Resources | None = None
    data_bytes: int = 0  # the largest data task's input (bytes of text), for derived resources
    array_parallelism: int = 256  # max array tasks running at once (%N)
    pack: int = 1  # tasks per job: tiny proxies share one job's start-up cost
    # how a job runs its pack: "serial" one task after another; "vmap" same-shape cells as
    # one batched model (s2l.packed); "auto" vmap on a GPU job, serial on CPUs (hpc.node)
    pack_mode: str = "auto"
    max_requeues: int = 3
    setup: tuple[str, ...] = ()  # shell lines run before the task (module load, venv activate)
    env: tuple[tuple[str, str], ...] = ()
    submit_batch: int = 500  # array tasks per sbatch call (also split at MaxArraySize)
    poll_s: float = 10.0

    def resources_for(self, group: str) -> Resources:
        """The resources of a task's group tag ("default" and unknown tags: the defaults)."""
        if group == DATA_GROUP:
            return self.data or data_resources(self.default, self.data_bytes)
        return dict(self.per_group).get(group, self.default)

    @classmethod
    def for_study(cls, study) -> "SlurmConfig":
        """The `slurm:` block of a loaded `s2l.tasks.Study`, checked against its groups. A study
        with data-preparation tasks says how big the largest one's input is
        (`data_task_bytes()`), from which their memory and time are derived."""
        sizer = getattr(study, "data_task_bytes", None)
        return cls.from_raw(study.raw.get("slurm"), study.groups(),
                            data_bytes=int(sizer()) if callable(sizer) else 0)

    @classmethod
    def from_raw(cls, data: Any, groups: list[str] = (), path: str = "slurm",
                 data_bytes: int = 0) -> "SlurmConfig":
        """Validate a `slurm:` mapping (None: all defaults); raises ConfigError with key paths."""
        if isinstance(data, dict):
            _check_keys(data.get("env"), f"{path}.env", env_name_problem)
        block = parse_model(SlurmBlock, data, path)
        default = resolve(block.defaults, Resources(), f"{path}.defaults")
        per = []
        for name, sub in (block.resources or {}).items():
            if name not in groups:
                raise ConfigError(key_path(f"{path}.resources", str(name)),
                                  f"no resource group named {shown(name)}; this sweep's "
                                  f"groups are {list(groups)}")
            per.append((name, resolve(sub, default, f"{path}.resources.{name}")))
        data_res = None
        if block.data is not None:
            data_res = resolve(block.data, data_resources(default, data_bytes), f"{path}.data")
        return cls(default=default, per_group=tuple(per), data=data_res, data_bytes=data_bytes,
                   array_parallelism=block.array_parallelism, pack=block.pack,
                   pack_mode=block.pack_mode,
                   max_requeues=block.max_requeues, setup=tuple(block.setup or ()),
                   env=tuple((block.env or {}).items()), submit_batch=block.submit_batch,
                   poll_s=block.poll_s)
