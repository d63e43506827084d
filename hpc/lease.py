"""Leases: at most one live holder of a path, on one machine or on a shared cluster file system.

Two uses: the driver lock `OUT/.s2l/driver.lock` (one live `hpc/submit.py` per out dir) and
task leases `OUT/.s2l/running/<stage>/<key>` (one live worker per task, held by `hpc.node`).

A lease file is a small JSON {"host", "pid", "start" (the pid's start time, so a reused pid is
not mistaken for the holder), "since", "token", "what"}. What it relies on, so that it holds
on a local disk and on NFS v3/v4, Lustre or GPFS alike:

- Creation is `link(tmp, path)` of a fully written temp file with a unique name: atomic and
  exclusive on every POSIX file system, NFS included (O_EXCL is not on old NFS clients), and
  the lease is never seen half written. A lost NFS reply (link done, EEXIST answered) is caught
  by the temp file's link count being 2.
- A holder is live when: on this host, its pid is alive and started when the lease says; on
  another host, the lease's mtime was renewed within `stale_s` (a daemon thread of the holder
  touches it every `heartbeat_s`; stale_s = STALE_BEATS x heartbeat_s). Hosts sharing the file
  system must agree on the time within that margin (NFS sets mtime from the server's clock).
- A lease may name the scheduler job that holds it (`job`): the same job, requeued after a
  preemption (same Slurm job id, maybe another node, before the heartbeat went stale), takes
  its own earlier lease over at once.
- A stale lease is taken over by re-reading it, then renaming it to a unique name (of several
  takers, exactly one rename moves a given file) and creating a new one as above. An flock on
  a sibling `<path>.guard` serialises takers where the file system supports it (fcntl locks on
  NFS; Lustre with `-o flock`): a taker re-reads the lease under it, so it never moves a lease
  that another taker has just created. Without flock that window is milliseconds wide, and the
  heartbeat notices a lost lease (its token gone) and calls `on_lost`.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

HEARTBEAT_S = 10.0
STALE_BEATS = 4  # a lease not renewed for this many heartbeats is stale (cross-host)


class LeaseBusy(RuntimeError):
    """The lease is held by a live holder; `holder` is its lease record."""

    def __init__(self, path: Path, holder: dict):
        self.path, self.holder = path, holder
        super().__init__(f"{path} is held by {describe(holder)}")


def task_lease(folder: str | Path, stage: str, key: str) -> Path:
    """Where the lease of task `key` of `stage` lives under a dispatch folder (`OUT/.s2l`)."""
    return Path(folder) / "running" / stage / key.replace("/", "__")


def pid_start(pid: int) -> str:
    """The start time of `pid` in clock ticks since boot (Linux), "" where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def pid_alive(pid: int, start: str = "") -> bool:
    """`pid` runs on this host (and, when `start` is given, is the process that started then)."""
    if not isinstance(pid, int) or pid <= 0:  # kill(0)/kill(-1) would ask about groups
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        pass  # exists, owned by someone else
    except (OSError, OverflowError):
        return False
    if _zombie(pid):  # dead, only not reaped yet (its parent is busy): its jobs must end too
        return False
    return not start or pid_start(pid) in ("", start)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # the state field, after comm
    except (OSError, IndexError):
        return False


def describe(holder: dict) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    what = f" ({holder['what']})" if holder.get("what") else ""
    return f"host {holder.get('host')} pid {holder.get('pid')} since {when}{what}"


def read(path: str | Path) -> dict | None:
    """The lease record at `path` plus its "mtime", or None when there is none (or it is not
    a lease record: treated as absent only once it is stale, see `live_holder`)."""
    path = Path(path)
    try:
        st = path.stat()
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        data = {}
        try:
            st = path.stat()
        except OSError:
            return None
    if not isinstance(data, dict):
        data = {}
    return {**data, "mtime": st.st_mtime}


def is_live(holder: dict, stale_s: float = STALE_BEATS * HEARTBEAT_S) -> bool:
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return pid_alive(holder["pid"], str(holder.get("start") or ""))
    return time.time() - holder["mtime"] < stale_s


def live_holder(path: str | Path, stale_s: float = STALE_BEATS * HEARTBEAT_S) -> dict | None:
    """The live holder of the lease at `path`, or None when it is free or stale."""
    holder = read(path)
    return holder if holder is not None and is_live(holder, stale_s) else None


@contextlib.contextmanager
def _guard(path: Path):
    """flock on `<path>.guard` where supported; nothing (best effort) where not."""
    try:
        import fcntl

        fd = os.open(f"{path}.guard", os.O_CREAT | os.O_RDWR, 0o644)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # ENOLCK/ENOSYS: a file system without locks
            pass
        yield
    finally:
        os.close(fd)  # closing drops the lock


class Lease:
    """An exclusive lease on `path`, renewed by a heartbeat thread while held.

        with Lease(out / ".s2l" / "driver.lock", what="hpc/submit.py"):
            ...   # raises LeaseBusy (with the holder) when a live holder has it
    """

    def __init__(self, path: str | Path, heartbeat_s: float = HEARTBEAT_S, what: str = "",
                 on_lost: Callable[[], None] | None = None, job: str = ""):
        self.path = Path(path)
        self.job = job
        self.heartbeat_s = heartbeat_s
        self.stale_s = STALE_BEATS * heartbeat_s
        self.what, self.on_lost = what, on_lost
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def record(self) -> dict:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "start": pid_start(pid),
                "since": time.time(), "token": self.token, "what": self.what, "job": self.job}

    def acquire(self) -> "Lease":
        """Take the lease, taking over a stale one; LeaseBusy when a live holder has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                self._sweep()
                self.held = True
                self._stop.clear()
                self._thread = threading.Thread(target=self._beat, daemon=True,
                                                name=f"lease {self.path.name}")
                self._thread.start()
                return self
            with _guard(self.path):
                holder = read(self.path)
                if holder is None:
                    continue  # released meanwhile
                mine = bool(self.job) and holder.get("job") == self.job  # requeued
                if not mine and is_live(holder, self.stale_s):
                    raise LeaseBusy(self.path, holder)
                moved = self.path.with_name(f".{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(self.path, moved)
                except FileNotFoundError:
                    continue
                moved.unlink(missing_ok=True)
        holder = read(self.path) or {}
        raise LeaseBusy(self.path, holder)

    def _create(self) -> bool:
        tmp = self.path.with_name(f".{self.path.name}.{self.token[:8]}.tmp")
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps(self.record()))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                try:
                    return os.stat(tmp).st_nlink == 2  # NFS: the link was made, its reply lost
                except FileNotFoundError:  # swept by the holder (see `_sweep`)
                    return False
            return True
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _sweep(self) -> None:
        """Remove what killed takers left beside the lease (temp and moved-aside files): the
        holder may, since no one else can be creating the lease now except to fail."""
        for p in self.path.parent.glob(f".{self.path.name}.*"):
            if p.name.endswith(".tmp") and self.token[:8] not in p.name or ".stale-" in p.name:
                with contextlib.suppress(OSError):
                    p.unlink()

    def _mine(self) -> bool:
        holder = read(self.path)
        return holder is not None and holder.get("token") == self.token

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._mine():
                    self.held = False
                    if self.on_lost is not None:
                        self.on_lost()
                    return
                os.utime(self.path)
            except OSError:
                pass  # a file server hiccup: try again at the next beat

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still ours. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        if self.held:
            self.held = False
            with contextlib.suppress(OSError):
                if self._mine():
                    self.path.unlink()

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
