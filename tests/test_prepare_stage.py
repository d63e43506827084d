"""Data preparation as stages of the LM sweep (issue 13), through the real backends.

A tiny local corpus (JSON-lines files of three domains, no builtin source, cut into shards of
a few kB) and a one-scale sweep are submitted as a user would (`hpc/submit.py` in a
subprocess). Checked here:

- locally: the data stages run as processes of their own (one per shard), before the cells;
  the prepared token streams equal an independent tokenization of the same files (each
  training document encoded on its own, EOS after each, in file order); the cells train on
  them and land in the store; a re-run does nothing and starts no job;
- resume: a preparation stopped after its shards (the finalize stage never ran) with one
  shard's token file deleted and another's truncated: the next submit tokenizes exactly those
  two shards again, and the token streams are bit-identical to an undisturbed preparation's;
- `--dry-run` shows the data stages (shards, bytes) and writes nothing; the `slurm.data`
  block is typed and validated; the token budget warning;
- on the local Slurm cluster: the shard stage is one job array, `sacct` shows its tasks
  COMPLETED, chained `afterok` before the cells (skips without a cluster, fails with
  S2L_REQUIRE_SLURM=1).
"""
from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_cli

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
         "rho sigma tau upsilon phi chi psi omega the of and to in is was for on with as by").split()
SHARD_MB = 0.01  # ~10 kB of text per shard: 6 shards over the corpus


def _docs(domain: str, n: int, seed: int) -> list[str]:
    rng = random.Random(f"{domain}-{seed}")
    out = []
    for i in range(n):
        k = rng.randint(20, 60)
        out.append(f"{domain} {i}: " + " ".join(rng.choice(WORDS) for _ in range(k)) + ".")
    return out


def make_corpus(root: Path) -> dict[str, list[Path]]:
    """Two domains of two JSON-lines files each (~8-10 kB per file)."""
    files = {}
    for d in ("prose", "notes"):
        (root / d).mkdir(parents=True, exist_ok=True)
        files[d] = []
        for part in range(2):
            f = root / d / f"part-{part}.jsonl"
            f.write_text("".join(json.dumps({"text": t}) + "\n" for t in _docs(d, 40, part)))
            files[d].append(f)
    return files


def sweep_raw(corpus: Path, cache: Path, name: str = "prep", mixtures: int = 1) -> dict:
    """One tiny scale; `mixtures` 1 (one cell: the runs stay short) or 2."""
    mix = {"even": {"weights": {"prose": 1, "notes": 1}}, "prose-only": {"weights": {"prose": 1}}}
    return {
        "name": name,
        "seeds": [0],
        "scales": {"xs": {"d_model": 16, "n_layers": 1, "n_heads": 2, "tokens": 2000}},
        "data": {"seq_len": 16, "tokenizer": {"vocab_size": 300}, "shard_mb": SHARD_MB,
                 "cache_dir": str(cache),
                 "domains": {d: {"source": "files", "path": str(corpus / d / "*.jsonl")}
                             for d in ("prose", "notes")}},
        "mixtures": dict(list(mix.items())[:mixtures]),
        "test_sets": {"heldout": {"kind": "heldout", "samples_per_domain": 4}},
        "train": {"batch_size": 4, "lr": 0.005, "log_every": 10, "checkpoint_every": 100},
        "slurm": {"poll_s": 0.5},
    }


def write_sweep(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def submit(sweep: Path, out: Path, *extra: str, cluster: str = "local", timeout: float = 300):
    r = run_cli("hpc/submit.py", str(sweep), "--cluster", cluster, "--out", str(out), *extra,
                timeout=timeout)
    print(f"$ submit {sweep.name} {' '.join(extra)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def jobs(out: Path) -> dict:
    try:
        return json.loads((out / ".s2l" / "jobs.json").read_text())
    except (OSError, ValueError):
        return {}


def load_plan(raw: dict, sweep: Path):
    from s2l.lm.config import parse_sweep
    from s2l.data.plan import plan_preparation

    cfg = parse_sweep(raw, sweep).data
    return cfg, plan_preparation(cfg)


def brute_force_streams(cfg, tokenizer) -> dict[str, np.ndarray]:
    """Each domain's training stream computed independently of s2l.data.shards: every file
    read whole in order, documents split off by the held-out hash rule, each training
    document encoded alone, EOS after each."""
    from s2l.data.corpus import doc_key

    cut = int(cfg.heldout_frac * 2 ** 64)
    out = {}
    for dc in cfg.domain_configs:
        ids = []
        for f in dc.data_files:
            for line in Path(f).read_text().splitlines():
                text = json.loads(line)["text"]
                if doc_key(text, "heldout" + dc.name) < cut:
                    continue
                ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        out[dc.name] = np.array(ids, dtype=np.int64)
    return out


# ------------------------------------------------------------------ local backend

@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prep-local")
    make_corpus(tmp / "corpus")
    raw = sweep_raw(tmp / "corpus", tmp / "cache")
    sweep = write_sweep(tmp / "prep.yaml", raw)
    out = tmp / "out"
    first = submit(sweep, out)
    jobs1 = jobs(out)
    second = submit(sweep, out)
    return dict(tmp=tmp, raw=raw, sweep=sweep, out=out, first=first, jobs1=jobs1,
                second=second, jobs2=jobs(out))


def test_local_sweep_prepares_data_in_separate_processes_then_trains(local_run):
    r, out = local_run["first"], local_run["out"]
    assert r.returncode == 0, r.stdout + r.stderr
    cfg, plan = load_plan(local_run["raw"], local_run["sweep"])
    assert len(plan.shards) >= 4 and {s.domain for s in plan.shards} == {"prose", "notes"}
    rec = local_run["jobs1"]
    shard_keys = {f"data-shards/{s.key}" for s in plan.shards}
    assert {"data-tokenizer/tokenizer", "data-finalize/finalize"} | shard_keys <= set(rec), rec
    # one process per data task (slurm.pack is 1): distinct job ids (local ids are pids),
    # none of them the driver's, and each task's own report names that process
    data_jobs = {k: rec[k]["job_id"] for k in rec if k.startswith("data-")}
    assert len(set(data_jobs.values())) == len(data_jobs)
    reports = {p.name: json.loads(p.read_text()) for p in (out / ".s2l" / "data").glob("*.json")}
    shard_reports = [v for v in reports.values() if v["stage"] == "data-shards"]
    assert len(shard_reports) == len(plan.shards)
    assert len({v["pid"] for v in shard_reports}) == len(plan.shards)
    assert all(v["train_tokens"] > 0 and v["peak_rss_mb"] > 0 for v in shard_reports)
    # the stages ran in order: every shard ended before finalize began, and the cells after
    log_order = r.stderr + r.stdout
    assert log_order.index("[data-tokenizer]") < log_order.index("[data-shards]") \
        < log_order.index("[data-finalize]") < log_order.index("[cells]"), log_order
    # the prepared streams equal an independent tokenization of the files
    from s2l.data import PreparedData

    data = PreparedData.load(plan.root)
    expect = brute_force_streams(cfg, data.tokenizer)
    for d in ("prose", "notes"):
        got = np.asarray(data.train[d][0:len(data.train[d])], dtype=np.int64)
        np.testing.assert_array_equal(got, expect[d])
    # the cells trained on it and landed in the store, created by the data-finalize task
    import xarray as xr

    ds = xr.open_zarr(out / "losses.zarr", consolidated=False)
    assert bool(ds.done.all()) and np.isfinite(ds.loss.values).all()


def test_rerun_does_nothing(local_run):
    r = local_run["second"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing to do" in r.stdout
    assert local_run["jobs2"] == local_run["jobs1"]


def test_dry_run_shows_the_data_stages_and_writes_nothing(tmp_path):
    make_corpus(tmp_path / "corpus")
    raw = sweep_raw(tmp_path / "corpus", tmp_path / "cache", mixtures=2)
    raw["scales"]["xs"]["tokens"] = 10 ** 6  # far more than the corpus holds: a warning
    sweep = write_sweep(tmp_path / "prep.yaml", raw)
    r = submit(sweep, tmp_path / "out", "--dry-run", cluster="slurm")
    assert r.returncode == 0, r.stderr
    cfg, plan = load_plan(raw, sweep)
    n = len(plan.shards)
    assert f"data: {n} shards over 2 domains" in r.stdout
    assert f"stages: data-tokenizer (1 task) -> data-shards ({n} tasks) -> data-finalize (1 task)" \
        in r.stdout
    assert f"stage data-shards: {n} tasks -> {n} jobs (pack 1) in 1 arrays, after stage " \
           "data-tokenizer (afterok)" in r.stdout
    assert "stage cells: 2 tasks" in r.stdout and "after stage data-finalize (afterok)" in r.stdout
    # data tasks: 1 cpu, derived memory (>= 2 GB), no GPU
    shard_line = r.stdout.split("stage data-shards")[1].splitlines()[1]
    assert "--cpus-per-task=1" in shard_line and "--mem=2GB" in shard_line
    assert "gpus" not in shard_line
    # the budget warning: 10^6 tokens of `prose` (and half of it in `even`), estimated sizes
    warn = [ln for ln in r.stdout.splitlines() if ln.startswith("warning: token budget")]
    assert len(warn) == 1 and "scale xs" in warn[0] and "2 of 2 mixtures" in warn[0], r.stdout
    assert "estimated from source bytes / 4" in r.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_slurm_data_block_is_typed_and_overrides_the_derived_resources(tmp_path):
    from hpc.resources import SlurmConfig, data_resources
    from s2l.config import ConfigError
    from s2l.tasks import DATA_GROUP
    base = SlurmConfig.from_raw({"defaults": {"gpus": 1, "cpus": 8, "partition": "gpu",
                                              "account": "lab"}}, ["xs"], data_bytes=3 << 30)
    r = base.resources_for(DATA_GROUP)
    # the defaults' site fields, but one cpu, no GPU; memory 1 + 3 x 3 GB; 30 min + 1 s/MB
    assert (r.gpus, r.cpus, r.partition, r.account) == (0, 1, "gpu", "lab")
    assert r.mem_gb == 10.0 and r.time_min == 30 + 3 * 1024 // 60 + 1
    assert base.resources_for("xs").gpus == 1
    cfg = SlurmConfig.from_raw({"data": {"mem_gb": 6, "time": "2:00:00", "partition": "cpu"}},
                               ["xs"], data_bytes=1 << 20)
    r = cfg.resources_for(DATA_GROUP)
    assert (r.mem_gb, r.time_min, r.partition, r.cpus) == (6.0, 120, "cpu", 1)
    assert data_resources(cfg.default, 0).mem_gb == 2.0
    for block, where in [({"data": {"mem_gb": -1}}, "slurm.data.mem_gb"),
                         ({"data": {"cpu": 2}}, "slurm.data.cpu"),
                         ({"data": {"time": "soon"}}, "slurm.data.time"),
                         ({"data": {"sbatch": {"wrap": "x"}}}, "slurm.data.sbatch.wrap")]:
        with pytest.raises(ConfigError) as e:
            SlurmConfig.from_raw(block, ["xs"])
        assert e.value.args[0].startswith(where) or where in str(e.value), str(e.value)


# ------------------------------------------------------------------ resume after a partial run

def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rerun_redoes_only_the_shards_whose_output_is_missing_or_broken(tmp_path):
    from hpc import local
    from hpc.resources import SlurmConfig
    from s2l.tasks import load_study

    make_corpus(tmp_path / "corpus")
    raw = sweep_raw(tmp_path / "corpus", tmp_path / "cache")
    sweep = write_sweep(tmp_path / "prep.yaml", raw)
    out = tmp_path / "out"
    study = load_study(sweep, out=out)
    stages = study.stages()
    assert [s.name for s in stages] == ["data-tokenizer", "data-shards", "data-finalize", "cells"]
    # a preparation that stopped after its shards (as if killed before finalize), run by the
    # real local backend: one process per task
    outcome = local.run_stages(stages[:2], out / ".s2l", SlurmConfig.for_study(study))
    assert not outcome.failed, outcome.summary()
    plan = study.plan
    bins = {s.key: plan.root / "shards" / s.domain / f"{s.index:05d}.bin" for s in plan.shards}
    undisturbed = {k: _sha(p) for k, p in bins.items()}
    jobs_before = jobs(out)
    deleted, truncated = plan.shards[0].key, plan.shards[-1].key
    bins[deleted].unlink()
    with open(bins[truncated], "r+b") as f:
        f.truncate(bins[truncated].stat().st_size - 2)

    r = submit(sweep, out)
    assert r.returncode == 0, r.stdout + r.stderr
    after = jobs(out)
    redone = {k.split("/", 1)[1] for k in after if k.startswith("data-shards/")
              and after[k]["job_id"] != jobs_before[k]["job_id"]}
    assert redone == {deleted, truncated}, redone
    assert after["data-tokenizer/tokenizer"] == jobs_before["data-tokenizer/tokenizer"]
    assert {k: _sha(p) for k, p in bins.items()} == undisturbed  # bit-identical token files
    import xarray as xr

    assert bool(xr.open_zarr(out / "losses.zarr", consolidated=False).done.all())


# ------------------------------------------------------------------ local Slurm cluster

def _sacct(array: str) -> dict[str, str]:
    res = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", array],
                         capture_output=True, text=True, timeout=60)
    return dict(ln.split("|", 1) for ln in res.stdout.splitlines() if "|" in ln)


@pytest.mark.slurm
def test_slurm_shard_stage_is_a_job_array(cluster, tmp_path):
    make_corpus(tmp_path / "corpus")
    raw = sweep_raw(tmp_path / "corpus", tmp_path / "cache")
    sweep = write_sweep(tmp_path / "prep.yaml", raw)
    out = tmp_path / "out"
    r = submit(sweep, out, cluster="slurm", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    _, plan = load_plan(raw, sweep)
    rec = jobs(out)
    shard_jobs = {k: v["job_id"] for k, v in rec.items() if k.startswith("data-shards/")}
    assert len(shard_jobs) == len(plan.shards) >= 4
    arrays = {j.split("_")[0] for j in shard_jobs.values()}
    assert len(arrays) == 1, shard_jobs  # one array for the whole stage
    array = arrays.pop()
    assert sorted(shard_jobs.values()) == sorted(f"{array}_{i}" for i in range(len(plan.shards)))
    states = _sacct(array)
    print(f"sacct -j {array}:\n" + "\n".join(f"{k} {v}" for k, v in sorted(states.items())))
    assert {k: v.split(" ")[0] for k, v in states.items()} == \
        {j: "COMPLETED" for j in shard_jobs.values()}
    # the tokenizer before the shards, finalize after, the cells last: separate jobs
    order = [rec[k]["job_id"].split("_")[0] for k in ("data-tokenizer/tokenizer",
                                                       "data-finalize/finalize")]
    cell_jobs = {v["job_id"].split("_")[0] for k, v in rec.items() if k.startswith("cells/")}
    assert int(order[0]) < int(array) < int(order[1]) < min(int(j) for j in cell_jobs)
    import xarray as xr

    assert bool(xr.open_zarr(out / "losses.zarr", consolidated=False).done.all())


# ------------------------------------------------------------------ token budget numbers

def test_repetition_factor_by_hand(tmp_path):
    from s2l.lm.budget import budget_warnings, repetitions
    from s2l.lm.config import parse_sweep

    make_corpus(tmp_path / "corpus")
    raw = sweep_raw(tmp_path / "corpus", tmp_path / "cache", mixtures=2)
    raw["mixtures"]["even"]["weights"] = {"prose": 3, "notes": 1}
    raw["scales"]["xs"]["tokens"] = 2000
    sweep = parse_sweep(raw, tmp_path / "x.yaml")
    reps = {r.mixture: r for r in repetitions(sweep, {"prose": 1000.0, "notes": 4000.0})}
    # even: prose 0.75 x 2000 / 1000 = 1.5, notes 0.25 x 2000 / 4000 = 0.125
    assert reps["even"].factor == pytest.approx(1.5) and reps["even"].domain == "prose"
    assert reps["prose-only"].factor == pytest.approx(2.0)
    assert repetitions(sweep, {"prose": 0.0, "notes": 1.0})[0].factor == float("inf")
    # before preparation: source bytes x (1 - heldout) / 4 per token, said to be an estimate
    raw["scales"]["xs"]["tokens"] = 20000
    sweep = parse_sweep(raw, tmp_path / "x.yaml")
    _, plan = load_plan(raw, tmp_path / "x.yaml")
    prose = sum(s.approx_bytes for s in plan.shards if s.domain == "prose")
    est = prose * (1 - sweep.data.heldout_frac) / 4
    assert 20000 / est > 1
    lines = budget_warnings(sweep, plan)
    assert len(lines) == 2, lines
    assert f"at most {20000 / est:.2f}x (domain prose in mixture prose-only" in lines[0], lines
    assert "2 of 2 mixtures" in lines[0] and "estimated from source bytes / 4" in lines[1]


def test_budget_uses_measured_tokens_once_prepared(local_run):
    from s2l.data import PreparedData
    from s2l.lm.budget import domain_tokens

    cfg, plan = load_plan(local_run["raw"], local_run["sweep"])
    tokens, how = domain_tokens(cfg, plan)
    assert how.startswith("measured")
    data = PreparedData.load(plan.root)
    assert tokens == {d: float(len(data.train[d])) for d in ("prose", "notes")}


def test_shard_progress_is_read_from_its_file_and_a_stale_one_is_not_shown(tmp_path):
    """Task.progress() of a shard: its fraction from the bytes done, and tokens and tokens/s
    as text; a progress file left by a killed attempt is removed when the task starts again."""
    from s2l.lm.prepare import ShardTask, _report_path

    make_corpus(tmp_path / "corpus")
    raw = sweep_raw(tmp_path / "corpus", tmp_path / "cache")
    cfg, plan = load_plan(raw, tmp_path / "x.yaml")
    import dataclasses

    spec = plan.shards[0]
    task = ShardTask(cfg, dataclasses.replace(plan, shards=[spec]), tmp_path / "out")
    assert task.progress() is None and task.key == spec.key and task.group == "_data"
    path = _report_path(tmp_path / "out", spec.key, ".progress.json")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"tokens": 2_500_000, "tokens_per_s": 125_000.0,
                                "bytes": spec.approx_bytes // 4, "approx_bytes": spec.approx_bytes}))
    frac, text = task.progress()
    assert frac == pytest.approx(0.25, abs=1e-3) and text == "2.5M tok, 0.12M tok/s"
    assert not task.is_done()
    with pytest.raises(RuntimeError, match="no tokenizer"):  # nothing prepared yet
        task.run()
    assert not path.exists()
