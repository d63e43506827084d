"""The prediction's numbers and its score, against independent computations; the
write-once file and its hash."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import spearmanr

from s2l.lm import predict
from s2l.lm.staged import PredictionError, canonical, read_prediction, write_once


def _power_law_losses(n_scales: int, noise: float, seed: int = 0, n_mix: int = 8, n_seeds: int = 2):
    rng = np.random.default_rng(seed)
    x = np.geomspace(0.02, 0.3, n_scales)  # proxy compute over the reference's
    a, b = rng.uniform(2, 3, n_mix), rng.uniform(0.3, 0.6, n_mix)
    clean = a[None] + b[None] * x[:, None] ** -0.3  # (S, M)
    codes = np.repeat([0, 1], 50)
    loss = clean[:, :, None, None] + rng.normal(0, noise, (n_scales, n_mix, n_seeds, codes.size))
    return loss, codes, x, a + b  # a + b: the loss at x = 1


def test_three_scales_recover_a_shared_power_law_with_honest_intervals():
    loss, codes, x, truth = _power_law_losses(3, noise=0.05)
    r = predict.predict(loss, codes, 2, x, level=0.9, n_boot=200)
    assert r["alpha"][-1] == pytest.approx(0.3, abs=0.1)
    assert np.abs(r["loss"][-1] - truth).max() < 0.05
    assert ((r["lo"][-1] <= truth) & (truth <= r["hi"][-1])).mean() >= 0.75
    assert (r["lo"] <= r["hi"]).all()


def test_two_scales_extrapolate_a_pure_power_law_exactly_and_one_scale_is_taken_as_is():
    x = np.array([0.1, 0.3])
    b = np.array([3.0, 4.0, 5.0])
    loss = (b[None] * x[:, None] ** -0.2)[:, :, None, None] * np.ones((1, 1, 1, 4))
    r = predict.predict(loss, np.array([0, 0, 1, 1]), 2, x, 0.9, 50)
    assert r["loss"][0] == pytest.approx(b) and r["alpha"][0] == pytest.approx(0.2)
    one = predict.predict(loss[1:], np.array([0, 0, 1, 1]), 2, x[1:], 0.9, 50)
    assert one["loss"][0] == pytest.approx(loss[1, :, 0, 0]) and np.isnan(one["alpha"]).all()


def test_test_set_means_and_their_mean_column():
    loss = np.arange(12, dtype=float).reshape(1, 1, 1, 12)
    codes = np.array([0] * 4 + [1] * 8)
    m = predict.test_set_means(loss, codes, 2)[0, 0, 0]
    assert m == pytest.approx([1.5, 7.5, 4.5])  # per set, then the mean of the two sets


def test_ranking_and_selection():
    order = predict.ranking(np.array([3.0, 1.0, 2.0, 1.0, 5.0]))
    assert order.tolist() == [1, 3, 2, 0, 4]  # ties keep sweep order
    top, ctl = predict.select(order, 2, 2, seed=0)
    assert top == [1, 3] and len(ctl) == 2 and set(ctl) <= {2, 0, 4}
    assert predict.select(order, 2, 2, seed=0) == (top, ctl)


def test_score_matches_scipy_and_a_brute_force_pair_loop():
    rng = np.random.default_rng(1)
    actual = rng.normal(3, 0.3, 12)
    pred = actual + rng.normal(0, 0.2, 12)
    lo, hi = pred - 0.25, pred + 0.25
    rank = np.argsort(np.argsort(pred + rng.normal(0, 0.2, 12))) + 1.0
    actual[4] = np.nan  # not run at the reference
    s = predict.score(rank, pred, lo, hi, actual, n_boot=300)
    keep = np.isfinite(actual)
    assert s["n_mixtures"] == 11
    assert s["spearman"] == pytest.approx(spearmanr(rank[keep], actual[keep]).statistic)
    assert s["spearman_loss"] == pytest.approx(spearmanr(pred[keep], actual[keep]).statistic)
    agree = [np.sign(rank[i] - rank[j]) == np.sign(actual[i] - actual[j])
             for i, j in itertools.combinations(np.flatnonzero(keep), 2)]
    assert s["decision_accuracy"] == pytest.approx(np.mean(agree))
    assert s["mae"] == pytest.approx(np.abs(pred - actual)[keep].mean())
    assert s["coverage"] == pytest.approx(((lo <= actual) & (actual <= hi))[keep].mean())
    for k in ("spearman", "decision_accuracy", "mae", "coverage"):
        assert s[f"{k}_lo"] <= s[k] <= s[f"{k}_hi"], k
    best = int(np.argmin(np.where(keep, rank, np.inf)))
    assert s["regret"] == pytest.approx(actual[best] - np.nanmin(actual))


def test_write_once_never_replaces_and_a_changed_prediction_is_detected(tmp_path):
    path = tmp_path / "f"
    assert write_once(path, b"first") and not write_once(path, b"second")
    assert path.read_bytes() == b"first" and list(tmp_path.iterdir()) == [path]
    folder = tmp_path / "out" / "predictions"
    folder.mkdir(parents=True)
    doc = {"format": "s2l.lm.prediction/1", "x": 1}
    (folder / "prediction.json").write_bytes(canonical(doc))
    assert read_prediction(tmp_path / "out") == doc  # writes the missing hash file
    assert (folder / "prediction.sha256").read_text().endswith("  prediction.json\n")
    (folder / "prediction.json").write_bytes(canonical(dict(doc, x=2)))
    with pytest.raises(PredictionError, match="changed after it was written"):
        read_prediction(tmp_path / "out")
    assert read_prediction(tmp_path / "none") is None
