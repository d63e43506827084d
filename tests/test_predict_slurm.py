"""The staged sweep (proxies -> predict -> reference) on the local Slurm cluster: three stages
submitted at once, chained with afterok, and the prediction still written before any reference
cell started. Fails, not skips, under S2L_REQUIRE_SLURM=1 (CI)."""
from __future__ import annotations

import datetime
import json
import subprocess

import pytest
import yaml

from conftest import run_cli
from s2l import store

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SWEEP = {
    "name": "tiny-staged-slurm", "seeds": [0],
    "scales": {"p1": {"d_model": 16, "n_layers": 1, "n_heads": 2, "tokens": 12000},
               "p2": {"d_model": 16, "n_layers": 1, "n_heads": 2, "tokens": 24000},
               "ref": {"d_model": 32, "n_layers": 1, "n_heads": 2, "tokens": 32000}},
    "data": {"seq_len": 64, "tokenizer": {"vocab_size": 512}, "max_mb_per_domain": 1,
             "domains": {"code": {"source": "builtin", "name": "python"},
                         "scripture": {"source": "builtin", "name": "bible"},
                         "quotes": {"source": "builtin", "name": "fortunes"}}},
    "random_mixtures": {"count": 4, "seed": 1},
    "test_sets": {"heldout": {"kind": "heldout", "samples_per_domain": 20}},
    "train": {"batch_size": 16, "lr": 0.005, "log_every": 10, "checkpoint_every": 50},
    "reference": {"scale": "ref"},
    "slurm": {"pack": 4, "poll_s": 1, "defaults": {"mem_gb": 0.5, "time": 10}},
}


def test_staged_sweep_on_slurm_predicts_before_the_reference_starts(cluster, tmp_path):
    sweep, out = tmp_path / "staged.yaml", tmp_path / "out"
    sweep.write_text(yaml.safe_dump(SWEEP))
    r = run_cli("hpc/submit.py", str(sweep), "--cluster", "slurm", "--out", str(out), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    jobs = json.loads((out / ".s2l" / "jobs.json").read_text())
    stage_of = {k.split("/", 1)[0] for k in jobs}
    # the data stages come first when this data block is not cached yet (test order decides)
    data = {"data-tokenizer", "data-shards", "data-finalize"}
    assert stage_of - data == {"proxies", "predict", "reference"}
    assert stage_of & data in (set(), data), stage_of
    # every stage ran as Slurm jobs that accounting saw complete
    mains = sorted({e["job_id"].split("_")[0] for e in jobs.values()})
    acct = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(mains)],
                          capture_output=True, text=True, timeout=60).stdout
    states = {ln.split("|")[0]: ln.split("|")[1] for ln in acct.splitlines() if ln}
    assert states and all(s.startswith("COMPLETED") for s in states.values()), states

    pred = json.loads((out / "predictions" / "prediction.json").read_text())
    assert pred["preregistered"] is True
    created = datetime.datetime.fromisoformat(pred["created_utc"])
    starts = [datetime.datetime.fromisoformat((out / "cells" / f"ref/rnd-{i:03d}/0" /
                                               "started_utc").read_text()) for i in range(4)]
    assert all(created < s for s in starts)
    done = store.done_cells(out / "losses.zarr")
    assert len(done) == 12 and all(done.values())
    score = json.loads((out / "predictions" / "score.json").read_text())
    assert score  # scored once the reference landed
