"""What the tasks of every study kind do alike: set up torch in a task process, carry their
config, mark themselves done by the conventional marker, and retire work of an older config.

    @dataclasses.dataclass
    class Score(StudyTask):
        stage: ClassVar[str] = "score"
        width: str = ""

        def run(self):
            setup_torch(self.cfg.train.threads)
            ...

A `StudyTask`'s marker is `s2l.tasks.marker_path(out, stage, key)` and its fingerprint the
config's `fingerprint()`, so any change of the config redoes every task (the study's
`prepare` moves the old work aside first, with `retire_stale`).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, ClassVar

from s2l.tasks import DEFAULT_GROUP, Task, marker_path


def setup_torch(threads: int):
    """Set torch's intra-op threads of this process; return the torch module.

    Also flushes denormals to zero: the tiny probabilities of saturated softmaxes otherwise
    make CPUs take a slow path (measured 2x slower training on CPU)."""
    import torch

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    return torch


@dataclasses.dataclass
class StudyTask(Task):
    """A task of a config-driven study: `cfg` (with `fingerprint()`), the study's `out` dir,
    its `key` within its stage, and its resource `group`. Subclasses set `stage`."""

    cfg: Any
    out: Path
    key: str
    group: str = DEFAULT_GROUP
    stage: ClassVar[str] = ""

    @property
    def marker(self) -> Path:
        return marker_path(self.out, self.stage, self.key)

    @property
    def fingerprint(self) -> str:
        return self.cfg.fingerprint()


def retire_stale(out: Path, fingerprint: str, names: tuple[str, ...]) -> None:
    """Before a study writes into an existing `out` dir made by a config whose fingerprint
    differs (recorded in `out/FINGERPRINT`), move its work `names` aside into
    `out/stale-<time>/` (never deleted: results of the old config stay readable). Writes
    nothing; the caller records the new fingerprint once its own files exist."""
    fp_file = out / "FINGERPRINT"
    if not fp_file.exists() or fp_file.read_text() == fingerprint:
        return
    stale = out / f"stale-{time.strftime('%Y%m%d-%H%M%S')}"
    for name in names:
        if (out / name).exists():
            stale.mkdir(exist_ok=True)
            (out / name).rename(stale / name)
