"""Figures of the cross-scale analysis (paper Figs. 1-5 and decision accuracy), as PNGs.

Every function takes tables/arrays already computed (no store access) and returns a
matplotlib Figure. We use `matplotlib.figure.Figure` directly, not pyplot, so nothing here
touches a global backend or leaks open figures in long-running jobs.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from s2l.analysis.load import as_str

COLORS = [f"C{i}" for i in range(10)]


def _grid(n: int, width: float = 4.0, height: float = 3.4):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _empty(text: str) -> Figure:
    fig = Figure(figsize=(6, 2.5))
    fig.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def scatter_means(mean: xr.DataArray, reference: str, proxies: list[str],
                  corr: pd.DataFrame) -> Figure:
    """Fig. 1: per test set, proxy vs reference seed-mean loss, one point per mixture, one
    colour per proxy. mean: (scale, mixture, test_set)."""
    test_sets = [str(t) for t in mean.test_set.values]
    fig, axes = _grid(len(test_sets))
    for ax, t in zip(axes, test_sets):
        y = mean.sel(scale=reference, test_set=t).values
        for k, p in enumerate(proxies):
            x = mean.sel(scale=p, test_set=t).values
            r = corr[(corr.proxy == p) & (corr.test_set == t)].pearson
            label = f"{p}  r={r.iloc[0]:.2f}" if len(r) else p
            ax.scatter(x, y, s=14, color=COLORS[k % 10], label=label, alpha=0.8)
        ax.set_title(t)
        ax.set_xlabel("proxy mean loss (nats/token)")
        ax.set_ylabel(f"reference {reference} mean loss")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Fig. 1  Proxy vs reference loss across mixtures (one point per mixture)")
    return fig


def _by_test_set(ax, df: pd.DataFrame, x: str, y: str, lo: str, hi: str, log_dodge=False):
    """One errorbar line per test set. log_dodge: shift each test set a little along a log x
    axis so that CIs at the same proxy do not hide each other."""
    groups = list(df.groupby("test_set", sort=False))
    for k, (t, g) in enumerate(groups):
        g = g.sort_values(x)
        err = np.vstack([g[y] - g[lo], g[hi] - g[y]]).clip(min=0)
        xs = g[x] * 10 ** (0.04 * (k - (len(groups) - 1) / 2)) if log_dodge else g[x]
        ax.errorbar(xs, g[y], yerr=err, marker="o", ms=4, capsize=3,
                    color=COLORS[k % 10], label=t)


def corr_vs_compute(corr: pd.DataFrame, reference: str) -> Figure:
    """Fig. 2: Pearson r (95% bootstrap CI) vs proxy training FLOPs, log x, per test set."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    _by_test_set(ax, corr, "proxy_flops", "pearson", "pearson_lo", "pearson_hi", log_dodge=True)
    ax.set_xscale("log")
    ax.set_xlabel("proxy training compute (FLOPs, log scale)")
    ax.set_ylabel(f"Pearson r with reference {reference}")
    ax.set_title("Fig. 2  Cross-scale correlation vs proxy compute (95% bootstrap CI)",
                 fontsize=10)
    _annotate_scales(ax, corr)
    ax.legend(title="test set", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _annotate_scales(ax, df: pd.DataFrame):
    """Name each proxy and its compute ratio on a top axis, out of the data's way."""
    top = ax.secondary_xaxis("top")
    rows = df.drop_duplicates("proxy")
    top.set_xticks(rows.proxy_flops.to_numpy(),
                   [f"{r.proxy}\n{r.compute_ratio:,.0f}x less" for r in rows.itertuples()],
                   fontsize=7)
    top.minorticks_off()


def corr_vs_accuracy(corr: pd.DataFrame) -> Figure:
    """Fig. 3: Pearson r of loss vs proxy accuracy above chance, MC test sets only."""
    if "proxy_acc" not in corr or corr.proxy_acc.isna().all():
        return _empty("Fig. 3 needs multiple-choice test sets (a `correct` variable);\n"
                      "this store has none.")
    df = corr.dropna(subset=["proxy_acc"]).copy()
    df["above"] = 100 * (df.proxy_acc - df.chance)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    _by_test_set(ax, df, "above", "pearson", "pearson_lo", "pearson_hi")
    for _, r in df.iterrows():
        ax.annotate(r.proxy, (r.above, r.pearson), xytext=(4, -10),
                    textcoords="offset points", fontsize=7)
    ax.axvline(0, color="0.5", ls="--", lw=1, label="chance")
    ax.set_xlabel("proxy accuracy above chance (percentage points)")
    ax.set_ylabel("Pearson r of loss with reference")
    ax.set_title("Fig. 3  Correlation vs proxy accuracy above chance")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def sample_scatter(pair: xr.DataArray, proxy: str, reference: str, r2_median: float | None = None,
                   max_points: int = 20000, seed: int = 0) -> Figure:
    """Fig. 4: per sample, loss change between two mixtures (A - B) at the proxy vs at the
    reference, coloured by test set. pair: (scale, mixture, sample) seed-mean losses for
    [proxy, reference] x [A, B]."""
    a, b = [str(m) for m in pair.mixture.values]
    dx = (pair.sel(scale=proxy, mixture=a) - pair.sel(scale=proxy, mixture=b)).values
    dy = (pair.sel(scale=reference, mixture=a) - pair.sel(scale=reference, mixture=b)).values
    ts = as_str(pair.test_set.values)
    keep = np.flatnonzero(np.isfinite(dx) & np.isfinite(dy))
    if keep.size > max_points:  # a readable scatter, not 10^6 overplotted points
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_points, replace=False))
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.subplots()
    for k, t in enumerate(dict.fromkeys(ts)):
        sel = keep[ts[keep] == t]
        r = np.corrcoef(dx[sel], dy[sel])[0, 1] if sel.size > 2 else np.nan
        ax.scatter(dx[sel], dy[sel], s=4, alpha=0.4, color=COLORS[k % 10],
                   label=f"{t} (r={r:.2f})")
    lim = np.nanpercentile(np.abs(np.r_[dx[keep], dy[keep]]), 99.5) if keep.size else 1
    ax.plot([-lim, lim], [-lim, lim], color="0.3", lw=1, ls="--", label="y = x")
    ax.set_xlabel(f"proxy {proxy}: loss({a}) - loss({b})  (nats)")
    ax.set_ylabel(f"reference {reference}: loss({a}) - loss({b})  (nats)")
    ax.set_title(f"Fig. 4  Per-sample effect of training on {a} instead of {b}\n"
                 f"(r over the samples of each test set; {keep.size:,} samples shown)",
                 fontsize=10)
    ax.legend(fontsize=8, markerscale=3)
    ax.grid(alpha=0.3)
    return fig


def sample_r2_hist(sample_r2: xr.DataArray, proxies: list[str]) -> Figure:
    """Fig. 5: histograms of per-sample R^2 (across mixtures) per test set, one line per proxy.
    sample_r2: (scale, sample) with test_set along sample."""
    ts = as_str(sample_r2.test_set.values)
    test_sets = list(dict.fromkeys(ts))
    fig, axes = _grid(len(test_sets))
    bins = np.linspace(0, 1, 26)
    for ax, t in zip(axes, test_sets):
        for k, p in enumerate(proxies):
            v = sample_r2.sel(scale=p).values[ts == t]
            v = v[np.isfinite(v)]
            if v.size:
                ax.hist(v, bins=bins, histtype="step", lw=1.5, color=COLORS[k % 10],
                        weights=np.full(v.size, 1 / v.size),
                        label=f"{p} (median {np.median(v):.2f})")
        ax.set_title(t)
        ax.set_xlabel("per-sample R² (across mixtures)")
        ax.set_ylabel("share of samples")
        ax.legend(fontsize=7)
    fig.suptitle("Fig. 5  Per-sample R² between proxy and reference losses, across mixtures")
    return fig


def decision_vs_compute(dec: pd.DataFrame, reference: str) -> Figure:
    """Decision accuracy (95% CI) vs proxy FLOPs, log x; panels for loss and accuracy."""
    metrics = list(dict.fromkeys(dec.metric))
    fig = Figure(figsize=(6.5 * len(metrics), 4.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, m in zip(axes, metrics):
        g = dec[dec.metric == m]
        _by_test_set(ax, g, "proxy_flops", "decision_accuracy", "decision_accuracy_lo",
                     "decision_accuracy_hi", log_dodge=True)
        ax.axhline(0.5, color="0.5", ls="--", lw=1, label="coin flip")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("proxy training compute (FLOPs, log scale)")
        ax.set_ylabel("decision accuracy (share of mixture pairs)")
        ax.set_title(f"ranking mixtures by {m}: agreement with reference {reference}", fontsize=10)
        _annotate_scales(ax, g)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Decision accuracy vs proxy compute (95% bootstrap CI)")
    return fig
