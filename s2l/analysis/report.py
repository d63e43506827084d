"""One self-contained HTML report of a cross-scale analysis: verdicts, tables, figures
(embedded as base64 PNG, so the file can be mailed or opened offline), what is missing, and the
sweep config when the store carries it (attrs "sweep", "sweep_yaml")."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd

from s2l.analysis import crossscale, pipeline

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;font-size:12px;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f2f2f2}
img{max-width:100%;border:1px solid #eee}pre{background:#f7f7f7;padding:1em;overflow:auto}
.warn{background:#fff4e0;padding:0.6em;border-left:4px solid #e90}li{margin:0.3em 0}"""

CORR_COLS = ["proxy", "test_set", "n_mixtures", "compute_ratio", "pearson", "pearson_lo",
             "pearson_hi", "spearman", "spearman_lo", "spearman_hi", "r2", "noise_ceiling",
             "pearson_vs_ceiling", "sample_r2_median", "proxy_acc", "proxy_acc_lo",
             "proxy_acc_hi", "chance", "at_chance"]
DEC_COLS = ["proxy", "test_set", "metric", "n_mixtures", "n_pairs", "n_proxy_ties",
            "decision_accuracy", "decision_accuracy_lo", "decision_accuracy_hi",
            "ref_seed_agreement"]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode()


def _table(df: pd.DataFrame, cols: list[str]) -> str:
    if df.empty:
        return "<p>(no rows)</p>"
    df = df[[c for c in cols if c in df]]
    return df.to_html(index=False, float_format=lambda v: f"{v:,.3g}", na_rep="-", border=0)


def build_html(a: pipeline.Analysis) -> str:
    """The report as one HTML string."""
    e = html.escape
    name = a.attrs.get("sweep", Path(a.store).parent.name or a.store)
    ds_done = a.reduced.done
    parts = [f"<html><head><meta charset='utf-8'><title>s2l cross-scale report: {e(str(name))}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Cross-scale report: {e(str(name))}</h1>",
             f"<p>Store <code>{e(a.store)}</code>: {ds_done.sizes['scale']} scales x "
             f"{ds_done.sizes['mixture']} mixtures x {ds_done.sizes['seed']} seeds; "
             f"reference scale <b>{e(a.reference)}</b>; proxies "
             f"{e(', '.join(a.proxies))}.</p>"]
    missing = pipeline.missing_summary(a)
    if missing:
        parts.append(f"<p class='warn'>{e(missing)} The full list is in missing_cells.csv.</p>")
    for note in a.notes:
        parts.append(f"<p class='warn'>{e(note)}</p>")
    parts.append("<h2>Verdict per test set</h2><ul>")
    for t, g in a.correlation.groupby("test_set", sort=False):
        parts.append(f"<li><b>{e(str(t))}</b>: {e(crossscale.verdict(g))}</li>")
    parts.append("</ul><p>r is the Pearson correlation across mixtures between the proxy's and "
                 "the reference's seed-averaged mean loss on the test set, with a 95% bootstrap "
                 "CI over mixtures. r2 is the R² of the least-squares line reference ~ proxy, "
                 "which equals r². The noise ceiling, sqrt of the Spearman-Brown reliability of "
                 "the reference's seed mean, is the highest r any proxy could reach given seed "
                 "noise. Decision accuracy is the share of mixture pairs the proxy orders like "
                 "the reference (ties of the reference left out, ties of the proxy count 1/2); "
                 "0.5 is a coin flip.</p>")
    figs = pipeline.make_figures(a)
    parts.append("<h2>Figures</h2>")
    for fname, fig in figs.items():
        parts.append(f"<h3>{e(pipeline.FIGURES[fname])}</h3>"
                     f"<img alt='{e(fname)}' src='data:image/png;base64,{_png(fig)}'>")
    parts.append("<h2>Correlation (correlation.csv)</h2>" + _table(a.correlation, CORR_COLS))
    parts.append("<h2>Decision accuracy (decision_accuracy.csv)</h2>"
                 + _table(a.decision, DEC_COLS))
    if a.attrs.get("sweep_yaml"):
        parts.append(f"<h2>Sweep config</h2><pre>{e(str(a.attrs['sweep_yaml']))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(a: pipeline.Analysis, out: str | Path) -> Path:
    """Write out/report.html (plus the CSVs and PNGs beside it) and return its path."""
    out = Path(out)
    pipeline.write_outputs(a, out)
    path = out / "report.html"
    path.write_text(build_html(a), encoding="utf-8")
    return path
