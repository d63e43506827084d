"""Dataset selection with proxy models (Khaddaj et al. 2025, "Small-to-Large Generalization",
section 3.2): DsDm at several proxy sizes, judged by the reference-size model trained on each
selection.

Modules: `config` (the YAML, `kind: selection`), `pool` (candidate sequences, target/holdout
split), `dsdm` (TRAK datamodels over the pool with `s2l.trak`, averaged over targets ->
selection), `dsir` (hashed n-gram importance resampling), `study` (the stages), `report`
(selection.csv, figure, compute table).
"""
