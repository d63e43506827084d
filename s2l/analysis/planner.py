"""Proxy planner: which proxy scale is cheap enough and still ranks mixtures like the
reference, with what probability, and what a next sweep should add when none does.

From a store's per-cell test-set losses (`load.Reduced`), per test set:

1. Bootstrap over mixtures and seeds (`bootstrap_decisions`): resample mixtures with
   replacement (one draw shared by every scale, as a pair comparison needs the same mixtures
   at both scales) and, independently per scale and mixture, that cell's seeds with
   replacement; seed-average; recompute each proxy's decision accuracy against the reference
   (DataDecide: share of mixture pairs ordered alike; `stats.decision_accuracy`'s ties rule).
2. Fit a monotone curve in log-compute to each replicate (`fit_curves`):
   DA(C) = 0.5 + 0.5 * sigmoid(a + b * (log10 C - x0)), b >= 0: a coin flip for a useless
   proxy, 1 for a perfect one. Fitted as least squares in logit space, with decision
   accuracies clipped to [0.5 + CLIP, 1 - CLIP] (a replicate at exactly 0.5 or 1 has an
   infinite logit).
3. Recommend (`plan_test_set`): the cheapest proxy whose decision accuracy reaches the target
   in at least `probability` of the bootstrap replicates (the observed scales are judged by
   their own replicates, not the curve: a curve only borrows strength across scales it may
   misdescribe). When none does:
   - some proxy's estimate reaches the target but its CI is too wide: more mixtures or more
     seeds, whichever source contributes more bootstrap variance (mixtures-only vs
     seeds-only bootstraps), with the count that would shrink the spread enough
     (spread ~ 1 / sqrt(count));
   - every proxy is below target: a larger proxy, at the compute where the fitted curve
     reaches the target in `probability` of the replicates (extrapolated; said so), or no
     proxy when that compute is the reference's own.
4. Back-test (`backtest`): leave one proxy scale out, fit the curve to the others' decision
   accuracies, predict the one left out, report the error (needs >= 3 proxy scales).

The bootstrap treats its replicates' spread as the uncertainty of the true decision accuracy
(a percentile-bootstrap reading, as for every CI in this package).
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import xarray as xr
from scipy.special import expit, logit
from scipy.stats import norm

from s2l.analysis import crossscale, stats
from s2l.analysis.load import Reduced, StoreError

CLIP = 0.005      # decision accuracies clipped to [0.5 + CLIP, 1 - CLIP] before the logit
CHUNK = 64        # bootstrap replicates scored at once (memory ~ CHUNK x scales x pairs)


# --------------------------------------------------------------------------- the bootstrap

def draw_indices(n_scales: int, n_mixtures: int, n_seeds: int, n_boot: int, seed: int,
                 mixtures: bool = True, seeds: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Resampling indices: mix (n_boot, M) mixtures, shared by all scales; seed
    (n_boot, S, M, K) seeds per scale and mixture. A source switched off keeps its identity
    (mixtures=False: every replicate has all mixtures once)."""
    rng = np.random.default_rng(seed)
    mix = (rng.integers(0, n_mixtures, (n_boot, n_mixtures)) if mixtures
           else np.broadcast_to(np.arange(n_mixtures), (n_boot, n_mixtures)))
    shape = (n_boot, n_scales, n_mixtures, n_seeds)
    sd = (rng.integers(0, n_seeds, shape) if seeds
          else np.broadcast_to(np.arange(n_seeds), shape))
    return mix, sd


def pairwise_accuracy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Decision accuracy along the last axis with NaN = missing: x, y (..., M) -> (...,).
    Pairs with a NaN or a reference tie are left out; a proxy tie counts 1/2; NaN when no
    pair is left (`stats.decision_accuracy` for arrays with missing values)."""
    i, j = np.triu_indices(x.shape[-1], k=1)
    sx = np.sign(x[..., i] - x[..., j])
    sy = np.sign(y[..., i] - y[..., j])
    ok = np.isfinite(sx) & np.isfinite(sy) & (sy != 0)
    score = np.where(sx == sy, 1.0, np.where(sx == 0, 0.5, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, score, 0.0).sum(-1) / ok.sum(-1)


def bootstrap_decisions(per_seed: np.ndarray, ref: int, mix: np.ndarray,
                        seed_idx: np.ndarray) -> np.ndarray:
    """Decision accuracy of every scale against scale `ref` in each replicate.

    per_seed: (S, M, K) one metric per cell, NaN = not done; mix (B, M), seed_idx (B, S, M, K)
    from `draw_indices`. Returns (B, S); the reference's own column is NaN."""
    n_s = per_seed.shape[0]
    out = np.full((mix.shape[0], n_s), np.nan)
    s_ix = np.arange(n_s)[None, :, None, None]
    for start in range(0, mix.shape[0], CHUNK):
        b = slice(start, start + CHUNK)
        cells = per_seed[s_ix, mix[b][:, None, :, None], seed_idx[b]]  # (b, S, M, K)
        mean = _nanmean(cells)  # (b, S, M)
        da = pairwise_accuracy(mean, mean[:, ref:ref + 1, :])
        out[b] = da
    out[:, ref] = np.nan
    return out


def _nanmean(v: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (silently) where all are NaN: a mixture with
    no done seed, dropped from its pairs later."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(v, axis=-1)


# ------------------------------------------------------------------------------- the curve

def fit_curves(log_c: np.ndarray, da: np.ndarray, x0: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row, (a, b) of DA = 0.5 + 0.5 sigmoid(a + b (log_c - x0)) with b >= 0.

    log_c: (P,) log10 compute of the proxies; da: (B, P) decision accuracies (NaN = missing,
    left out of that row's fit). Least squares in logit space; a row whose slope comes out
    negative gets b = 0 (a flat curve at its mean, the monotone least-squares fit). A row
    with one point gets b = 0; with none, NaN."""
    q = logit((np.clip(da, 0.5 + CLIP, 1 - CLIP) - 0.5) / 0.5)
    x = np.broadcast_to(log_c - x0, q.shape)
    w = np.isfinite(q)
    n = w.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = np.where(w, x, 0).sum(-1) / n
        mq = np.where(w, q, 0).sum(-1) / n
        dx = np.where(w, x - mx[..., None], 0)
        sxx = (dx * dx).sum(-1)
        b = np.where(sxx > 0, (dx * np.where(w, q - mq[..., None], 0)).sum(-1) / sxx, 0.0)
    b = np.where(np.isfinite(b), np.maximum(b, 0.0), np.nan)
    a = mq - b * mx
    return a, b


def curve(a, b, log_c, x0: float) -> np.ndarray:
    """DA at log10 compute log_c for curve parameters a, b (broadcast)."""
    return 0.5 + 0.5 * expit(a + b * (log_c - x0))


def compute_for(a: np.ndarray, b: np.ndarray, target: float, x0: float) -> np.ndarray:
    """log10 compute where each curve reaches `target`; +inf where it never does (flat)."""
    need = logit((min(target, 1 - CLIP) - 0.5) / 0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = x0 + (need - a) / b
    return np.where(b > 0, x, np.where(a >= need, -np.inf, np.inf))


def backtest(log_c: np.ndarray, da: np.ndarray, names: list[str]) -> list[dict]:
    """Leave each proxy out, fit the curve to the others (>= 2 of them), predict it.
    log_c, da: (P,) point estimates. [] with fewer than 3 proxies."""
    rows = []
    if np.isfinite(da).sum() < 3:
        return rows
    for k, name in enumerate(names):
        if not np.isfinite(da[k]):
            continue
        keep = np.arange(len(names)) != k
        x0 = float(np.mean(log_c[keep]))
        a, b = fit_curves(log_c[keep], da[keep][None, :], x0)
        pred = float(curve(a[0], b[0], log_c[k], x0))
        rows.append({"scale": name, "observed": float(da[k]), "predicted": pred,
                     "error": pred - float(da[k]),
                     "extrapolated": bool(log_c[k] < log_c[keep].min()
                                          or log_c[k] > log_c[keep].max())})
    return rows


# ------------------------------------------------------------------------------- the plan

def _p_meets(boot: np.ndarray, target: float) -> np.ndarray:
    """(B, P) -> (P,) share of finite replicates at or above target."""
    ok = np.isfinite(boot)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, boot >= target, False).sum(0) / ok.sum(0)


def _needed(count: int, spread: float, margin: float, probability: float) -> int | None:
    """The count at which a spread ~ 1/sqrt(count) shrinks to margin / z_probability."""
    z = float(norm.ppf(probability))
    if margin <= 0 or spread <= 0 or z <= 0:
        return None
    return max(count + 1, math.ceil(count * (spread * z / margin) ** 2))


def plan_test_set(per_seed: np.ndarray, names: list[str], flops: np.ndarray, ref: int,
                  target: float, probability: float, n_boot: int = stats.N_BOOT,
                  seed: int = stats.BOOT_SEED) -> dict:
    """The plan for one test set. per_seed: (S, M, K) losses, NaN = not done; names/flops:
    (S,) per scale; ref: the reference's index. Proxies are every other scale with a done
    cell, cheapest first."""
    n_s, n_m, n_k = per_seed.shape
    proxies = sorted((i for i in range(n_s) if i != ref and np.isfinite(per_seed[i]).any()),
                     key=lambda i: flops[i])
    mix, sd = draw_indices(n_s, n_m, n_k, n_boot, seed)
    boot = bootstrap_decisions(per_seed, ref, mix, sd)[:, proxies]  # (B, P)
    mean = _nanmean(per_seed)  # (S, M)
    point = pairwise_accuracy(mean[proxies], mean[ref][None, :])  # (P,)
    log_c = np.log10(flops[proxies].astype(float))
    x0 = float(log_c.mean()) if len(proxies) else 0.0
    a, b = fit_curves(log_c, boot, x0)
    p_obs = _p_meets(boot, target)
    on_curve = curve(a[:, None], b[:, None], log_c[None, :], x0)  # (B, P)
    p_curve = np.where(np.isfinite(on_curve), on_curve >= target, False).mean(0)
    ref_agree = stats.seed_reliability(per_seed[ref])["seed_agreement"]
    scales = []
    for k, i in enumerate(proxies):
        lo, hi = stats._percentile_ci(boot[:, k], 0.025)
        scales.append({"scale": names[i], "flops": float(flops[i]),
                       "compute_ratio": float(flops[ref] / flops[i]),
                       "decision_accuracy": float(point[k]), "lo": lo, "hi": hi,
                       "p_meets": float(p_obs[k]), "p_meets_curve": float(p_curve[k]),
                       "n_mixtures": int(np.isfinite(mean[[i, ref]]).all(0).sum())})
    out = {"reference": names[ref], "reference_flops": float(flops[ref]),
           "reference_seed_agreement": ref_agree, "scales": scales,
           "curve": {"x0_log10_flops": x0, "a_median": _median(a), "b_median": _median(b)},
           "backtest": backtest(log_c, point, [names[i] for i in proxies])}
    out["recommendation"] = _recommend(out, per_seed, proxies, ref, target, probability,
                                       n_boot, seed, a, b, x0)
    return out


def _median(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def _recommend(out, per_seed, proxies, ref, target, probability, n_boot, seed, a, b, x0):
    scales = out["scales"]
    if not scales:
        return {"action": "none", "why": "no proxy scale has done cells"}
    for s in scales:  # cheapest first
        if s["p_meets"] >= probability:
            return {"action": "use", "scale": s["scale"], "flops": s["flops"],
                    "why": f"decision accuracy {s['decision_accuracy']:.2f} [{s['lo']:.2f}, "
                           f"{s['hi']:.2f}] reaches {target:g} in {s['p_meets']:.0%} of "
                           f"bootstrap replicates (asked: {probability:.0%}), "
                           f"{s['compute_ratio']:,.0f}x less compute than "
                           f"{out['reference']}"}
    reaching = [k for k, s in enumerate(scales) if s["decision_accuracy"] >= target]
    if reaching:
        k = reaching[0]
        s = scales[k]
        return _more_data(s, per_seed, proxies[k], ref, target, probability, n_boot, seed)
    need = compute_for(a, b, target, x0)  # (B,) log10 compute per replicate
    need = need[np.isfinite(a)]
    with np.errstate(invalid="ignore"):  # replicates that never reach it are inf: inf - inf
        c_prob = float(np.quantile(need, probability)) if need.size else float("inf")
        c_med = float(np.median(need)) if need.size else float("inf")
    best = max(scales, key=lambda s: s["decision_accuracy"])
    head = (f"every proxy is below {target:g} (best: {best['scale']} at "
            f"{best['decision_accuracy']:.2f} [{best['lo']:.2f}, {best['hi']:.2f}])")
    if not np.isfinite(c_prob):
        return {"action": "larger_scale", "flops": None,
                "why": f"{head}; decision accuracy does not rise with compute in the "
                       "replicates often enough to extrapolate where it would reach the target"}
    ref_c = math.log10(out["reference_flops"])
    rec = {"action": "larger_scale", "flops": 10 ** c_prob, "flops_median": 10 ** c_med,
           "extrapolated": True}
    if c_prob >= ref_c:
        rec["action"] = "no_proxy"
        rec["why"] = (f"{head}; the fitted curve reaches it with {probability:.0%} probability "
                      f"only at ~{10 ** c_prob:.2g} FLOPs, no less than the reference "
                      f"({out['reference_flops']:.2g}): no proxy is cheaper than running "
                      "the reference itself")
    else:
        rec["why"] = (f"{head}; add a proxy scale of ~{10 ** c_prob:.2g} FLOPs "
                      f"({out['reference_flops'] / 10 ** c_prob:,.0f}x less than the "
                      f"reference; median estimate {10 ** c_med:.2g}), extrapolated along "
                      "the fitted curve")
    return rec


def _more_data(s, per_seed, i, ref, target, probability, n_boot, seed) -> dict:
    """A proxy whose estimate reaches the target with too little confidence: which source of
    variance (mixtures or seeds) to add to, and how much."""
    n_s, n_m, n_k = per_seed.shape
    spread = {}
    for source, flags in (("mixtures", (True, False)), ("seeds", (False, True))):
        mix, sd = draw_indices(n_s, n_m, n_k, n_boot, seed, *flags)
        boot = bootstrap_decisions(per_seed, ref, mix, sd)[:, i]
        boot = boot[np.isfinite(boot)]
        spread[source] = float(np.std(boot)) if boot.size > 1 else 0.0
    source = max(spread, key=spread.get)
    count = n_m if source == "mixtures" else n_k
    margin = s["decision_accuracy"] - target
    need = _needed(count, spread[source], margin, probability)
    rec = {"action": f"more_{source}", "scale": s["scale"], "spread": spread,
           f"n_{source}": count, f"n_{source}_needed": need}
    text = (f"{s['scale']}'s decision accuracy {s['decision_accuracy']:.2f} reaches {target:g} "
            f"but its CI [{s['lo']:.2f}, {s['hi']:.2f}] is too wide (reaches it in "
            f"{s['p_meets']:.0%} of replicates, asked {probability:.0%}); the bootstrap spread "
            f"is {spread['mixtures']:.3f} from mixtures and {spread['seeds']:.3f} from seeds, "
            f"so add {source}")
    if need:
        text += f": ~{need} instead of {count} (spread ~ 1/sqrt({source[:-1]} count))"
    rec["why"] = text
    return rec


def plan(reduced: Reduced, flops: xr.DataArray, target: float, probability: float,
         test_sets: list[str] | None = None, n_boot: int = stats.N_BOOT,
         seed: int = stats.BOOT_SEED) -> dict:
    """The whole plan: per test set (default: all) `plan_test_set`'s dict, and "overall" the
    cheapest scale that meets the target on every one of them (None when none does).
    Raises StoreError for an unknown test set or a reference with too few done mixtures."""
    crossscale.check_reference(reduced, flops)
    names = [str(s) for s in reduced.loss_mean.scale.values]
    f = np.array([float(flops.sel(scale=s)) for s in names])
    ref = names.index(reduced.reference)
    all_sets = [str(t) for t in reduced.loss_mean.test_set.values]
    for t in test_sets or []:
        if t not in all_sets:
            raise StoreError(f"--test-set: no test set {t!r} in this store; test sets: "
                             f"{', '.join(all_sets)}")
    out = {"target": target, "probability": probability, "metric": "loss",
           "n_boot": n_boot, "seed": seed, "test_sets": {}}
    for t in test_sets or all_sets:
        per_seed = reduced.loss_mean.sel(test_set=t).transpose("scale", "mixture", "seed").values
        out["test_sets"][t] = plan_test_set(per_seed, names, f, ref, target, probability,
                                            n_boot, seed)
    out["overall"] = _overall(out["test_sets"], probability)
    return out


def _overall(per_set: dict, probability: float) -> dict | None:
    """The cheapest proxy that reaches the target with the asked probability on every test
    set (judged per scale: a scale passing one set need not pass another), or None."""
    tables = [{s["scale"]: s for s in q["scales"]} for q in per_set.values()]
    if not tables:
        return None
    for s in next(iter(per_set.values()))["scales"]:  # cheapest first
        if all(s["scale"] in t and t[s["scale"]]["p_meets"] >= probability for t in tables):
            return {"scale": s["scale"], "flops": s["flops"]}
    return None


def to_json(p: dict) -> str:
    """The plan as strict JSON: NaN and infinities (e.g. no seed agreement with one seed)
    become null."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (float, np.floating)):
            return float(v) if math.isfinite(v) else None
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.bool_):
            return bool(v)
        return v
    return json.dumps(clean(p), indent=2, allow_nan=False) + "\n"


def describe(p: dict) -> str:
    """The plan as terminal text."""
    lines = [f"proxy plan: target decision accuracy {p['target']:g} (ranking mixtures by loss) "
             f"with probability {p['probability']:.0%}, {p['n_boot']} bootstrap replicates "
             "over mixtures and seeds"]
    for t, q in p["test_sets"].items():
        agree = q["reference_seed_agreement"]
        lines.append(f"  {t} (reference {q['reference']}" + (
            f"; its own seed-to-seed decision agreement {agree:.2f}):"
            if np.isfinite(agree) else "):"))
        for s in q["scales"]:
            lines.append(f"    {s['scale']:>10}  DA {s['decision_accuracy']:.2f} "
                         f"[{s['lo']:.2f}, {s['hi']:.2f}]  P(>= target) {s['p_meets']:.0%}  "
                         f"{s['compute_ratio']:,.0f}x less compute")
        lines.append(f"    -> {q['recommendation']['action']}: {q['recommendation']['why']}")
        if q["backtest"]:
            err = ", ".join(f"{r['scale']} {r['error']:+.3f}" for r in q["backtest"])
            lines.append(f"    back-test (leave one scale out, predicted - observed): {err}")
        else:
            lines.append("    back-test: needs >= 3 proxy scales")
    o = p["overall"]
    lines.append(f"overall: {o['scale']} meets the target on every test set" if o else
                 "overall: no single proxy scale meets the target on every test set")
    return "\n".join(lines)
