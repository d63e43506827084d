"""The selection study end to end, in-process, on a tiny config (two domains, tiny models):
every stage's tasks run, the store follows the schema, the report is written, a re-run
finds everything done."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from s2l.study import load_study

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


def test_tiny_study_runs_every_stage(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    study = load_study(path, out=out)
    study.prepare()
    for stage in study.stages():
        for task in stage.tasks:
            assert not task.is_done()
            task.run()
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
    r = subprocess.run([sys.executable, str(ROOT.parent / "shared" / "tools" / "check_store.py"),
                        str(out / "losses.zarr"), "--complete"], capture_output=True, text=True)
    assert r.returncode == 0 or not (ROOT.parent / "shared").exists(), r.stdout
    # a re-run (same config) finds every task done; the CLI regenerates the report
    again = load_study(path, out=out)
    again.prepare()
    assert all(t.is_done() for s in again.stages() for t in s.tasks)
    r = subprocess.run([sys.executable, str(ROOT / "analysis" / "selection.py"), str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "dsdm-20k" in r.stdout
