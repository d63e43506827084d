"""Linear datamodeling score (LDS): how well attribution scores predict retraining outcomes.

Ground truth: m random subsets D_i of the train set, each of size round(alpha * n); a model of
the reference width is trained on each and the output (margin) f_ij of every target j recorded.
Prediction: g_ij = sum_{k in D_i} tau_j[k] = (mask @ S)[i, j].
LDS_j = Spearman over i of (f_ij, g_ij); the study reports the mean over targets and a 95%
bootstrap CI over targets (resampling targets; the subsets are fixed).
"""
from __future__ import annotations

import numpy as np

from s2l.analysis.stats import batched_spearman


def subset_masks(n: int, m: int, alpha: float, seed: int) -> np.ndarray:
    """(m, n) bool: row i marks the round(alpha * n) examples of subset D_i."""
    size = int(round(alpha * n))
    if not 0 < size <= n:
        raise ValueError(f"alpha={alpha} gives subsets of {size} of {n} examples")
    rng = np.random.default_rng(seed)
    masks = np.zeros((m, n), dtype=bool)
    for i in range(m):
        masks[i, rng.choice(n, size, replace=False)] = True
    return masks


def lds_per_target(scores: np.ndarray, masks: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """scores (n, T), masks (m, n) bool, actual (m, T) margins -> LDS (T,) Spearman per target.

    Targets whose actual or predicted outputs are constant over subsets get NaN."""
    pred = masks.astype(np.float64) @ np.asarray(scores, dtype=np.float64)  # (m, T)
    # the same batched Spearman (average-tie ranks, scipy's definition) as the cross-scale stats
    return batched_spearman(np.asarray(actual, dtype=np.float64).T, pred.T)


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): mean of the finite values and a percentile bootstrap CI."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n_boot, len(v)))].mean(1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))
