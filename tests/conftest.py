"""Shared fixtures: a session-wide data cache, a real MLflow server, the sweep files."""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def s2l_cache(tmp_path_factory) -> Path:
    """One prepared-data cache for the whole test session (built once, shared by every test
    and every subprocess they start), never the user's ~/.cache/s2l."""
    path = Path(os.environ.get("S2L_TEST_CACHE") or tmp_path_factory.mktemp("s2l-cache"))
    os.environ["S2L_CACHE"] = str(path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real `mlflow server` on localhost with a SQLite backend; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    proc = subprocess.Popen(
        [exe, "server", "--backend-store-uri", f"sqlite:///{root}/server.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"mlflow server did not answer /health in 90 s: {(root / 'server.log').read_text()[-2000:]}")
    yield uri
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def _cluster_answers() -> str | None:
    """None when the local Slurm cluster takes jobs and accounting works, else why not."""
    if not shutil.which("sbatch"):
        return "sbatch not on PATH"
    for cmd in (["sinfo", "-h", "-o", "%t"], ["sacct", "-n", "-X", "-S", "now"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            return f"{' '.join(cmd)} failed: {r.stderr.strip()}"
        if cmd[0] == "sinfo" and not {"idle", "mix", "alloc"} & set(r.stdout.split()):
            return f"no usable node (sinfo says {r.stdout.split()})"
    return None


@pytest.fixture(scope="session")
def cluster():
    """The local Slurm cluster (`hpc/slurm_local.sh up`). Tests using it skip without one,
    but FAIL when S2L_REQUIRE_SLURM=1 (CI), so a missing cluster cannot pass silently."""
    problem = _cluster_answers()
    if problem:
        msg = f"no local Slurm cluster ({problem}); start one with `hpc/slurm_local.sh up`"
        if os.environ.get("S2L_REQUIRE_SLURM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 600, env: dict | None = None):
    """Run `python hpc/submit.py ...` (or another script) as a user would; returns the
    CompletedProcess with text output."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def load_script(name: str):
    """analysis/NAME.py as a module (the scripts are not a package), for in-process runs."""
    spec = importlib.util.spec_from_file_location(f"analysis_{name}",
                                                  ROOT / "analysis" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Killed(Exception):
    """Stands for a SIGKILL inside a training loop (tests of checkpoints and resume)."""


def dies_at(step: int, batches):
    """A batch function that gives `batches(s)` and raises `Killed` when asked for `step`."""
    def fn(s):
        if s == step:
            raise Killed
        return batches(s)
    return fn


def random_batches(seed: int, vocab: int, seq_len: int, rows: int = 8):
    """batch_fn(step) -> int64 (rows, seq_len + 1) uniform tokens, a pure function of (seed,
    step): the training data of the train/resume tests."""
    import numpy as np

    def fn(step):
        return np.random.default_rng([seed, step]).integers(0, vocab, size=(rows, seq_len + 1))
    return fn


def brute_force_row_losses(model, tokens, mask):
    """Mean target-token loss of each row (R,) float64, one row at a time at its full width
    through the model's own forward and head (`model(...).logits`, no trimming), float64
    cross-entropy: the independent check of s2l.evaluate.row_losses."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    out = np.zeros(len(tokens))
    model.eval()
    with torch.no_grad():
        for r in range(len(tokens)):
            ids = torch.tensor(tokens[r:r + 1], dtype=torch.long)
            logits = model(input_ids=ids[:, :-1]).logits[0].double()
            nll = F.cross_entropy(logits, ids[0, 1:], reduction="none").numpy()
            m = mask[r, 1:]
            out[r] = nll[m].mean() if m.any() else 0.0
    return out
