"""Cross-scale tables from a reduced store: correlation, decision accuracy, noise ceilings.

Input is `load.Reduced` (per-cell test-set means, small); output is pandas tables, one row per
proxy scale x test set (x metric for decision accuracy). No I/O, no plotting.

Seed-averaging: a scale's value for a mixture is the mean over its done seeds. A mixture enters
a proxy/reference comparison only when both scales have at least one done seed for it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from s2l.analysis import stats
from s2l.analysis.load import Reduced, StoreError
from s2l.config import shown

DEFAULT_CHANCE = 0.25  # 4-way multiple choice, used when the store's attrs give no chance level


def seed_mean(per_seed: xr.DataArray) -> xr.DataArray:
    """(scale, mixture, seed, test_set) -> (scale, mixture, test_set), mean over done seeds."""
    return per_seed.mean("seed", skipna=True)


def proxies(reduced: Reduced, flops: xr.DataArray) -> list[str]:
    """Scales other than the reference that have any done cell, cheapest first."""
    has = reduced.done.any(("mixture", "seed"))
    names = [str(s) for s in reduced.done.scale.values
             if s != reduced.reference and bool(has.sel(scale=s))]
    return sorted(names, key=lambda s: float(flops.sel(scale=s)))


def check_reference(reduced: Reduced, flops: xr.DataArray) -> None:
    """Raise StoreError when the reference has too few done mixtures to correlate against."""
    ref_done = reduced.done.sel(scale=reduced.reference).any("seed")
    n = int(ref_done.sum())
    if n < stats.MIN_MIXTURES:
        have = reduced.done.any("seed").sum("mixture")
        usable = [str(s) for s in have.scale.values if int(have.sel(scale=s)) >= stats.MIN_MIXTURES]
        hint = (f"; scales with enough done mixtures: {', '.join(usable)} (pass --reference)"
                if usable else "; no scale has enough done mixtures yet")
        raise StoreError(f"reference scale {reduced.reference!r} has {n} done mixture(s), "
                         f"need >= {stats.MIN_MIXTURES}{hint}")


def mc_test_sets(reduced: Reduced) -> list[str]:
    """Test sets with an accuracy (some finite `correct`)."""
    if reduced.acc_mean is None:
        return []
    has = np.isfinite(reduced.acc_mean).any(("scale", "mixture", "seed"))
    return [str(t) for t in has.test_set.values if bool(has.sel(test_set=t))]


def chance_levels(attrs: dict, test_sets: list[str]) -> tuple[dict, list[str]]:
    """Chance accuracy per MC test set from attrs["chance"], else DEFAULT_CHANCE; plus notes
    naming the test sets that fell back to the default."""
    given = attrs.get("chance", {}) or {}
    if not isinstance(given, dict):
        raise StoreError("store attribute `chance` must map test set names to chance "
                         f"accuracies, found {shown(given)}")
    out, notes = {}, []
    for t in test_sets:
        if t in given:
            value = given[t]
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not 0 <= value <= 1):  # NaN fails this too
                raise StoreError(f"store attribute `chance.{t}` must be a number in [0, 1], "
                                 f"found {shown(value)}")
            out[t] = float(value)
        else:
            out[t] = DEFAULT_CHANCE
            notes.append(f"chance accuracy for {t} not in store attrs; assumed {DEFAULT_CHANCE}")
    return out, notes


def correlation_table(reduced: Reduced, flops: xr.DataArray, params: xr.DataArray | None = None,
                      chance: dict | None = None, n_boot: int = stats.N_BOOT,
                      seed: int = stats.BOOT_SEED) -> pd.DataFrame:
    """One row per proxy x test set: pearson/spearman/r2 with 95% bootstrap CIs over mixtures,
    compute_ratio, the reference's seed noise ceiling, per-sample R^2 summary, accuracies.
    No rows (columns proxy, test_set, reference) when the store has no proxy.

    r2 is the R^2 of the OLS fit reference ~ a + b * proxy, which equals pearson**2. For MC
    test sets, proxy_acc_lo/_hi is the 95% Wilson interval of the proxy's mean accuracy over
    the test set's items (mixtures share the items, so they add no independent evidence), and
    at_chance says whether it covers the chance level."""
    check_reference(reduced, flops)
    mean = seed_mean(reduced.loss_mean)
    acc = seed_mean(reduced.acc_mean) if reduced.acc_mean is not None else None
    ref = reduced.reference
    ref_flops = float(flops.sel(scale=ref))
    chance = chance or {}
    ceilings = {t: stats.seed_reliability(reduced.loss_mean.sel(scale=ref, test_set=t)
                                          .transpose("mixture", "seed").values)
                for t in mean.test_set.values}
    rows = []
    for p in proxies(reduced, flops):
        for t in mean.test_set.values:
            x = mean.sel(scale=p, test_set=t).values
            y = mean.sel(scale=ref, test_set=t).values
            row = {"proxy": p, "test_set": str(t), "reference": ref}
            row |= stats.correlation_with_ci(x, y, n_boot=n_boot, seed=seed)
            row["compute_ratio"] = ref_flops / float(flops.sel(scale=p))
            row["proxy_flops"] = float(flops.sel(scale=p))
            if params is not None:
                row["proxy_params"] = int(params.sel(scale=p))
            ceil = ceilings[t]
            row["ref_seed_r"] = ceil["seed_r"]
            row["noise_ceiling"] = ceil["noise_ceiling"]
            row["pearson_vs_ceiling"] = row["pearson"] / ceil["noise_ceiling"]
            if reduced.sample_r2 is not None:
                r2 = reduced.sample_r2.sel(scale=p).where(reduced.sample_r2.test_set == t,
                                                          drop=True).values
                r2 = r2[np.isfinite(r2)]
                row["sample_r2_median"] = float(np.median(r2)) if r2.size else np.nan
                row["sample_r2_mean"] = float(np.mean(r2)) if r2.size else np.nan
                row["n_samples"] = int(r2.size)
            if acc is not None and str(t) in chance:
                row["chance"] = chance[str(t)]
                row["proxy_acc"] = float(np.nanmean(acc.sel(scale=p, test_set=t).values))
                n = int(reduced.n_items.sel(test_set=t)) if reduced.n_items is not None else 0
                lo, hi = stats.wilson_interval(row["proxy_acc"], n)
                row["proxy_acc_lo"], row["proxy_acc_hi"] = lo, hi
                row["at_chance"] = bool(lo <= chance[str(t)] <= hi)
                row["ref_acc"] = float(np.nanmean(acc.sel(scale=ref, test_set=t).values))
            rows.append(row)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["proxy", "test_set",
                                                                 "reference"])


def decision_table(reduced: Reduced, flops: xr.DataArray, mc_sets: list[str],
                   n_boot: int = stats.N_BOOT, seed: int = stats.BOOT_SEED) -> pd.DataFrame:
    """One row per proxy x test set x metric ("loss"; "accuracy" for MC sets): decision
    accuracy with bootstrap CI, pairs decided, proxy ties, and the reference's own seed-to-seed
    decision agreement (its noise ceiling; NaN with one seed)."""
    check_reference(reduced, flops)
    ref = reduced.reference
    metrics = [("loss", reduced.loss_mean)]
    if reduced.acc_mean is not None and mc_sets:
        metrics.append(("accuracy", reduced.acc_mean))
    rows = []
    for metric, per_seed in metrics:
        mean = seed_mean(per_seed)
        sets = [str(t) for t in mean.test_set.values] if metric == "loss" else mc_sets
        agree = {t: stats.seed_reliability(per_seed.sel(scale=ref, test_set=t)
                                           .transpose("mixture", "seed").values)["seed_agreement"]
                 for t in sets}
        for p in proxies(reduced, flops):
            for t in sets:
                row = {"proxy": p, "test_set": t, "metric": metric, "reference": ref}
                row |= stats.decision_accuracy_with_ci(mean.sel(scale=p, test_set=t).values,
                                                       mean.sel(scale=ref, test_set=t).values,
                                                       n_boot=n_boot, seed=seed)
                row["compute_ratio"] = float(flops.sel(scale=ref)) / float(flops.sel(scale=p))
                row["proxy_flops"] = float(flops.sel(scale=p))
                row["ref_seed_agreement"] = agree[t]
                rows.append(row)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["proxy", "test_set", "metric",
                                                                 "reference"])


def negative_note(r) -> str:
    """'' for a row with r >= 0; else a sentence that names the negative correlation."""
    if not r.pearson < 0:
        return ""
    head = f"{r.proxy} vs {r.reference} on {r.test_set}: r = {r.pearson:.2f}"
    if r.pearson_hi < 0:
        return f"{head}, NEGATIVE: the proxy ranks mixtures in reverse."
    return (f"{head}, negative, though its CI [{r.pearson_lo:.2f}, {r.pearson_hi:.2f}] "
            "includes 0.")


def chance_note(r) -> str:
    """'' unless the row's proxy accuracy CI covers chance; else a sentence that says so."""
    flag = getattr(r, "at_chance", None)  # NaN for a test set without accuracy
    if not (isinstance(flag, (bool, np.bool_)) and flag):
        return ""
    return (f"{r.proxy}'s accuracy on {r.test_set} ({r.proxy_acc:.2f}, 95% CI "
            f"[{r.proxy_acc_lo:.2f}, {r.proxy_acc_hi:.2f}]) is at chance ({r.chance:.2f}): "
            "its accuracy cannot rank mixtures here; judge it by loss.")


def verdict(rows: pd.DataFrame) -> str:
    """Plain-language verdict for one test set from its correlation rows (cheapest first):
    the cheapest proxy that predicts the reference well (or the best one), a negative
    correlation named as such, and proxies whose accuracy is indistinguishable from chance."""
    chance = [n for n in (chance_note(r) for r in rows.itertuples()) if n]
    rows = rows.dropna(subset=["pearson"])
    if rows.empty:
        return " ".join(["not enough done mixtures to judge any proxy here."] + chance)

    def fmt(r):
        return (f"{r.proxy} (r={r.pearson:.2f} [{r.pearson_lo:.2f}, {r.pearson_hi:.2f}], "
                f"{r.compute_ratio:,.0f}x less compute)")

    good = rows[rows.pearson >= 0.9]
    if not good.empty:
        best = good.iloc[0]
        text = f"proxy {fmt(best)} predicts the reference well here"
        text += ", the cheapest proxy that does" if len(rows) > 1 else ""
    else:
        best = rows.loc[rows.pearson.idxmax()]
        if best.pearson < 0:
            text = ("no proxy correlates positively with the reference here; the best is "
                    f"{fmt(best)}")
        else:
            level = "moderately" if best.pearson >= 0.7 else "poorly"
            text = (f"no proxy predicts the reference well here; the best, {fmt(best)}, "
                    f"predicts it {level}")
    if best.pearson_lo < best.pearson - 0.25:
        text += f"; the CI is wide ({int(best.n_mixtures)} mixtures), so treat this as tentative"
    text += "."
    ceil = rows.noise_ceiling.iloc[0] if "noise_ceiling" in rows else np.nan
    if np.isfinite(ceil) and ceil < 0.9:
        text += (f" The reference itself is noisy across seeds here (noise ceiling {ceil:.2f}),"
                 " so no proxy can correlate much higher.")
    notes = [n for n in (negative_note(r) for r in rows.itertuples()) if n]
    return " ".join([text] + notes + chance)
