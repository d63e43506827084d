"""The selection study's answers, from `<out>/losses.zarr` and `<out>/times/*.json` alone.

    selection.csv    one row per selection (dsdm-<proxy>, random, dsir): target-holdout loss
                     (and accuracy for multiple choice) of the reference model, mean over seeds
                     with a 95% t-interval; the gain over random, paired by seed (same init and
                     batch order), with its 95% t-interval; proxy compute; off-target loss
    compute.csv      Khaddaj et al. 2025, Table 9 style: FLOPs and seconds per stage (proxy training,
                     featurization, scoring, final training) and size
    composition.csv  domain shares of each selection (the store's `weight`)
    gain.png         gain over random against proxy compute (their Fig. 8 style)

Gain = loss(random) - loss(selection): positive means the selection beat random.
Everything is read (and checked: a store that is not a selection study's, or a timing file
that is not one, raises ValueError) before anything is written.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd


def t_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a t-interval over the values x (k,); NaN bounds when k < 2."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    m = float(x.mean())
    if len(x) < 2:
        return m, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return m, m - half, m + half


_TIME_KEYS = {"stage": str, "size": str, "seconds": (int, float), "flops": (int, float)}


def _time_row(path: Path) -> dict:
    """One task's timing record (written by the study's tasks), checked."""
    row = json.loads(path.read_text())
    if not isinstance(row, dict) or any(not isinstance(row.get(k), t) or isinstance(row.get(k), bool)
                                        for k, t in _TIME_KEYS.items()):
        raise ValueError(f"{path} is not a task timing record (needs {sorted(_TIME_KEYS)})")
    return row


def compute_table(out: Path) -> pd.DataFrame:
    """Seconds and FLOPs per (stage, size, selection) summed over tasks, from times/*.json."""
    rows = [_time_row(p) for p in sorted((Path(out) / "times").glob("*.json"))]
    if not rows:
        return pd.DataFrame(columns=["stage", "size", "selection", "tasks", "seconds", "flops"])
    df = pd.DataFrame(rows)
    if "selection" not in df:
        df["selection"] = ""
    df["selection"] = df["selection"].fillna("")
    order = {"proxy training": 0, "featurization": 1, "scoring": 2, "final training": 3}
    g = (df.groupby(["stage", "size", "selection"], as_index=False)
         .agg(tasks=("seconds", "size"), seconds=("seconds", "sum"), flops=("flops", "sum")))
    return g.sort_values(["stage", "size"], key=lambda c: c.map(order) if c.name == "stage" else c)


def per_seed(ds, target: str) -> dict[str, dict[str, np.ndarray]]:
    """{selection: {"loss"|"acc"|"other": (seed,) float64}} over done cells of the one scale."""
    on = (ds["test_set"].values == target)
    loss = ds["loss"].isel(scale=0).values  # (mixture, seed, sample)
    done = ds["done"].isel(scale=0).values
    corr = ds["correct"].isel(scale=0).values if "correct" in ds else None
    out = {}
    for j, m in enumerate(ds.mixture.values):
        ok = done[j]
        out[str(m)] = {
            "loss": loss[j][ok][:, on].mean(1),
            "other": loss[j][ok][:, ~on].mean(1) if (~on).any() else np.full(ok.sum(), np.nan),
            "acc": (np.nanmean(corr[j][ok][:, on], 1) if corr is not None and
                    np.isfinite(corr[j][ok][:, on]).any() else np.full(ok.sum(), np.nan)),
            "seeds": ds.seed.values[ok],
        }
    return out


def selection_table(ds, times: pd.DataFrame) -> pd.DataFrame:
    target = ds.attrs["target"]
    res = per_seed(ds, target)
    base = res.get("random")
    proxy_cost = defaultdict(float)
    for _, r in times[times.stage.isin(["proxy training", "featurization", "scoring"])].iterrows():
        proxy_cost[r["size"]] += r["flops"]
    ref_flops = float(ds["flops"].values[0])
    rows = []
    for name, r in res.items():
        proxy = name[5:] if name.startswith("dsdm-") else ""
        m, lo, hi = t_interval(r["loss"]) if len(r["loss"]) else (np.nan,) * 3
        a, alo, ahi = t_interval(r["acc"]) if np.isfinite(r["acc"]).any() else (np.nan,) * 3
        g = glo = ghi = np.nan
        if base is not None and len(r["loss"]):
            common = np.intersect1d(base["seeds"], r["seeds"])
            if len(common):
                diff = (base["loss"][np.isin(base["seeds"], common)]
                        - r["loss"][np.isin(r["seeds"], common)])
                g, glo, ghi = t_interval(diff)
        rows.append({"selection": name, "method": name.split("-")[0], "proxy": proxy,
                     "proxy_flops": proxy_cost.get(proxy, 0.0) if proxy else 0.0,
                     "proxy_compute_ratio": proxy_cost.get(proxy, 0.0) / ref_flops if proxy else 0.0,
                     "test_set": target, "seeds": len(r["loss"]),
                     "holdout_loss": m, "loss_ci_low": lo, "loss_ci_high": hi,
                     "holdout_acc": a, "acc_ci_low": alo, "acc_ci_high": ahi,
                     "gain_vs_random": g, "gain_ci_low": glo, "gain_ci_high": ghi,
                     "off_target_loss": float(np.mean(r["other"])) if len(r["other"]) else np.nan})
    return pd.DataFrame(rows)


def gain_figure(table: pd.DataFrame, path: Path, ref: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    d = table[table.method == "dsdm"].sort_values("proxy_flops")
    if len(d):
        err = np.array([d.gain_vs_random - d.gain_ci_low, d.gain_ci_high - d.gain_vs_random])
        ax.errorbar(d.proxy_flops, d.gain_vs_random, yerr=np.nan_to_num(err), marker="o",
                    capsize=3, label="DsDm")
        for _, r in d.iterrows():
            ax.annotate(r.proxy, (r.proxy_flops, r.gain_vs_random), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
    for _, r in table[table.method == "dsir"].iterrows():
        ax.axhline(r.gain_vs_random, color="C2", ls="--", label="DSIR")
        if np.isfinite(r.gain_ci_low):
            ax.axhspan(r.gain_ci_low, r.gain_ci_high, color="C2", alpha=0.15)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("proxy compute (FLOPs: proxy training + featurization + scoring)")
    ax.set_ylabel("target-holdout loss gain over random")
    ax.set_title(f"{ref} model on selected data, target {table.test_set.iloc[0]}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def open_selection_store(out: Path):
    """The loaded store of the selection study at `out`; ValueError when it is another kind's
    (an LM sweep's store has no selection target)."""
    from s2l.store import open_store

    ds = open_store(Path(out) / "losses.zarr").load()
    kind = ds.attrs.get("kind", "lm")
    if kind != "selection" or "target" not in ds.attrs or ds.sizes.get("scale") != 1:
        raise ValueError(f"{Path(out) / 'losses.zarr'} is not a selection study's store "
                         f"(kind {str(kind)[:40]!r}); use the report of its own kind")
    return ds


def write_report(out: str | Path, dest: str | Path | None = None) -> pd.DataFrame:
    """Read the study at `out`; write selection.csv, compute.csv, composition.csv and gain.png
    into `dest` (default `out`)."""
    out = Path(out)
    dest = out if dest is None else Path(dest)
    ds = open_selection_store(out)
    times = compute_table(out)
    table = selection_table(ds, times)
    comp = pd.DataFrame(ds["weight"].values, index=[str(m) for m in ds.mixture.values],
                        columns=[str(d) for d in ds.domain.values])
    dest.mkdir(parents=True, exist_ok=True)
    times.to_csv(dest / "compute.csv", index=False)
    table.to_csv(dest / "selection.csv", index=False, float_format="%.5g")
    comp.rename_axis("selection").to_csv(dest / "composition.csv", float_format="%.4f")
    gain_figure(table, dest / "gain.png", str(ds.scale.values[0]))
    return table
