"""Tables and figures of an attribution study directory (used by the `report` stage and by
`analysis/lds.py`). Reads only files: study.json, lds/<width>.npy, scores/<width>.zarr.

Writes (into `dest`, by default the study directory)
  lds.csv             proxy, width, params, compute_ratio, lds, ci_lo, ci_hi, n_targets
  lds_vs_width.png    mean LDS (95% bootstrap CI) against proxy parameters (Khaddaj et al.
                      2025, Fig. 6 style)
  score_spearman.csv  Spearman correlation between flattened score matrices of every two widths
  score_spearman.png  the same as a heatmap

A study.json that does not have the expected fields raises `ValueError` before anything is
written.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydantic
import scipy.stats

from s2l.attribution.lds import bootstrap_ci
from s2l.config import NAME_RE

REPORT_FILES = ("lds.csv", "lds_vs_width.png", "score_spearman.csv", "score_spearman.png")


class _Width(pydantic.BaseModel):
    width: float
    params: int
    train_flops: pydantic.PositiveFloat


class _Meta(pydantic.BaseModel):
    """The fields of study.json the report reads (written by the study's `prepare`)."""

    name: str
    reference: str
    alpha: float
    m: int
    bootstrap: pydantic.PositiveInt = 1000
    widths: dict[str, _Width]


def read_meta(out: Path) -> dict:
    """study.json of the study at `out`, checked: ValueError (naming the file) when it is
    missing fields, or names a width that is not a plain name or a reference it lacks."""
    path = Path(out) / "study.json"
    try:
        meta = _Meta.model_validate_json(path.read_bytes()).model_dump()
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise ValueError(f"{path} is not an attribution study.json ({where}: {err['msg']})") from None
    bad = [w for w in meta["widths"] if not NAME_RE.fullmatch(w)]
    if bad or meta["reference"] not in meta["widths"]:
        raise ValueError(f"{path}: width names {list(meta['widths'])[:10]} must be plain names "
                         f"and include the reference {meta['reference'][:100]!r}")
    return meta


def lds_table(out: Path, meta: dict | None = None) -> list[dict]:
    """One row per width with an LDS file (a partial study reports what is there)."""
    meta = meta or read_meta(out)
    ref = meta["widths"][meta["reference"]]
    rows = []
    for name, s in meta["widths"].items():
        path = out / "lds" / f"{name}.npy"
        if not path.exists():  # partial study: report what is there
            continue
        per_target = np.load(path, allow_pickle=False)
        mean, lo, hi = bootstrap_ci(per_target, n_boot=meta.get("bootstrap", 1000))
        rows.append({"proxy": name, "width": s["width"], "params": s["params"],
                     "compute_ratio": ref["train_flops"] / s["train_flops"],
                     "lds": mean, "ci_lo": lo, "ci_hi": hi,
                     "n_targets": int(np.isfinite(per_target).sum())})
    return rows


def score_correlations(out: Path, names: list[str]) -> np.ndarray:
    """(W, W) Spearman correlation of the flattened (n_train * n_targets) score matrices."""
    from s2l.store import zarr_array

    flat = [zarr_array(out / "scores" / f"{w}.zarr")[:].ravel() for w in names]
    W = len(names)
    C = np.eye(W)
    ranks = [scipy.stats.rankdata(f) for f in flat]
    for i in range(W):
        for j in range(i + 1, W):
            C[i, j] = C[j, i] = np.corrcoef(ranks[i], ranks[j])[0, 1]
    return C


def write_report(out: str | Path, dest: str | Path | None = None) -> list[dict]:
    """Read the study at `out`, write the report files into `dest` (default `out`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    dest = out if dest is None else Path(dest)
    meta = read_meta(out)
    rows = lds_table(out, meta)
    C = None
    names = [r["proxy"] for r in rows if (out / "scores" / f"{r['proxy']}.zarr").exists()]
    if rows:
        C = score_correlations(out, names)  # read everything before writing anything
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "lds.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["proxy", "width", "params", "compute_ratio", "lds",
                                          "ci_lo", "ci_hi", "n_targets"])
        w.writeheader()
        w.writerows(rows)
    if not rows:
        return rows

    fig, ax = plt.subplots(figsize=(5, 3.6))
    p = np.array([r["params"] for r in rows])
    lds = np.array([r["lds"] for r in rows])
    err = np.array([[r["lds"] - r["ci_lo"] for r in rows], [r["ci_hi"] - r["lds"] for r in rows]])
    ax.errorbar(p, lds, yerr=err, marker="o", capsize=3)
    for r in rows:
        ax.annotate(f"{r['proxy']}\n{r['compute_ratio']:.0f}x", (r["params"], r["lds"]),
                    textcoords="offset points", xytext=(4, -18), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("proxy parameters")
    ax.set_ylabel(f"LDS vs {meta['reference']} (95% CI)")
    ax.set_title(f"{meta['name']}: TRAK on proxies, m={meta['m']}, alpha={meta['alpha']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(dest / "lds_vs_width.png", dpi=120)
    plt.close(fig)

    with open(dest / "score_spearman.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["proxy"] + names)
        for n, row in zip(names, C):
            w.writerow([n] + [f"{v:.4f}" for v in row])
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    im = ax.imshow(C, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{C[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(im, ax=ax, label="Spearman of scores")
    ax.set_title("score agreement across widths")
    fig.tight_layout()
    fig.savefig(dest / "score_spearman.png", dpi=120)
    plt.close(fig)
    return rows
