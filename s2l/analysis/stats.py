"""Pure statistics for cross-scale analysis: numpy arrays in, numbers out. No I/O.

Conventions: `x` is a proxy's metric and `y` the reference's metric, one value per mixture,
so 1-D arrays of shape (mixture,). Batched versions take (batch, mixture) and reduce the last
axis. NaN marks a mixture that is missing at either scale; every function drops those pairs.

- Pearson r and Spearman rho (ranks with average ties, as scipy does).
- R^2 of the least-squares fit y ~ a + b x: for simple OLS with an intercept this is exactly
  r^2, so we report pearson**2 rather than fitting twice.
- Percentile bootstrap over mixtures (resample mixtures with replacement).
- Decision accuracy (DataDecide): over pairs of mixtures, the share whose order by x matches
  the order by y. Ties: a pair the reference ties is no decision and is left out; a pair the
  proxy ties (reference not) counts 1/2, the expected score of breaking the tie by a coin flip.
- Seed reliability: mean seed-to-seed correlation r1 of single runs, and the Spearman-Brown
  reliability of a K-seed mean, K*r1/(1+(K-1)*r1). sqrt(reliability) is the noise ceiling: the
  highest correlation any predictor can reach with the noisy seed-averaged reference.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

MIN_MIXTURES = 3  # below this a correlation across mixtures is meaningless
#: bootstrap defaults of every CI the package reports (correlate.py, report.py, the job's
#: summary): one store, one seed, one number
N_BOOT = 1000
BOOT_SEED = 0


def _paired(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop mixtures missing (NaN) at either scale. x, y: (mixture,)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def batched_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis of x, y (shape (..., n), no NaN). NaN where a row is
    constant (correlation undefined)."""
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    num = (xc * yc).sum(-1)
    den = np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    # rounding can push |r| a hair past 1; a constant row gives 0/0 -> NaN
    return np.clip(np.where(den > 0, r, np.nan), -1.0, 1.0)


def batched_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho along the last axis: Pearson r of average-tie ranks (scipy's definition)."""
    return batched_pearson(rankdata(x, axis=-1), rankdata(y, axis=-1))


def pearson(x, y) -> float:
    """Pearson r across mixtures, dropping pairs with NaN; NaN if < MIN_MIXTURES pairs remain."""
    x, y = _paired(x, y)
    return float(batched_pearson(x, y)) if x.size >= MIN_MIXTURES else float("nan")


def spearman(x, y) -> float:
    """Spearman rho across mixtures, dropping pairs with NaN."""
    x, y = _paired(x, y)
    return float(batched_spearman(x, y)) if x.size >= MIN_MIXTURES else float("nan")


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) int indices of mixtures drawn with replacement; seeded, so reruns agree."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def correlation_with_ci(x, y, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                        level: float = 0.95) -> dict:
    """Pearson, Spearman and R^2 (= pearson**2) of y on x across mixtures, each with a
    percentile bootstrap CI over mixtures. x, y: shape (mixture,), NaN = missing.

    Returns dict with keys pearson, pearson_lo, pearson_hi, spearman(_lo/_hi), r2(_lo/_hi),
    n_mixtures. Resamples where a metric is undefined (a constant resample) are skipped."""
    x, y = _paired(x, y)
    n = x.size
    out = {"n_mixtures": n}
    if n < MIN_MIXTURES:
        return out | {f"{m}{s}": np.nan for m in ("pearson", "spearman", "r2")
                      for s in ("", "_lo", "_hi")}
    idx = bootstrap_indices(n, n_boot, seed)
    xb, yb = x[idx], y[idx]
    alpha = (1 - level) / 2
    pb = batched_pearson(xb, yb)
    for name, point, boot in (("pearson", batched_pearson(x, y), pb),
                              ("spearman", batched_spearman(x, y), batched_spearman(xb, yb)),
                              ("r2", batched_pearson(x, y) ** 2, pb ** 2)):
        out[name] = float(point)
        lo, hi = _percentile_ci(boot, alpha)
        out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
    return out


def _percentile_ci(boot: np.ndarray, alpha: float) -> tuple[float, float]:
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _pair_scores(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair agreement score and 'decided' mask over the upper triangle.

    x, y: (..., n). Returns score (..., n_pairs) in {0, 0.5, 1} and decided (..., n_pairs) bool,
    where decided = the reference does not tie."""
    i, j = np.triu_indices(x.shape[-1], k=1)
    sx = np.sign(x[..., i] - x[..., j])
    sy = np.sign(y[..., i] - y[..., j])
    score = np.where(sx == sy, 1.0, np.where(sx == 0, 0.5, 0.0))
    return score, sy != 0


def decision_accuracy(x, y) -> tuple[float, int, int]:
    """Share of mixture pairs ordered the same by x (proxy) and y (reference).

    Returns (accuracy, n_decided_pairs, n_proxy_ties). Pairs the reference ties are excluded;
    pairs only the proxy ties count 1/2. NaN accuracy if no pair is decided."""
    x, y = _paired(x, y)
    if x.size < 2:
        return float("nan"), 0, 0
    score, decided = _pair_scores(x, y)
    n = int(decided.sum())
    ties = int((decided & (score == 0.5)).sum())
    acc = float(score[decided].mean()) if n else float("nan")
    return acc, n, ties


def decision_accuracy_with_ci(x, y, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                              level: float = 0.95) -> dict:
    """decision_accuracy plus a percentile bootstrap CI over mixtures.

    A resample that draws the same mixture twice creates a pair the reference ties; it is left
    out like any reference tie. Returns keys decision_accuracy, _lo, _hi, n_pairs, n_proxy_ties,
    n_mixtures."""
    acc, n_pairs, ties = decision_accuracy(x, y)
    x, y = _paired(x, y)
    out = {"decision_accuracy": acc, "n_pairs": n_pairs, "n_proxy_ties": ties,
           "n_mixtures": x.size}
    if x.size < MIN_MIXTURES:
        return out | {"decision_accuracy_lo": np.nan, "decision_accuracy_hi": np.nan}
    idx = bootstrap_indices(x.size, n_boot, seed)
    score, decided = _pair_scores(x[idx], y[idx])
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (score * decided).sum(-1) / decided.sum(-1)
    lo, hi = _percentile_ci(boot, (1 - level) / 2)
    return out | {"decision_accuracy_lo": lo, "decision_accuracy_hi": hi}


def rowwise_r2(x: np.ndarray, y: np.ndarray, min_n: int = MIN_MIXTURES) -> np.ndarray:
    """Per-sample R^2 across mixtures: for each column s, pearson(x[:, s], y[:, s])**2.

    x, y: (mixture, sample), NaN = missing (dropped per sample). Returns (sample,) float32,
    NaN where fewer than `min_n` mixtures remain or a column is constant."""
    mask = np.isfinite(x) & np.isfinite(y)
    n = mask.sum(0)
    x0, y0 = np.where(mask, x, 0.0), np.where(mask, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = x0.sum(0) / n, y0.sum(0) / n
        xc, yc = np.where(mask, x0 - mx, 0.0), np.where(mask, y0 - my, 0.0)
        sxy, sxx, syy = (xc * yc).sum(0), (xc * xc).sum(0), (yc * yc).sum(0)
        r2 = sxy * sxy / (sxx * syy)
    bad = (n < min_n) | (sxx <= 0) | (syy <= 0)
    return np.where(bad, np.nan, np.clip(r2, 0.0, 1.0)).astype(np.float32)


def seed_reliability(per_seed: np.ndarray) -> dict:
    """Seed-to-seed agreement of one scale across mixtures.

    per_seed: (mixture, seed) metric of single runs, NaN = not done. Returns seed_r (mean over
    seed pairs of the Pearson r across mixtures both seeds have), reliability (Spearman-Brown
    for the mean of K seeds), noise_ceiling = sqrt(reliability), and seed_agreement (mean over
    seed pairs of decision accuracy between the two seeds). NaN with fewer than 2 seeds."""
    k = per_seed.shape[1]
    rs, das = [], []
    for a in range(k):
        for b in range(a + 1, k):
            rs.append(pearson(per_seed[:, a], per_seed[:, b]))
            das.append(decision_accuracy(per_seed[:, a], per_seed[:, b])[0])
    rs = [r for r in rs if np.isfinite(r)]
    das = [d for d in das if np.isfinite(d)]
    if not rs:
        return {"seed_r": np.nan, "reliability": np.nan, "noise_ceiling": np.nan,
                "seed_agreement": float(np.mean(das)) if das else np.nan}
    r1 = float(np.mean(rs))
    rel = k * r1 / (1 + (k - 1) * r1) if r1 > 0 else np.nan
    return {"seed_r": r1, "reliability": rel,
            "noise_ceiling": float(np.sqrt(rel)) if np.isfinite(rel) else np.nan,
            "seed_agreement": float(np.mean(das)) if das else np.nan}


def wilson_interval(p: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion p observed on n items; (NaN, NaN) for n = 0 or a
    NaN p. Used for "is this accuracy above chance": it stays inside [0, 1] and is sensible
    near 0 and 1, where the normal interval is not."""
    if n <= 0 or not np.isfinite(p):
        return float("nan"), float("nan")
    from scipy.stats import norm
    z = float(norm.ppf((1 + level) / 2))
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return float(max(0.0, mid - half)), float(min(1.0, mid + half))
