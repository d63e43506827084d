"""Data attribution with proxy models: TRAK at several widths, scored by LDS (paper sec. 3.1).

Python API (everything CPU/GPU-agnostic torch; tensors documented with shapes per function):

    from s2l.attribution.trak import trak_scores, from_checkpoints
    S = trak_scores(from_checkpoints(model, ["m0.pt", "m1.pt"]), (x_tr, y_tr), (x_tg, y_tg),
                    proj_dim=2048, seed=0, use_q=False)          # (n_train, n_targets)

Modules: outputs (margin, LM odds), grads (torch.func per-example gradients), project (seeded
chunked projection), trak (featurize / kernel / blockwise scores), lds (LDS + bootstrap CI),
features (Zarr layout), vision + train (RN-k family and recipe), study (the sweep stages,
`kind: attribution`), report (lds.csv and figures), reference (the traker 0.3.2 adapter).
"""
