"""What the LM sweep prints: the `--dry-run` plan and the final summary."""
from __future__ import annotations

from pathlib import Path


def _si(x: float) -> str:
    for unit, size in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"


def describe_cells(cfg, out: Path, done_flags: list) -> str:
    """One line per cell (scale, params, tokens, FLOPs, mixture, seed, done?) and totals.

    `cfg` is the sweep's `s2l.lm.config.SweepConfig`; `done_flags` is, per cell in
    `cfg.cells()` order, whether its completion marker says it is done: a bool, or "yes",
    "no" or "skipped" (a reference cell the prediction did not select: done, not trained)."""
    proxies = list(cfg.proxy_seeds or cfg.seeds)
    seeds = f"seeds {proxies}" + (f" (reference {cfg.reference.scale}: {list(cfg.seeds)})"
                                  if cfg.reference is not None and list(cfg.seeds) != proxies else "")
    lines = [f"sweep {cfg.name}: {len(cfg.scales)} scales x {len(cfg.mixtures)} mixtures, "
             f"{seeds} -> out {out}",
             f"{'scale':<10} {'params':>8} {'tokens':>8} {'FLOPs':>8} {'steps':>7} "
             f"{'mixture':<16} {'seed':>4}  done"]
    total, todo, n_done, n_skipped = 0.0, 0.0, 0, 0
    for cell, flag in zip(cfg.cells(), done_flags):
        flag = {True: "yes", False: "no"}.get(flag, flag)
        n_done += flag != "no"
        n_skipped += flag == "skipped"
        total += cell.scale.flops
        todo += cell.scale.flops if flag == "no" else 0
        lines.append(f"{cell.scale.name:<10} {_si(cell.scale.params):>8} {_si(cell.scale.tokens):>8} "
                     f"{_si(cell.scale.flops):>8} {cell.steps:>7} {cell.mixture.name:<16} "
                     f"{cell.seed:>4}  {flag}")
    n = len(lines) - 2
    skipped = f" ({n_skipped} skipped by the prediction)" if n_skipped else ""
    lines.append(f"total: {n} cells, {n_done} done{skipped}; compute {_si(total)}FLOPs "
                 f"({_si(todo)}FLOPs still to run)")
    return "\n".join(lines)


def describe_stages(cfg, out: Path) -> str:
    """For a staged sweep (`reference:`), the stages and what the selection may save; ""
    otherwise."""
    ref = cfg.reference
    if ref is None:
        return ""
    proxies = ", ".join(s.name for s in cfg.proxy_scales)
    lines = ["", f"stages: proxies ({proxies}) -> predict (writes {out}/predictions/"
                 f"prediction.json once) -> reference ({ref.scale})"]
    if ref.top_k is not None:
        k = ref.top_k + ref.controls
        per_mix = len(cfg.seeds) * cfg.scale(ref.scale).flops
        grid = sum(c.scale.flops for c in cfg.cells())
        saved = (len(cfg.mixtures) - k) * per_mix
        lines.append(f"selection: the reference trains the top {ref.top_k} mixtures by the "
                     f"proxies on {ref.objective} + {ref.controls} random controls = {k} of "
                     f"{len(cfg.mixtures)}; saves {_si(saved)}FLOPs ({saved / grid:.0%} of the grid)")
    return "\n".join(lines)


def describe_data(cfg, plan, stages: list) -> str:
    """The data preparation for `--dry-run`: shards and approximate bytes per domain, where the
    data goes, and whether it is prepared already (`stages`: the data stages to run, [] when
    the data is complete or no cell needs it)."""
    by: dict[str, list[int]] = {d: [0, 0] for d in cfg.data.domains}
    for s in plan.shards:
        by[s.domain][0] += 1
        by[s.domain][1] += s.approx_bytes
    total = sum(b for _, b in by.values())
    head = (f"data: {len(plan.shards)} shards over {len(by)} domains, ~{_si(total)}B of text "
            f"(shard_mb {cfg.data.shard_mb:g}) -> {plan.root}")
    lines = ["", head]
    if stages:
        shards = sum(not t.is_done() for st in stages if st.name == "data-shards" for t in st.tasks)
        names = " -> ".join(f"{st.name} ({len(st.tasks)} task{'s' if len(st.tasks) != 1 else ''})"
                            for st in stages)
        lines.append(f"stages: {names}; {shards} of {len(plan.shards)} shards still to tokenize, "
                     "then the cells")
    elif (plan.root / "COMPLETE").exists():
        lines.append("  prepared already (cache hit): no data task is submitted")
    else:
        lines.append("  not prepared, and not needed: every cell is done")
    for d, (n, b) in by.items():
        lines.append(f"  {d:<16} {n:>5} shards  ~{_si(b)}B")
    return "\n".join(lines)


def prediction_summary(out: Path, tracking_uri: str, experiment: str, parent: str | None) -> str:
    """The prediction's score once reference results exist (written to OUT/predictions/score.*
    and, when the sweep's MLflow run is known, logged as its child run "score")."""
    from s2l import tracking
    from s2l.lm import scoring, staged

    try:
        pred = staged.read_prediction(out)
        if pred is None:
            return "prediction: none yet"
        result = scoring.score_out(out)
    except (staged.PredictionError, ValueError, OSError) as e:
        return f"prediction: cannot be scored ({e})"
    if not result["mixtures_with_reference"]:
        return f"prediction: {staged.predictions_dir(out) / staged.PREDICTION}; no reference results yet"
    js, cs = scoring.write_score(out, result)
    if parent:
        metrics = {f"{k}.{r['target']}": r[k] for r in result["rows"]
                   for k in ("spearman", "decision_accuracy", "mae", "coverage") if r[k] is not None}
        tracking.log_cell(tracking_uri, experiment, out, parent, "score",
                          f"score-{result['prediction_sha256'][:16]}",
                          {"kind": "score", "prediction_sha256": result["prediction_sha256"]},
                          {"score.json": js.read_text()}, {}, metrics)
    return scoring.format_score(result) + f"\nscore:   {js}, {cs}"


def final_summary(store: Path, figure: Path, tracking_uri: str, experiment: str = "") -> str:
    """Correlation of each smaller scale with the largest, per test set, and where things are."""
    lines = []
    try:
        from s2l.analysis.summary import summary_and_figure

        text, figure = summary_and_figure(store, figure)  # figure None: too few cells done
        lines.append(text)
    except ImportError:  # analysis package not installed in a trimmed deployment
        figure = None
    lines.append(f"store:   {store}  (xarray.open_zarr(..., consolidated=False))")
    lines.append(f"mlflow:  {tracking_uri}  (mlflow ui --backend-store-uri {tracking_uri})"
                 if tracking_uri.startswith("sqlite") else f"mlflow:  {tracking_uri}")
    if experiment:
        from s2l import tracking

        lines.append(f"         runs: {tracking.ui_page(tracking_uri, experiment)}")
    if figure:
        lines.append(f"figure:  {figure}")
    return "\n".join(lines)
