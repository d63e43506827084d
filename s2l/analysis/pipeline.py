"""Store -> tables -> files: the path shared by `analysis/correlate.py`, `analysis/report.py`
and the main job's summary.

    a = analyze("runs/grid/losses.zarr")          # one chunked pass + small tables
    write_outputs(a, "out/")                        # correlation.csv, decision_accuracy.csv, PNGs
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from s2l.analysis import crossscale, figures, load, stats

FIGURES = {  # file name -> what it shows (used by the report)
    "fig1_scatter.png": "Proxy vs reference mean loss per test set, one point per mixture.",
    "fig2_corr_vs_compute.png": "Correlation with the reference vs proxy compute.",
    "fig3_corr_vs_accuracy.png": "Correlation vs proxy accuracy above chance (MC test sets).",
    "fig4_sample_scatter.png": "Per-sample loss change between two mixtures, proxy vs reference.",
    "fig5_sample_r2_hist.png": "Per-sample R^2 across mixtures, per test set.",
    "fig6_decision_vs_compute.png": "Decision accuracy vs proxy compute.",
}


@dataclass
class Analysis:
    """Everything the outputs are made of. Tables are small; no loss array is kept."""
    store: str
    attrs: dict
    reference: str
    reduced: load.Reduced
    flops: xr.DataArray
    correlation: pd.DataFrame
    decision: pd.DataFrame
    mc_sets: list[str]
    missing: list[tuple[str, str, int]]
    notes: list[str] = field(default_factory=list)
    pair: xr.DataArray | None = None  # (scale, mixture, sample) for Fig. 4

    @property
    def proxies(self) -> list[str]:
        return crossscale.proxies(self.reduced, self.flops)


def analyze(store: str | Path, reference: str | None = None, n_boot: int = stats.N_BOOT,
            seed: int = stats.BOOT_SEED, per_sample: bool = True,
            decisions: bool = True) -> Analysis:
    """Open `store`, reduce it in one chunked pass and build the tables. Raises
    load.StoreError (CLIs: exit 2) for a bad store, unknown or empty reference."""
    ds = load.open_store(store)
    ref = load.pick_reference(ds, reference)
    reduced = load.reduce_store(ds, ref, per_sample=per_sample)
    flops = ds["flops"].load()
    params = ds["params"].load() if "params" in ds.coords else None
    mc = crossscale.mc_test_sets(reduced)
    chance, notes = crossscale.chance_levels(ds.attrs, mc)
    corr = crossscale.correlation_table(reduced, flops, params, chance, n_boot, seed)
    dec = (crossscale.decision_table(reduced, flops, mc, n_boot, seed) if decisions
           else pd.DataFrame())
    missing = load.missing_cells(reduced.done)
    if not crossscale.proxies(reduced, flops):
        notes.append(f"only one scale ({ref}) has done cells: nothing to correlate (a "
                     "cross-scale comparison needs a proxy and a reference)")
    if ds.sizes["seed"] < 2:
        notes.append("one seed: no noise ceiling (needs >= 2 seeds of the reference)")
    a = Analysis(str(store), dict(ds.attrs), ref, reduced, flops, corr, dec, mc, missing, notes)
    if per_sample and a.proxies:
        a.pair = _fig4_pair(ds, reduced, a.proxies[0], ref)
    return a


def _fig4_pair(ds: xr.Dataset, reduced: load.Reduced, proxy: str, ref: str) -> xr.DataArray | None:
    """Seed-mean per-sample losses of the cheapest proxy and the reference for the two
    mixtures furthest apart at the reference (mean over test sets): the clearest contrast."""
    mean = crossscale.seed_mean(reduced.loss_mean).sel(scale=[proxy, ref])
    ok = np.isfinite(mean).all(("scale", "test_set"))
    ref_mean = mean.sel(scale=ref).where(ok).mean("test_set")
    if int(ok.sum()) < 2:
        return None
    a, b = str(ref_mean.idxmax().item()), str(ref_mean.idxmin().item())
    return load.load_pair_samples(ds, [proxy, ref], [a, b])


def make_figures(a: Analysis) -> dict:
    """File name -> matplotlib Figure, for the figures this analysis has data for (none
    without a proxy)."""
    if not a.proxies:
        return {}
    mean = crossscale.seed_mean(a.reduced.loss_mean)
    figs = {"fig1_scatter.png": figures.scatter_means(mean, a.reference, a.proxies, a.correlation),
            "fig2_corr_vs_compute.png": figures.corr_vs_compute(a.correlation, a.reference),
            "fig3_corr_vs_accuracy.png": figures.corr_vs_accuracy(a.correlation)}
    if a.pair is not None:
        figs["fig4_sample_scatter.png"] = figures.sample_scatter(a.pair, a.proxies[0], a.reference)
    if a.reduced.sample_r2 is not None:
        figs["fig5_sample_r2_hist.png"] = figures.sample_r2_hist(a.reduced.sample_r2, a.proxies)
    if not a.decision.empty:
        figs["fig6_decision_vs_compute.png"] = figures.decision_vs_compute(a.decision, a.reference)
    return figs


def check_out(store: str | Path, out: str | Path) -> None:
    """Raise load.StoreError unless `out` is a usable output directory for `store`: not the
    store itself nor inside it (analysis never writes into its input), and not an existing
    file. Called before anything is read or written."""
    store_dir, out_dir = Path(store).resolve(), Path(out).resolve()
    if out_dir == store_dir or store_dir in out_dir.parents:
        raise load.StoreError(f"--out {out} is inside the store {store}: analysis never "
                              "writes into its input; choose a directory outside it")
    if out_dir.exists() and not out_dir.is_dir():
        raise load.StoreError(f"--out {out} exists and is not a directory")


def write_outputs(a: Analysis, out: str | Path, dpi: int = 110) -> list[Path]:
    """Write correlation.csv, decision_accuracy.csv, missing_cells.csv (if partial) and the
    PNG figures to `out`; return the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "correlation.csv", out / "decision_accuracy.csv"]
    a.correlation.to_csv(written[0], index=False, float_format="%.6g")
    a.decision.to_csv(written[1], index=False, float_format="%.6g")
    if a.missing:
        written.append(out / "missing_cells.csv")
        pd.DataFrame(a.missing, columns=["scale", "mixture", "seed"]).to_csv(written[-1], index=False)
    for name, fig in make_figures(a).items():
        fig.savefig(out / name, dpi=dpi)
        written.append(out / name)
    return written


def missing_summary(a: Analysis, limit: int = 12) -> str:
    """One paragraph naming the cells not done (first `limit`), or '' for a complete store."""
    if not a.missing:
        return ""
    total = a.reduced.done.size
    cells = ", ".join(f"{s}/{m}/seed {k}" for s, m, k in a.missing[:limit])
    more = f" and {len(a.missing) - limit} more" if len(a.missing) > limit else ""
    return (f"partial store: {len(a.missing)} of {total} cells not done ({cells}{more}); "
            "statistics use only mixtures done at both scales, seed means only done seeds.")
