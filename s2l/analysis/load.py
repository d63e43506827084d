"""Reading a loss store for analysis: schema checks, done-cell masking, chunked reductions.

The store (schema and layout in `s2l.store`, which does every read from disk) holds `loss`
with dims (scale, mixture, seed, sample), NaN where a cell is not done, `test_set` along
sample, `flops`/`params` along scale, `done` over (scale, mixture, seed) and optionally
`correct` (1/0, NaN for non-multiple-choice samples).

`reduce_store` never loads the whole loss array: it walks tiles of one scale x a block of
samples aligned to the store's chunks along `sample` (so each chunk is decompressed once), and
holds at most two tiles (the reference's and one proxy's) at a time. From each tile it keeps
only per-test-set sums and, when asked, per-sample R^2 against the reference.

Every problem with the store itself (missing, not Zarr, off the schema, a chunk that cannot
be decoded) and every impossible request (an unknown reference) is a `StoreError`: the CLIs
print it as one line and exit 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from s2l import store
from s2l.analysis import stats
from s2l.config import shown
from s2l.store import DIMS, StoreError, check_schema  # noqa: F401 - re-exported for callers

TILE_BYTES = 256 * 2**20  # one (mixture, seed, sample-block) tile of one scale, float32


def open_store(path: str | Path, dask: bool = False) -> xr.Dataset:
    """Open a store lazily (`s2l.store.open_store`; dask=True for dask-backed variables) and
    check the parts of the schema analysis needs. Raises StoreError."""
    ds = store.open_store(path, dask=dask)
    check_schema(ds)
    return ds


def as_str(values) -> np.ndarray:
    """Any string-like array (numpy <U, object, or numpy 2's StringDType, which other writers
    use and which refuses .astype(str)) as a plain <U array."""
    return np.asarray(np.asarray(values).tolist(), dtype=str)


def scale_names(ds: xr.Dataset) -> list[str]:
    return [str(s) for s in ds["scale"].values]


def pick_reference(ds: xr.Dataset, reference: str | None = None) -> str:
    """The reference scale: `reference` if given (must exist), else the one with most FLOPs."""
    names = scale_names(ds)
    if reference is None:
        return names[int(np.argmax(ds["flops"].values))]
    if reference not in names:
        raise StoreError(f"unknown reference scale {shown(reference)}; scales in this store: "
                         + ", ".join(names))
    return reference


def test_set_codes(ds: xr.Dataset) -> tuple[list[str], np.ndarray]:
    """Test set names in order of first appearance along `sample`, and each sample's index
    into that list: (names, codes of shape (sample,))."""
    values = as_str(ds["test_set"].values)
    uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return [str(u) for u in uniq[order]], rank[inverse]


@dataclass
class Reduced:
    """What analysis keeps from a store; small whatever the store's size.

    loss_mean: (scale, mixture, seed, test_set) mean loss over a test set's samples; NaN for
        cells not done.
    acc_mean: same dims, mean of `correct` (accuracy); NaN for test sets without `correct`.
        None when the store has no `correct` variable.
    n_items: (test_set,) number of items with a finite `correct` per test set (the most in any
        cell: every cell is scored on the same items), 0 for other test sets; None without
        `correct`.
    done: (scale, mixture, seed) bool, the `done` flag AND at least one finite loss.
    sample_r2: (scale, sample) float32 per-sample R^2 between that scale's and the
        reference's seed-mean losses across mixtures; NaN row for the reference. None unless
        requested.
    """
    loss_mean: xr.DataArray
    acc_mean: xr.DataArray | None
    done: xr.DataArray
    sample_r2: xr.DataArray | None
    reference: str
    n_items: xr.DataArray | None = None


def _sample_blocks(ds: xr.Dataset, bytes_per_sample: int, tile_bytes: int) -> list[slice]:
    """Slices along `sample`, each a run of whole store chunks totalling <= tile_bytes
    (at least one chunk), so no chunk is read twice."""
    n = ds.sizes["sample"]
    chunks = ds["loss"].chunks
    stored = ds["loss"].encoding.get("chunks")  # on-disk chunk shape when not dask-backed
    if chunks:
        sizes = chunks[3]
    elif stored:
        sizes = [stored[3]] * (n // stored[3]) + ([n % stored[3]] if n % stored[3] else [])
    else:  # in-memory dataset: any block size works
        step = max(1, tile_bytes // bytes_per_sample)
        sizes = [step] * -(-n // step)
    blocks, start, end = [], 0, 0
    for c in sizes:
        if end > start and (end - start + c) * bytes_per_sample > tile_bytes:
            blocks.append(slice(start, end))
            start = end
        end = min(n, end + c)
    blocks.append(slice(start, end))
    return blocks


def _sum_by_test_set(tile: np.ndarray, onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tile (mixture, seed, block) float32 -> sums and counts of finite values per test set,
    each (mixture, seed, test_set) float64. A float32 matmul with the one-hot (block, test_set)
    matrix does the group-by in one BLAS call (~20x faster than casting the tile to float64;
    sums keep ~1e-6 relative precision, counts are exact below 2**24). Overwrites NaNs in
    `tile` with 0."""
    finite = np.isfinite(tile)
    np.copyto(tile, 0.0, where=~finite)  # in place: no second tile-sized allocation
    flat = tile.reshape(-1, tile.shape[-1])
    sums = (flat @ onehot).reshape(*tile.shape[:-1], -1)
    counts = (finite.reshape(flat.shape).view(np.uint8).astype(np.float32) @ onehot)
    return sums.astype(np.float64), counts.reshape(sums.shape).astype(np.float64)


def _seed_mean(tile: np.ndarray) -> np.ndarray:
    """(mixture, seed, block) -> (mixture, block) mean over finite seeds, NaN if none."""
    finite = np.isfinite(tile)
    n = finite.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(finite, tile, 0.0).sum(1) / n).astype(np.float32)


def reduce_store(ds: xr.Dataset, reference: str, per_sample: bool = True,
                 tile_bytes: int = TILE_BYTES) -> Reduced:
    """One pass over the store: per-cell test-set means (loss and accuracy), done mask, and
    optionally per-sample R^2 of each scale against `reference`. Memory ~ 2 tiles."""
    names = scale_names(ds)
    ref_i = names.index(reference)
    ts, codes = test_set_codes(ds)
    n_s, n_m, n_k, n_n = (ds.sizes[d] for d in DIMS)
    has_correct = "correct" in ds.data_vars
    sums = np.zeros((n_s, n_m, n_k, len(ts)))
    counts = np.zeros_like(sums)
    acc_sums, acc_counts = np.zeros_like(sums), np.zeros_like(sums)
    sample_r2 = np.full((n_s, n_n), np.nan, np.float32) if per_sample else None
    # reference first: its seed-mean tile is what every proxy's per-sample R^2 is taken against
    order = [ref_i] + [i for i in range(n_s) if i != ref_i]
    for block in _sample_blocks(ds, n_m * n_k * 4, tile_bytes):
        onehot = np.eye(len(ts), dtype=np.float32)[codes[block]]  # (block, test_set)
        ref_mean = None
        for i in order:
            tile = np.array(store.read_values(ds["loss"].isel(scale=i, sample=block)), np.float32)
            if per_sample:  # before _sum_by_test_set zeroes the NaNs
                mean = _seed_mean(tile)
                if i == ref_i:
                    ref_mean = mean
                else:
                    sample_r2[i, block] = stats.rowwise_r2(mean, ref_mean)
            s, c = _sum_by_test_set(tile, onehot)
            sums[i] += s
            counts[i] += c
            if has_correct:
                correct = np.array(store.read_values(ds["correct"].isel(scale=i, sample=block)),
                                   np.float32)
                s, c = _sum_by_test_set(correct, onehot)
                acc_sums[i] += s
                acc_counts[i] += c
            del tile
    coords = {"scale": names, "mixture": [str(m) for m in ds["mixture"].values],
              "seed": ds["seed"].values, "test_set": ts}
    dims = ("scale", "mixture", "seed", "test_set")
    with np.errstate(invalid="ignore", divide="ignore"):
        loss_mean = xr.DataArray(sums / counts, coords, dims)
        acc_mean = xr.DataArray(acc_sums / acc_counts, coords, dims) if has_correct else None
    has_data = counts.sum(-1) > 0
    flag = ds["done"].values.astype(bool) if "done" in ds else has_data
    done = xr.DataArray(flag & has_data, {k: coords[k] for k in dims[:3]}, dims[:3])
    loss_mean = loss_mean.where(done)  # a cell flagged not-done is ignored even if written
    if acc_mean is not None:
        acc_mean = acc_mean.where(done)
    n_items = (xr.DataArray(acc_counts.reshape(-1, len(ts)).max(0).astype(int),
                            {"test_set": ts}, ("test_set",)) if has_correct else None)
    r2 = None
    if per_sample:
        r2 = xr.DataArray(sample_r2, {"scale": names, "test_set": ("sample", as_str(ds["test_set"].values))}, ("scale", "sample"))
        r2 = r2.where(done.any(("mixture", "seed")))
    return Reduced(loss_mean, acc_mean, done, r2, reference, n_items)


def missing_cells(done: xr.DataArray) -> list[tuple[str, str, int]]:
    """(scale, mixture, seed) of every cell not done, in store order."""
    idx = np.argwhere(~done.values)
    return [(str(done.scale.values[a]), str(done.mixture.values[b]), int(done.seed.values[c]))
            for a, b, c in idx]


def load_pair_samples(ds: xr.Dataset, scales: list[str], mixtures: list[str]) -> xr.DataArray:
    """Seed-mean per-sample losses for a few scales and mixtures: (scale, mixture, sample).

    Small by construction (used for the per-sample scatter), so a plain read is fine."""
    sub = ds["loss"].sel(scale=scales, mixture=mixtures)
    values = np.array(store.read_values(sub), np.float32)  # (scale, mixture, seed, sample)
    if "done" in ds:
        done = ds["done"].sel(scale=scales, mixture=mixtures).values.astype(bool)
        values[~done] = np.nan
    return xr.DataArray(_seed_mean(values.reshape(-1, *sub.shape[2:]))
                        .reshape(len(scales), len(mixtures), -1),
                        {"scale": scales, "mixture": mixtures,
                         "test_set": ("sample", as_str(ds["test_set"].values))},
                        ("scale", "mixture", "sample"))
