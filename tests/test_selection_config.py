"""The selection sweep file: defaults load, every error names its key path (exit code 2)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from s2l.config import ConfigError
from s2l.study import load_study

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
    assert cfg.target_set == "cloze" and cfg.all_proxies == sizes
    assert cfg.selections() == [f"dsdm-{s}" for s in sizes] + ["random", "dsir"]
    assert cfg.target_tokens == "full" and cfg.log_odds
    names = [s.name for s in study.stages()]
    assert names == ["proxies", "featurize", "score", "select", "final", "report"]
    assert len(study.stages()[4].tasks) == (len(sizes) + 2) * len(raw["seeds"])
    assert f"select n={raw['select']['n']}" in study.describe()
    import pickle
    pickle.dumps(study.stages())  # tasks travel to nodes


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
    (lambda r: r["slurm"].update(resources={"1M": {"cpus": 2}}), "slurm.resources.1M"),
    (lambda r: r.update(bogus=1), "bogus"),
])
def test_errors_name_the_key_path(tmp_path, edit, path):
    raw = base()
    edit(raw)
    with pytest.raises(ConfigError) as e:
        load_study(write(tmp_path, raw), out=tmp_path / "out")
    assert e.value.path == path, str(e.value)
    assert not (tmp_path / "out").exists()


def test_target_tokens_full_mask_covers_prompt_and_answer():
    import numpy as np

    from s2l.selection.pool import full_text_mask

    m = np.array([[0, 0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0, 0], [0] * 7], dtype=bool)
    want = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0], [1] * 7], dtype=bool)
    assert (full_text_mask(m) == want).all()
