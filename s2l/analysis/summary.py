"""The short cross-scale summary the main job prints when a sweep ends, and its one figure.

Fast by design (a few seconds on a small store): one chunked pass without per-sample
statistics or decision accuracy. Its CIs are those of `analysis/correlate.py` with its
defaults (same resamples, same seed: `stats.N_BOOT`, `stats.BOOT_SEED`), so the two never
disagree about one store. Never raises on a store that is merely too partial to analyse, or
has a single scale: the job's final message should say so, not crash.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from s2l.analysis import crossscale, figures, pipeline
from s2l.analysis.load import StoreError


def _quick(store: str | Path) -> pipeline.Analysis:
    return pipeline.analyze(store, per_sample=False, decisions=False)


def format_correlations(a: pipeline.Analysis) -> str:
    """Per test set, one line per proxy: Pearson r with its 95% CI and compute ratio, a
    negative r named as such, and the reference's noise ceiling when it has >= 2 seeds; one
    line when there is no proxy to correlate."""
    if a.correlation.empty:
        return "\n".join([f"cross-scale summary: nothing to correlate: {a.notes[0]}"
                          if a.notes else "cross-scale summary: nothing to correlate"]
                         + a.notes[1:])
    lines = [f"cross-scale correlation with reference {a.reference} "
             f"(Pearson r across mixtures, seed-averaged, 95% bootstrap CI):"]
    for t, g in a.correlation.groupby("test_set", sort=False):
        ceil = g["noise_ceiling"].iloc[0] if "noise_ceiling" in g else np.nan
        # the best r any proxy can reach given the reference's own seed noise (>= 2 seeds)
        lines.append(f"  {t}" + (f"  (noise ceiling of {a.reference} across seeds: {ceil:.2f})"
                                 if np.isfinite(ceil) else ""))
        for r in g.itertuples():
            lines.append(f"    {r.proxy:>10}  r={r.pearson:5.2f} [{r.pearson_lo:5.2f}, "
                         f"{r.pearson_hi:5.2f}]  {r.compute_ratio:,.0f}x less compute, "
                         f"{r.n_mixtures} mixtures")
            if r.pearson < 0:
                lines.append(f"      {crossscale.negative_note(r)}")
    missing = _missing_planned(a)
    if missing:
        lines.append(missing)
    lines += a.notes
    return "\n".join(lines)


def _missing_planned(a: pipeline.Analysis, limit: int = 12) -> str:
    """`pipeline.missing_summary`, counting only the cells the sweep planned (the store's
    `cell_ids`): a reference with more seeds than its proxies (`reference.seeds`) leaves
    (proxy, extra seed) slots of the dense store empty by design, not missing."""
    planned = a.attrs.get("cell_ids")
    if not isinstance(planned, dict) or not planned:
        return pipeline.missing_summary(a, limit)
    missing = [(s, m, k) for s, m, k in a.missing if f"{s}/{m}/{k}" in planned]
    if not missing:
        return ""
    cells = ", ".join(f"{s}/{m}/seed {k}" for s, m, k in missing[:limit])
    more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
    return (f"partial store: {len(missing)} of {len(planned)} cells not done ({cells}{more}); "
            "statistics use only mixtures done at both scales, seed means only done seeds.")


def summarize(store_path: str | Path) -> str:
    """Short terminal text: per test set, correlation between each smaller scale and the
    largest, with CI. A store too partial to analyse gives a one-line explanation."""
    try:
        return format_correlations(_quick(store_path))
    except StoreError as e:
        return f"cross-scale summary unavailable: {e}"


def write_summary_figure(store_path: str | Path, png_path: str | Path) -> Path | None:
    """Write the correlation-vs-compute figure (paper Fig. 2) to png_path; None (and no
    file) when the store is too partial to analyse."""
    try:
        a = _quick(store_path)
    except StoreError:
        return None
    return _figure(a, png_path)


def summary_and_figure(store_path: str | Path, png_path: str | Path) -> tuple[str, Path | None]:
    """(`summarize`'s text, `write_summary_figure`'s path) from one analysis of the store:
    the sweep's final summary, which would otherwise bootstrap every correlation twice."""
    try:
        a = _quick(store_path)
    except StoreError as e:
        return f"cross-scale summary unavailable: {e}", None
    return format_correlations(a), _figure(a, png_path)


def _figure(a: pipeline.Analysis, png_path: str | Path) -> Path | None:
    if a.correlation.empty:
        return None
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figures.corr_vs_compute(a.correlation, a.reference).savefig(png_path, dpi=110)
    return png_path
