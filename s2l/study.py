"""What a sweep file asks for, as units of work that `hpc/` can dispatch anywhere.

A *study* is an ordered list of *stages*; a stage is a list of independent *tasks*. Every
task of stage i may depend on every task of stages < i having succeeded (on Slurm this is an
`afterok` dependency; locally the stages just run one after another). A task knows how to run
itself on a compute node and how to tell, from files alone, whether it is already done, so a
re-run of `hpc/submit.py` submits only what is missing.

Nothing here knows about submitit or Slurm: `hpc/` turns tasks into jobs. Tasks must be
picklable (submitit ships them to the node) and idempotent (they may be requeued).

The LM sweep (`kind: lm`, the default), the attribution study (`kind: attribution`) and the
selection study (`kind: selection`) each provide a `Study`; `load_study` picks one from the
YAML's top-level `kind` key.
"""
from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any, Callable


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


class Task(abc.ABC):
    """One unit of work of a stage, run by `hpc/` in a process of its own."""

    #: unique within its stage, human readable: e.g. "xs/code-heavy/0"
    key: str
    #: scheduler request; tasks with equal resources can share an array or a packed job
    resources: Resources = Resources()

    @abc.abstractmethod
    def is_done(self) -> bool:
        """True when the task's results are on disk (checked at submit time, cheaply)."""

    @abc.abstractmethod
    def run(self) -> Any:
        """Do the work; resume from a checkpoint if one exists. Raises on failure."""

    def checkpoint(self) -> None:
        """Called on preemption/timeout before requeue. Tasks that checkpoint periodically
        (and resume in `run`) need nothing more: the default does nothing."""

    def progress(self) -> tuple[float, str] | None:
        """(fraction done in [0, 1], short status text) read from the task's files while it
        runs elsewhere, for live progress displays; None when unknown."""
        return None


@dataclasses.dataclass
class Stage:
    name: str
    tasks: list[Task]


class Study(abc.ABC):
    """A sweep file turned into stages of tasks, plus what happens before and after them."""

    name: str
    out: Path
    #: s2l.config.SlurmConfig of the sweep (array parallelism, packing, setup lines, ...)
    slurm: Any

    @abc.abstractmethod
    def prepare(self) -> None:
        """Submit-time work, idempotent: create stores with full coordinates, build shared
        caches (corpus, tokenizer, tokenized data) so that tasks only read them."""

    @abc.abstractmethod
    def stages(self) -> list[Stage]:
        """All stages in dependency order, with every task (done or not)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The `--dry-run` text: every task with its size and the total compute. Must not
        touch the disk."""

    def summary(self) -> str:
        """Printed when every task is done: where results are and what they say."""
        return f"results in {self.out}"


#: the module that registers each study kind
KIND_MODULES = {"lm": "s2l.lm_study", "attribution": "s2l.attribution.study",
                "selection": "s2l.selection.study"}

#: kind name -> factory(raw_yaml, path, out_dir_or_None, **overrides) -> Study; see register()
_KINDS: dict[str, Callable[..., Study]] = {}


def register(kind: str):
    def deco(factory):
        _KINDS[kind] = factory
        return factory

    return deco


def load_study(path: str | Path, out: str | Path | None = None, **overrides) -> Study:
    """Read the YAML at `path`, dispatch on its `kind` (default "lm"), return the Study.

    Raises `s2l.config.ConfigError` (exit code 2 in the CLI) for any invalid input, before
    anything is created.
    """
    from s2l.config import ConfigError, read_yaml

    raw = read_yaml(path)
    kind = raw.get("kind", "lm")
    if kind not in KIND_MODULES:
        raise ConfigError("kind", f"unknown study kind {kind!r}; expected one of {sorted(KIND_MODULES)}")
    if kind not in _KINDS:
        # Imported on demand: `import s2l` stays light, and each module calls register().
        import importlib

        importlib.import_module(KIND_MODULES[kind])
    return _KINDS[kind](raw, Path(path), out, **overrides)
