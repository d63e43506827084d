"""Store -> mixture regressions -> a proposed mixture and the sweep file that tests it.

    m = analyze_mixtures("runs/regmix/losses.zarr", objective={"heldout-code": 1.0})
    write_mixture_outputs(m, "out/")     # mixreg.csv, proposal.json, proposal.yaml

Targets are seed-mean test-set losses per (scale, mixture) from one chunked pass over the store
(`load.reduce_store`); inputs are the store's normalised `weight` (mixture, domain).
`mixreg.csv` has one row per scale x test set (plus the objective itself when it combines
several test sets) with each candidate model's k-fold CV RMSE and Spearman.

The proposal is made at one scale (`scale`, default the most expensive scale with enough done
mixtures): the objective (a weighted sum of test sets' losses) is regressed on the weights
directly, so its interval comes from its own out-of-fold residuals. The search stays within
the per-domain weight range the sweep ran, intersected with the sweep's `random_mixtures`
min_weight/max_weight when the store's `sweep_yaml` has them. `proposal.yaml` is the store's
own sweep file with `mixtures:` replaced by the proposal plus the sweep's best mixture at
that scale (the control), `random_mixtures:` and `reference:` dropped, and `-proposal`
appended to the name, so `python hpc/submit.py proposal.yaml` runs it as it is.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from s2l.analysis import crossscale, load, mixreg
from s2l.config import MAX_NAME, ConfigError, shown
from s2l.yamlfile import load_yaml_text
from s2l.store import StoreError

OBJECTIVE = "objective"  # mixreg.csv's test_set name for a combined objective


@dataclass
class MixtureAnalysis:
    """What the outputs are made of. table: mixreg.csv rows; proposal: proposal.json's dict;
    sweep: proposal.yaml's mapping, None when the store carries no readable sweep file."""
    table: pd.DataFrame
    proposal: dict
    sweep: dict | None
    notes: list[str] = field(default_factory=list)


def parse_objective(text: str | None, objective: str | None, test_sets: list[str]) -> dict:
    """{test_set: coefficient} from --objective T or --weights 'a=0.5,b=0.5'; default: every
    test set, equal weight. Raises StoreError (exit 2) naming the option."""
    if text is not None and objective is not None:
        raise StoreError("give --objective or --weights, not both")
    if objective is not None:
        if objective not in test_sets:
            raise StoreError(f"--objective: no test set {shown(objective)} in this store; "
                             f"test sets: {', '.join(test_sets)}")
        return {objective: 1.0}
    if text is None:
        return {t: 1.0 / len(test_sets) for t in test_sets}
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in test_sets:
            raise StoreError(f"--weights: {shown(part)} is not TEST_SET=NUMBER with a test set "
                             f"of this store ({', '.join(test_sets)})")
        if name in out:
            raise StoreError(f"--weights: {shown(name)} given twice")
        try:
            out[name] = float(value)
        except ValueError:
            raise StoreError(f"--weights: {shown(value)} is not a number") from None
        if not math.isfinite(out[name]) or out[name] < 0:
            raise StoreError(f"--weights: {name} must be a finite number >= 0")
    if sum(out.values()) <= 0:
        raise StoreError("--weights: all zero")
    return out


def sweep_constraints(sweep: dict | None, domains: list[str]) -> tuple[np.ndarray | None,
                                                                       np.ndarray | None, list]:
    """Per-domain (lo (D,), hi (D,)) from the sweep's `random_mixtures` min_weight/max_weight
    (None where absent) and notes on anything unreadable (ignored, not fatal: the store's
    sweep file was validated when it ran)."""
    block = (sweep or {}).get("random_mixtures")
    if not isinstance(block, dict):
        return None, None, []
    notes, out = [], []
    for key, default in (("min_weight", 0.0), ("max_weight", 1.0)):
        given = block.get(key)
        if given is None:
            out.append(None)
            continue
        arr = np.full(len(domains), default)
        if isinstance(given, (int, float)) and not isinstance(given, bool):
            arr[:] = float(given)  # one bound for every domain
        elif isinstance(given, dict):
            for d, v in given.items():
                if d in domains and isinstance(v, (int, float)) and not isinstance(v, bool):
                    arr[domains.index(d)] = float(v)
                else:
                    notes.append(f"random_mixtures.{key}.{shown(d)} ignored")
        else:
            notes.append(f"random_mixtures.{key} ignored: {shown(given)}")
            out.append(None)
            continue
        out.append(arr)
    return out[0], out[1], notes


def _sweep(attrs: dict) -> tuple[dict | None, list[str]]:
    text = attrs.get("sweep_yaml")
    if not text:
        return None, ["the store has no sweep file (attrs sweep_yaml): no proposal.yaml"]
    try:
        raw = load_yaml_text(str(text), "the store's sweep_yaml")
    except ConfigError as e:
        return None, [f"the store's sweep file is unreadable ({e}): no proposal.yaml"]
    if not isinstance(raw, dict) or not isinstance(raw.get("mixtures", {}), dict):
        return None, ["the store's sweep file is not an LM sweep mapping: no proposal.yaml"]
    return raw, []


def _fit_row(scale: str, test_set: str, y: np.ndarray, f: mixreg.Fit) -> dict:
    row = {"scale": scale, "test_set": test_set, "n_mixtures": int(y.size),
           "loss_sd": float(np.std(y, ddof=1)), "model": f.model, "cv_rmse": f.cv_rmse,
           "cv_spearman": f.cv_spearman}
    for m, s in f.scores.items():
        row[f"{m}_cv_rmse"], row[f"{m}_cv_spearman"] = s["cv_rmse"], s["cv_spearman"]
    row["ridge_alpha"] = f.alpha if f.alpha is not None else np.nan
    return row


def _default_scale(counts: dict[str, int], flops: dict[str, float]) -> str:
    usable = [s for s, n in counts.items() if n >= mixreg.MIN_MIXTURES]
    if not usable:
        raise StoreError(f"no scale has >= {mixreg.MIN_MIXTURES} done mixtures to fit a "
                         f"mixture regression on (done per scale: {counts})")
    return max(usable, key=lambda s: flops[s])


def analyze_mixtures(store: str | Path, scale: str | None = None,
                     objective: dict | None = None, seed: int = 0,
                     n_samples: int = 100_000) -> MixtureAnalysis:
    """Fit every scale x test set, then propose at `scale` for `objective`
    ({test_set: coefficient}; default: all test sets, equal weight). Raises StoreError."""
    ds = load.open_store(store)
    reduced = load.reduce_store(ds, load.pick_reference(ds), per_sample=False)
    mean = crossscale.seed_mean(reduced.loss_mean)  # (scale, mixture, test_set)
    weights = np.asarray(ds["weight"].values, float)  # (mixture, domain)
    domains = [str(d) for d in load.as_str(ds["domain"].values)]
    mixtures = [str(m) for m in mean.mixture.values]
    test_sets = [str(t) for t in mean.test_set.values]
    flops = {str(s): float(v) for s, v in zip(load.scale_names(ds), ds["flops"].values)}
    objective = objective or {t: 1.0 / len(test_sets) for t in test_sets}
    combined = len(objective) > 1 or next(iter(objective.values())) != 1.0
    # (scale, mixture): the objective per mixture, NaN unless every test set in it is done
    obj = sum(c * mean.sel(test_set=t) for t, c in objective.items())
    counts = {s: int(np.isfinite(obj.sel(scale=s)).sum()) for s in flops}
    if scale is not None and scale not in flops:
        raise StoreError(f"--scale: no scale {shown(scale)} in this store; scales: "
                         f"{', '.join(flops)}")
    scale = scale or _default_scale(counts, flops)
    if counts[scale] < mixreg.MIN_MIXTURES:
        raise StoreError(f"--scale {scale} has {counts[scale]} done mixtures; a mixture "
                         f"regression needs >= {mixreg.MIN_MIXTURES}")
    rows = []
    for s in flops:
        for t in test_sets + ([OBJECTIVE] if combined else []):
            y = (obj if t == OBJECTIVE else mean.sel(test_set=t)).sel(scale=s).values
            ok = np.isfinite(y)
            if ok.sum() >= mixreg.MIN_MIXTURES:
                rows.append(_fit_row(s, t, y[ok], mixreg.fit(weights[ok], y[ok], seed)))
    y = obj.sel(scale=scale).values
    ok = np.isfinite(y)
    f = mixreg.fit(weights[ok], y[ok], seed)
    sweep, notes = _sweep(ds.attrs)
    lo, hi, more = sweep_constraints(sweep, domains)
    notes += more
    bounds = mixreg.search_bounds(weights[ok], lo, hi)
    try:
        best_w, _ = mixreg.propose(lambda w: f.predict(w)[0], len(domains), bounds, seed,
                                   n_samples=n_samples)
    except ValueError as e:
        raise StoreError(f"no proposal: {e} (per-domain bounds {bounds.lo.round(3).tolist()}"
                         f" .. {bounds.hi.round(3).tolist()})") from None
    k = int(np.argmin(np.where(ok, y, np.inf)))
    control = mixtures[k]
    (p_mean, c_mean), (p_lo, c_lo), (p_hi, c_hi) = f.predict(np.vstack([best_w, weights[k]]))
    proposal = {
        "scale": scale, "objective": objective, "seed": seed, "model": f.model,
        "cv_rmse": f.cv_rmse, "cv_spearman": f.cv_spearman, "n_mixtures": int(ok.sum()),
        "interval_level": f.level, "domains": domains,
        "bounds": {"lo": bounds.lo.tolist(), "hi": bounds.hi.tolist()},
        "proposal": {"weights": dict(zip(domains, best_w.tolist())),
                     "predicted": p_mean, "predicted_lo": p_lo, "predicted_hi": p_hi},
        "control": {"mixture": control, "weights": dict(zip(domains, weights[k].tolist())),
                    "observed": float(y[k]), "predicted": c_mean, "predicted_lo": c_lo,
                    "predicted_hi": c_hi},
    }
    proposal = json.loads(json.dumps(proposal, default=float))  # plain floats, not numpy
    return MixtureAnalysis(pd.DataFrame(rows), proposal,
                           proposal_sweep(sweep, proposal, ds.attrs) if sweep else None, notes)


def _rounded(weights: dict[str, float], digits: int = 4) -> dict[str, float]:
    """Weights rounded for a readable sweep file (the sweep renormalises them)."""
    out = {d: round(float(v), digits) for d, v in weights.items()}
    return out if sum(out.values()) > 0 else {d: float(v) for d, v in weights.items()}


def proposal_sweep(sweep: dict, proposal: dict, attrs: dict) -> dict:
    """The store's sweep mapping with mixtures = {proposal, control}; generators and the
    staged `reference:` block dropped (two mixtures need neither); name + '-proposal'."""
    out = {k: v for k, v in sweep.items() if k not in ("random_mixtures", "reference")}
    base = str(sweep.get("name") or attrs.get("sweep") or "sweep")
    out["name"] = base[:MAX_NAME - len("-proposal")] + "-proposal"
    control = proposal["control"]["mixture"]
    name = "proposal" if control != "proposal" else "proposal-1"
    out["mixtures"] = {name: {"weights": _rounded(proposal["proposal"]["weights"])},
                       control: {"weights": _rounded(proposal["control"]["weights"])}}
    return out


def describe(m: MixtureAnalysis) -> str:
    """A few lines for the terminal."""
    p = m.proposal
    obj = " + ".join(f"{c:g} x {t}" for t, c in p["objective"].items())
    w = ", ".join(f"{d}={v:.3f}" for d, v in p["proposal"]["weights"].items())
    c = p["control"]
    lines = [f"mixture regression at scale {p['scale']} ({p['n_mixtures']} mixtures), "
             f"objective {obj}: model {p['model']}, CV RMSE {p['cv_rmse']:.4f}, "
             f"CV Spearman {p['cv_spearman']:.2f}",
             f"  proposal   {w}: predicted {p['proposal']['predicted']:.4f} "
             f"[{p['proposal']['predicted_lo']:.4f}, {p['proposal']['predicted_hi']:.4f}]",
             f"  control    {c['mixture']} (best run): observed {c['observed']:.4f}, "
             f"predicted {c['predicted']:.4f}"]
    if p["proposal"]["predicted_hi"] >= c["observed"]:
        lines.append("  the proposal's interval reaches the control's observed loss: the "
                     "regression cannot promise an improvement; run both to find out")
    return "\n".join(lines + m.notes)


def write_mixture_outputs(m: MixtureAnalysis, out: str | Path) -> list[Path]:
    """Write mixreg.csv, proposal.json and (with a sweep file) proposal.yaml to `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "mixreg.csv", out / "proposal.json"]
    m.table.to_csv(written[0], index=False, float_format="%.6g")
    written[1].write_text(json.dumps(m.proposal, indent=2) + "\n", encoding="utf-8")
    if m.sweep is not None:
        p = m.proposal
        head = (f"# Proposed by analysis/mixreg.py at scale {p['scale']} (model {p['model']}, "
                f"CV RMSE {p['cv_rmse']:.4g}); control: {p['control']['mixture']}, the best "
                "mixture of the original sweep.\n")
        written.append(out / "proposal.yaml")
        written[2].write_text(head + yaml.safe_dump(m.sweep, sort_keys=False), encoding="utf-8")
    return written
