"""What the LM sweep prints: the `--dry-run` plan and the final summary."""
from __future__ import annotations

from pathlib import Path


def _si(x: float) -> str:
    for unit, size in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"


def describe_cells(cfg, out: Path, done_flags: list[bool]) -> str:
    """One line per cell (scale, params, tokens, FLOPs, mixture, seed, done?) and totals.

    `cfg` is the sweep's `s2l.lm.config.SweepConfig`; `done_flags` is, per cell in
    `cfg.cells()` order, whether its completion marker says it is done."""
    lines = [f"sweep {cfg.name}: {len(cfg.scales)} scales x {len(cfg.mixtures)} mixtures x "
             f"{len(cfg.seeds)} seeds -> out {out}",
             f"{'scale':<10} {'params':>8} {'tokens':>8} {'FLOPs':>8} {'steps':>7} "
             f"{'mixture':<16} {'seed':>4}  done"]
    total, todo, n_done = 0.0, 0.0, 0
    for cell, done in zip(cfg.cells(), done_flags):
        n_done += done
        total += cell.scale.flops
        todo += 0 if done else cell.scale.flops
        lines.append(f"{cell.scale.name:<10} {_si(cell.scale.params):>8} {_si(cell.scale.tokens):>8} "
                     f"{_si(cell.scale.flops):>8} {cell.steps:>7} {cell.mixture.name:<16} "
                     f"{cell.seed:>4}  {'yes' if done else 'no'}")
    n = len(lines) - 2
    lines.append(f"total: {n} cells, {n_done} done; compute {_si(total)}FLOPs "
                 f"({_si(todo)}FLOPs still to run)")
    return "\n".join(lines)


def final_summary(store: Path, figure: Path, tracking_uri: str) -> str:
    """Correlation of each smaller scale with the largest, per test set, and where things are."""
    lines = []
    try:
        from s2l.analysis.summary import summarize, write_summary_figure

        lines.append(summarize(store))
        figure = write_summary_figure(store, figure)  # None while too few cells are done
    except ImportError:  # analysis package not installed in a trimmed deployment
        figure = None
    lines.append(f"store:   {store}  (xarray.open_zarr(..., consolidated=False))")
    lines.append(f"mlflow:  {tracking_uri}  (mlflow ui --backend-store-uri {tracking_uri})"
                 if tracking_uri.startswith("sqlite") else f"mlflow:  {tracking_uri}")
    if figure:
        lines.append(f"figure:  {figure}")
    return "\n".join(lines)
