"""Sweeps that survive people and machines: hpc/submit.py on a tiny LM sweep, locally, with faults
injected from outside, as they happen: a `kill -9` of the driver before, during and after the
cells, two drivers on one out dir, SIGINT/SIGTERM to the driver alone from a shell that
ignores SIGINT, a diverging learning rate, a truncated checkpoint, a full disk.

After each fault, as applicable: the final store is bit-identical to an undisturbed run, every
cell was trained to completion exactly once (counted from the jobs' own result files, which a
sweep cannot write twice without running twice), MLflow holds exactly one child run per done
cell, no process that mentions the out dir is left (checked in /proc), and no temp file is left.
"""
from __future__ import annotations

import copy
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT

SMOKE = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
CELLS = ["xs/code-heavy/0", "xs/prose-heavy/0"]


def _sweep(path: Path, **train) -> Path:
    """The smoke sweep cut to its smallest scale (2 cells), checkpointing every 5 steps."""
    raw = copy.deepcopy(SMOKE)
    raw["name"] = "faults"
    raw["scales"] = {"xs": {**raw["scales"]["xs"], "tokens": 30000}}
    raw["train"] = {**raw["train"], "checkpoint_every": 5, "log_every": 5, **train}
    raw["slurm"] = {"poll_s": 1}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Run:
    """One `hpc/submit.py` as a user starts it, its output in files (a pipe could fill)."""

    def __init__(self, sweep: Path, out: Path, uri: str, tag: str, ignore_sigint: bool = False):
        self.log = sweep.parent / f"{tag}.log"
        self.out = out
        preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
        self.proc = subprocess.Popen(
            [sys.executable, "hpc/submit.py", str(sweep), "--out", str(out), "--cluster", "local",
             "--tracking-uri", uri, "--max-parallel", "2"],
            cwd=ROOT, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, preexec_fn=preexec)

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def text(self) -> str:
        return self.log.read_text()


def _until(cond, timeout: float = 240, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        if proc is not None and proc.poll() is not None:
            assert cond(), "the driver ended before the fault"
            return
        time.sleep(0.05)


def _mentions(out: Path) -> list[str]:
    """Processes (other than this one) whose command line or environment names `out`."""
    needle, found = os.fsencode(str(out)), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie runs nothing (its parent has not reaped it yet)
            blob = (d / "cmdline").read_bytes() + (d / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if needle in blob:
            found.append(f"{d.name}: {(d / 'cmdline').read_bytes()[:200]!r}")
    return found


def _nothing_left(out: Path, within: float = 10.0) -> float:
    """Seconds until no process names `out` (fails after `within`)."""
    t0 = time.time()
    while _mentions(out):
        assert time.time() - t0 < within, f"left running: {_mentions(out)}"
        time.sleep(0.1)
    return time.time() - t0


def _trainings(out: Path) -> Counter:
    """Cells trained to completion, counted from every job's result file (the data stages'
    tasks, which run first in a cold cache, are not cells)."""
    count: Counter = Counter()
    for f in (out / ".s2l" / "logs").glob("*/*_result.pkl"):
        outcome, result = pickle.loads(f.read_bytes())
        if outcome == "success":  # {task key: its results}; a cell's key starts with its scale
            count.update(k for k in result if k.split("/")[0] in SMOKE["scales"])
    return count


def _children(uri: str, out: Path) -> list[str]:
    """Names of the live (not deleted) child runs of the sweep's experiment."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("faults")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return sorted(r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags)


def _parent_status(uri: str) -> str:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("faults")
    [parent] = [r for r in client.search_runs([exp.experiment_id])
                if "mlflow.parentRunId" not in r.data.tags]
    return parent.info.status


def _debris(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".tmp" in p.name or ".stale-" in p.name]


def _done(out: Path) -> list[str]:
    return sorted(c for c in CELLS if (out / "cells" / c / "DONE").exists())


def _same_store(a: Path, b: Path) -> None:
    x = xr.open_zarr(a / "losses.zarr", consolidated=False).load()
    y = xr.open_zarr(b / "losses.zarr", consolidated=False).load()
    assert y["done"].values.all()
    for v in ("loss", "correct"):
        np.testing.assert_array_equal(x[v].values, y[v].values)


def _healthy(out: Path, uri: str, ref: Path, killed_after_marker: bool = False) -> None:
    """What every fault must leave once a re-run completed. A job killed after its cell's
    marker but before its result file was trained once too, without a result file."""
    _same_store(ref, out)
    if killed_after_marker:
        assert max(_trainings(out).values(), default=1) == 1
    else:
        assert _trainings(out) == Counter({c: 1 for c in CELLS})
    assert _children(uri, out) == CELLS  # one run per cell: none lost, none twice
    assert _debris(out) == []
    assert _mentions(out) == []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An undisturbed run, with a second driver started on the same out dir meanwhile."""
    root = tmp_path_factory.mktemp("faults-ref")
    sweep, out, uri = _sweep(root / "sweep.yaml"), root / "out", f"sqlite:///{root}/mlflow.db"
    first = Run(sweep, out, uri, "first")
    _until(lambda: (out / ".s2l" / "driver.lock").exists(), proc=first.proc)
    second = Run(sweep, out, uri, "second")
    assert second.wait(timeout=120) == 3, second.text
    assert first.wait() == 0, first.text
    return sweep, out, uri, second.text, first.proc.pid


def test_undisturbed_run_and_a_second_driver_refused(reference):
    sweep, out, uri, second, pid = reference
    line = [ln for ln in second.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "busy" in line[0] and f"pid {pid}" in line[0], second
    assert f"hpc/status.py {out} --wait" in line[0]
    assert "Traceback" not in second
    _healthy(out, uri, out)
    assert _parent_status(uri) == "FINISHED"
    assert not (out / ".s2l" / "driver.lock").exists()


POINTS = {
    "before cells": lambda out: (out / ".s2l" / "jobs.json").exists(),
    "during cells": lambda out: any((out / "cells" / c / "ckpt.pt").exists() for c in CELLS),
    "after cells": lambda out: len(_done(out)) == len(CELLS),
}


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_9_of_the_driver_then_rerun(reference, tmp_path, point):
    sweep, ref, _, _, _ = reference
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    run = Run(sweep, out, uri, "killed")
    _until(lambda: POINTS[point](out), proc=run.proc)
    run.proc.kill()
    run.wait()
    orphans_s = _nothing_left(out, within=10)
    print(f"kill -9 {point}: orphans gone after {orphans_s:.2f} s")
    truncated = None
    if point == "during cells":  # and the newest checkpoint is cut short, as by a full disk
        ckpts = [out / "cells" / c / "ckpt.pt" for c in CELLS if not (out / "cells" / c / "DONE").exists()]
        ckpts = [p for p in ckpts if p.exists()]
        if ckpts:
            truncated = ckpts[0]
            truncated.write_bytes(truncated.read_bytes()[:100])
    done_before = _done(out)
    again = Run(sweep, out, uri, "again")
    assert again.wait() == 0, again.text
    if done_before == CELLS:  # the re-run trains nothing: it publishes what the kill left
        assert "nothing to do: all 2 tasks" in again.text, again.text
    else:
        assert f"{len(CELLS) - len(done_before)} of 2 tasks to run" in again.text, again.text
    _healthy(out, uri, ref, killed_after_marker=bool(done_before))
    assert _parent_status(uri) == "FINISHED"
    if truncated is not None:
        logs = "".join(p.read_text() for p in (out / ".s2l" / "logs").glob("*/*.out"))
        assert f"checkpoint {truncated} is unreadable" in logs


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_the_driver_alone_stops_everything(reference, tmp_path, sig):
    sweep, _, _, _, _ = reference
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    run = Run(sweep, out, uri, "signalled", ignore_sigint=True)
    _until(lambda: any((out / "cells" / c / "progress.json").exists() for c in CELLS), proc=run.proc)
    t0 = time.time()
    run.proc.send_signal(sig)  # the driver alone, not its process group
    assert run.wait(timeout=60) == 130, run.text
    left_s = _nothing_left(out, within=15)
    print(f"{sig.name}: driver exited after {time.time() - t0 - left_s:.2f} s, nothing left")
    assert "interrupted: local jobs stopped" in run.text and "Traceback" not in run.text
    assert _parent_status(uri) == "KILLED"
    assert not (out / ".s2l" / "driver.lock").exists()
    assert _debris(out) == []


def test_diverging_lr_fails_the_cell_and_stores_nothing(tmp_path):
    sweep = _sweep(tmp_path / "sweep.yaml", lr=50.0)
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    run = Run(sweep, out, uri, "diverged")
    assert run.wait() == 1, run.text
    assert "diverged" in run.text.lower() or "rose to" in run.text or "Diverged" in run.text, run.text
    assert _done(out) == []
    ds = xr.open_zarr(out / "losses.zarr", consolidated=False).load()
    assert not ds["done"].values.any() and np.isnan(ds["loss"].values).all()
    assert _children(uri, out) == []
    assert _parent_status(uri) == "FAILED"
    assert _mentions(out) == []


def _tmpfs(path: Path, size: str):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.mark.skipif(os.geteuid() != 0, reason="a small file system needs `mount -t tmpfs` (root)")
def test_full_disk_exits_3_in_one_line_and_a_rerun_completes(reference, tmp_path):
    sweep, ref, _, _, _ = reference
    disk = tmp_path / "disk"
    _tmpfs(disk, "16m")
    try:
        filler = disk / "filler"
        with open(filler, "wb") as f:  # leave about 40 KiB: enough for the lock, not the store
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            f.write(b"\0" * max(0, free - 40 * 1024))
        out, uri = disk / "out", f"sqlite:///{tmp_path}/mlflow.db"
        run = Run(sweep, out, uri, "full")
        assert run.wait() == 3, run.text
        errors = [ln for ln in run.text.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "No space left on device" in errors[0], run.text
        assert "MiB free" in errors[0] and "Traceback" not in run.text
        assert _debris(disk) == [] and _mentions(out) == []
        filler.unlink()
        again = Run(sweep, out, uri, "freed")
        assert again.wait() == 0, again.text
        _healthy(out, uri, ref)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ------------------------------------------------------------- leases, without processes

def _holder(path: Path, **fields) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": "elsewhere", "pid": 12345, "start": "", "since": 0.0,
                                "token": "t", "what": "", "job": "", **fields}))


def test_lease_is_exclusive_and_taken_over_only_when_stale(tmp_path):
    import socket

    from hpc.lease import Lease, LeaseBusy, live_holder

    path = tmp_path / "driver.lock"
    first = Lease(path, what="first").acquire()
    with pytest.raises(LeaseBusy, match=f"pid {os.getpid()}"):
        Lease(path).acquire()
    first.release()
    assert not path.exists()
    # a dead pid on this host: stale at once
    dead = subprocess.Popen(["true"])
    dead.wait()
    _holder(path, host=socket.gethostname(), pid=dead.pid)
    with Lease(path) as taken:
        assert live_holder(path)["token"] == taken.token
    # another host: live while its heartbeat is fresh, stale once it is old
    _holder(path)
    with pytest.raises(LeaseBusy, match="host elsewhere"):
        Lease(path, heartbeat_s=10).acquire()
    os.utime(path, (time.time() - 100, time.time() - 100))
    with Lease(path, heartbeat_s=10):
        pass
    # the same scheduler job, requeued, takes its lease back before the heartbeat is stale
    _holder(path, job="77_3")
    with pytest.raises(LeaseBusy):
        Lease(path, job="78_0").acquire()
    with Lease(path, job="77_3"):
        pass
    assert list(tmp_path.iterdir()) == [] or all(p.name.endswith(".guard") for p in tmp_path.iterdir())


def test_lease_heartbeat_renews_and_notices_a_takeover(tmp_path):
    from hpc.lease import Lease

    path = tmp_path / "lock"
    lost = []
    lease = Lease(path, heartbeat_s=0.1, on_lost=lambda: lost.append(1)).acquire()
    os.utime(path, (0, 0))
    time.sleep(0.5)
    assert time.time() - path.stat().st_mtime < 5  # renewed
    _holder(path, token="someone else")  # taken over (it looked dead to another host)
    time.sleep(0.5)
    assert lost == [1] and not lease.held
    lease.release()
    assert path.exists()  # not ours any more: left alone
