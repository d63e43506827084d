"""Cross-scale analysis of a loss store (PAPER.md section 1, DataDecide's decision accuracy).

Layers, each usable alone:
- `load`: open a store, check its schema, reduce it in one chunked pass (`reduce_store`).
- `stats`: pure statistics on arrays (correlations, bootstrap CIs, decision accuracy, ...).
- `crossscale`: the tables (correlation.csv, decision_accuracy.csv) and verdicts.
- `figures`: matplotlib figures from the tables; `report`: the HTML report;
  `pipeline`: store -> tables -> files, used by the CLIs in `analysis/`;
  `summary`: the short terminal text and figure the main job prints at the end.
- `synthetic`: stores with known structure for tests and benchmarks.
"""
