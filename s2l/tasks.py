"""What a sweep file asks for, as units of work that `hpc/` can dispatch anywhere.

A *study* is an ordered list of *stages*; a stage is a list of independent *tasks*. Every
task of stage i may depend on every task of stages < i having succeeded (on Slurm this is an
`afterok` dependency; locally the stages run one after another).

Tasks only compute. Whether a task is done is decided in one place, here, by one kind of
file: its *completion marker*, a small JSON `{"key": ..., "fingerprint": ...}` that the runner
(`run_task`, called by `hpc/node.py` on the compute node) writes after `Task.run()` returned.
A marker whose fingerprint differs from the task's (the config changed what the task would
compute) does not count, so a re-run of `hpc/submit.py` redoes exactly what is stale or
missing; checking 10^4 tasks at submit costs a stat and a tiny read each.

Tasks carry a resource *group* tag (a scale, width or proxy-size name, or "default"); `hpc/`
resolves it against the sweep's `slurm:` block. Nothing here knows about submitit or Slurm.
Tasks must be picklable (submitit ships them to the node) and idempotent (they may be
requeued).

Each study kind (`lm`, `attribution`, `selection`) registers a factory with `register`;
`load_study` reads the YAML and picks one by the top-level `kind` key.
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from s2l.config import ConfigError
from s2l.yamlfile import read_yaml

#: the resource group of tasks that name none (bookkeeping stages: score, select, report)
DEFAULT_GROUP = "default"
#: the resource group of data-preparation tasks: not a valid user-chosen name (names start with a
#: letter or digit), so no scale's, width's or proxy size's resources apply to it
DATA_GROUP = "_data"


class Task(abc.ABC):
    """One unit of work of a stage, run by `hpc/` in a process of its own.

    Subclasses set `key` (unique within the stage, human readable: "xs/code-heavy/0"),
    `marker` (where the completion marker lives), and optionally `group` and `fingerprint`.
    """

    key: str
    #: resource group tag, resolved by `hpc.resources` against the sweep's `slurm:` block
    group: str = DEFAULT_GROUP
    #: what the task's result depends on (a cell id, a config hash); "" when nothing varies
    fingerprint: str = ""

    @property
    @abc.abstractmethod
    def marker(self) -> Path:
        """Path of this task's completion marker."""

    @abc.abstractmethod
    def run(self) -> Any:
        """Compute and write the results; resume from a checkpoint if one exists. Raises on
        failure. Must not write the completion marker: `run_task` does, after this returns."""

    def publish(self) -> None:
        """Side effects that follow the marker and may be replayed (e.g. tracking records).
        Called once after the marker is written; the default does nothing."""

    def checkpoint(self) -> None:
        """Called on preemption/timeout before requeue. Tasks that checkpoint periodically
        (and resume in `run`) need nothing more: the default does nothing."""

    def progress(self) -> tuple[float, str] | None:
        """(fraction done in [0, 1], short status text) read from the task's files while it
        runs elsewhere, for live progress displays; None when unknown."""
        return None

    def pack_key(self) -> str | None:
        """Tasks of one job with the same non-None key may run together, as one batched
        computation (`run_packed`), when the job asks for it (`slurm.pack_mode`); None: never."""
        return None

    @classmethod
    def run_packed(cls, tasks: list["Task"]) -> list[Any]:
        """`run()` of several tasks of this class at once (same `pack_key`); returns their
        results in order, an exception instance for a task that failed on its own. Raises
        when the shared part fails: then none of them counts as done."""
        raise NotImplementedError(f"{cls.__name__} cannot run packed")

    def is_done(self) -> bool:
        """True when the marker exists and names this task's key and fingerprint."""
        try:
            data = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return False
        return (isinstance(data, dict) and data.get("key") == self.key
                and data.get("fingerprint") == self.fingerprint)


def mark_done(task: Task) -> None:
    """Write `task`'s completion marker atomically (a reader never sees half a marker)."""
    path = task.marker
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"key": task.key, "fingerprint": task.fingerprint}))
    os.replace(tmp, path)


def run_task(task: Task, is_main: bool = True, publish: bool = True) -> Any:
    """Run one task as a compute node does: skip it when done, else run, mark, publish.

    In a multi-process (DDP) task every rank runs; only the main rank marks and publishes.
    `publish=False` leaves `publish()` to the driver (the local backend calls it for each
    done task, so that a node never imports the tracking client): whatever `publish()`
    needs must then be durable before the marker (for cells, the offline record is).
    """
    if task.is_done():
        return None
    result = task.run()
    if is_main:
        mark_done(task)
        if publish:
            task.publish()
    return result


def run_tasks_packed(tasks: list[Task], publish: bool = True) -> dict[str, Any]:
    """`run_task` for tasks that share a `pack_key`: the ones not done run as one
    `run_packed` call, then each that succeeded is marked done (and published) in order.
    {key: result, or the exception of a task that failed on its own (not marked done)}."""
    todo = [t for t in tasks if not t.is_done()]
    if not todo:
        return {}
    results = type(todo[0]).run_packed(todo)
    for task, result in zip(todo, results):
        if not isinstance(result, BaseException):
            mark_done(task)
            if publish:
                task.publish()
    return {t.key: r for t, r in zip(todo, results)}


def marker_path(out: Path, stage: str, key: str) -> Path:
    """The conventional marker location: `<out>/.s2l/done/<stage>/<key, '/' as '__'>`."""
    return Path(out) / ".s2l" / "done" / stage / key.replace("/", "__")


@dataclasses.dataclass
class Stage:
    name: str
    tasks: list[Task]


class Study(abc.ABC):
    """A sweep file turned into stages of tasks, plus what happens before and after them."""

    name: str
    out: Path
    #: the sweep file's top-level mapping as read (hpc reads its `slurm:` block from here)
    raw: dict

    @abc.abstractmethod
    def groups(self) -> list[str]:
        """Resource group names tasks may carry besides "default", in sweep order: what the
        `slurm.resources` block may be keyed by (scale, width or proxy-size names)."""

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
KIND_MODULES = {"lm": "s2l.lm.study", "attribution": "s2l.attribution.study",
                "selection": "s2l.selection.study"}

#: kind name -> factory(raw_yaml, path, out_dir_or_None, tracking_uri_or_None) -> Study
_KINDS: dict[str, Callable[..., Study]] = {}


def register(kind: str):
    def deco(factory):
        _KINDS[kind] = factory
        return factory

    return deco


def load_study(path: str | Path, out: str | Path | None = None,
               tracking_uri: str | None = None) -> Study:
    """Read the YAML at `path`, dispatch on its `kind` (default "lm"), return the Study.

    Every kind takes the same overrides; one that cannot use an override refuses it with a
    `ConfigError`. Raises `s2l.config.ConfigError` (exit code 2 in the CLI) for any invalid
    input, before anything is created.
    """
    raw = read_yaml(path)
    kind = raw.get("kind", "lm")
    if not isinstance(kind, str) or kind not in KIND_MODULES:
        raise ConfigError("kind", f"unknown study kind {kind!r}; expected one of {sorted(KIND_MODULES)}")
    if kind not in _KINDS:
        importlib.import_module(KIND_MODULES[kind])  # on demand: `import s2l` stays light
    return _KINDS[kind](raw, Path(path), out, tracking_uri)
