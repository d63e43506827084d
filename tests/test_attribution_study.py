"""The attribution study: YAML validation, the hub data path, and a tiny end-to-end run."""
import csv
import pickle
import textwrap

import numpy as np
import pytest
import torch

from s2l.config import ConfigError
from s2l.study import load_study

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


def _write(tmp_path, text):
    p = tmp_path / "a.yaml"
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize("patch,path", [
    ("model: {widths: [0.5, -1]}", "model.widths[1]"),
    ("lds: {alpha: 1.5}", "lds.alpha"),
    ("trak: {proj_type: sparse}", "trak.proj_type"),
    ("trak: {checkpoints: [9]}", "trak.checkpoints[0]"),
    ("train: {epochs: 3, lr: fast}", "train.lr"),
    ("data: {n_train: 10, colour: red}", "data.colour"),
    ("slurm: {resources: {k9: {cpus: 1}}}", "slurm.resources.k9"),
    ("bogus: 1", "bogus"),
])
def test_invalid_yaml_names_key_path(tmp_path, patch, path):
    p = _write(tmp_path, "kind: attribution\nname: x\n" + patch + "\n")
    with pytest.raises(ConfigError) as e:
        load_study(p)
    assert e.value.path == path


def test_tiny_study_end_to_end(tmp_path):
    study = load_study(_write(tmp_path, TINY), out=tmp_path / "out")
    assert study.out == tmp_path / "out" and study.cfg.reference == "k0.0625"
    text = study.describe()
    assert "k0.03125" in text and not (tmp_path / "out").exists()  # describe touches no disk
    study.prepare()
    stages = study.stages()
    assert [s.name for s in stages] == ["train", "featurize", "score", "lds", "report"]
    assert len(stages[0].tasks) == 2 * 2 + 6 and len(stages[1].tasks) == 2 * 4
    assert stages[0].tasks[0].resources.cpus in (1, 2)
    assert [t.resources.cpus for t in stages[0].tasks if t.key.startswith("subset")][0] == 2
    for st in stages:
        for task in st.tasks:
            task = pickle.loads(pickle.dumps(task))  # shipped to a node by submitit
            assert not task.is_done()
            task.run()
            assert task.is_done()
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


def test_hub_format_parquet_loader(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from s2l.attribution.vision import load_images

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(6)]
    ds = datasets.Dataset.from_dict({"img": imgs, "label": [0, 1, 2, 3, 4, 5]},
                                    features=datasets.Features({"img": datasets.Image(),
                                                                "label": datasets.ClassLabel(num_classes=10)}))
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
