"""The selection study end to end, in-process, on a tiny config (two domains, tiny models):
every stage's tasks run as a node runs them, the store follows the schema, the report is
written, a re-run finds everything done, analysis/selection.py writes elsewhere and refuses
other stores."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from s2l.config import ConfigError
from s2l.tasks import load_study, run_task

ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "kind": "selection", "name": "sel-tiny", "seeds": [0, 1],
    "data": {"seq_len": 32, "tokenizer": {"vocab_size": 300}, "max_mb_per_domain": 0.3,
             "domains": {"code": {"source": "builtin", "name": "python"},
                         "scripture": {"source": "builtin", "name": "bible"}}},
    "test_sets": {"cloze": {"kind": "cloze", "domain": "scripture", "samples": 20}},
    "target": {"test_set": "cloze", "target_frac": 0.5},
    "pool": {"per_domain": 30},
    "proxies": {"sizes": ["20k"], "models": 2, "steps": 10},
    "reference": {"size": "20k", "steps": 10, "as_proxy": False},
    "select": {"n": 20},
    "trak": {"proj_dim": 32, "batch_size": 8},
    "train": {"batch_size": 8, "log_every": 5},
}


def _check_store_schema(path, seeds, selections):
    """The loss-store schema every study kind shares, on a complete store."""
    from s2l.store import open_store

    ds = open_store(path)
    loss = ds["loss"]
    assert loss.dims == ("scale", "mixture", "seed", "sample") and loss.dtype == np.float32
    assert ds["done"].dims == ("scale", "mixture", "seed")
    assert ds["weight"].dims == ("mixture", "domain")
    for name, dim in (("test_set", "sample"), ("params", "scale"), ("flops", "scale")):
        assert ds[name].dims == (dim,)
    assert list(ds.mixture.values) == selections and list(ds.seed.values) == seeds
    assert ds["done"].values.all()  # every cell done ...
    assert not np.isnan(loss.values).any()  # ... with a loss for every sample
    np.testing.assert_allclose(ds["weight"].values.sum(1), 1.0, atol=1e-3)
    return ds


def test_tiny_study_runs_every_stage(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    study = load_study(path, out=out)
    assert study.groups() == ["20k"]
    study.prepare()
    for stage in study.stages():
        for task in stage.tasks:
            assert not task.is_done()
            run_task(task)
            assert task.is_done(), task.key
    table = pd.read_csv(out / "selection.csv")
    assert list(table.selection) == ["dsdm-20k", "random", "dsir"]
    assert table.holdout_loss.notna().all()
    assert table.set_index("selection").loc["random", "gain_vs_random"] == 0
    assert (out / "gain.png").stat().st_size > 0
    compute = pd.read_csv(out / "compute.csv")
    assert set(compute.stage) == {"proxy training", "featurization", "scoring", "final training"}
    for name in ("dsdm-20k", "random", "dsir"):
        for seed in (0, 1):
            sel = np.load(out / "selections" / f"{name}-s{seed}.npy")
            assert len(sel) == 20 and len(set(sel.tolist())) == 20
    ds = _check_store_schema(out / "losses.zarr", [0, 1], ["dsdm-20k", "random", "dsir"])
    comp = json.loads((out / "selections" / "composition.json").read_text())
    np.testing.assert_allclose(ds["weight"].values, [list(comp[m].values()) for m in comp])
    # done is recorded in one place, by the runner: the conventional markers
    assert not (out / "markers").exists()
    assert sorted(p.name for p in (out / ".s2l" / "done").iterdir()) == \
        sorted(s.name for s in study.stages())
    # a re-run (same config) finds every task done
    again = load_study(path, out=out)
    again.prepare()
    assert all(t.is_done() for s in again.stages() for t in s.tasks)

    # the CLI regenerates the report elsewhere, never in the study
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    r = subprocess.run([sys.executable, str(ROOT / "analysis" / "selection.py"), str(out),
                        "--out", str(tmp_path / "rep")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "dsdm-20k" in r.stdout
    assert pd.read_csv(tmp_path / "rep" / "selection.csv").equals(pd.read_csv(out / "selection.csv"))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    r = subprocess.run([sys.executable, str(ROOT / "analysis" / "selection.py"), str(out),
                        "--out", str(out / "sub")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error:") and not (out / "sub").exists()

    # a changed config redoes everything; the old work is moved aside, not lost
    path.write_text(yaml.safe_dump({**TINY, "select": {"n": 20, "seed": 1}}))
    changed = load_study(path, out=out)
    assert not any(t.is_done() for s in changed.stages() for t in s.tasks)
    changed.prepare()
    stale = list(out.glob("stale-*"))
    assert len(stale) == 1 and (stale[0] / "selections" / "random-s0.npy").exists()
    assert (out / "pool.npz").exists() and not (out / "selections").exists()


def test_pool_smaller_than_select_n_is_refused_before_the_out_dir_exists(tmp_path):
    """select.n is checked against the pool the domains really give (a short domain gives
    fewer windows than pool.per_domain asks) before anything is written."""
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump({**TINY, "pool": {"per_domain": 100000},
                                    "select": {"n": 150000}}))
    study = load_study(path, out=tmp_path / "out")
    with pytest.raises(ConfigError) as e:
        study.prepare()
    assert e.value.path == "select.n" and "candidates" in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["lm_store", "garbage_times", "no_store"])
def test_analysis_cli_refuses_what_is_not_a_selection_study(tmp_path, damage):
    """One `error:` line and exit 2, no traceback, nothing written into the input."""
    from s2l import store

    out = tmp_path / "study"
    out.mkdir()
    if damage != "no_store":
        layout = store.StoreLayout(
            scales=["s"], params=[10], flops=[1.0], mixtures=["a"], seeds=[0], domains=["d"],
            weights=np.ones((1, 1)), test_set=["t", "t"], multiple_choice=False,
            cell_ids={"s/a/0": "x"},
            attrs={"sweep": "x", "sweep_yaml": "",
                   **({"kind": "selection", "target": "t"} if damage != "lm_store" else {})})
        store.create_store(out / "losses.zarr", layout)
    if damage == "garbage_times":
        (out / "times").mkdir()
        (out / "times" / "x.json").write_text('{"stage": 3}')
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    r = subprocess.run([sys.executable, str(ROOT / "analysis" / "selection.py"), str(out),
                        "--out", str(tmp_path / "rep")], capture_output=True, text=True)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert not (tmp_path / "rep").exists()
