"""Mixture regression (RegMix-style): fit loss = f(mixture weights) on a sweep's runs, choose
the model by cross-validation, and propose the mixture the fit says minimises the loss.

    f = fit(weights, loss, seed=0)             # weights (M, D) on the simplex, loss (M,)
    mean, lo, hi = f.predict(candidates)       # (K, D) -> three (K,) arrays
    f.model, f.cv_rmse, f.cv_spearman          # chosen model and its k-fold CV scores

Candidate models (both see only the weights):
- "ridge": ridge regression on [w, log(w + EPS)] (standardised), alpha chosen by sklearn's
  efficient leave-one-out CV (`RidgeCV`) inside each training fold. The log terms let a
  linear model bend where a domain's weight goes to zero, the region where loss changes most.
- "gbm": gradient-boosted shallow trees (sklearn `GradientBoostingRegressor`; RegMix uses
  LightGBM), which need no feature engineering but extrapolate flat.

Model choice: the lower mean k-fold RMSE on the same folds (ridge on a tie: fewer degrees of
freedom). The interval of `predict` is a cross-validation conformal interval: the chosen
model's out-of-fold residual quantiles added to its prediction. It is honest for mixtures like
the fitted ones, and too narrow far outside them, which is why `propose` searches only within
the weights the sweep actually ran (per-domain bounds), intersected with the sweep's own
constraints.

`propose` searches a large seeded Dirichlet sample plus a local refinement around the best
points for the mixture with the lowest predicted objective (a weighted sum of test sets'
predicted losses). No I/O here; `s2l.analysis.proposal` reads the store and writes the files.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from s2l.analysis import stats

EPS = 1e-3          # log(w + EPS): finite at w = 0, ~log w above a few tenths of a percent
ALPHAS = np.logspace(-4, 3, 15)
MIN_MIXTURES = 6    # fewer runs than this cannot both fit and cross-validate a model
N_FOLDS = 5
LEVEL = 0.9         # coverage of Fit.predict's interval
MODELS = ("ridge", "gbm")


def log_features(w: np.ndarray) -> np.ndarray:
    """(M, D) weights -> (M, 2D) features [w, log(w + EPS)]."""
    w = np.asarray(w, float)
    return np.hstack([w, np.log(w + EPS)])


def make_model(name: str, seed: int = 0):
    """An unfitted sklearn estimator taking (M, D) weights: 'ridge' or 'gbm'."""
    if name == "ridge":
        return make_pipeline(FunctionTransformer(log_features), StandardScaler(),
                             RidgeCV(alphas=ALPHAS))
    if name == "gbm":
        # shallow trees, shrinkage and row subsampling: a sweep has tens of runs, not thousands
        return GradientBoostingRegressor(n_estimators=100, learning_rate=0.1, max_depth=2,
                                         min_samples_leaf=2, subsample=0.8, random_state=seed)
    raise ValueError(f"unknown model {name!r}; one of {MODELS}")


def folds(n: int, seed: int = 0) -> KFold:
    """The k-fold split every candidate is scored on (k = min(N_FOLDS, n), shuffled, seeded)."""
    return KFold(n_splits=min(N_FOLDS, n), shuffle=True, random_state=seed)


@dataclass
class Fit:
    """A fitted mixture regression.

    model: name of the chosen candidate; cv_rmse / cv_spearman: its mean per-fold RMSE and the
    Spearman rho of its pooled out-of-fold predictions with the truth; scores: the same for
    every candidate ({name: {"cv_rmse", "cv_spearman"}}); residuals: (M,) out-of-fold
    residuals (truth - prediction) of the chosen model; level: the interval's coverage."""
    model: str
    cv_rmse: float
    cv_spearman: float
    scores: dict
    estimator: object
    residuals: np.ndarray
    n_domains: int
    level: float = LEVEL
    alpha: float | None = None  # ridge penalty chosen on all data (ridge only)
    _band: tuple[float, float] = field(default=(0.0, 0.0), repr=False)

    def predict(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """weights (K, D) -> (mean (K,), lo (K,), hi (K,)): the prediction and its interval."""
        w = _check_weights(weights, self.n_domains)
        mean = np.asarray(self.estimator.predict(w), float)
        return mean, mean + self._band[0], mean + self._band[1]


def _check_weights(weights, n_domains: int | None = None) -> np.ndarray:
    w = np.asarray(weights, float)
    if w.ndim != 2 or (n_domains is not None and w.shape[1] != n_domains):
        raise ValueError(f"weights must be (K, {n_domains or 'D'}), got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and >= 0")
    return w


def cross_validate(name: str, weights: np.ndarray, loss: np.ndarray, seed: int = 0) -> dict:
    """k-fold CV of one candidate: per-fold RMSE (mean = cv_rmse, as sklearn's
    cross_val_score with scoring='neg_root_mean_squared_error' on `folds(M, seed)` gives it),
    Spearman of the pooled out-of-fold predictions, and those predictions (M,)."""
    oof = np.empty(loss.size)
    rmse = []
    for train, test in folds(loss.size, seed).split(weights):
        est = clone(make_model(name, seed)).fit(weights[train], loss[train])
        oof[test] = est.predict(weights[test])
        rmse.append(float(np.sqrt(np.mean((loss[test] - oof[test]) ** 2))))
    return {"cv_rmse": float(np.mean(rmse)), "cv_spearman": stats.spearman(oof, loss),
            "oof": oof}


def fit(weights: np.ndarray, loss: np.ndarray, seed: int = 0, models=MODELS,
        level: float = LEVEL) -> Fit:
    """Fit loss = f(weights) over M runs. weights (M, D) >= 0 (rows normalised here), loss (M,)
    finite. Raises ValueError with fewer than MIN_MIXTURES runs or bad shapes."""
    w = _check_weights(weights)
    y = np.asarray(loss, float)
    if y.shape != (w.shape[0],) or not np.isfinite(y).all():
        raise ValueError(f"loss must be finite with shape ({w.shape[0]},), got {y.shape}")
    if y.size < MIN_MIXTURES:
        raise ValueError(f"{y.size} runs; a mixture regression needs >= {MIN_MIXTURES}")
    w = w / w.sum(1, keepdims=True)
    scores = {m: cross_validate(m, w, y, seed) for m in models}
    best = min(models, key=lambda m: (scores[m]["cv_rmse"], models.index(m)))
    resid = y - scores[best]["oof"]
    est = make_model(best, seed).fit(w, y)
    band = tuple(float(q) for q in np.quantile(resid, [(1 - level) / 2, (1 + level) / 2]))
    alpha = float(est[-1].alpha_) if best == "ridge" else None
    return Fit(best, scores[best]["cv_rmse"], scores[best]["cv_spearman"],
               {m: {k: v for k, v in s.items() if k != "oof"} for m, s in scores.items()},
               est, resid, w.shape[1], level, alpha, band)


# ------------------------------------------------------------------------------ the search

@dataclass
class Bounds:
    """Per-domain [lo, hi] weight bounds on the simplex. lo, hi: (D,)."""
    lo: np.ndarray
    hi: np.ndarray

    def feasible(self) -> bool:
        return bool((self.lo <= self.hi + 1e-12).all() and self.lo.sum() <= 1 + 1e-9
                    and self.hi.sum() >= 1 - 1e-9)

    def contains(self, w: np.ndarray, tol: float = 1e-9) -> np.ndarray:
        """w (K, D) -> (K,) bool."""
        return ((w >= self.lo - tol) & (w <= self.hi + tol)).all(1)


def search_bounds(observed: np.ndarray, lo=None, hi=None) -> Bounds:
    """Bounds for the search: the range of weights the sweep ran, per domain (a regression
    says nothing reliable outside it), intersected with the sweep's own min/max (lo, hi:
    (D,) or None)."""
    b = Bounds(observed.min(0).copy(), observed.max(0).copy())
    if lo is not None:
        b.lo = np.maximum(b.lo, lo)
    if hi is not None:
        b.hi = np.minimum(b.hi, hi)
    return b


def _sample(rng, center, concentration: float, n: int) -> np.ndarray:
    """n Dirichlet draws centred on `center` (D,) with the given total concentration."""
    return rng.dirichlet(np.maximum(center, 1e-3) * concentration, n)


def propose(objective, n_domains: int, bounds: Bounds, seed: int = 0, n_samples: int = 100_000,
            n_starts: int = 8, rounds: int = 40, per_round: int = 256) -> tuple[np.ndarray, float]:
    """The mixture (D,) minimising `objective` ((K, D) -> (K,)) within `bounds`, and its value.

    A seeded flat-Dirichlet sample (n_samples, rejection to the bounds) finds basins; the
    n_starts best are refined by seeded Dirichlet steps around each point whose concentration
    doubles when a round brings no improvement (smaller steps). Raises ValueError when no
    sampled point satisfies the bounds."""
    if not bounds.feasible():
        raise ValueError("the weight bounds leave no mixture on the simplex")
    rng = np.random.default_rng(seed)
    pts = rng.dirichlet(np.ones(n_domains), n_samples)
    pts = pts[bounds.contains(pts)]
    # bounds narrower than a flat Dirichlet reaches: sample around the box's centre as well
    mid = np.clip((bounds.lo + bounds.hi) / 2, 1e-6, None)
    near = _sample(rng, mid / mid.sum(), 50.0, n_samples // 4)
    pts = np.vstack([pts, near[bounds.contains(near)]])
    if not len(pts):
        raise ValueError("no sampled mixture satisfies the weight bounds")
    vals = objective(pts)
    order = np.argsort(vals)[:n_starts]
    best_w, best_v = pts[order[0]], float(vals[order[0]])
    for w, v in zip(pts[order], vals[order]):
        conc = 100.0
        for _ in range(rounds):
            cand = _sample(rng, w, conc, per_round)
            cand = cand[bounds.contains(cand)]
            if len(cand):
                cv = objective(cand)
                k = int(np.argmin(cv))
                if cv[k] < v:
                    w, v = cand[k], float(cv[k])
                    continue
            conc = min(conc * 2, 1e6)
        if v < best_v:
            best_w, best_v = w, v
    return best_w, best_v
