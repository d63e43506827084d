"""Malformed sweep files: exit code 2, a message naming the key path, nothing created."""
from __future__ import annotations

import copy
import os

import pytest
import yaml

from conftest import ROOT, run_cli
from hpc.submit import main

BASE = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())


def _set(d: dict, path: str, value) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    if value is _DELETE:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value


_DELETE = object()

# (what to change, value, key path the error must name)
CASES = [
    ("scales", _DELETE, "scales"),
    ("scales.xs.d_model", -4, "scales.xs.d_model"),
    ("scales.xs.n_heads", 3, "scales.xs.n_heads"),
    ("scales.xs", {"preset": "1T"}, "scales.xs.preset"),
    ("scales.xs.dmodel", 8, "scales.xs.dmodel"),
    ("scales.xs.tokens", "many", "scales.xs.tokens"),
    ("mixtures.code-heavy.weights.code", -1, "mixtures.code-heavy.weights.code"),
    ("mixtures.code-heavy.weights.poetry", 1, "mixtures.code-heavy.weights.poetry"),
    ("mixtures.code-heavy.weights", {"code": 0, "quotes": 0}, "mixtures.code-heavy.weights"),
    ("mixtures.code-heavy", {"code": 1}, "mixtures.code-heavy.weights"),
    ("mixtures.bad name", {"weights": {"code": 1}}, "mixtures.bad name"),
    ("seeds", [0, 0], "seeds"),
    ("seeds", ["a"], "seeds[0]"),
    ("train.lr", "fast", "train.lr"),
    ("train.precision", "fp8", "train.precision"),
    ("train.warmup_frac", 1.5, "train.warmup_frac"),
    ("train.batch_size", 0, "train.batch_size"),
    ("data.domains.code.source", "ftp", "data.domains.code.source"),
    ("data.seq_len", 0, "data.seq_len"),
    ("test_sets.cloze.domain", "poetry", "test_sets.cloze.domain"),
    ("slurm.resources.huge", {"gpus": 1}, "slurm.resources.huge"),
    ("slurm.defaults.gpus", -1, "slurm.defaults.gpus"),
    ("slurm.defaults.time", "soon", "slurm.defaults.time"),
    ("slurm.defaults.partitionn", "gpu", "slurm.defaults.partitionn"),
    ("slurm.resources.s", {"mem_gb": 0}, "slurm.resources.s.mem_gb"),
    ("kind", "banana", "kind"),
    ("mixture", {}, "mixture"),
]


@pytest.mark.parametrize("change,value,where", CASES, ids=[c[2] + "=" + repr(c[1])[:20] for c in CASES])
def test_bad_sweep_exits_2_naming_the_key(tmp_path, capsys, s2l_cache, change, value, where):
    raw = copy.deepcopy(BASE)
    _set(raw, change, value)
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    cache_before = sorted(os.listdir(s2l_cache))

    code = main([str(sweep), "--out", str(out), "--cluster", "local"])

    err = capsys.readouterr().err
    assert code == 2, err
    assert f": {where}:" in err, f"error does not name {where!r}: {err}"
    assert not out.exists(), "an invalid sweep must create nothing"
    assert sorted(os.listdir(s2l_cache)) == cache_before


def test_invalid_yaml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("scales: [unclosed\n")
    assert main([str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_exit_code_is_2_as_a_process(tmp_path):
    raw = copy.deepcopy(BASE)
    raw["mixtures"]["code-heavy"]["weights"]["code"] = "lots"
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(yaml.safe_dump(raw))
    proc = run_cli("hpc/submit.py", str(sweep), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert "mixtures.code-heavy.weights.code: must be a number" in proc.stderr
    assert not (tmp_path / "out").exists()
