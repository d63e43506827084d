"""The proxy planner: its bootstrap against a brute-force loop, its curve against a planted
logistic, its recommendations on synthetic stores with a known planted structure (proxies
get noisier as they shrink), and the CLI."""
import importlib.util
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from s2l import store
from s2l.analysis import crossscale, load, planner, stats, synthetic

ROOT = Path(__file__).resolve().parents[1]


def brute_force(per_seed, ref, mix, seed_idx):
    """Decision accuracy per replicate and scale with plain loops: seed means of the drawn
    seeds (NaN seeds skipped), then every mixture pair, skipping pairs with a missing mixture
    or a reference tie, a proxy tie counting 1/2."""
    n_b, n_s, n_m, n_k = seed_idx.shape
    out = np.full((n_b, n_s), np.nan)
    for b in range(n_b):
        mean = np.full((n_s, n_m), np.nan)
        for s in range(n_s):
            for m in range(n_m):
                vals = [per_seed[s, mix[b, m], seed_idx[b, s, m, k]] for k in range(n_k)]
                vals = [v for v in vals if not math.isnan(v)]
                if vals:
                    mean[s, m] = sum(vals) / len(vals)
        for s in range(n_s):
            if s == ref:
                continue
            total = count = 0.0
            for i, j in itertools.combinations(range(n_m), 2):
                x, y = mean[s, i] - mean[s, j], mean[ref, i] - mean[ref, j]
                if math.isnan(x) or math.isnan(y) or y == 0:
                    continue
                count += 1
                total += 1.0 if np.sign(x) == np.sign(y) else 0.5 if x == 0 else 0.0
            out[b, s] = total / count if count else np.nan
    return out


def test_bootstrap_matches_a_brute_force_loop():
    rng = np.random.default_rng(5)
    per_seed = rng.normal(size=(3, 7, 2)).round(1)  # rounding makes proxy and reference ties
    per_seed[0, 2, :] = np.nan  # a mixture not done at the proxy
    per_seed[2, 4, 1] = np.nan  # one seed not done at the reference
    mix, sd = planner.draw_indices(3, 7, 2, n_boot=40, seed=1)
    got = planner.bootstrap_decisions(per_seed, 2, mix, sd)
    np.testing.assert_allclose(got, brute_force(per_seed, 2, mix, sd), equal_nan=True)
    # the draws: mixtures shared across scales, seeds per scale; switched off = identity
    mix0, sd0 = planner.draw_indices(3, 7, 2, n_boot=4, seed=1, mixtures=False, seeds=False)
    assert (mix0 == np.arange(7)).all() and (sd0 == np.arange(2)).all()
    # no resampling at all: every replicate is the point estimate of stats.decision_accuracy
    full = planner.bootstrap_decisions(per_seed, 2, mix0, sd0)
    with np.errstate(invalid="ignore"):
        mean = np.nansum(per_seed, -1) / np.isfinite(per_seed).sum(-1)  # NaN: no done seed
    for s in (0, 1):
        assert full[0, s] == pytest.approx(stats.decision_accuracy(mean[s], mean[2])[0])


def test_curve_recovers_a_planted_logistic_and_backtests_exactly():
    log_c = np.array([10.0, 11.0, 12.0, 13.0])
    x0 = log_c.mean()
    da = planner.curve(0.4, 0.9, log_c, x0)
    a, b = planner.fit_curves(log_c, da[None, :], x0)
    assert a[0] == pytest.approx(0.4) and b[0] == pytest.approx(0.9)
    back = planner.backtest(log_c, da, ["a", "b", "c", "d"])
    assert [r["scale"] for r in back] == ["a", "b", "c", "d"]
    assert max(abs(r["error"]) for r in back) < 1e-9
    assert [r["extrapolated"] for r in back] == [True, False, False, True]
    # falling accuracy: the monotone fit is flat at the mean (logit space)
    a, b = planner.fit_curves(log_c, da[::-1][None, :], x0)
    assert b[0] == 0.0
    # where a curve reaches a target, and a flat one never does
    need = planner.compute_for(np.array([0.4, -1.0]), np.array([0.9, 0.0]), 0.8, x0)
    assert planner.curve(0.4, 0.9, need[0], x0) == pytest.approx(0.8)
    assert need[1] == np.inf
    assert planner.backtest(log_c[:2], da[:2], ["a", "b"]) == []


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """4 scales, proxy noise 0.45/0.30/0.15 (s0..s2) around a shared mixture effect of sd 0.3."""
    path = tmp_path_factory.mktemp("plan") / "losses.zarr"
    synthetic.write_synthetic_store(path, 4, 40, 3, 10)
    ds = load.open_store(path)
    return path, ds, load.reduce_store(ds, "s3", per_sample=False)


def test_plan_on_a_planted_store(planted):
    path, ds, red = planted
    p = planner.plan(red, ds["flops"], 0.8, 0.8, n_boot=300)
    dec = crossscale.decision_table(red, ds["flops"], [], n_boot=10)
    for t, q in p["test_sets"].items():
        assert [s["scale"] for s in q["scales"]] == ["s0", "s1", "s2"]
        for s in q["scales"]:  # the point estimate is the decision table's
            row = dec[(dec.test_set == t) & (dec.proxy == s["scale"]) & (dec.metric == "loss")]
            assert s["decision_accuracy"] == pytest.approx(row.decision_accuracy.iloc[0])
            assert s["lo"] <= s["decision_accuracy"] <= s["hi"]
        rec = q["recommendation"]
        if rec["action"] == "use":  # the cheapest scale that passes, none cheaper does
            names = [s["scale"] for s in q["scales"]]
            k = names.index(rec["scale"])
            assert q["scales"][k]["p_meets"] >= 0.8
            assert all(s["p_meets"] < 0.8 for s in q["scales"][:k])
    # the planted structure: the noisiest proxy ranks worst, on average over test sets
    da = np.array([[s["decision_accuracy"] for s in q["scales"]]
                   for q in p["test_sets"].values()]).mean(0)
    assert da[0] < da[1] < da[2]
    # overall: the cheapest scale passing everywhere
    o = p["overall"]
    if o is not None:
        assert all({s["scale"]: s for s in q["scales"]}[o["scale"]]["p_meets"] >= 0.8
                   for q in p["test_sets"].values())


def test_unreachable_target_asks_for_a_larger_scale_or_none(planted):
    path, ds, red = planted
    p = planner.plan(red, ds["flops"], 0.99, 0.8, ["cloze"], n_boot=200)
    rec = p["test_sets"]["cloze"]["recommendation"]
    assert rec["action"] in ("larger_scale", "no_proxy")
    assert "below 0.99" in rec["why"]
    if rec["flops"] is not None:
        assert rec["flops"] > max(s["flops"] for s in p["test_sets"]["cloze"]["scales"])
        assert rec["extrapolated"]
    assert p["overall"] is None


def test_wide_ci_asks_for_more_mixtures_or_seeds(tmp_path):
    ds = synthetic.synthetic_dataset(n_scales=3, n_mixtures=8, n_seeds=2, n_per_test_set=10)
    path = store.write_dataset(tmp_path / "few.zarr", ds)
    red = load.reduce_store(load.open_store(path), "s2", per_sample=False)
    q = planner.plan(red, ds["flops"], 0.6, 0.8, ["cloze"], n_boot=200)["test_sets"]["cloze"]
    # a target just under the best point estimate, asked with near certainty: the CI decides
    best = max(q["scales"], key=lambda s: s["decision_accuracy"])
    target = best["decision_accuracy"] - 0.01
    q = planner.plan(red, ds["flops"], target, 0.99, ["cloze"], n_boot=200)["test_sets"]["cloze"]
    rec = q["recommendation"]
    assert rec["action"] in ("more_mixtures", "more_seeds"), rec
    source = rec["action"].removeprefix("more_")
    assert rec[f"n_{source}_needed"] > rec[f"n_{source}"]
    assert rec["spread"][source] >= max(rec["spread"].values())
    assert "too wide" in rec["why"]


def _cli():
    spec = importlib.util.spec_from_file_location("analysis_plan", ROOT / "analysis" / "plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli(planted, tmp_path, capsys):
    path, _, _ = planted
    cli = _cli()
    out = tmp_path / "out"
    assert cli.main([str(path), "--target-decision-accuracy", "0.8", "--test-set", "cloze",
                     "--n-boot", "100", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cloze" in text and "back-test" in text and "->" in text
    plan = json.loads((out / "plan.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"{c} in plan.json"))
    assert list(plan["test_sets"]) == ["cloze"] and plan["target"] == 0.8
    assert len(plan["test_sets"]["cloze"]["backtest"]) == 3
    bad = tmp_path / "bad"
    assert cli.main([str(path), "--target-decision-accuracy", "0.8", "--test-set", "nope",
                     "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "no test set 'nope'" in err and len(err.strip().splitlines()) == 1
    assert not bad.exists()
    with pytest.raises(SystemExit) as e:
        cli.main([str(path), "--target-decision-accuracy", "1.2"])
    assert e.value.code == 2
    assert cli.main([str(path), "--target-decision-accuracy", "0.8",
                     "--out", str(path / "x")]) == 2
