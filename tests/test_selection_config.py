"""The selection sweep file: defaults load, every error (hostile values included) names its key
path (exit code 2) and creates nothing."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpc.resources import SlurmConfig
from s2l.config import ConfigError
from s2l.tasks import load_study

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, raw) -> Path:
    p = tmp_path / "sel.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def base():
    return yaml.safe_load((ROOT / "sweeps" / "selection.yaml").read_text())


def test_sweep_file_loads(tmp_path):
    study = load_study(ROOT / "sweeps" / "selection.yaml", out=tmp_path)
    cfg, raw = study.cfg, base()
    sizes = tuple(raw["proxies"]["sizes"]) + (raw["reference"]["size"],)
    assert cfg.target.test_set == "cloze" and cfg.all_proxies == sizes
    assert cfg.selections() == [f"dsdm-{s}" for s in sizes] + ["random", "dsir"]
    assert cfg.trak.target_tokens == "full" and cfg.trak.log_odds
    assert study.groups() == list(sizes)
    assert SlurmConfig.for_study(study).default.time_min == 30
    names = [s.name for s in study.stages()]
    assert names == ["proxies", "featurize", "score", "select", "final", "report"]
    assert len(study.stages()[4].tasks) == (len(sizes) + 2) * len(raw["seeds"])
    assert f"select n={raw['select']['n']}" in study.describe()
    import pickle
    tasks = pickle.loads(pickle.dumps(study.stages()))  # tasks travel to nodes
    assert {t.group for st in tasks for t in st.tasks} == set(sizes) | {"default"}
    markers = [t.marker for st in tasks for t in st.tasks]
    assert len(set(markers)) == len(markers)  # proxies/<size>/<m> and featurize/<size>/<m> differ
    assert {t.fingerprint for st in tasks for t in st.tasks} == {cfg.fingerprint()}


@pytest.mark.parametrize("edit, path", [
    (lambda r: r["target"].update(test_set="nope"), "target.test_set"),
    (lambda r: r["target"].update(test_set="heldout-code"), "target.test_set"),
    (lambda r: r["target"].update(target_frac=1.5), "target.target_frac"),
    (lambda r: r["proxies"].update(sizes=["20k", "huge"]), "proxies.sizes[1]"),
    (lambda r: r["proxies"].update(models=0), "proxies.models"),
    (lambda r: r["reference"].update(size="7B"), "reference.size"),
    (lambda r: r["select"].update(n=10 ** 6), "select.n"),
    (lambda r: r["select"].update(methods=["dsdm", "magic"]), "select.methods[1]"),
    (lambda r: r["select"].update(methods=["dsdm"]), "select.methods"),
    (lambda r: r["pool"].update(colour="red"), "pool.colour"),
    (lambda r: r["trak"].update(proj_dim="big"), "trak.proj_dim"),
    (lambda r: r["trak"].update(target_tokens="prompt"), "trak.target_tokens"),
    (lambda r: r["dsir"].update(ngrams=5), "dsir.ngrams"),
    (lambda r: r.update(seeds=[0, 0]), "seeds"),
    (lambda r: r.update(bogus=1), "bogus"),
    # hostile values
    (lambda r: r["target"].update(target_frac=float("nan")), "target.target_frac"),
    (lambda r: r["trak"].update(ridge=float("inf")), "trak.ridge"),
    (lambda r: r["trak"].update(seed=-1), "trak.seed"),
    (lambda r: r["trak"].update(seed=2 ** 40), "trak.seed"),
    (lambda r: r.update(seeds=[0, 2 ** 64]), "seeds[1]"),
    (lambda r: r.update(seeds=[]), "seeds"),
    (lambda r: r["pool"].update(seed=-5), "pool.seed"),
    (lambda r: r["proxies"].update(sizes=["20k", "20k"]), "proxies.sizes"),
    (lambda r: r["proxies"].update(sizes={"20k": 1}), "proxies.sizes"),
    (lambda r: r["proxies"].update(subset_frac=float("inf")), "proxies.subset_frac"),
    (lambda r: r["reference"].update(steps=True), "reference.steps"),
    (lambda r: r["select"].update(n=-1), "select.n"),
    (lambda r: r.update(name="sel\nection"), "name"),
    (lambda r: r["train"].update(lr=float("nan")), "train.lr"),
])
def test_errors_name_the_key_path(tmp_path, edit, path):
    raw = base()
    edit(raw)
    with pytest.raises(ConfigError) as e:
        load_study(write(tmp_path, raw), out=tmp_path / "out")
    assert e.value.path == path, str(e.value)
    assert not (tmp_path / "out").exists()


def test_slurm_block_is_checked_against_the_sizes(tmp_path):
    """The library leaves `slurm:` to hpc, which keys resources by the proxy/reference sizes."""
    raw = base()
    raw["slurm"]["resources"] = {"1M": {"cpus": 2}}
    study = load_study(write(tmp_path, raw), out=tmp_path / "out")
    with pytest.raises(ConfigError) as e:
        SlurmConfig.for_study(study)
    assert e.value.path == "slurm.resources.1M"


def test_tracking_uri_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_study(write(tmp_path, base()), out=tmp_path / "out", tracking_uri="sqlite:///x.db")
    assert e.value.path == "--tracking-uri" and "does not track" in str(e.value)


def test_target_tokens_full_mask_covers_prompt_and_answer():
    import numpy as np

    from s2l.selection.pool import full_text_mask

    m = np.array([[0, 0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0, 0], [0] * 7], dtype=bool)
    want = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0], [1] * 7], dtype=bool)
    assert (full_text_mask(m) == want).all()
