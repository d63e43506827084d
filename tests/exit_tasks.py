"""Picklable tasks for tests/test_overhead.py (importable by the job processes, like
dispatch_tasks): a task whose process has a slow, observable teardown."""
from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path

from s2l.tasks import Task


def _teardown(path: str, sleep_s: float) -> None:
    """What a heavy interpreter teardown looks like from outside: time, then a file."""
    time.sleep(sleep_s)
    Path(path).write_text(str(time.time()))


class TeardownTask(Task):
    """Registers an atexit handler that sleeps `sleep_s` then writes `root/<key>.teardown`;
    writes `root/<key>.ran` (its end time and pid) when `run()` returns; fails when told."""

    def __init__(self, root, key, sleep_s=3.0, fail=False):
        self.root, self.key, self.sleep_s, self.fail = str(root), key, sleep_s, fail

    @property
    def marker(self) -> Path:
        return Path(self.root) / f"{self.key}.marker"

    def run(self):
        atexit.register(_teardown, str(Path(self.root) / f"{self.key}.teardown"), self.sleep_s)
        if self.fail:
            raise ValueError(f"task {self.key} was told to fail")
        Path(self.root, f"{self.key}.ran").write_text(json.dumps({"end": time.time(),
                                                                  "pid": os.getpid()}))
        return {"key": self.key}
