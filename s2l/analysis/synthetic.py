"""Synthetic loss stores with known cross-scale structure, for tests, benchmarks and demos.

Model of one loss value (scale i, mixture m, seed k, sample s in test set t):

    loss = base_i + difficulty_s + effect[m, t] + signal * u[m, s]
           + proxy_noise_i * z[i, m, t] + seed_noise * e[i, m, k, t] + sample_noise * eps

`effect` and `u` are shared by all scales (the mixture moves every scale the same way);
`z` is scale-specific, so proxy_noise_i (0 for the largest scale, growing as scales shrink)
sets how well scale i predicts the reference. Written with xarray only (no zarr import).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

TEST_SETS = ("heldout-code", "heldout-prose", "cloze", "choice", "qa")


def synthetic_dataset(n_scales: int = 4, n_mixtures: int = 10, n_seeds: int = 2,
                      n_per_test_set: int = 50, test_sets=TEST_SETS, mc_sets=("choice",),
                      seed: int = 0, not_done=(), seed_noise: float = 0.02,
                      scale_index: int | None = None) -> xr.Dataset:
    """A store-schema Dataset in memory. `not_done`: (scale, mixture, seed) index triples left
    NaN with done=False. `scale_index` builds only that scale (for writing big stores slab by
    slab; the random draws shared across scales are the same for every scale_index)."""
    rng = np.random.default_rng(seed)
    n_s = n_per_test_set * len(test_sets)
    ts = np.repeat(np.array(test_sets), n_per_test_set)
    t_code = np.repeat(np.arange(len(test_sets)), n_per_test_set)
    difficulty = rng.gamma(2.0, 1.0, n_s).astype(np.float32)
    effect = rng.normal(0, 0.3, (n_mixtures, len(test_sets))).astype(np.float32)
    u = rng.normal(0, 0.2, (n_mixtures, n_s)).astype(np.float32)
    scales, params, flops = _scale_coords(n_scales)
    wanted = range(n_scales) if scale_index is None else [scale_index]
    slabs, correct = [], []
    for i in wanted:
        r = np.random.default_rng([seed, i])  # scale-specific draws, same for any scale_index
        proxy_noise = 0.15 * (n_scales - 1 - i)
        z = r.normal(0, 1, (n_mixtures, len(test_sets))).astype(np.float32)
        e = r.normal(0, 1, (n_mixtures, n_seeds, len(test_sets))).astype(np.float32)
        eps = r.normal(0, 0.1, (n_mixtures, n_seeds, n_s)).astype(np.float32)
        slab = (3.0 - 0.3 * i + difficulty + effect[:, None, t_code] + u[:, None, :]
                + proxy_noise * z[:, None, t_code] + seed_noise * e[:, :, t_code] + eps)
        slabs.append(slab)
        # accuracy rises with scale and falls with loss; chance 0.25 for 4-way choice
        p = np.clip(0.25 + 0.08 * i - 0.1 * (slab - slab.mean()), 0.0, 1.0)
        c = (r.random(slab.shape) < p).astype(np.float32)
        c[:, :, ~np.isin(ts, mc_sets)] = np.nan
        correct.append(c)
    loss = np.stack(slabs).astype(np.float32)
    corr = np.stack(correct)
    done = np.ones(loss.shape[:3], bool)
    for a, b, c in not_done:
        if scale_index is None or a == scale_index:
            a = 0 if scale_index is not None else a
            done[a, b, c] = False
            loss[a, b, c] = np.nan
            corr[a, b, c] = np.nan
    names = [scales[i] for i in wanted]
    dims = ("scale", "mixture", "seed", "sample")
    ds = xr.Dataset(
        {"loss": (dims, loss), "correct": (dims, corr),
         "done": (dims[:3], done)},
        coords={"scale": names, "mixture": [f"mix{m:02d}" for m in range(n_mixtures)],
                "seed": np.arange(n_seeds), "sample": np.arange(n_s),
                "test_set": ("sample", ts), "params": ("scale", params[list(wanted)]),
                "flops": ("scale", flops[list(wanted)])})
    ds.attrs["chance"] = {t: 0.25 for t in mc_sets}
    return ds


def write_synthetic_store(path: str | Path, n_scales: int, n_mixtures: int, n_seeds: int,
                          n_per_test_set: int, sample_chunk: int | None = None,
                          **kwargs) -> Path:
    """Write a synthetic store to disk slab by slab (one scale at a time), chunked 1 along
    scale/mixture/seed like the real store, so big stores never sit in memory whole."""
    path = Path(path)
    first = synthetic_dataset(n_scales, n_mixtures, n_seeds, n_per_test_set,
                              scale_index=0, **kwargs)
    n_s = first.sizes["sample"]
    chunks = {"scale": 1, "mixture": 1, "seed": 1, "sample": sample_chunk or n_s}
    scales, params, flops = _scale_coords(n_scales)
    template = xr.Dataset(
        {v: (first[v].dims, _lazy((n_scales,) + first[v].shape[1:], first[v].dtype,
                                  tuple(chunks[d] for d in first[v].dims)))
         for v in ("loss", "correct", "done")},
        coords={**{k: first[k] for k in ("mixture", "seed", "sample", "test_set")},
                "scale": scales, "params": ("scale", params), "flops": ("scale", flops)},
        attrs=first.attrs)
    template.to_zarr(path, mode="w", compute=False, consolidated=False)
    for i in range(n_scales):
        slab = first if i == 0 else synthetic_dataset(
            n_scales, n_mixtures, n_seeds, n_per_test_set, scale_index=i, **kwargs)
        slab = slab.drop_vars(["test_set", "params", "flops", "mixture", "seed", "sample",
                               "scale"])
        slab.chunk({k: v for k, v in chunks.items()}).to_zarr(
            path, region={"scale": slice(i, i + 1)}, consolidated=False)
    return path


def _scale_coords(n_scales: int):
    """Names s0 (smallest) .. s{n-1}, params 1e5 * 10**i, Chinchilla FLOPs 6 * N * 20N."""
    params = np.array([10 ** (5 + i) for i in range(n_scales)], np.int64)
    return [f"s{i}" for i in range(n_scales)], params, 6.0 * params * 20 * params


def _lazy(shape, dtype, chunks):
    import dask.array as da
    return da.zeros(shape, dtype=dtype, chunks=chunks)
