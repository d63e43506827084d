"""Predicting the reference scale from the proxies, and scoring that prediction: numbers only.

The prediction is made before any reference cell has run, so nothing of the reference can
be fitted: no cross-scale regression of reference on proxy loss is possible. What the proxies
alone support:

- the *ranking* of mixtures at the reference scale: the order of the largest proxy's
  seed-mean loss (lower is better). That small models rank data mixtures like large ones is
  the claim under test; its decision accuracy is what the score reports.
- the reference *loss* of each mixture: extrapolated along the proxy scales in training
  compute C (FLOPs, normalised x = C / C_reference so the reference sits at x = 1):
    1 proxy scale:   the proxy's loss as it is (no trend can be fitted);
    2 proxy scales:  a power law L = b x^-alpha per mixture through both points (a line in
                     log-log). It ignores the irreducible loss, so it tends to predict too
                     large an improvement; the score's coverage shows by how much;
    >= 3 scales:     L = a_m + b_m x^-alpha per mixture with one alpha shared by all mixtures
                     (per test set), chosen on a grid by the least total squared error; a_m
                     and b_m are linear given alpha. A shared exponent is identified from 3
                     scales where a per-mixture one (3 parameters for 3 points) is not.
- intervals: a bootstrap that resamples each test set's samples (and the seeds, when there
  are several) and refits, percentile interval at `level`. It covers evaluation and seed
  noise and the fit's own uncertainty, not a wrong functional form: the score's coverage
  tells how honest it was.

"mean" is one more target beside the test sets: the mean over test sets of each test set's
mean loss (each test set weighs the same, whatever its number of samples).

Shapes: S proxy scales (by increasing FLOPs), M mixtures, K seeds, N samples, T test sets.
"""
from __future__ import annotations

import numpy as np

from s2l.analysis import stats

MEAN = "mean"  # the pseudo test set: mean over test sets
ALPHAS = np.geomspace(0.01, 2.0, 120)  # the shared exponent's grid (>= 3 proxy scales)


def method_name(n_scales: int) -> str:
    return {1: "largest-proxy-as-is", 2: "power-law-per-mixture-loglog"}.get(
        n_scales, "power-law-shared-exponent")


def test_set_means(loss: np.ndarray, codes: np.ndarray, n_sets: int,
                   counts: np.ndarray | None = None) -> np.ndarray:
    """Per-test-set means of per-sample losses, plus their mean as a last column.

    loss (..., N); codes (N,) test set index per sample; counts: optional (B, N) bootstrap
    multiplicities (each test set's counts summing to its size). Returns (..., T + 1) without
    counts, (B, ..., T + 1) with them."""
    onehot = np.eye(n_sets)[codes]  # (N, T)
    size = onehot.sum(0)  # (T,)
    flat = np.nan_to_num(loss.reshape(-1, loss.shape[-1]).astype(np.float64))  # NaN: not done
    if counts is None:
        means = flat @ onehot / size  # (R, T)
        means = means.reshape(*loss.shape[:-1], n_sets)
    else:
        # one matmul per test set's multiplicities: (R, N) x (N, B) -> (R, B)
        means = np.stack([flat @ (counts * onehot[:, t]).T / size[t] for t in range(n_sets)], -1)
        means = np.moveaxis(means.reshape(*loss.shape[:-1], counts.shape[0], n_sets), -2, 0)
    return np.concatenate([means, means.mean(-1, keepdims=True)], -1)


def sample_counts(codes: np.ndarray, n_sets: int, n_boot: int, rng: np.random.Generator
                  ) -> np.ndarray:
    """(n_boot, N) multiplicities: each test set's samples resampled with replacement."""
    counts = np.zeros((n_boot, codes.size))
    for t in range(n_sets):
        idx = np.flatnonzero(codes == t)
        counts[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1 / idx.size), size=n_boot)
    return counts


def extrapolate(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted loss at x = 1 from losses y (B, S, M) at proxy compute x (S,) (all < 1).

    Returns (prediction (B, M), alpha (B,)): the exponent used (NaN for one scale)."""
    n_b, n_s, n_m = y.shape
    if n_s == 1:
        return y[:, 0], np.full(n_b, np.nan)
    if n_s == 2:
        ly, lx = np.log(y), np.log(x)
        slope = (ly[:, 1] - ly[:, 0]) / (lx[1] - lx[0])  # (B, M) = -alpha per mixture
        return np.exp(ly[:, 1] - slope * lx[1]), -slope.mean(1)
    best_sse = np.full(n_b, np.inf)
    pred = np.full((n_b, n_m), np.nan)
    alpha = np.full(n_b, np.nan)
    for a in ALPHAS:
        design = np.stack([np.ones(n_s), x ** -a], 1)  # (S, 2)
        pinv = np.linalg.pinv(design)  # (2, S)
        coef = np.einsum("ks,bsm->bkm", pinv, y)  # (B, 2, M)
        resid = y - np.einsum("sk,bkm->bsm", design, coef)
        sse = (resid ** 2).sum((1, 2))
        better = sse < best_sse
        best_sse = np.where(better, sse, best_sse)
        pred[better] = coef[better, 0] + coef[better, 1]  # x = 1 at the reference
        alpha[better] = a
    return pred, alpha


def predict(loss: np.ndarray, codes: np.ndarray, n_sets: int, x: np.ndarray, level: float,
            n_boot: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The prediction's numbers from proxy per-sample losses.

    loss (S, M, K, N) float, no NaN (every proxy cell done); codes (N,); x (S,) proxy FLOPs
    over the reference's, increasing. Returns arrays over the T + 1 targets (test sets, then
    "mean"): loss, lo, hi (T+1, M) predicted reference loss and interval; proxy (T+1, M) the
    largest proxy's seed-mean loss (what the ranking orders); alpha (T+1,) the exponent."""
    rng = np.random.default_rng(seed)
    point = test_set_means(loss, codes, n_sets).mean(2)  # (S, M, T+1) seed mean
    counts = sample_counts(codes, n_sets, n_boot, rng)
    boot = test_set_means(loss, codes, n_sets, counts)  # (B, S, M, K, T+1)
    n_seeds = loss.shape[2]
    if n_seeds > 1:  # the same resampled seeds for every scale and mixture (seeds are paired)
        pick = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
        boot = np.stack([boot[b][:, :, pick[b]] for b in range(n_boot)])
    boot = boot.mean(3)  # (B, S, M, T+1)
    ys = np.concatenate([point[None], boot])  # replicate 0 is the point estimate
    preds, alphas = [], []
    for t in range(n_sets + 1):
        p, a = extrapolate(ys[..., t], x)
        preds.append(p)
        alphas.append(a[0])
    preds = np.stack(preds)  # (T+1, B+1, M)
    q = (1 - level) / 2
    lo, hi = np.quantile(preds[:, 1:], [q, 1 - q], axis=1)
    return {"loss": preds[:, 0], "lo": lo, "hi": hi, "proxy": point[-1].T,
            "alpha": np.array(alphas)}


def ranking(proxy_loss: np.ndarray) -> np.ndarray:
    """Mixture indices best (lowest loss) first; ties keep the sweep's order. (M,) -> (M,)."""
    return np.argsort(proxy_loss, kind="stable")


def select(order: np.ndarray, top_k: int, controls: int, seed: int) -> tuple[list[int], list[int]]:
    """(the top_k best mixture indices, `controls` others drawn at random with `seed`)."""
    top = [int(i) for i in order[:top_k]]
    rest = np.asarray(order[top_k:])
    drawn = np.random.default_rng(seed).choice(rest.size, size=controls, replace=False)
    return top, [int(rest[i]) for i in sorted(drawn)]


# ------------------------------------------------------------------------------- scoring

def score(rank: np.ndarray, pred: np.ndarray, lo: np.ndarray, hi: np.ndarray,
          actual: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """How good one target's prediction was, across the mixtures with a reference result.

    rank (M,) predicted rank (1 = best); pred, lo, hi (M,) predicted loss and interval; actual
    (M,) reference seed-mean loss, NaN where not run. Ranking metrics score `rank`: Spearman
    rho (of rank vs actual: positive is good) and decision accuracy (pairs ordered alike);
    loss metrics score `pred`: mae, coverage (share of actual inside [lo, hi]) and
    spearman_loss. Each with a percentile bootstrap CI over mixtures (`_lo`, `_hi`)."""
    keep = np.isfinite(actual)
    rank, pred, lo, hi, actual = (np.asarray(a, float)[keep] for a in (rank, pred, lo, hi, actual))
    out = {"n_mixtures": int(keep.sum())}
    corr = stats.correlation_with_ci(rank, actual, n_boot, seed, level)
    out |= {k: corr[k] for k in ("spearman", "spearman_lo", "spearman_hi")}
    dec = stats.decision_accuracy_with_ci(rank, actual, n_boot, seed, level)
    out |= {k: dec[k] for k in ("decision_accuracy", "decision_accuracy_lo",
                                "decision_accuracy_hi", "n_pairs")}
    corr = stats.correlation_with_ci(pred, actual, n_boot, seed, level)
    out |= {"spearman_loss": corr["spearman"], "spearman_loss_lo": corr["spearman_lo"],
            "spearman_loss_hi": corr["spearman_hi"]}
    err = np.abs(pred - actual)
    inside = ((lo <= actual) & (actual <= hi)).astype(float)
    for name, v in (("mae", err), ("coverage", inside)):
        out[name] = float(v.mean()) if v.size else float("nan")
        if v.size >= stats.MIN_MIXTURES:
            boot = v[stats.bootstrap_indices(v.size, n_boot, seed)].mean(1)
            q = (1 - level) / 2
            out[f"{name}_lo"], out[f"{name}_hi"] = (float(b) for b in np.quantile(boot, [q, 1 - q]))
        else:
            out[f"{name}_lo"] = out[f"{name}_hi"] = float("nan")
    if err.size:
        best_pred = int(np.argmin(rank))
        out["regret"] = float(actual[best_pred] - actual.min())  # 0: the top pick was the best
    return out
