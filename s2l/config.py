"""Reading YAML sweep files into frozen, validated config, with errors that name the key path.

Every study kind (LM sweep, attribution, selection) validates its YAML with `Section`, which
remembers where in the file it is, so any problem is reported as e.g.
`mixtures.code-heavy.weights.code: must be >= 0, got -1` and the CLI exits with code 2 before
anything is created or submitted.

The blocks shared by all kinds live here: `train`, `tracking`, `slurm` (with per-scale
resources). The LM-specific blocks (scales, data, mixtures, test sets) are in `s2l.sweep`.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from s2l.study import Resources

_MISSING = object()


class ConfigError(ValueError):
    """Invalid sweep file. `path` is the dotted key path of the offending value."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"sweep file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError("", f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"{path} must hold a mapping at top level, got {type(data).__name__}")
    return data


class Section:
    """A YAML mapping plus its key path. Read keys with `get`; `finish` rejects unknown keys.

    >>> s = Section({"lr": 0.1}, "train")
    >>> s.get("lr", float, check=positive)
    0.1
    """

    def __init__(self, data: Any, path: str = ""):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(path, f"must be a mapping, got {type(data).__name__} {data!r}")
        self.data = data
        self.path = path
        self._seen: set[str] = set()

    def key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else str(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, typ: type | tuple = object, default: Any = _MISSING,
            check: Callable[[Any], str | None] | None = None) -> Any:
        """The value at `key`, converted to `typ` (int->float allowed), checked by `check`
        (which returns an error message or None). Missing and no default: an error."""
        self._seen.add(key)
        where = self.key(key)
        if key not in self.data or self.data[key] is None and default is not _MISSING:
            if default is _MISSING:
                raise ConfigError(where, "is required")
            return default
        value = self.data[key]
        value = _coerce(value, typ, where)
        if check is not None:
            problem = check(value)
            if problem:
                raise ConfigError(where, f"{problem}, got {value!r}")
        return value

    def section(self, key: str, required: bool = False) -> "Section":
        self._seen.add(key)
        if required and key not in self.data:
            raise ConfigError(self.key(key), "is required")
        return Section(self.data.get(key), self.key(key))

    def items(self):
        """(key, value) pairs of a mapping whose keys are names chosen by the user."""
        self._seen.update(self.data)
        return list(self.data.items())

    def finish(self) -> None:
        unknown = sorted(set(map(str, self.data)) - set(map(str, self._seen)))
        if unknown:
            raise ConfigError(self.key(unknown[0]),
                              f"unknown key; expected one of {sorted(self._seen)}")


def _coerce(value: Any, typ: type | tuple, where: str) -> Any:
    if typ is object:
        return value
    types = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(where, f"must be {_names(types)}, got a boolean {value!r}")
    if isinstance(value, types):
        return value
    if float in types and isinstance(value, int):
        return float(value)
    if float in types and isinstance(value, str):  # YAML reads "3e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(where, f"must be {_names(types)}, got {type(value).__name__} {value!r}")


def _names(types) -> str:
    return " or ".join({"int": "an integer", "float": "a number", "str": "a string",
                        "bool": "true/false", "list": "a list", "dict": "a mapping"}
                       .get(t.__name__, t.__name__) for t in types)


# Checks: each returns an error message or None.
def positive(v):
    return None if v > 0 else "must be > 0"


def non_negative(v):
    return None if v >= 0 else "must be >= 0"


def fraction(v):
    return None if 0 <= v < 1 else "must be in [0, 1)"


def one_of(*options):
    return lambda v: None if v in options else f"must be one of {list(options)}"


def parse_seeds(s: "Section", default: list[int]) -> tuple[int, ...]:
    """The top-level `seeds:` list: distinct non-negative integers, at least one."""
    seeds = s.get("seeds", list, list(default))
    if not seeds:
        raise ConfigError(s.key("seeds"), "must list at least one seed")
    for i, v in enumerate(seeds):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"{s.key('seeds')}[{i}]", f"must be a non-negative integer, got {v!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(s.key("seeds"), f"has duplicates: {seeds}")
    return tuple(seeds)


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_name(where: str, name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(where, f"name {name!r} must be letters, digits, '-', '_' or '.' "
                                 "(it becomes a coordinate, a run name and a path)")
    return name


# ---------------------------------------------------------------------------- shared blocks

@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation recipe shared by every cell of a sweep (AdamW, warmup + cosine)."""

    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    eval_batch_size: int = 16
    checkpoint_every: int = 200  # optimizer steps; also on SIGUSR2 / timeout
    log_every: int = 25
    threads: int = 1  # torch threads per local cell process

    @classmethod
    def from_section(cls, s: Section) -> "TrainConfig":
        d = cls()
        cfg = cls(
            batch_size=s.get("batch_size", int, d.batch_size, positive),
            lr=s.get("lr", float, d.lr, positive),
            min_lr_ratio=s.get("min_lr_ratio", float, d.min_lr_ratio,
                               lambda v: None if 0 <= v <= 1 else "must be in [0, 1]"),
            warmup_frac=s.get("warmup_frac", float, d.warmup_frac, fraction),
            weight_decay=s.get("weight_decay", float, d.weight_decay, non_negative),
            beta2=s.get("beta2", float, d.beta2, fraction),
            grad_clip=s.get("grad_clip", float, d.grad_clip, non_negative),
            precision=s.get("precision", str, d.precision, one_of("auto", "fp32", "bf16")),
            compile=s.get("compile", bool, d.compile),
            eval_batch_size=s.get("eval_batch_size", int, d.eval_batch_size, positive),
            checkpoint_every=s.get("checkpoint_every", int, d.checkpoint_every, positive),
            log_every=s.get("log_every", int, d.log_every, positive),
            threads=s.get("threads", int, d.threads, positive),
        )
        s.finish()
        return cfg


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None  # None: sqlite file in the sweep's out dir
    experiment: str | None = None  # None: the sweep name

    @classmethod
    def from_section(cls, s: Section) -> "TrackingConfig":
        cfg = cls(uri=s.get("uri", str, None), experiment=s.get("experiment", str, None))
        s.finish()
        return cfg


_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+):(\d{2})(?::(\d{2}))?$|^(\d+)$")


def parse_time_minutes(value: Any, where: str) -> int:
    """Slurm time ("90", "1:30:00", "2-00:00:00", "45:00" is min:sec) -> whole minutes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = _TIME_RE.match(str(value).strip()) if isinstance(value, (str, int)) else None
    if not m:
        raise ConfigError(where, f"malformed time {value!r}; use minutes (90), H:MM:SS "
                                 "(1:30:00) or D-HH:MM:SS (2-00:00:00)")
    if m.group(5):
        minutes = int(m.group(5))
    else:
        days, a, b, c = int(m.group(1) or 0), int(m.group(2)), int(m.group(3)), m.group(4)
        # H:MM:SS, or D-H:MM (Slurm's own reading of "D-H:MM"), or MM:SS
        if c is not None:
            minutes = days * 1440 + a * 60 + b + (1 if int(c) else 0)
        elif m.group(1):
            minutes = days * 1440 + a * 60 + b
        else:
            minutes = a + (1 if b else 0)
    if minutes <= 0:
        raise ConfigError(where, f"time {value!r} must be positive")
    return minutes


_RESOURCE_KEYS = ("gpus", "cpus", "mem_gb", "time", "nodes", "tasks_per_node", "partition",
                  "account", "qos", "constraint", "sbatch")


def resources_from_section(s: Section, base: Resources) -> Resources:
    """Per-scale (or default) Slurm resources; keys not given fall back to `base`."""
    r = dataclasses.replace(
        base,
        gpus=s.get("gpus", int, base.gpus, non_negative),
        cpus=s.get("cpus", int, base.cpus, positive),
        mem_gb=s.get("mem_gb", float, base.mem_gb, positive),
        nodes=s.get("nodes", int, base.nodes, positive),
        tasks_per_node=s.get("tasks_per_node", int, base.tasks_per_node, positive),
        partition=s.get("partition", str, base.partition),
        account=s.get("account", str, base.account),
        qos=s.get("qos", str, base.qos),
        constraint=s.get("constraint", str, base.constraint),
    )
    if s.has("time"):
        r = dataclasses.replace(r, time_min=parse_time_minutes(s.get("time"), s.key("time")))
    extra = s.section("sbatch")
    pairs = []
    for k, v in extra.items():
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise ConfigError(extra.key(k), f"sbatch option values must be strings or numbers, got {v!r}")
        pairs.append((str(k), str(v)))
    if pairs:
        r = dataclasses.replace(r, extra=tuple(sorted(dict(base.extra + tuple(pairs)).items())))
    if r.gpus and r.tasks_per_node > 1 and r.tasks_per_node != r.gpus:
        raise ConfigError(s.key("tasks_per_node"),
                          f"with gpus={r.gpus} use one task per GPU (tasks_per_node={r.gpus})")
    s.finish()
    return r


@dataclasses.dataclass(frozen=True)
class SlurmConfig:
    """How tasks become Slurm jobs. `resources` is keyed by scale name (or "default")."""

    default: Resources = Resources()
    per_scale: tuple[tuple[str, Resources], ...] = ()
    array_parallelism: int = 256  # max array tasks running at once (%N)
    pack: int = 1  # cells per job: tiny proxies share one job's start-up cost
    max_requeues: int = 3
    setup: tuple[str, ...] = ()  # shell lines run before the task (module load, venv activate)
    env: tuple[tuple[str, str], ...] = ()
    submit_batch: int = 500  # array tasks per sbatch call (also split at MaxArraySize)
    poll_s: float = 10.0

    def resources_for(self, scale: str) -> Resources:
        return dict(self.per_scale).get(scale, self.default)

    @classmethod
    def from_section(cls, s: Section, scales: list[str] = ()) -> "SlurmConfig":
        d = cls()
        default = resources_from_section(s.section("defaults"), Resources())
        per = []
        res = s.section("resources")
        for name, _ in res.items():
            if name not in scales:
                raise ConfigError(res.key(name), f"no scale named {name!r}; scales are {list(scales)}")
            per.append((name, resources_from_section(res.section(name), default)))
        setup = s.get("setup", list, [])
        for i, line in enumerate(setup):
            if not isinstance(line, str):
                raise ConfigError(f"{s.key('setup')}[{i}]", f"must be a shell line (string), got {line!r}")
        env = s.section("env")
        env_pairs = tuple((str(k), str(v)) for k, v in env.items())
        cfg = cls(
            default=default,
            per_scale=tuple(per),
            array_parallelism=s.get("array_parallelism", int, d.array_parallelism, positive),
            pack=s.get("pack", int, d.pack, positive),
            max_requeues=s.get("max_requeues", int, d.max_requeues, non_negative),
            setup=tuple(setup),
            env=env_pairs,
            submit_batch=s.get("submit_batch", int, d.submit_batch, positive),
            poll_s=s.get("poll_s", float, d.poll_s, positive),
        )
        s.finish()
        return cfg
