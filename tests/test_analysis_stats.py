"""s2l.analysis.stats against independent computations (scipy.stats, brute-force loops)."""
import itertools

import numpy as np
import pytest
from scipy import stats as sps

from s2l.analysis import stats


@pytest.fixture
def xy():
    rng = np.random.default_rng(1)
    y = rng.normal(size=30)
    x = 0.8 * y + 0.5 * rng.normal(size=30)
    x[[3, 17]] = np.nan  # missing at the proxy
    y[[5]] = np.nan      # missing at the reference
    return x, y


def _keep(x, y):
    k = np.isfinite(x) & np.isfinite(y)
    return x[k], y[k]


def test_pearson_spearman_r2_match_scipy(xy):
    x, y = xy
    xs, ys = _keep(x, y)
    out = stats.correlation_with_ci(x, y, n_boot=200, seed=3)
    assert out["n_mixtures"] == 27
    assert out["pearson"] == pytest.approx(sps.pearsonr(xs, ys)[0], abs=1e-12)
    assert out["spearman"] == pytest.approx(sps.spearmanr(xs, ys)[0], abs=1e-12)
    # R^2 of the OLS fit reference ~ proxy, computed from the fitted line's residuals
    fit = sps.linregress(xs, ys)
    resid = ys - (fit.intercept + fit.slope * xs)
    r2 = 1 - (resid ** 2).sum() / ((ys - ys.mean()) ** 2).sum()
    assert out["r2"] == pytest.approx(r2, abs=1e-12)
    for m in ("pearson", "spearman", "r2"):
        assert out[f"{m}_lo"] <= out[m] <= out[f"{m}_hi"]


def test_spearman_with_ties_matches_scipy():
    x = np.array([1, 2, 2, 3, 3, 3, 4, 5.0])
    y = np.array([2, 1, 3, 3, 5, 4, 4, 6.0])
    assert stats.spearman(x, y) == pytest.approx(sps.spearmanr(x, y)[0], abs=1e-12)


def test_bootstrap_ci_matches_a_loop_over_the_same_resamples(xy):
    x, y = xy
    xs, ys = _keep(x, y)
    idx = stats.bootstrap_indices(xs.size, 300, seed=7)
    loop_p = [sps.pearsonr(xs[i], ys[i])[0] for i in idx]
    loop_s = [sps.spearmanr(xs[i], ys[i])[0] for i in idx]
    out = stats.correlation_with_ci(x, y, n_boot=300, seed=7)
    assert out["pearson_lo"] == pytest.approx(np.quantile(loop_p, 0.025), abs=1e-10)
    assert out["pearson_hi"] == pytest.approx(np.quantile(loop_p, 0.975), abs=1e-10)
    assert out["spearman_lo"] == pytest.approx(np.quantile(loop_s, 0.025), abs=1e-10)
    assert out["r2_hi"] == pytest.approx(np.quantile(np.square(loop_p), 0.975), abs=1e-10)
    # seeded: the same call gives the same interval, another seed a different one
    assert stats.correlation_with_ci(x, y, n_boot=300, seed=7) == out
    assert stats.correlation_with_ci(x, y, n_boot=300, seed=8)["pearson_lo"] != out["pearson_lo"]


def test_ci_narrows_with_more_mixtures():
    rng = np.random.default_rng(0)
    widths = []
    for n in (10, 200):
        y = rng.normal(size=n)
        out = stats.correlation_with_ci(y + 0.7 * rng.normal(size=n), y, n_boot=500)
        widths.append(out["pearson_hi"] - out["pearson_lo"])
    assert widths[1] < widths[0] / 2


def brute_decision(x, y):
    """Pair loop: reference ties skipped, proxy-only ties score 1/2."""
    score, n, ties = 0.0, 0, 0
    for i, j in itertools.combinations(range(len(x)), 2):
        if not (np.isfinite(x[i]) and np.isfinite(x[j]) and np.isfinite(y[i]) and np.isfinite(y[j])):
            continue
        if y[i] == y[j]:
            continue
        n += 1
        if x[i] == x[j]:
            score, ties = score + 0.5, ties + 1
        elif (x[i] < x[j]) == (y[i] < y[j]):
            score += 1
    return score / n, n, ties


def test_decision_accuracy_matches_pair_loop_with_ties_and_nan():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 5, 25).astype(float)  # coarse values: many ties at both scales
    y = rng.integers(0, 6, 25).astype(float)
    x[4], y[9] = np.nan, np.nan
    acc, n, ties = stats.decision_accuracy(x, y)
    b_acc, b_n, b_ties = brute_decision(x, y)
    assert (n, ties) == (b_n, b_ties) and ties > 0
    assert acc == pytest.approx(b_acc, abs=1e-12)


def test_decision_accuracy_extremes():
    y = np.arange(10.0)
    assert stats.decision_accuracy(2 * y + 1, y)[0] == 1.0
    assert stats.decision_accuracy(-y, y)[0] == 0.0
    assert stats.decision_accuracy(np.zeros(10), y)[0] == 0.5  # all proxy ties: coin flip
    assert np.isnan(stats.decision_accuracy(y, np.zeros(10))[0])  # reference decides nothing


def test_decision_ci_matches_loop_over_resamples():
    rng = np.random.default_rng(5)
    y = rng.normal(size=15)
    x = y + rng.normal(size=15)
    idx = stats.bootstrap_indices(15, 100, seed=11)
    loop = [brute_decision(x[i], y[i])[0] for i in idx]
    out = stats.decision_accuracy_with_ci(x, y, n_boot=100, seed=11)
    assert out["decision_accuracy_lo"] == pytest.approx(np.quantile(loop, 0.025), abs=1e-12)
    assert out["decision_accuracy_hi"] == pytest.approx(np.quantile(loop, 0.975), abs=1e-12)
    assert out["n_pairs"] == 105


def test_rowwise_r2_matches_scipy_per_sample():
    rng = np.random.default_rng(3)
    y = rng.normal(size=(12, 40))
    x = y + rng.normal(size=(12, 40))
    x[0, :5] = np.nan       # some samples lose one mixture
    y[:, 7] = 1.0           # a constant sample: undefined
    x[:10, 8] = np.nan      # too few mixtures left
    r2 = stats.rowwise_r2(x, y)
    for s in range(40):
        xs, ys = _keep(x[:, s], y[:, s])
        if s in (7, 8):
            assert np.isnan(r2[s])
        else:
            assert r2[s] == pytest.approx(sps.pearsonr(xs, ys)[0] ** 2, abs=1e-5)


def test_seed_reliability_spearman_brown():
    rng = np.random.default_rng(4)
    true = rng.normal(size=40)
    per_seed = true[:, None] + 0.5 * rng.normal(size=(40, 3))
    per_seed[2, 1] = np.nan
    out = stats.seed_reliability(per_seed)
    pairs = [sps.pearsonr(*_keep(per_seed[:, a], per_seed[:, b]))[0]
             for a, b in ((0, 1), (0, 2), (1, 2))]
    r1 = np.mean(pairs)
    assert out["seed_r"] == pytest.approx(r1, abs=1e-12)
    assert out["reliability"] == pytest.approx(3 * r1 / (1 + 2 * r1), abs=1e-12)
    assert out["noise_ceiling"] == pytest.approx(np.sqrt(3 * r1 / (1 + 2 * r1)), abs=1e-12)
    # more seed noise -> lower ceiling
    noisy = true[:, None] + 2.0 * rng.normal(size=(40, 3))
    assert stats.seed_reliability(noisy)["noise_ceiling"] < out["noise_ceiling"]
    assert np.isnan(stats.seed_reliability(per_seed[:, :1])["noise_ceiling"])


def test_too_few_mixtures_gives_nan():
    out = stats.correlation_with_ci([1.0, 2.0, np.nan], [1.0, 3.0, 2.0])
    assert out["n_mixtures"] == 2 and np.isnan(out["pearson"]) and np.isnan(out["pearson_lo"])
