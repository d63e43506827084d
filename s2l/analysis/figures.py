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


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]


def _style(k: int) -> dict:
    """Colour and marker of the k-th test set: two cues, so test sets stay apart in grey."""
    return {"color": COLORS[k % 10], "marker": MARKERS[k % len(MARKERS)]}


def _errorbars(ax, g: pd.DataFrame, x: str, y: str, lo: str, hi: str, k: int, label: str,
               hollow=None):
    """One errorbar line at the rows' true x (sorted). hollow: (rows,) bool, drawn as open
    markers (e.g. a proxy at chance accuracy)."""
    order = np.argsort(g[x].to_numpy(), kind="stable")
    g = g.iloc[order]
    err = np.vstack([g[y] - g[lo], g[hi] - g[y]]).clip(min=0)
    st = _style(k)
    ax.errorbar(g[x], g[y], yerr=err, ms=5, capsize=3, color=st["color"], marker=st["marker"],
                label=label, lw=1.2)
    if hollow is not None and np.asarray(hollow)[order].any():
        h = np.asarray(hollow, bool)[order]
        ax.scatter(g[x][h], g[y][h], s=60, marker=st["marker"], facecolors="white",
                   edgecolors=st["color"], zorder=3, linewidths=1.5)


def _panels(df: pd.DataFrame, by: list[str], width: float = 3.6, height: float = 3.0):
    """Small multiples: one panel per distinct value of the `by` columns (in order of
    appearance), sharing both axes so panels compare at a glance."""
    keys = list(dict.fromkeys(map(tuple, df[by].to_numpy())))
    cols = min(len(keys), 3)
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True).ravel()
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return fig, keys, axes[:len(keys)]


def corr_vs_compute(corr: pd.DataFrame, reference: str) -> Figure:
    """Fig. 2: Pearson r (95% bootstrap CI) vs proxy training FLOPs, log x, one panel per
    test set, every point at its proxy's true compute."""
    if corr.empty:
        return _empty("Fig. 2 needs a proxy scale besides the reference; this store has none.")
    fig, keys, axes = _panels(corr, ["test_set"])
    for k, (ax, (t,)) in enumerate(zip(axes, keys)):
        g = corr[corr.test_set == t]
        _errorbars(ax, g, "proxy_flops", "pearson", "pearson_lo", "pearson_hi", k, t)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(t, fontsize=9)
        ax.grid(alpha=0.3)
        _annotate_scales(ax, g)
    for ax in axes:
        ax.set_xlabel("proxy compute (FLOPs)", fontsize=8)
        ax.set_ylabel(f"Pearson r with {reference}", fontsize=8)
    fig.suptitle("Fig. 2  Cross-scale correlation vs proxy compute (95% bootstrap CI; "
                 "points at each proxy's true compute)", fontsize=10)
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
    """Fig. 3: Pearson r of loss vs proxy accuracy above chance, MC test sets only. A proxy
    whose accuracy CI covers chance is drawn hollow and named in a note on the figure."""
    if "proxy_acc" not in corr or corr.proxy_acc.isna().all():
        return _empty("Fig. 3 needs multiple-choice test sets (a `correct` variable);\n"
                      "this store has none.")
    df = corr.dropna(subset=["proxy_acc"]).copy()
    df["above"] = 100 * (df.proxy_acc - df.chance)
    at_chance = (df["at_chance"].fillna(False).astype(bool) if "at_chance" in df
                 else pd.Series(False, index=df.index))
    fig = Figure(figsize=(7, 4.8), layout="constrained")
    ax = fig.subplots()
    for k, (t, g) in enumerate(df.groupby("test_set", sort=False)):
        _errorbars(ax, g, "above", "pearson", "pearson_lo", "pearson_hi", k, t,
                   hollow=at_chance[g.index].to_numpy())
        if {"proxy_acc_lo", "proxy_acc_hi"} <= set(g):  # the accuracy CI, horizontally
            ax.errorbar(g.above, g.pearson, xerr=np.vstack(
                [100 * (g.proxy_acc - g.proxy_acc_lo), 100 * (g.proxy_acc_hi - g.proxy_acc)]
            ).clip(min=0), fmt="none", ecolor=_style(k)["color"], alpha=0.4, capsize=2)
    for _, r in df.iterrows():
        ax.annotate(r.proxy, (r.above, r.pearson), xytext=(4, -10),
                    textcoords="offset points", fontsize=7)
    ax.axvline(0, color="0.5", ls="--", lw=1, label="chance")
    ax.set_xlabel("proxy accuracy above chance (percentage points; 95% CI over items)")
    ax.set_ylabel("Pearson r of loss with reference")
    title = "Fig. 3  Correlation vs proxy accuracy above chance"
    if at_chance.any():  # said in the title, where no data point can hide it
        names = ", ".join(f"{r.proxy} on {r.test_set}" for r in df[at_chance].itertuples())
        title += (f"\nhollow = accuracy CI covers chance ({names}):\nat chance, accuracy "
                  "cannot rank mixtures; the loss correlation still can")
    ax.set_title(title, fontsize=9)
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
    """Decision accuracy (95% CI) vs proxy FLOPs, log x: one panel per test set and metric
    (loss; accuracy for MC sets), every point at its proxy's true compute."""
    if dec.empty:
        return _empty("Decision accuracy needs a proxy scale besides the reference.")
    fig, keys, axes = _panels(dec, ["metric", "test_set"])
    sets = list(dict.fromkeys(dec.test_set))
    for ax, (m, t) in zip(axes, keys):
        g = dec[(dec.metric == m) & (dec.test_set == t)]
        _errorbars(ax, g, "proxy_flops", "decision_accuracy", "decision_accuracy_lo",
                   "decision_accuracy_hi", sets.index(t), t)
        ax.axhline(0.5, color="0.5", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{t}: ranked by {m}", fontsize=9)
        ax.grid(alpha=0.3)
        _annotate_scales(ax, g)
        ax.set_xlabel("proxy compute (FLOPs)", fontsize=8)
        ax.set_ylabel("decision accuracy", fontsize=8)
    fig.suptitle(f"Decision accuracy vs proxy compute: share of mixture pairs ordered as "
                 f"{reference} orders them (95% bootstrap CI; dashed = coin flip)", fontsize=10)
    return fig
