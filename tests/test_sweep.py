"""Grid expansion: cells, stable ids, token budgets, FLOPs, and a dry run that writes nothing."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from hpc.submit import main
from s2l.model import ModelShape
from s2l.lm.config import parse_sweep

RAW = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())


def cells(raw):
    return {c.key: c for c in parse_sweep(raw, Path("x.yaml")).cells()}


def test_grid_is_the_cross_product_with_normalised_weights():
    got = cells(RAW)
    assert sorted(got) == sorted(f"{s}/{m}/0" for s in ("xs", "s") for m in ("code-heavy", "prose-heavy"))
    w = got["s/code-heavy/0"].mixture.as_dict()
    assert sum(w.values()) == pytest.approx(1.0) and w["code"] == pytest.approx(0.8)


def test_ids_are_stable_and_change_exactly_with_what_determines_results():
    base = {k: c.id for k, c in cells(RAW).items()}
    assert base == {k: c.id for k, c in cells(copy.deepcopy(RAW)).items()}
    assert len(set(base.values())) == len(base)

    def changed(edit):
        raw = copy.deepcopy(RAW)
        edit(raw)
        new = {k: c.id for k, c in cells(raw).items()}
        return {k for k in base if k in new and new[k] != base[k]}

    # bookkeeping-only settings keep every id
    assert changed(lambda r: r["train"].update(log_every=3, checkpoint_every=7)) == set()
    # scaling all weights of a mixture by 2 is the same normalised mixture
    assert changed(lambda r: r["mixtures"]["code-heavy"].update(
        weights={"code": 1.6, "scripture": 0.2, "quotes": 0.2})) == set()
    # one scale's budget moves only that scale's cells
    assert changed(lambda r: r["scales"]["xs"].update(tokens=70000)) == {"xs/code-heavy/0", "xs/prose-heavy/0"}
    assert changed(lambda r: r["mixtures"]["prose-heavy"]["weights"].update(code=0.5)) == {
        "xs/prose-heavy/0", "s/prose-heavy/0"}
    # the recipe and the data move everything
    assert changed(lambda r: r["train"].update(lr=0.001)) == set(base)
    assert changed(lambda r: r["data"].update(seq_len=32)) == set(base)


def test_token_budget_is_chinchilla_times_multiplier_and_flops_are_6nd():
    raw = copy.deepcopy(RAW)
    raw["scales"] = {"a": {"preset": "1M"}, "b": {"d_model": 64, "n_layers": 2, "n_heads": 4}}
    raw["tokens_per_param"], raw["token_multiplier"] = 20, 0.5
    cfg = parse_sweep(raw, Path("x.yaml"))
    for sc in cfg.scales:
        n = sc.shape.non_embedding_params()
        assert sc.tokens == round(n * 10)
        assert sc.flops == 6.0 * n * sc.tokens
    assert cfg.scales[0].shape == ModelShape(128, 5, 4)


def test_dry_run_prints_cells_and_totals_and_writes_nothing(tmp_path, capsys, s2l_cache):
    out = tmp_path / "out"
    cache_before = sorted(p.name for p in s2l_cache.iterdir())
    assert main([str(ROOT / "sweeps" / "smoke.yaml"), "--out", str(out), "--dry-run", "--cluster", "local"]) == 0
    text = capsys.readouterr().out
    assert "total: 4 cells, 0 done" in text
    assert len([line for line in text.splitlines() if line.startswith(("xs ", "s "))]) == 4
    assert not out.exists()
    assert sorted(p.name for p in s2l_cache.iterdir()) == cache_before
