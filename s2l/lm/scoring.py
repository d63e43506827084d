"""Scoring a pre-registered prediction once reference cells have landed.

    result = score_out(out)            # reads OUT/predictions/prediction.json and the store
    write_score(out, result)           # OUT/predictions/score.json and score.csv
    print(format_score(result))

Per target (each test set, and "mean"), across the mixtures whose every reference seed is
done: Spearman rho and decision accuracy of the predicted ranking, mean absolute error and
interval coverage of the predicted loss, Spearman of the predicted loss, each with a 95%
percentile bootstrap CI over mixtures (`s2l.lm.predict.score`), and the regret of the
predicted best (its actual loss minus the best actual loss among those run). With every
mixture run: the true best and its predicted rank (a top_k at least that large would have run
it). With a selection (`top_k`): how many mixtures were run, the FLOPs saved, and, when every mixture
has a reference result (the full grid), whether the true best was among those selected.

The audit: the prediction's UTC time against each reference cell's first start
(`cells/<key>/started_utc`, written once by the reference task before it trains or skips).
"""
from __future__ import annotations

import csv
import datetime
import io
import math
from pathlib import Path

import numpy as np

from s2l import store as loss_store
from s2l.lm import predict
from s2l.lm.staged import (PredictionError, canonical, prediction_sha, predictions_dir,
                           read_prediction)

FORMAT = "s2l.lm.score/1"
COLUMNS = ("target", "n_mixtures", "spearman", "spearman_lo", "spearman_hi",
           "decision_accuracy", "decision_accuracy_lo", "decision_accuracy_hi", "mae", "mae_lo",
           "mae_hi", "coverage", "coverage_lo", "coverage_hi", "spearman_loss",
           "spearman_loss_lo", "spearman_loss_hi", "regret")


def _clean(v):
    """JSON-able: numpy scalars as Python numbers, NaN as None."""
    if isinstance(v, (np.floating, float)):
        return None if math.isnan(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def actual_losses(out: Path, pred: dict) -> np.ndarray:
    """(targets, mixtures) reference seed-mean loss; NaN for a mixture with any reference
    seed not done, or whose cell id differs from the one the prediction names."""
    from s2l.analysis.load import test_set_codes

    ds = loss_store.open_store(out / "losses.zarr")
    ref = pred["reference"]["scale"]
    scales = [str(s) for s in ds["scale"].values]
    mixtures = [str(m) for m in ds["mixture"].values]
    test_sets, codes = test_set_codes(ds)
    if [*test_sets, predict.MEAN] != pred["targets"] or ref not in scales:
        raise PredictionError("the store's test sets or scales are not the prediction's")
    i = scales.index(ref)
    ids = ds.attrs.get("cell_ids", {})
    seeds = [int(s) for s in ds["seed"].values]
    ok = ds["done"].values[i].copy()  # (M, K)
    for j, m in enumerate(mixtures):
        for k, s in enumerate(seeds):
            key = f"{ref}/{m}/{s}"
            ok[j, k] &= ids.get(key) == pred["reference"]["cells"].get(key)
    loss = np.asarray(loss_store.read_values(ds["loss"].isel(scale=i)), np.float64)
    means = predict.test_set_means(loss, codes, len(test_sets)).mean(1)  # (M, T+1)
    means[~ok.all(1)] = np.nan
    out_m = np.full((len(pred["targets"]), len(pred["mixtures"])), np.nan)
    for j, m in enumerate(pred["mixtures"]):
        if m in mixtures:
            out_m[:, j] = means[mixtures.index(m)]
    return out_m


def start_times(out: Path, pred: dict) -> dict[str, str]:
    """{reference cell key: its first start, UTC ISO} for cells that have started."""
    times = {}
    for key in pred["reference"]["cells"]:
        f = Path(out) / "cells" / key / "started_utc"
        if f.exists():
            times[key] = f.read_text().strip()
    return times


def score_out(out: str | Path, n_boot: int = 1000, seed: int = 0) -> dict:
    """Score the prediction of `out` against the reference results in its store."""
    out = Path(out)
    pred = read_prediction(out)
    if pred is None:
        raise PredictionError(f"no prediction in {predictions_dir(out)}")
    actual = actual_losses(out, pred)
    names = pred["mixtures"]
    rows = []
    for t, target in enumerate(pred["targets"]):
        p = pred["predictions"][target]["mixtures"]
        arr = {k: np.array([p[m][k] for m in names], float) for k in ("rank", "loss", "lo", "hi")}
        r = predict.score(arr["rank"], arr["loss"], arr["lo"], arr["hi"], actual[t], n_boot, seed)
        rows.append({"target": target, **{k: _clean(r.get(k)) for k in COLUMNS[1:]}})
    obj = pred["targets"].index(pred["objective"])
    have = np.isfinite(actual[obj])
    ran = [m for m, h in zip(names, have) if h]
    sel = pred.get("selection")
    true_best = names[int(np.nanargmin(actual[obj]))] if have.all() else None
    starts = start_times(out, pred)
    first = min(starts.values()) if starts else None
    return {
        "format": FORMAT, "prediction_sha256": prediction_sha(out),
        "preregistered": pred["preregistered"], "predicted_utc": pred["created_utc"],
        "scored_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "first_reference_start_utc": first,
        # ISO times of one format and zone compare as strings
        "prediction_before_every_reference_start": (None if first is None
                                                    else pred["created_utc"] < first),
        "reference": pred["reference"]["scale"], "objective": pred["objective"],
        "n_mixtures": len(names), "mixtures_with_reference": ran,
        "predicted_best": pred["predictions"][pred["objective"]]["ranking"][0],
        "true_best": true_best,
        # where the true best sat in the predicted ranking: a top_k >= this would have run it
        "true_best_predicted_rank": (None if true_best is None else
                                     pred["predictions"][pred["objective"]]["mixtures"][true_best]["rank"]),
        "selection": None if sel is None else {
            "top": sel["top"], "controls": sel["controls"], "run": sel["run"],
            "flops_saved_fraction_of_grid": sel["flops_saved_fraction_of_grid"],
            "true_best_selected": None if true_best is None else true_best in sel["run"]},
        "rows": rows,
    }


def write_score(out: str | Path, result: dict) -> tuple[Path, Path]:
    """score.json (canonical JSON) and score.csv (one row per target) in OUT/predictions;
    rewritten on every call (the score follows the results; the prediction never changes)."""
    folder = predictions_dir(out)
    js, cs = folder / "score.json", folder / "score.csv"
    js.write_bytes(canonical(result))
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in result["rows"]:
        w.writerow({k: "" if row[k] is None else row[k] for k in COLUMNS})
    cs.write_text(buf.getvalue())
    return js, cs


def _ci(row: dict, key: str, fmt: str = "{:5.2f}") -> str:
    v, lo, hi = row[key], row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if v is None:
        return "  n/a".ljust(22)
    ci = f" [{fmt.format(lo)}, {fmt.format(hi)}]" if lo is not None and hi is not None else ""
    return (fmt.format(v) + ci).ljust(22)


def format_score(result: dict) -> str:
    """The summary's lines: one per target, then the selection and the audit."""
    pre = "pre-registered" if result["preregistered"] else "NOT pre-registered (forced)"
    lines = [f"prediction for {result['reference']} ({pre}, {result['predicted_utc']}, sha256 "
             f"{result['prediction_sha256'][:12]}): {len(result['mixtures_with_reference'])} of "
             f"{result['n_mixtures']} mixtures have reference results (95% bootstrap CIs)",
             f"  {'target':<20} {'n':>3}  {'spearman':<22}{'decision acc':<22}"
             f"{'MAE':<22}{'coverage':<22}"]
    for r in result["rows"]:
        lines.append(f"  {r['target']:<20} {r['n_mixtures']:>3}  {_ci(r, 'spearman')}"
                     f"{_ci(r, 'decision_accuracy')}{_ci(r, 'mae', '{:.3f}')}{_ci(r, 'coverage')}")
    sel = result["selection"]
    best = (f"true best {result['true_best']} (predicted rank "
            f"{result['true_best_predicted_rank']})" if result["true_best"] else
            "true best unknown (not every mixture was run)")
    lines.append(f"  predicted best on {result['objective']}: {result['predicted_best']}; {best}")
    if sel is not None:
        was = {True: "yes", False: "no", None: "unknown"}[sel["true_best_selected"]]
        lines.append(f"  selection: trained {len(sel['run'])} mixtures (top {len(sel['top'])} + "
                     f"{len(sel['controls'])} controls), saving "
                     f"{sel['flops_saved_fraction_of_grid']:.0%} of the grid's FLOPs; "
                     f"true best among them: {was}")
    if result["first_reference_start_utc"]:
        ok = result["prediction_before_every_reference_start"]
        lines.append(f"  first reference cell started {result['first_reference_start_utc']}: "
                     + ("after the prediction" if ok else "BEFORE the prediction"))
    return "\n".join(line.rstrip() for line in lines)
