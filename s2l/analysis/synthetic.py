"""Synthetic loss stores with known cross-scale structure, for tests, benchmarks and demos.

Model of one loss value (scale i, mixture m, seed k, sample s in test set t):

    loss = base_i + difficulty_s + effect[m, t] + signal * u[m, s]
           + proxy_noise_i * z[i, m, t] + seed_noise * e[i, m, k, t] + sample_noise * eps

`effect` and `u` are shared by all scales (the mixture moves every scale the same way);
`z` is scale-specific, so proxy_noise_i (0 for the largest scale, growing as scales shrink)
sets how well scale i predicts the reference. Mixture m's `weight` over two domains is
(code, prose) = (m / (n - 1), 1 - m / (n - 1)), a label only: losses do not depend on it.
Stores are written through `s2l.store`, in the layout a sweep's store has.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from s2l import store

TEST_SETS = ("heldout-code", "heldout-prose", "cloze", "choice", "qa")
DOMAINS = ("code", "prose")


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
         "done": (dims[:3], done), "weight": (("mixture", "domain"), _weights(n_mixtures))},
        coords={"scale": _obj(names), "mixture": _obj(_mixture_names(n_mixtures)),
                "seed": np.arange(n_seeds), "sample": np.arange(n_s),
                "domain": _obj(DOMAINS), "test_set": ("sample", _obj(ts)),
                "params": ("scale", params[list(wanted)]), "flops": ("scale", flops[list(wanted)])})
    ds.attrs["chance"] = {t: 0.25 for t in mc_sets}
    return ds


def write_synthetic_store(path: str | Path, n_scales: int, n_mixtures: int, n_seeds: int,
                          n_per_test_set: int, **kwargs) -> Path:
    """Write a synthetic store to disk through `s2l.store` (created with full coordinates,
    then one scale at a time, whole chunks), so big stores never sit in memory whole.
    `kwargs` go to `synthetic_dataset`. Over an existing store the same way a sweep's
    store is updated (`store.create_store`: kept, or migrated with a backup)."""
    path = Path(path)
    first = synthetic_dataset(n_scales, n_mixtures, n_seeds, n_per_test_set,
                              scale_index=0, **kwargs)
    scales, params, flops = _scale_coords(n_scales)
    layout = store.StoreLayout(
        scales=scales, params=params.tolist(), flops=flops.tolist(),
        mixtures=_mixture_names(n_mixtures), seeds=list(range(n_seeds)), domains=list(DOMAINS),
        weights=_weights(n_mixtures), test_set=first["test_set"].values.tolist(),
        multiple_choice=True, cell_ids={}, attrs=dict(first.attrs))
    store.create_store(path, layout)
    for i in range(n_scales):
        slab = first if i == 0 else synthetic_dataset(
            n_scales, n_mixtures, n_seeds, n_per_test_set, scale_index=i, **kwargs)
        store.write_scale(path, scales[i], slab["loss"].values[0], slab["correct"].values[0],
                          slab["done"].values[0])
    return path


def _obj(names) -> np.ndarray:
    """Strings as an object array: what the store writes as variable-length strings."""
    return np.array(list(names), dtype=object)


def _mixture_names(n_mixtures: int) -> list[str]:
    return [f"mix{m:02d}" for m in range(n_mixtures)]


def _weights(n_mixtures: int) -> np.ndarray:
    """(mixture, domain) float64: the code share rises from 0 to 1 across mixtures."""
    code = np.linspace(0.0, 1.0, n_mixtures) if n_mixtures > 1 else np.array([0.5])
    return np.stack([code, 1.0 - code], axis=1)


def _scale_coords(n_scales: int):
    """Names s0 (smallest) .. s{n-1}, params 1e5 * 10**i, Chinchilla FLOPs 6 * N * 20N."""
    params = np.array([10 ** (5 + i) for i in range(n_scales)], np.int64)
    return [f"s{i}" for i in range(n_scales)], params, 6.0 * params * 20 * params


MIX_DOMAINS = ("code", "scripture", "quotes")  # the domains of sweeps/smoke.yaml
MIX_TEST_SETS = ("heldout", "cloze")


def planted_mixture_dataset(n_mixtures: int = 40, optimum=(0.5, 0.3, 0.2),
                            other_optimum=(0.2, 0.6, 0.2), n_scales: int = 2,
                            n_seeds: int = 1, n_per_test_set: int = 10, noise: float = 0.005,
                            seed: int = 0) -> xr.Dataset:
    """A store-schema Dataset whose losses are a planted quadratic in the mixture weights.

    Weights: (mixture, domain) flat-Dirichlet draws over MIX_DOMAINS. Test set "heldout" of
    scale i: loss = 3 - 0.3 i + difficulty_s + 2 * ||w - optimum||^2 + noise; "cloze" the same
    around `other_optimum`. So the true minimiser of heldout's loss is `optimum` at every
    scale. Same difficulty_s for every `seed`. No `correct` (no multiple-choice test set)."""
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(len(MIX_DOMAINS)), n_mixtures)
    n_s = n_per_test_set * len(MIX_TEST_SETS)
    ts = np.repeat(np.array(MIX_TEST_SETS), n_per_test_set)
    # the test items are fixed (as a real test set is): `seed` draws only mixtures and noise
    difficulty = np.random.default_rng(0).gamma(2.0, 1.0, n_s)
    bowl = np.stack([2 * ((w - np.asarray(o)) ** 2).sum(1) for o in (optimum, other_optimum)], 1)
    t_code = np.repeat(np.arange(len(MIX_TEST_SETS)), n_per_test_set)
    loss = (3.0 - 0.3 * np.arange(n_scales)[:, None, None, None] + difficulty
            + bowl[None, :, None, t_code]
            + noise * rng.normal(size=(n_scales, n_mixtures, n_seeds, n_s))).astype(np.float32)
    scales, params, flops = _scale_coords(n_scales)
    dims = ("scale", "mixture", "seed", "sample")
    return xr.Dataset(
        {"loss": (dims, loss), "done": (dims[:3], np.ones(loss.shape[:3], bool)),
         "weight": (("mixture", "domain"), w)},
        coords={"scale": _obj(scales), "mixture": _obj([f"rnd-{m:03d}" for m in range(n_mixtures)]),
                "seed": np.arange(n_seeds), "sample": np.arange(n_s),
                "domain": _obj(MIX_DOMAINS), "test_set": ("sample", _obj(ts)),
                "params": ("scale", params), "flops": ("scale", flops)})
