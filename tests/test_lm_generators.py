"""Sweep-file generators and the `reference:` block: random mixtures with stable names,
weights and cell ids, their bounds, and errors that name the key path."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT
from s2l.config import ConfigError
from s2l.lm import mixgen
from s2l.lm.config import parse_sweep

SMOKE = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
DOMAINS = ["code", "scripture", "quotes"]


def sweep(random=None, reference=None, mixtures="keep", **top):
    raw = copy.deepcopy(SMOKE)
    if mixtures != "keep":
        raw.pop("mixtures")
        if mixtures is not None:
            raw["mixtures"] = mixtures
    if random is not None:
        raw["random_mixtures"] = random
    if reference is not None:
        raw["reference"] = reference
    raw.update(top)
    return parse_sweep(raw, Path("x.yaml"))


def weights(cfg) -> dict[str, tuple]:
    return {m.name: m.weights for m in cfg.mixtures}


def test_random_mixtures_have_stable_names_weights_and_ids():
    block = {"count": 12, "seed": 3}
    a, b = sweep(block), sweep(dict(block))
    assert [m.name for m in a.mixtures] == ["code-heavy", "prose-heavy"] + [f"rnd-{i:03d}" for i in range(12)]
    assert weights(a) == weights(b)
    assert [c.id for c in a.cells()] == [c.id for c in b.cells()]
    for m in a.mixtures:
        w = np.array([x for _, x in m.weights])
        assert [d for d, _ in m.weights] == DOMAINS and (w >= 0).all() and w.sum() == pytest.approx(1)
    # more of them: the first 12 keep name and weights; another seed changes them all
    more = weights(sweep({"count": 20, "seed": 3}))
    assert all(more[k] == v for k, v in weights(a).items())
    other = weights(sweep({"count": 12, "seed": 4}))
    assert all(other[f"rnd-{i:03d}"] != weights(a)[f"rnd-{i:03d}"] for i in range(12))


def test_named_mixtures_change_no_random_one_and_no_existing_cell_id():
    base = sweep({"count": 5})
    extra = dict(SMOKE["mixtures"], extra={"weights": {"code": 1, "quotes": 1}})
    grown = sweep({"count": 5}, mixtures=extra)
    ids = {c.key: c.id for c in base.cells()}
    grown_ids = {c.key: c.id for c in grown.cells()}
    assert all(grown_ids[k] == v for k, v in ids.items())
    # neither block changes the ids of a sweep's named cells
    plain = {c.key: c.id for c in sweep().cells()}
    staged = {c.key: c.id for c in sweep({"count": 3}, {"scale": "s", "top_k": 1}).cells()}
    assert all(staged[k] == v for k, v in plain.items())


def test_random_mixtures_alone_and_their_distribution():
    cfg = sweep({"count": 2000, "concentration": {"code": 2.0, "scripture": 1.0, "quotes": 1.0}},
                mixtures=None)
    w = np.array([[x for _, x in m.weights] for m in cfg.mixtures])
    assert w.shape == (2000, 3)
    # Dirichlet(2, 1, 1): means 1/2, 1/4, 1/4 (sd of a mean over 2000 draws ~0.005)
    assert w.mean(0) == pytest.approx([0.5, 0.25, 0.25], abs=0.02)
    assert len(mixgen.names(mixgen.RandomMixtures(count=1001))[0]) == len("rnd-0000")


def test_bounds_are_enforced_by_rejection():
    cfg = sweep({"count": 200, "min_weight": {"code": 0.3}, "max_weight": {"quotes": 0.1}},
                mixtures=None)
    w = np.array([[x for _, x in m.weights] for m in cfg.mixtures])
    assert (w[:, 0] >= 0.3).all() and (w[:, 2] <= 0.1).all()
    # truncation, not projection: few weights sit on the bounds
    assert (np.isclose(w[:, 0], 0.3, atol=1e-4)).mean() < 0.05


BAD = [
    ({"count": 0}, "random_mixtures.count"),
    ({"count": 10001}, "random_mixtures.count"),
    ({"count": "5"}, "random_mixtures.count"),
    ({"count": 3, "concentration": -1}, "random_mixtures.concentration"),
    ({"count": 3, "concentration": float("nan")}, "random_mixtures.concentration"),
    ({"count": 3, "concentration": {"code": 1}}, "random_mixtures.concentration"),
    ({"count": 3, "concentration": {"code": 1, "scripture": 1, "quotes": 1, "poetry": 1}},
     "random_mixtures.concentration.poetry"),
    ({"count": 3, "min_weight": {"poetry": 0.1}}, "random_mixtures.min_weight.poetry"),
    ({"count": 3, "min_weight": {"code": 1.5}}, "random_mixtures.min_weight.code"),
    ({"count": 3, "min_weight": {"code": 0.5}, "max_weight": {"code": 0.4}},
     "random_mixtures.max_weight.code"),
    ({"count": 3, "min_weight": {"code": 0.6, "quotes": 0.6}}, "random_mixtures.min_weight"),
    ({"count": 3, "max_weight": {"code": 0.2, "quotes": 0.2, "scripture": 0.2}},
     "random_mixtures.max_weight"),
    ({"count": 3, "min_weight": {"code": 0.333, "quotes": 0.333, "scripture": 0.333}},
     "random_mixtures"),  # feasible, but no draw falls in so thin a box
    ({"count": 3, "prefix": "bad name"}, "random_mixtures.prefix"),
    ({"count": 3, "seed": -1}, "random_mixtures.seed"),
    ({"count": 3, "colour": 1}, "random_mixtures.colour"),
]


@pytest.mark.parametrize("block,where", BAD, ids=[w + "=" + repr(b)[:30] for b, w in BAD])
def test_bad_random_mixtures_name_the_key_path(block, where):
    with pytest.raises(ConfigError) as e:
        sweep(block)
    assert e.value.path == where, str(e.value)


def test_a_generated_name_that_a_named_mixture_has_is_refused():
    named = dict(SMOKE["mixtures"], **{"rnd-001": {"weights": {"code": 1}}})
    with pytest.raises(ConfigError) as e:
        sweep({"count": 3}, mixtures=named)
    assert e.value.path == "random_mixtures.prefix" and "rnd-001" in str(e.value)


def test_no_mixture_at_all_is_refused():
    with pytest.raises(ConfigError) as e:
        sweep(mixtures=None)
    assert e.value.path == "mixtures" and "random_mixtures" in str(e.value)


BAD_REFERENCE = [
    ({"scale": "xl"}, "reference.scale"),
    ({"scale": "xs"}, "reference.scale"),  # cheaper than the proxy s
    ({}, "reference.scale"),
    ({"scale": "s", "objective": "poetry"}, "reference.objective"),
    ({"scale": "s", "controls": 1}, "reference.controls"),
    ({"scale": "s", "top_k": 2, "controls": 1}, "reference.top_k"),  # 3 > 2 mixtures
    ({"scale": "s", "top_k": 0}, "reference.top_k"),
    ({"scale": "s", "level": 1.0}, "reference.level"),
    ({"scale": "s", "n_boot": 5}, "reference.n_boot"),
    ({"scale": "s", "force_prediction": "yes"}, "reference.force_prediction"),
    ({"scale": "s", "topk": 1}, "reference.topk"),
]


@pytest.mark.parametrize("block,where", BAD_REFERENCE, ids=[w + "=" + repr(b)[:30] for b, w in BAD_REFERENCE])
def test_bad_reference_block_names_the_key_path(block, where):
    with pytest.raises(ConfigError) as e:
        sweep(reference=block)
    assert e.value.path == where, str(e.value)


def test_reference_block_needs_a_proxy_scale():
    raw_scales = {"s": SMOKE["scales"]["s"]}
    with pytest.raises(ConfigError) as e:
        sweep(reference={"scale": "s"}, scales=raw_scales)
    assert e.value.path == "reference.scale" and "proxy" in str(e.value)


def test_reference_block_splits_scales():
    cfg = sweep({"count": 4}, {"scale": "s", "objective": "heldout-code", "top_k": 2, "controls": 2})
    assert cfg.reference.scale == "s" and [s.name for s in cfg.proxy_scales] == ["xs"]
    assert sweep().reference is None and [s.name for s in sweep().proxy_scales] == ["xs", "s"]
