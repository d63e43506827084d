"""The attribution study: YAML validation (key paths, hostile values), the hub data path, the
task contract (markers, fingerprints, groups), and a tiny end-to-end run."""
import csv
import json
import pickle
import textwrap

import numpy as np
import pytest
import torch

from hpc.resources import SlurmConfig
from s2l.config import ConfigError
from s2l.tasks import load_study, run_task

TINY = """
kind: attribution
name: tiny
data: {source: digits, image_size: null, n_train: 160, n_targets: 12}
model: {widths: [0.0625, 0.03125]}
train: {epochs: 3, batch_size: 64}
trak: {ensemble: 2, checkpoints: [2, 3], proj_dim: 32}
lds: {m: 6}
slurm: {resources: {k0.0625: {cpus: 2}}}
"""


def _write(tmp_path, text, name="a.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize("patch,path", [
    ("model: {widths: [0.5, -1]}", "model.widths[1]"),
    ("model: {widths: [0.5, .nan]}", "model.widths[1]"),
    ("model: {widths: [.inf]}", "model.widths[0]"),
    ("model: {widths: [0.5, 0.5]}", "model.widths"),
    ("lds: {alpha: 1.5}", "lds.alpha"),
    ("lds: {alpha: 0.001}", "lds.alpha"),
    ("trak: {proj_type: sparse}", "trak.proj_type"),
    ("trak: {checkpoints: [9]}", "trak.checkpoints[0]"),
    ("trak: {seed: -1}", "trak.seed"),
    ("trak: {cache_gb: .inf}", "trak.cache_gb"),
    ("train: {epochs: 3, lr: fast}", "train.lr"),
    ("train: {lr: .inf}", "train.lr"),
    ("train: {momentum: .nan}", "train.momentum"),
    ("data: {n_train: 10, colour: red}", "data.colour"),
    ("data: {seed: -3}", "data.seed"),
    ("data: {seed: 9223372036854775808}", "data.seed"),
    ("data: {source: digits, n_train: 1790, n_targets: 100}", "data.n_train"),
    ("data: {n_train: 4990, n_targets: 100}", "data.n_train"),  # mnist5k: 5,000 digits
    ("data: {image_size: 4}", "data.image_size"),
    ("data: {source: ../../etc}", "data.source"),
    ("data: {data_files: /nonexistent/*.parquet}", "data.data_files"),
    ("lds: {seed: 1.5}", "lds.seed"),
    ("name: ../x", "name"),
    ("bogus: 1", "bogus"),
])
def test_invalid_yaml_names_key_path(tmp_path, patch, path):
    text = "kind: attribution\n" + ("" if patch.startswith("name:") else "name: x\n") + patch + "\n"
    with pytest.raises(ConfigError) as e:
        load_study(_write(tmp_path, text), out=tmp_path / "out")
    assert e.value.path == path, str(e.value)
    assert not (tmp_path / "out").exists()


def test_slurm_block_is_checked_against_the_widths(tmp_path):
    """The library leaves `slurm:` to hpc, which keys resources by the study's groups."""
    study = load_study(_write(tmp_path, "kind: attribution\nname: x\n"
                                        "slurm: {resources: {k9: {cpus: 1}}}\n"))
    assert study.groups() == ["k0.03125", "k0.0625", "k0.125", "k0.25"]
    with pytest.raises(ConfigError) as e:
        SlurmConfig.for_study(study)
    assert e.value.path == "slurm.resources.k9"


def test_tracking_uri_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_study(_write(tmp_path, TINY), out=tmp_path / "out", tracking_uri="http://localhost:1")
    assert e.value.path == "--tracking-uri" and "does not track" in str(e.value)


def test_source_smaller_than_the_split_is_refused_before_the_out_dir_exists(tmp_path):
    """A parquet source's size is known only once loaded: `prepare` refuses it (data.n_train)
    before it creates anything."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    imgs = [Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)) for i in range(6)]
    features = datasets.Features({"img": datasets.Image(),
                                  "label": datasets.ClassLabel(num_classes=10)})
    ds = datasets.Dataset.from_dict({"img": imgs, "label": list(range(6))}, features=features)
    ds.to_parquet(str(tmp_path / "train.parquet"))
    study = load_study(_write(tmp_path, f"""
        kind: attribution
        name: small
        data: {{source: local, data_files: {tmp_path / 'train.parquet'}, image_size: 8,
                n_train: 5, n_targets: 2}}
        """), out=tmp_path / "out")
    with pytest.raises(ConfigError) as e:
        study.prepare()
    assert e.value.path == "data.n_train" and "6 examples" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_tasks_follow_the_task_contract(tmp_path):
    study = load_study(_write(tmp_path, TINY), out=tmp_path / "out")
    fp = study.cfg.fingerprint()
    markers = set()
    for st in study.stages():
        for t in st.tasks:
            assert t.fingerprint == fp and t.marker.parent.name == st.name
            assert t.marker.is_relative_to(tmp_path / "out" / ".s2l" / "done")
            markers.add(t.marker)
            parts = t.key.split("/")
            if st.name == "train":  # proxy/<width>/<member> or subset/<i> (reference width)
                want = "k0.0625" if parts[0] == "subset" else parts[1]
            else:  # featurize: <width>/<model>; score, lds, report: bookkeeping
                want = parts[0] if st.name == "featurize" else "default"
            assert t.group == want, (st.name, t.key, t.group)
    assert len(markers) == sum(len(st.tasks) for st in study.stages())  # no two tasks share one
    # what determines results changes the fingerprint; threads and the projection cache do not
    other = load_study(_write(tmp_path, TINY.replace("lds: {m: 6}", "lds: {m: 6, seed: 1}"), "b.yaml"))
    assert other.cfg.fingerprint() != fp
    same = load_study(_write(tmp_path, TINY.replace("batch_size: 64}", "batch_size: 64, threads: 2}")
                             .replace("proj_dim: 32}", "proj_dim: 32, cache_gb: 0}"), "c.yaml"))
    assert same.cfg.fingerprint() == fp


def test_tiny_study_end_to_end(tmp_path):
    from conftest import run_cli

    study = load_study(_write(tmp_path, TINY), out=tmp_path / "out")
    assert study.out == tmp_path / "out" and study.cfg.reference == "k0.0625"
    text = study.describe()
    assert "k0.03125" in text and not (tmp_path / "out").exists()  # describe touches no disk
    study.prepare()
    stages = study.stages()
    assert [s.name for s in stages] == ["train", "featurize", "score", "lds", "report"]
    assert len(stages[0].tasks) == 2 * 2 + 6 and len(stages[1].tasks) == 2 * 4
    slurm = SlurmConfig.for_study(study)
    assert slurm.resources_for(stages[0].tasks[0].group).cpus == 1  # k0.03125: the defaults
    assert [slurm.resources_for(t.group).cpus for t in stages[0].tasks if t.key.startswith("subset")][0] == 2
    for st in stages:
        for task in st.tasks:
            task = pickle.loads(pickle.dumps(task))  # shipped to a node by submitit
            assert not task.is_done()
            run_task(task)
            assert task.is_done()
            assert json.loads(task.marker.read_text())["fingerprint"] == study.cfg.fingerprint()
    rows = list(csv.DictReader(open(tmp_path / "out" / "lds.csv")))
    assert [r["proxy"] for r in rows] == ["k0.03125", "k0.0625"]
    assert float(rows[1]["compute_ratio"]) == 1.0 and float(rows[0]["compute_ratio"]) > 2
    for r in rows:
        assert -1 <= float(r["ci_lo"]) <= float(r["lds"]) <= float(r["ci_hi"]) <= 1
    for f in ("lds_vs_width.png", "score_spearman.png", "score_spearman.csv"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    # a second prepare (re-submit) keeps finished work
    study.prepare()
    assert all(t.is_done() for st in study.stages() for t in st.tasks)

    # analysis/lds.py writes the report elsewhere, never into the study
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")}
    r = run_cli("analysis/lds.py", str(tmp_path / "out"), "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    assert "k0.03125" in r.stdout
    assert (tmp_path / "rep" / "lds.csv").read_text() == (tmp_path / "out" / "lds.csv").read_text()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")} == before

    # a changed config: nothing is done any more, and the old work is moved aside, not lost
    changed = load_study(_write(tmp_path, TINY.replace("lds: {m: 6}", "lds: {m: 6, seed: 1}")),
                         out=tmp_path / "out")
    assert not any(t.is_done() for st in changed.stages() for t in st.tasks)
    changed.prepare()
    stale = list((tmp_path / "out").glob("stale-*"))
    assert len(stale) == 1 and (stale[0] / "lds.csv").exists() and (stale[0] / "models").is_dir()
    assert (tmp_path / "out" / "data.pt").exists() and not (tmp_path / "out" / "lds.csv").exists()


def test_hub_format_parquet_loader(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from s2l.attribution.vision import load_images

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(6)]
    features = datasets.Features({"img": datasets.Image(),
                                  "label": datasets.ClassLabel(num_classes=10)})
    ds = datasets.Dataset.from_dict({"img": imgs, "label": [0, 1, 2, 3, 4, 5]}, features=features)
    ds.to_parquet(str(tmp_path / "train-00000.parquet"))  # the layout of the hub's cifar10
    x, y = load_images("cifar10", data_files=str(tmp_path / "train-00000.parquet"))
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == [0, 1, 2, 3, 4, 5]
    assert abs(x.mean().item()) < 1e-4  # normalised per channel


def test_tiny_study_through_submit_runs_stages_in_order(tmp_path):
    """The same study as a user runs it: every task in a process of its own, stage after
    stage, through hpc/submit.py; a re-run has nothing to do."""
    from conftest import run_cli

    sweep = _write(tmp_path, TINY.replace("slurm: {resources: {k0.0625: {cpus: 2}}}",
                                          "slurm: {pack: 4}"))
    out = tmp_path / "out"
    proc = run_cli("hpc/submit.py", str(sweep), "--out", str(out), "--cluster", "local")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "lds.csv")))
    assert [r["proxy"] for r in rows] == ["k0.03125", "k0.0625"]
    assert all(np.isfinite(float(r["lds"])) for r in rows)
    again = run_cli("hpc/submit.py", str(sweep), "--out", str(out), "--cluster", "local")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    # the CLI refuses --tracking-uri for this kind with exit 2, creating nothing
    refused = run_cli("hpc/submit.py", str(sweep), "--out", str(tmp_path / "o2"), "--cluster",
                      "local", "--tracking-uri", "http://127.0.0.1:9")
    assert refused.returncode == 2 and "--tracking-uri" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "o2").exists()


def test_sweep_file_loads_and_describes_without_disk(tmp_path):
    from pathlib import Path

    sweep = Path(__file__).resolve().parent.parent / "sweeps" / "attribution.yaml"
    study = load_study(sweep, out=tmp_path / "out")
    assert study.groups() == ["k0.03125", "k0.0625", "k0.125", "k0.25"]
    text = study.describe()
    assert "reference k0.25" in text and "stage featurize: 16 tasks" in text
    assert not (tmp_path / "out").exists()
    SlurmConfig.for_study(study)


@pytest.mark.parametrize("damage", ["no_study_json", "garbage_json", "wrong_fields",
                                    "hostile_width_name", "corrupt_lds", "out_inside"])
def test_lds_cli_refuses_what_is_not_an_attribution_study(tmp_path, damage):
    """One `error:` line and exit 2, no traceback, nothing written into the input."""
    from conftest import run_cli

    study = tmp_path / "study"
    study.mkdir()
    meta = {"name": "x", "reference": "k1", "alpha": 0.5, "m": 4, "bootstrap": 10,
            "widths": {"k1": {"width": 1.0, "params": 10, "train_flops": 5.0}}}
    if damage == "garbage_json":
        (study / "study.json").write_bytes(b"\x00\xff{not json")
    elif damage == "wrong_fields":
        (study / "study.json").write_text(json.dumps({**meta, "widths": [1, 2]}))
    elif damage == "hostile_width_name":
        (study / "study.json").write_text(json.dumps(
            {**meta, "reference": "../../x", "widths": {"../../x": meta["widths"]["k1"]}}))
    elif damage != "no_study_json":
        (study / "study.json").write_text(json.dumps(meta))
        (study / "lds").mkdir()
        (study / "lds" / "k1.npy").write_bytes(b"garbage, not an npy file")
    dest = study / "rep" if damage == "out_inside" else tmp_path / "rep"
    before = sorted(p.relative_to(study) for p in study.rglob("*"))
    r = run_cli("analysis/lds.py", str(study), "--out", str(dest))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    assert sorted(p.relative_to(study) for p in study.rglob("*")) == before
    assert not dest.exists()
