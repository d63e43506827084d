"""A tiny staged sweep end to end through hpc/submit.py --cluster local: proxies -> predict
-> reference. The prediction is written before any reference cell starts, never rewritten,
refused when reference results exist (unless forced, then not pre-registered), drives a
top_k selection, and is scored when the reference lands."""
from __future__ import annotations

import datetime
import hashlib
import json
import shutil

import numpy as np
import pytest
import yaml

from conftest import run_cli
from s2l import store

SWEEP = {
    "name": "tiny-staged", "seeds": [0],
    "scales": {"p1": {"d_model": 16, "n_layers": 1, "n_heads": 2, "tokens": 16000},
               "p2": {"d_model": 16, "n_layers": 1, "n_heads": 2, "tokens": 32000},
               "ref": {"d_model": 32, "n_layers": 1, "n_heads": 2, "tokens": 48000}},
    "data": {"seq_len": 64, "tokenizer": {"vocab_size": 512}, "max_mb_per_domain": 1,
             "domains": {"code": {"source": "builtin", "name": "python"},
                         "scripture": {"source": "builtin", "name": "bible"},
                         "quotes": {"source": "builtin", "name": "fortunes"}}},
    "random_mixtures": {"count": 6, "seed": 0, "min_weight": {"code": 0.05}},
    "test_sets": {"heldout": {"kind": "heldout", "samples_per_domain": 20},
                  "choice": {"kind": "choice", "domain": "quotes", "samples": 20, "choices": 4}},
    "train": {"batch_size": 16, "lr": 0.005, "log_every": 10, "checkpoint_every": 50},
    "reference": {"scale": "ref", "top_k": 2, "controls": 1},
    "slurm": {"pack": 6, "poll_s": 1},
}
REF_KEYS = [f"ref/rnd-{i:03d}/0" for i in range(6)]


def submit(tmp_path, out, sweep, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sweep))
    return run_cli("hpc/submit.py", str(path), "--out", str(out), "--cluster", "local")


def utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)


@pytest.fixture(scope="module")
def selective(tmp_path_factory):
    """The sweep with top_k 2 + 1 control, run once; a snapshot of what it left."""
    tmp = tmp_path_factory.mktemp("staged")
    out = tmp / "out"
    proc = submit(tmp, out, SWEEP)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pred_dir = out / "predictions"
    snap = {
        "proc": proc, "bytes": (pred_dir / "prediction.json").read_bytes(),
        "pred": json.loads((pred_dir / "prediction.json").read_text()),
        "done": store.done_cells(out / "losses.zarr"),
        "skipped": sorted(k for k in REF_KEYS if (out / "cells" / k / "SKIPPED").exists()),
        "starts": {k: (out / "cells" / k / "started_utc").read_text() for k in REF_KEYS},
        "mtimes": {k: min((out / "cells" / k / f).stat().st_mtime for f in ("cell.json", "progress.json"))
                   for k in REF_KEYS if (out / "cells" / k / "cell.json").exists()},
        "sha_file": (pred_dir / "prediction.sha256").read_text(),
        "score": json.loads((pred_dir / "score.json").read_text()),
    }
    return tmp, out, snap


def test_prediction_is_written_before_every_reference_cell_started(selective):
    _, out, s = selective
    pred = s["pred"]
    assert pred["preregistered"] is True and pred["reference_results_at_prediction"] == []
    created = datetime.datetime.fromisoformat(pred["created_utc"])
    assert all(created < datetime.datetime.fromisoformat(t) for t in s["starts"].values())
    assert s["mtimes"] and all(created < utc(m) for m in s["mtimes"].values())
    assert s["sha_file"] == f"{hashlib.sha256(s['bytes']).hexdigest()}  prediction.json\n"
    # what it records: every proxy cell id, the proxy losses' hash, one entry per target
    assert set(pred["proxies"]["cells"]) == {f"{p}/rnd-{i:03d}/0" for p in ("p1", "p2") for i in range(6)}
    assert len(pred["proxies"]["losses_sha256"]) == 64 and pred["method"]["loss"] == "power-law-per-mixture-loglog"
    for target in pred["targets"]:
        p = pred["predictions"][target]
        assert sorted(p["ranking"]) == pred["mixtures"]
        for m, v in p["mixtures"].items():
            assert v["lo"] <= v["hi"] and v["rank"] == p["ranking"].index(m) + 1
    assert s["score"]["prediction_before_every_reference_start"] is True


def test_only_selected_reference_cells_train_the_rest_are_visibly_skipped(selective):
    _, out, s = selective
    sel = s["pred"]["selection"]
    ranking = s["pred"]["predictions"]["mean"]["ranking"]
    assert sel["top"] == ranking[:2] and len(sel["controls"]) == 1 and sel["controls"][0] in ranking[2:]
    assert sorted(sel["run"]) == sorted(sel["top"] + sel["controls"])
    assert s["skipped"] == sorted(f"ref/{m}/0" for m in sel["skipped"])
    for k in REF_KEYS:
        assert s["done"][k] == (k not in s["skipped"])  # skipped: store cell left not done
        assert (out / "cells" / k / "DONE").exists()  # ... but the task finished
    assert 0 < sel["flops_saved_fraction_of_grid"] < 1
    text = s["proc"].stdout
    assert "pre-registered" in text and "true best among them: unknown" in text


def test_rerun_does_nothing_and_keeps_the_prediction(selective):
    tmp, out, s = selective
    proc = submit(tmp, out, SWEEP)
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stdout + proc.stderr
    assert (out / "predictions" / "prediction.json").read_bytes() == s["bytes"]
    dry = run_cli("hpc/submit.py", str(tmp / "sweep.yaml"), "--out", str(out), "--dry-run")
    assert dry.stdout.count(" skipped") >= 3 and "3 skipped by the prediction" in dry.stdout


def test_dropping_top_k_trains_the_rest_and_scores_the_selection(selective):
    tmp, out, s = selective
    full = {**SWEEP, "reference": {"scale": "ref"}}
    proc = submit(tmp, out, full, "full.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "predictions" / "prediction.json").read_bytes() == s["bytes"]  # kept
    assert all(store.done_cells(out / "losses.zarr")[k] for k in REF_KEYS)
    score = json.loads((out / "predictions" / "score.json").read_text())
    # the true best, computed independently from the store
    ds = store.open_store(out / "losses.zarr").load()
    per_set = ds["loss"].sel(scale="ref", seed=0).groupby("test_set").mean("sample")
    mean = per_set.mean("test_set").values
    names = [str(m) for m in ds["mixture"].values]
    true_best = names[int(np.argmin(mean))]
    assert score["true_best"] == true_best
    assert score["selection"]["true_best_selected"] == (true_best in s["pred"]["selection"]["run"])
    rank = s["pred"]["predictions"]["mean"]["mixtures"][true_best]["rank"]
    assert score["true_best_predicted_rank"] == rank
    row = next(r for r in score["rows"] if r["target"] == "mean")
    assert row["n_mixtures"] == 6 and -1 <= row["spearman"] <= 1
    assert (out / "predictions" / "score.csv").read_text().startswith("target,n_mixtures,spearman")


def test_a_prediction_after_reference_results_is_refused_unless_forced(selective, tmp_path):
    tmp, out, s = selective
    late = tmp_path / "late"
    shutil.copytree(out, late)
    shutil.rmtree(late / "predictions")
    shutil.rmtree(late / ".s2l" / "done" / "predict")
    full = {**SWEEP, "reference": {"scale": "ref"}}
    proc = submit(tmp_path, late, full)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "already have results" in proc.stdout + proc.stderr
    assert not (late / "predictions" / "prediction.json").exists()
    forced = {**SWEEP, "reference": {"scale": "ref", "force_prediction": True}}
    proc = submit(tmp_path, late, forced, "forced.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pred = json.loads((late / "predictions" / "prediction.json").read_text())
    assert pred["preregistered"] is False
    assert sorted(pred["reference_results_at_prediction"]) == REF_KEYS
    assert "NOT pre-registered" in proc.stdout
