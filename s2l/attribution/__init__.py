"""Data attribution with proxy models: TRAK at several widths, scored by LDS (Khaddaj et al.
2025, "Small-to-Large Generalization", section 3.1).

The TRAK core (per-example gradients, projection, featurize, scores) is `s2l.trak`; this
package holds what is specific to the attribution study:

Modules: vision + train (the RN-k family and its one recipe), lds (LDS + bootstrap CI),
config (the YAML, `kind: attribution`), study (the stages), report (lds.csv and figures),
reference (the traker 0.3.2 adapter, for agreement tests and benchmarks).
"""
