"""The one module that owns Zarr layouts on disk: the per-sample loss store of a sweep.

Layout (public contract, DESIGN.md), `<out>/losses.zarr`, opened with `xarray.open_zarr`:

    loss     float32 (scale, mixture, seed, sample)   NaN until the cell is done
    correct  float32 (scale, mixture, seed, sample)   1/0 for multiple-choice samples, else NaN
    done     bool    (scale, mixture, seed)
    weight   float64 (mixture, domain)                mixture weights, normalised
    coords   scale (str), mixture (str), seed (int), sample (int), domain (str),
             test_set (str, along sample), params (int, along scale), flops (float, along scale)
    attrs    sweep (name), sweep_yaml (the sweep file), cell_ids ({"scale/mixture/seed": id}),
             chance ({test_set: chance accuracy})

Every array is chunked 1 along scale/mixture/seed, whole along sample: each cell owns its
chunks, so cells in separate processes (or nodes) write concurrently without locks (Zarr
whole-chunk writes are atomic per chunk; partial-chunk writes from two processes lose data).
A cell writes `loss` and `correct` first and `done` last, so a cell killed mid-write is simply
not done. Readers may open the store at any time.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

# Zarr format 3 has no fixed-width unicode type yet; xarray warns on every string coordinate.
warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")


@dataclasses.dataclass(frozen=True)
class StoreLayout:
    """Everything the store's shape and coordinates are made of (all aligned lists)."""

    scales: list[str]
    params: list[int]  # non-embedding parameters per scale
    flops: list[float]  # training FLOPs of one cell per scale
    mixtures: list[str]
    seeds: list[int]
    domains: list[str]
    weights: np.ndarray  # float (mixture, domain), rows sum to 1
    test_set: list[str]  # (sample,)
    multiple_choice: bool  # whether any test set gives `correct`
    cell_ids: dict[str, str]  # "scale/mixture/seed" -> stable cell id
    attrs: dict


def cell_key(scale: str, mixture: str, seed: int) -> str:
    return f"{scale}/{mixture}/{seed}"


def _dataset(layout: StoreLayout):
    import dask.array as da  # lazily: only the submit side creates stores

    shape = (len(layout.scales), len(layout.mixtures), len(layout.seeds), len(layout.test_set))
    chunks = (1, 1, 1, shape[3])
    dims = ("scale", "mixture", "seed", "sample")
    data = {
        "loss": (dims, da.full(shape, np.nan, dtype=np.float32, chunks=chunks)),
        "done": (dims[:3], da.zeros(shape[:3], dtype=bool, chunks=(1, 1, 1))),
        "weight": (("mixture", "domain"), np.asarray(layout.weights, dtype=np.float64)),
    }
    if layout.multiple_choice:
        data["correct"] = (dims, da.full(shape, np.nan, dtype=np.float32, chunks=chunks))
    coords = {
        "scale": np.array(layout.scales, dtype=object),
        "mixture": np.array(layout.mixtures, dtype=object),
        "seed": np.array(layout.seeds, dtype=np.int64),
        "sample": np.arange(shape[3], dtype=np.int64),
        "domain": np.array(layout.domains, dtype=object),
        "test_set": ("sample", np.array(layout.test_set, dtype=object)),
        "params": ("scale", np.array(layout.params, dtype=np.int64)),
        "flops": ("scale", np.array(layout.flops, dtype=np.float64)),
    }
    attrs = dict(layout.attrs, cell_ids=layout.cell_ids)
    return xr.Dataset(data, coords=coords, attrs=attrs)


def open_store(path: str | Path) -> xr.Dataset:
    return xr.open_zarr(str(path), consolidated=False)


def create_store(path: str | Path, layout: StoreLayout) -> str:
    """Create the store with full coordinates and NaN fill; idempotent.

    Returns "created", "kept" (same layout already there) or "migrated": the grid changed
    (cells added or removed, a config change that alters some cells' ids), so a new store is
    built that keeps every done cell whose id is unchanged; the old store is kept beside it
    as `losses.zarr.bak-<time>` so no finished result is ever lost.
    """
    path = Path(path)
    if not path.exists():
        _write_new(path, layout)
        return "created"
    old = open_store(path)
    if _same_layout(old, layout):
        return "kept"
    tmp = path.with_name(path.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    _write_new(tmp, layout)
    _copy_done_cells(old, tmp, layout)
    backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(backup)
    tmp.rename(path)
    return "migrated"


def _write_new(path: Path, layout: StoreLayout) -> None:
    _dataset(layout).to_zarr(str(path), mode="w", compute=False, consolidated=False,
                             zarr_format=3)
    # compute=False writes metadata and coordinates only; the fill value stands in for the
    # NaN/False chunks, so creating a store for 10^5 cells writes no data chunks.


def _same_layout(old: xr.Dataset, layout: StoreLayout) -> bool:
    return (list(old.scale.values) == layout.scales
            and list(old.mixture.values) == layout.mixtures
            and list(old.seed.values) == list(layout.seeds)
            and list(old.test_set.values) == list(layout.test_set)
            and old.attrs.get("cell_ids") == layout.cell_ids
            and ("correct" in old) == layout.multiple_choice)


def _copy_done_cells(old: xr.Dataset, new_path: Path, layout: StoreLayout) -> None:
    old_ids = old.attrs.get("cell_ids", {})
    done = old["done"].values
    same_samples = list(old.test_set.values) == list(layout.test_set)
    if not same_samples:
        return  # a different test suite: no old loss is comparable
    for i, s in enumerate(old.scale.values):
        for j, m in enumerate(old.mixture.values):
            for k, seed in enumerate(old.seed.values):
                key = cell_key(s, m, int(seed))
                if done[i, j, k] and layout.cell_ids.get(key) == old_ids.get(key):
                    cell = old.isel(scale=i, mixture=j, seed=k)
                    correct = cell["correct"].values if "correct" in old else None
                    write_cell(new_path, s, m, int(seed), cell["loss"].values, correct)


def _index(group: zarr.Group, name: str, value) -> int:
    values = list(group[name][:])
    try:
        return values.index(value)
    except ValueError:
        raise KeyError(f"{name} {value!r} is not in the store (has {values})") from None


def write_cell(path: str | Path, scale: str, mixture: str, seed: int,
               loss: np.ndarray, correct: np.ndarray | None = None) -> None:
    """Write one cell's per-sample results (float32 (sample,)) into its own chunks, then
    mark it done. Safe to call from many processes at once for different cells."""
    group = zarr.open_group(str(path), mode="r+")
    i, j, k = _index(group, "scale", scale), _index(group, "mixture", mixture), _index(group, "seed", seed)
    loss = np.asarray(loss, dtype=np.float32)
    if loss.shape != group["loss"].shape[3:]:
        raise ValueError(f"loss has shape {loss.shape}, store expects {group['loss'].shape[3:]}")
    if np.isnan(loss).any():
        raise ValueError(f"cell {cell_key(scale, mixture, seed)}: NaN in per-sample losses "
                         f"({int(np.isnan(loss).sum())} samples): training diverged?")
    group["loss"][i, j, k, :] = loss
    if "correct" in group:
        group["correct"][i, j, k, :] = np.asarray(correct, dtype=np.float32)
    group["done"][i, j, k] = True


def write_weights(path: str | Path, weights: np.ndarray) -> None:
    """Overwrite `weight` (mixture, domain), e.g. with selected subsets' domain make-up once
    they are known (one writer, after the store was created)."""
    group = zarr.open_group(str(path), mode="r+")
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != group["weight"].shape:
        raise ValueError(f"weights have shape {weights.shape}, store expects {group['weight'].shape}")
    group["weight"][:] = weights


def done_cells(path: str | Path) -> dict[str, bool]:
    """{"scale/mixture/seed": done} for every cell of the store (a cheap read)."""
    group = zarr.open_group(str(path), mode="r")
    done = group["done"][:]
    scales, mixtures, seeds = group["scale"][:], group["mixture"][:], group["seed"][:]
    return {cell_key(str(s), str(m), int(seed)): bool(done[i, j, k])
            for i, s in enumerate(scales) for j, m in enumerate(mixtures)
            for k, seed in enumerate(seeds)}


def zarr_array(path: str | Path, mode: str = "r", shape: tuple[int, ...] | None = None,
               chunks: tuple[int, ...] | None = None, dtype: str | np.dtype | None = None,
               fill_value=None) -> zarr.Array:
    """Open (mode "r"/"r+") or create (mode "w"/"a" with shape, chunks, dtype) a plain Zarr v3
    array at `path`: the building block of other stores (attribution features). Writers from
    different processes must write disjoint whole chunks."""
    if mode in ("r", "r+"):
        return zarr.open_array(str(path), mode=mode)
    return zarr.open_array(str(path), mode=mode, shape=shape, chunks=chunks, dtype=dtype,
                           fill_value=fill_value, zarr_format=3)
