"""Hostile input to hpc/: the `slurm:` block, submit.py's options and out dir, status.py's record.

Every refusal is exit code 2 with the YAML key path (or the option) in ONE `error:` line, no
traceback, and nothing created: no out dir, the data cache untouched, and no canary file (the
file a hostile string would create if it reached a shell). Injection classes run
`hpc/submit.py` as a real process, on both clusters (refused before anything is submitted, so
no Slurm cluster is needed); the sbatch file is rendered by submitit's Slurm executor exactly
as submit does and run through bash with a stand-in `srun`, to show that odd-but-valid values
stay data.
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from hpc import record, slurm
from hpc.dispatch import setup_lines
from hpc.resources import DENIED, Resources, SlurmConfig, parse_time_minutes, time_minutes
from hpc.submit import main
from s2l.config import ConfigError

SMOKE = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
CANARY = "CANARY"  # replaced by a path under the test's tmp dir


def _sweep(tmp_path: Path, slurm_block: dict) -> Path:
    raw = copy.deepcopy(SMOKE)
    raw["slurm"] = slurm_block
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _with_canary(obj, canary: Path):
    """`obj` with every CANARY replaced by the canary's path (in keys and values)."""
    if isinstance(obj, dict):
        return {_with_canary(k, canary): _with_canary(v, canary) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_with_canary(v, canary) for v in obj]
    return obj.replace(CANARY, str(canary)) if isinstance(obj, str) else obj


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def _assert_refused(rc: int, err: str, where: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert f": {where}" in lines[0], f"error does not name {where!r}: {err}"
    assert "Traceback" not in err


# ---------------------------------------------------------------- injection, as a process

INJECTIONS = [
    # (slurm block, key path the error must name)
    ({"env": {f"A=1 && touch {CANARY} && B": "x"}}, f"slurm.env.A=1 && touch {CANARY} && B"),
    ({"env": {"HF_HOME": f"/x\ntouch {CANARY}"}}, "slurm.env.HF_HOME"),
    ({"env": {"HF_HOME": f"/x\rtouch {CANARY}"}}, "slurm.env.HF_HOME"),
    ({"defaults": {"partition": f"gpu\ntouch {CANARY}"}}, "slurm.defaults.partition"),
    ({"defaults": {"account": f"lab\x1b]0;x\x07\x00touch {CANARY}"}}, "slurm.defaults.account"),
    ({"resources": {"s": {"qos": f"high\ntouch {CANARY}"}}}, "slurm.resources.s.qos"),
    ({"defaults": {"constraint": f"a100\n\ntouch {CANARY}"}}, "slurm.defaults.constraint"),
    ({"defaults": {"sbatch": {"wrap": f"touch {CANARY}"}}}, "slurm.defaults.sbatch.wrap"),
    ({"defaults": {"sbatch": {"wra": f"touch {CANARY}"}}}, "slurm.defaults.sbatch.wra"),
    ({"defaults": {"sbatch": {"comment": f"x\ntouch {CANARY}"}}}, "slurm.defaults.sbatch.comment"),
    ({"defaults": {"sbatch": {f"x=1\ntouch {CANARY}": "y"}}}, "slurm.defaults.sbatch.x=1\\ntouch"),
    ({"setup": ["module load cuda", f"true\ntouch {CANARY}"]}, "slurm.setup[1]"),
]


@pytest.mark.parametrize("cluster", ["local", "slurm"])
@pytest.mark.parametrize("block,where", INJECTIONS, ids=[w.split(" ")[0] for _, w in INJECTIONS])
def test_injection_is_refused_by_submit(tmp_path, s2l_cache, cluster, block, where):
    canary = tmp_path / "canary"
    sweep = _sweep(tmp_path, _with_canary(block, canary))
    out = tmp_path / "out"
    cache_before = _tree(s2l_cache)
    r = run_cli("hpc/submit.py", str(sweep), "--out", str(out), "--cluster", cluster, timeout=120)
    _assert_refused(r.returncode, r.stderr, where.replace(CANARY, str(canary)))
    assert not out.exists() and not canary.exists()
    assert _tree(s2l_cache) == cache_before


def test_dry_run_refuses_too(tmp_path):
    sweep = _sweep(tmp_path, {"env": {"BAD KEY": "x"}})
    r = run_cli("hpc/submit.py", str(sweep), "--out", str(tmp_path / "out"), "--dry-run",
                "--cluster", "slurm", timeout=120)
    _assert_refused(r.returncode, r.stderr, "slurm.env.BAD KEY")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the block, in-process

BAD_BLOCKS = [
    # numbers: finite, in range, integers where integers
    ({"defaults": {"mem_gb": float("inf")}}, "slurm.defaults.mem_gb", "finite"),
    ({"defaults": {"mem_gb": float("nan")}}, "slurm.defaults.mem_gb", "finite"),
    ({"poll_s": float("inf")}, "slurm.poll_s", "finite"),
    ({"poll_s": 7200}, "slurm.poll_s", "3600"),
    ({"poll_s": 0}, "slurm.poll_s", "> 0"),
    ({"defaults": {"cpus": 1025}}, "slurm.defaults.cpus", "1024"),
    ({"defaults": {"gpus": 65}}, "slurm.defaults.gpus", "64"),
    ({"defaults": {"gpus": -1}}, "slurm.defaults.gpus", ">= 0"),
    ({"defaults": {"nodes": 10001}}, "slurm.defaults.nodes", "10000"),
    ({"defaults": {"mem_gb": 65537}}, "slurm.defaults.mem_gb", "65536"),
    ({"defaults": {"mem_gb": 0}}, "slurm.defaults.mem_gb", "> 0"),
    ({"defaults": {"cpus": 2.5}}, "slurm.defaults.cpus", "integer"),
    ({"defaults": {"cpus": "4"}}, "slurm.defaults.cpus", "integer"),
    ({"defaults": {"cpus": True}}, "slurm.defaults.cpus", "integer"),
    ({"array_parallelism": 100_001}, "slurm.array_parallelism", "100000"),
    ({"pack": 0}, "slurm.pack", ">= 1"),
    ({"max_requeues": -1}, "slurm.max_requeues", ">= 0"),
    ({"submit_batch": 10**9}, "slurm.submit_batch", "100000"),
    # time: Slurm's formats only, bounded
    ({"defaults": {"time": "soon"}}, "slurm.defaults.time", "malformed time"),
    ({"defaults": {"time": "1:2:3:4"}}, "slurm.defaults.time", "malformed time"),
    ({"defaults": {"time": "9" * 5000}}, "slurm.defaults.time", "malformed time"),
    ({"defaults": {"time": 10**12}}, "slurm.defaults.time", "at most"),
    ({"defaults": {"time": "1:75:00"}}, "slurm.defaults.time", "< 60"),
    ({"defaults": {"time": 0}}, "slurm.defaults.time", "positive"),
    ({"defaults": {"time": True}}, "slurm.defaults.time", "minutes"),
    ({"defaults": {"time": 1.5}}, "slurm.defaults.time", "minutes"),
    # env: identifiers, one-line scalar values
    ({"env": {"1ABC": "x"}}, "slurm.env.1ABC", "names"),
    ({"env": {"A-B": "x"}}, "slurm.env.A-B", "names"),
    ({"env": {"": "x"}}, "slurm.env.", "names"),
    ({"env": {"A": "x\x00y"}}, "slurm.env.A", "control"),
    ({"env": {"A": True}}, "slurm.env.A", "string or a number"),
    ({"env": {"A": None}}, "slurm.env.A", "string or a number"),
    ({"env": {"A": {"b": 1}}}, "slurm.env.A", "string or a number"),
    ({"env": {"A": float("inf")}}, "slurm.env.A", "finite"),
    ({"env": ["A=1"]}, "slurm.env", "mapping"),
    # sbatch extras: names, denylist, abbreviations, values
    ({"defaults": {"sbatch": {"chdir": "/"}}}, "slurm.defaults.sbatch.chdir", "what runs"),
    ({"defaults": {"sbatch": {"output": "/tmp/x"}}}, "slurm.defaults.sbatch.output", "dispatch"),
    ({"defaults": {"sbatch": {"export": "ALL"}}}, "slurm.defaults.sbatch.export", "what runs"),
    ({"defaults": {"sbatch": {"dependency": "afterany:1"}}}, "slurm.defaults.sbatch.dependency", "dispatch"),
    ({"defaults": {"sbatch": {"time": "1:00:00"}}}, "slurm.defaults.sbatch.time", "first-class key `time`"),
    ({"defaults": {"sbatch": {"mem": "4G"}}}, "slurm.defaults.sbatch.mem", "`mem_gb`"),
    ({"defaults": {"sbatch": {"chd": "/"}}}, "slurm.defaults.sbatch.chd", "abbreviation of --chdir"),
    ({"defaults": {"sbatch": {"o": "x"}}}, "slurm.defaults.sbatch.o", "abbreviation of --open-mode"),
    ({"defaults": {"sbatch": {"D": "/"}}}, "slurm.defaults.sbatch.D", "lowercase"),
    ({"defaults": {"sbatch": {"--wrap": "x"}}}, "slurm.defaults.sbatch.--wrap", "lowercase"),
    ({"defaults": {"sbatch": {"x y": "x"}}}, "slurm.defaults.sbatch.x y", "lowercase"),
    ({"defaults": {"sbatch": {"gres": True}}}, "slurm.defaults.sbatch.gres", "string or a number"),
    ({"defaults": {"sbatch": {"gres": "gpu:1\u2028x"}}}, "slurm.defaults.sbatch.gres", "control"),
    ({"resources": {"s": {"sbatch": {"job-name": "x"}}}}, "slurm.resources.s.sbatch.job-name", "dispatch"),
    # names: one line, bounded
    ({"defaults": {"partition": "p" * 5000}}, "slurm.defaults.partition", "at most 4096"),
    ({"defaults": {"partition": 7}}, "slurm.defaults.partition", "string"),
    # setup: one string line each
    ({"setup": "module load cuda"}, "slurm.setup", "list"),
    ({"setup": [["x"]]}, "slurm.setup[0]", "string"),
    ({"setup": ["a\tb"]}, "slurm.setup[0]", "control"),
    # shape
    ({"resources": {"huge": {"gpus": 1}}}, "slurm.resources.huge", "no resource group"),
    ({"resources": {"s\x1b[2J": {}}}, "slurm.resources.s\\x1b[2J", "no resource group"),
    ({"defaults": {"partitionn": "gpu"}}, "slurm.defaults.partitionn", "unknown key"),
    ({"resources": {"s": {"gpus": 2, "tasks_per_node": 3}}}, "slurm.resources.s.tasks_per_node", "one task per GPU"),
    (5, "slurm", "mapping"),
]


@pytest.mark.parametrize("block,where,says", BAD_BLOCKS, ids=[f"{w}:{s}" for _, w, s in BAD_BLOCKS])
def test_bad_block_is_a_config_error_naming_the_key(block, where, says):
    with pytest.raises(ConfigError) as e:
        SlurmConfig.from_raw(block, ["xs", "s"])
    assert str(e.value).startswith(f"{where}: "), str(e.value)
    assert says in e.value.message, str(e.value)
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)


def test_denylist_covers_what_the_brief_names():
    for opt in ("wrap", "chdir", "output", "error", "input", "array", "dependency", "export",
                "export-file", "uid", "gid", "get-user-env", "job-name", "parsable", "wait",
                "test-only", "container", "signal", "requeue", "no-requeue", "open-mode",
                "batch", "propagate"):
        assert opt in DENIED, opt


def test_good_block_resolves_groups():
    cfg = SlurmConfig.from_raw({
        "defaults": {"cpus": 2, "mem_gb": 8, "time": "1:00:00", "partition": "gpu,cpu",
                     "constraint": "a100&(ib|eth)", "sbatch": {"exclusive": "user", "gpus": 2}},
        "resources": {"s": {"gpus": 1, "time": 90, "sbatch": {"gres": "gpu:1"}}},
        "env": {"HF_HOME": "/x y; z", "N_": 3}, "setup": ["module load cuda/12.1"],
        "poll_s": 0.5}, ["xs", "s"])
    assert cfg.resources_for("xs") == cfg.resources_for("default") == cfg.default
    assert cfg.default.time_min == 60 and cfg.default.partition == "gpu,cpu"
    s = cfg.resources_for("s")
    assert (s.gpus, s.cpus, s.mem_gb, s.time_min) == (1, 2, 8.0, 90)
    assert s.extra == (("exclusive", "user"), ("gpus", "2"), ("gres", "gpu:1"))
    assert cfg.env == (("HF_HOME", "/x y; z"), ("N_", "3"))
    assert SlurmConfig.from_raw(None) == SlurmConfig()


@pytest.mark.parametrize("value,minutes", [
    (45, 45), ("45", 45), ("45:00", 45), ("0:30", 1), ("1:30:00", 90), ("2-0", 2880),
    ("2-1:30", 2970), ("1-00:00:01", 1441), ("10-00:00:00", 14400), (2700, 2700),
])
def test_slurm_time_formats(value, minutes):
    # an integer is minutes: YAML 1.1 reads an unquoted 45:00 as 2700 (base 60); quoted or
    # read by a YAML 1.2 loader it is the string "45:00", MM:SS, as sbatch reads it
    assert time_minutes(value) == minutes
    assert parse_time_minutes(value, "t") == minutes


def test_time_error_names_the_key():
    with pytest.raises(ConfigError) as e:
        parse_time_minutes("1:2:3:4", "slurm.defaults.time")
    assert e.value.path == "slurm.defaults.time" and "'1:2:3:4'" in e.value.message


# ---------------------------------------------------------------- the rendered sbatch file

@pytest.fixture
def fake_srun(tmp_path, monkeypatch):
    """A stand-in `srun` first on PATH (submitit's Slurm executor wants one to exist): it
    records its arguments and the environment it got, as the job's real srun would run
    python with them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/sh\nenv > "$SRUN_RECORD.env"\nprintf "%s\\n" "$@" > "$SRUN_RECORD.args"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "srun"


def _render(tmp_path: Path, cfg: SlurmConfig, res: Resources) -> str:
    """The sbatch file submit would write for an array of 3 jobs with `res`, rendered by the
    same submitit executor `hpc.slurm.submit_stage` uses."""
    params = slurm.executor_params(res, cfg, 1, "s2l-cells", "afterok:12")
    ex = slurm.make_executor(tmp_path / ".s2l", cfg, params)
    ex._executor.parameters["map_count"] = 3  # what submitit's batch() sets for an array
    return ex._executor._make_submission_file_text("python -u -m submitit.core._submit /x", "uid")


def test_odd_values_render_quoted_and_stay_data(tmp_path, fake_srun):
    canary = tmp_path / "canary"
    odd = f"/x y; touch {canary}; $(touch {canary}) `touch {canary}` '\"\\"
    cfg = SlurmConfig.from_raw({
        "defaults": {"partition": f"gpu;touch {canary}", "account": "lab $(x)",
                     "sbatch": {"comment": f"a b; touch {canary}", "exclusive": "user"}},
        "env": {"HF_HOME": odd}, "setup": [f"echo setup-ran > {tmp_path / 'setup'}"]})
    text = _render(tmp_path, cfg, cfg.default)
    assert "export HF_HOME='/x y; touch " in text
    assert f"#SBATCH --partition='gpu;touch {canary}'" in text
    assert f"#SBATCH --comment='a b; touch {canary}'" in text
    assert "#SBATCH --array=0-2%3" in text and "#SBATCH --dependency=afterok:12" in text
    script = tmp_path / "job.sh"
    script.write_text(text)
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SRUN_RECORD": str(fake_srun)})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "setup").read_text() == "setup-ran\n"  # setup lines are shell, by design
    env = dict(ln.split("=", 1) for ln in Path(f"{fake_srun}.env").read_text().splitlines() if "=" in ln)
    assert env["HF_HOME"] == odd and env["OMP_NUM_THREADS"] == "1"
    assert not canary.exists()


def test_hostile_values_never_reach_the_renderer(tmp_path):
    # refused when the block is read ...
    with pytest.raises(ConfigError):
        SlurmConfig.from_raw({"env": {"HF_HOME": "x\ntouch /tmp/nope"}})
    # ... and refused again if a SlurmConfig or Resources is built in Python
    with pytest.raises(ValueError, match="export"):
        setup_lines(SlurmConfig(env=(("A=1; touch x; B", "v"),)), Resources())
    with pytest.raises(ValueError, match="setup line"):
        setup_lines(SlurmConfig(setup=("a\nb",)), Resources())
    with pytest.raises(ValueError, match="wrap"):
        slurm.executor_params(Resources(extra=(("wrap", "touch x"),)), SlurmConfig(), 1, "x")
    with pytest.raises(ValueError, match="comment"):
        slurm.executor_params(Resources(extra=(("comment", "a\nb"),)), SlurmConfig(), 1, "x")
    with pytest.raises(ValueError, match="partition"):
        slurm.executor_params(Resources(partition="gpu\ntouch x"), SlurmConfig(), 1, "x")


# ---------------------------------------------------------------- options and the out dir

def _main(capsys, *argv) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


def test_out_dir_checks(tmp_path, capsys, s2l_cache):
    smoke = ROOT / "sweeps" / "smoke.yaml"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "to_git").symlink_to(tmp_path / "repo" / ".git")
    cases = [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        (tmp_path / "repo" / ".git" / "out", "inside a .git directory"),
        (tmp_path / "to_git" / "out", "inside a .git directory"),
        (a_file, "existing file"),
        (a_file / "sub" / "out", "not a directory"),
        (tmp_path / "dangling", "broken symbolic link"),
        (tmp_path / ("x" * 256), "longer than 255 bytes"),
        (tmp_path / "a\nb", "control characters"),
    ]
    cache_before = _tree(s2l_cache)
    for out, says in cases:
        code, err = _main(capsys, smoke, "--out", out, "--cluster", "local")
        _assert_refused(code, err, "--out")
        assert says in err, (out, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "file", "repo", "to_git"]
    assert not (tmp_path / "repo" / ".git" / "out").exists()
    assert _tree(s2l_cache) == cache_before


def test_unwritable_parent_is_refused(tmp_path, capsys):
    """A parent without write permission (root ignores permissions: for root, a read-only
    file system, which refuses root too)."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(locked)],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"root could not mount a read-only tmpfs: {r.stderr}"
    try:
        code, err = _main(capsys, ROOT / "sweeps" / "smoke.yaml", "--out", locked / "a" / "b")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(locked)], capture_output=True)
    _assert_refused(code, err, "--out")
    assert "not writable" in err
    assert not (locked / "a").exists()


@pytest.mark.parametrize("argv,says", [
    (["--max-parallel", "0"], "must be >= 1"),
    (["--max-parallel", "-1"], "must be >= 1"),
    (["--max-parallel", "two"], "invalid positive_int value"),
])
def test_max_parallel_must_be_positive(tmp_path, capsys, argv, says):
    code, err = _main(capsys, ROOT / "sweeps" / "smoke.yaml", "--out", tmp_path / "out", *argv)
    assert code == 2 and says in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("uri", ["", "http://x\n/y"])
def test_bad_tracking_uri_is_refused(tmp_path, capsys, uri):
    code, err = _main(capsys, ROOT / "sweeps" / "smoke.yaml", "--out", tmp_path / "out",
                      "--tracking-uri", uri)
    _assert_refused(code, err, "--tracking-uri")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.isdir("/sys/kernel"),
                    reason="needs root on Linux: sysfs refuses mkdir even to root, and passes "
                           "the writability check only for root")
def test_unwritable_data_cache_exits_3_naming_it(tmp_path):
    """A valid sweep whose data cache cannot be created (sysfs: EPERM): exit 3, one line
    naming the path and the cause, the out dir not created."""
    cache = f"/sys/s2l-test-cache-{os.getpid()}"
    out = tmp_path / "out"
    r = run_cli("hpc/submit.py", str(ROOT / "sweeps" / "smoke.yaml"), "--out", str(out),
                "--cluster", "local", env={"S2L_CACHE": cache}, timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {cache}") and "not permitted" in line, line
    assert "Traceback" not in r.stderr and not out.exists()


# ---------------------------------------------------------------- status.py reads data only

def _dispatched(tmp_path: Path, canary: Path) -> Path:
    """An out dir as submit.py leaves it before any job ran, plus a booby-trapped study.pkl
    (what older versions wrote) that would create `canary` if anything unpickled it."""
    out = tmp_path / "out"
    folder = out / ".s2l"
    record.save_dispatch(folder, (ROOT / "sweeps" / "smoke.yaml").read_text(), "local", None)

    class Trap:
        def __reduce__(self):
            return (os.system, (f"touch {canary}",))

    (folder / "study.pkl").write_bytes(pickle.dumps(Trap()))
    return out


def test_status_never_unpickles(tmp_path):
    canary = tmp_path / "canary"
    out = _dispatched(tmp_path, canary)
    r = run_cli("hpc/status.py", str(out), timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr  # nothing ran yet
    assert "stage cells: 4 not submitted" in r.stdout
    assert not canary.exists()
    # without the data record, the pickle alone means "nothing was dispatched"
    (out / ".s2l" / "dispatch.json").unlink()
    r = run_cli("hpc/status.py", str(out), timeout=120)
    assert r.returncode == 2 and "nothing was dispatched" in r.stderr
    assert not canary.exists()


@pytest.mark.parametrize("name,content,says", [
    ("dispatch.json", b"{not json", "not valid JSON"),
    ("dispatch.json", b"\xff\xfe\x00garbage", "dispatch.json"),
    ("dispatch.json", b"[1, 2]", "JSON object"),
    ("dispatch.json", b'{"cluster": "local; rm -rf /"}', "cluster must be one of"),
    ("dispatch.json", b'{"cluster": "local", "tracking_uri": 5}', "tracking_uri"),
    ("dispatch.json", b"[" * 100_000, "not valid JSON"),
    ("sweep.yaml", b"scales: [unclosed\n", "not valid YAML"),
    ("sweep.yaml", b"- a list\n", "mapping"),
    ("sweep.yaml", b"kind: banana\n", "kind"),
    ("sweep.yaml", b"\x00\x01\x02", "sweep.yaml"),
])
def test_status_with_a_garbage_record_says_so_in_one_line(tmp_path, name, content, says):
    canary = tmp_path / "canary"
    out = _dispatched(tmp_path, canary)
    (out / ".s2l" / name).write_bytes(content)
    r = run_cli("hpc/status.py", str(out), timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and name in line and says in line, line
    assert "Traceback" not in r.stderr and not canary.exists()


def test_status_ignores_a_tampered_job_record(tmp_path):
    """Job ids that are options, log paths outside the out dir: never passed to a command,
    never printed from."""
    canary = tmp_path / "canary"
    out = _dispatched(tmp_path, canary)
    secret = tmp_path / "secret"
    secret.write_text("SECRET-LINE\n")
    (out / ".s2l" / "jobs.json").write_text(json.dumps({
        "cells/xs/code-heavy/0": {"cluster": "slurm", "job_id": "--me", "stderr": str(secret)},
        "cells/xs/prose-heavy/0": {"cluster": "local", "job_id": "-1", "stderr": str(secret)},
        "cells/s/code-heavy/0": {"cluster": "local", "job_id": "0", "stdout": str(secret)},
        "cells/s/prose-heavy/0": ["not", "an", "entry"],
    }))
    r = run_cli("hpc/status.py", str(out), timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "SECRET-LINE" not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr and not canary.exists()
    assert record.load(out / ".s2l")["cells/xs/code-heavy/0"]["stderr"] is None


# ---------------------------------------------------------------- Slurm refuses: exit 3

@pytest.mark.slurm
def test_sbatch_refusal_exits_3(cluster, tmp_path):
    sweep = _sweep(tmp_path, {"poll_s": 1, "defaults": {"partition": "no-such-partition"}})
    r = run_cli("hpc/submit.py", str(sweep), "--out", str(tmp_path / "out"), "--cluster",
                "slurm", timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr
    # sbatch's own complaint passes through; s2l's is one `error:` line, the last one
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert line == r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: sbatch refused") and "--partition=no-such-partition" in line
    assert "Invalid partition" in line and "Traceback" not in r.stderr
