"""Cross-scale analysis of a loss store: how well small proxies' losses predict a reference's
across training mixtures (Khaddaj, Engstrom, Madry 2025, "Small-to-Large Generalization"),
and the decision accuracy of DataDecide (Ai2, 2025).

Layers, each usable alone:
- `load`: open a store, check its schema, reduce it in one chunked pass (`reduce_store`).
- `stats`: pure statistics on arrays (correlations, bootstrap CIs, decision accuracy, ...).
- `crossscale`: the tables (correlation.csv, decision_accuracy.csv) and verdicts.
- `figures`: matplotlib figures from the tables; `report`: the HTML report;
  `pipeline`: store -> tables -> files; `cli`: what the CLIs in `analysis/` share;
  `summary`: the short terminal text and figure the main job prints at the end.
- `mixreg`: mixture regression (loss = f(weights), ridge vs boosted trees by k-fold CV) and the
  constrained search for the best mixture; `proposal`: store -> mixreg.csv, proposal.json and
  the sweep file that tests the proposal.
- `planner`: the cheapest proxy scale reaching a decision-accuracy target with a stated
  probability (bootstrap over mixtures and seeds, a monotone curve in log-compute), else what
  the next sweep should add; leave-one-scale-out back-test.
- `synthetic`: stores with known structure for tests and benchmarks.
"""
