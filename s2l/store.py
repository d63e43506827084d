"""The one module that knows how results sit in Zarr on disk: the per-sample loss store of a
sweep, and the plain arrays of an attribution study (features, scores, margins).

Loss store, `<out>/losses.zarr` (a public contract: `xarray.open_zarr(path,
consolidated=False)` opens it as a labelled tensor, and other tools may write the same schema):

    loss     float32 (scale, mixture, seed, sample)   NaN until the cell is done
    correct  float32 (scale, mixture, seed, sample)   1/0 for multiple-choice samples, else NaN
    done     bool    (scale, mixture, seed)
    weight   float64 (mixture, domain)                mixture weights, normalised
    coords   scale (str), mixture (str), seed (int), sample (int), domain (str),
             test_set (str, along sample), params (int, along scale), flops (float, along scale)
    attrs    sweep (name), sweep_yaml (the sweep file), cell_ids ({"scale/mixture/seed": id}),
             chance ({test_set: chance accuracy})

Strings are stored as Zarr v3's variable-length UTF-8 type: fixed-width unicode has no v3
specification yet (zarr warns that such arrays may become unreadable). Readers get numpy 2
`StringDType` coordinates back.

Every array is chunked 1 along scale/mixture/seed, whole along sample: each cell owns its
chunks, so cells in separate processes (or nodes) write concurrently without locks (a
whole-chunk write replaces one file; writes of parts of one chunk from two processes lose
data). A cell writes `loss` and `correct` first and `done` last, so a cell killed mid-write is
simply not done. Readers may open the store at any time.

Reading: `open_store` opens lazily and loads the small parts (coordinates, `done`, `weight`);
`read_values` reads a (lazy) selection. Both raise `StoreError` for a store that is missing,
not Zarr, or has an undecodable chunk, so callers can report one line instead of a traceback.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import zarr

if TYPE_CHECKING:  # imported where used: a cell job writes its chunks with zarr alone, and
    import xarray as xr  # xarray + pandas cost ~1.5 CPU-s of every job's start-up

DIMS = ("scale", "mixture", "seed", "sample")
_SMALL_VARS = ("done", "weight")  # loaded at open: O(cells) and O(mixtures x domains)


class StoreError(ValueError):
    """A store that is missing, unreadable (not Zarr, a corrupt chunk) or off the schema."""


def _one_line(text, limit: int = 400) -> str:
    """`text` with every run of whitespace or control characters as one space, cut to
    `limit` characters: error messages from paths or library exceptions stay one line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def _why(e: BaseException) -> str:
    return _one_line(f"{type(e).__name__}: {e}")


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


def _strings(values) -> np.ndarray:
    """Any sequence of strings (list, numpy <U, StringDType) as an object array, which
    xarray writes as Zarr's variable-length string type."""
    return np.array(np.asarray(values).tolist(), dtype=object)


def _dataset(layout: StoreLayout):
    import dask.array as da  # lazily: only the submit side creates stores

    shape = (len(layout.scales), len(layout.mixtures), len(layout.seeds), len(layout.test_set))
    chunks = (1, 1, 1, shape[3])
    data = {
        "loss": (DIMS, da.full(shape, np.nan, dtype=np.float32, chunks=chunks)),
        "done": (DIMS[:3], da.zeros(shape[:3], dtype=bool, chunks=(1, 1, 1))),
        "weight": (("mixture", "domain"), np.asarray(layout.weights, dtype=np.float64)),
    }
    if layout.multiple_choice:
        data["correct"] = (DIMS, da.full(shape, np.nan, dtype=np.float32, chunks=chunks))
    coords = {
        "scale": _strings(layout.scales),
        "mixture": _strings(layout.mixtures),
        "seed": np.array(layout.seeds, dtype=np.int64),
        "sample": np.arange(shape[3], dtype=np.int64),
        "domain": _strings(layout.domains),
        "test_set": ("sample", _strings(layout.test_set)),
        "params": ("scale", np.array(layout.params, dtype=np.int64)),
        "flops": ("scale", np.array(layout.flops, dtype=np.float64)),
    }
    attrs = dict(layout.attrs, cell_ids=layout.cell_ids)
    import xarray as xr

    return xr.Dataset(data, coords=coords, attrs=attrs)


# ------------------------------------------------------------------------------ reading

def open_store(path: str | Path, dask: bool = False) -> xr.Dataset:
    """Open a store lazily; coordinates, `done` and `weight` are read now (they are small).

    dask=False (default) gives xarray's lazily indexed arrays: a selection read goes straight
    to zarr, which fetches a selection's chunks concurrently (measured on a 154 MB tile of 192
    chunks: 0.65 s this way, 2.0 s through dask's graph). dask=True for dask-backed variables.
    Raises StoreError when `path` is missing, is not a Zarr group xarray can open, or one of
    the small parts cannot be read.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"store not found: {_one_line(path)}")
    try:
        import xarray as xr

        ds = xr.open_zarr(path, consolidated=False, chunks={} if dask else None)
    except Exception as e:  # noqa: BLE001 - whatever zarr/xarray raise, it is not a store
        raise StoreError(f"cannot open {_one_line(path)} as a Zarr store: {_why(e)}") from None
    for name in [*ds.coords, *(v for v in _SMALL_VARS if v in ds.data_vars)]:
        read_values(ds[name], in_place=True)
    return ds


def read_values(array: xr.DataArray, in_place: bool = False) -> np.ndarray:
    """The values of a (lazy) store array or selection of one, as numpy. A chunk that cannot
    be read or decoded (truncated, overwritten: "Zstd decompression error") raises StoreError
    naming the array. in_place=True also keeps the values in `array`'s variable (shared with
    its Dataset), so the Dataset does not read them again."""
    try:
        if in_place:
            array.variable.load()
        return array.values
    except Exception as e:  # noqa: BLE001 - any failure to read stored bytes is the store's
        _settle_reads()
        where = ", ".join(f"{d} {_one_line(array[d].item(), 60)!s}"
                          for d in ("scale", "mixture", "seed")
                          if d in array.coords and array[d].size == 1)
        raise StoreError(f"cannot read `{_one_line(array.name, 60)}`"
                         + (f" ({where})" if where else "") + f": {_why(e)}") from None


def _settle_reads(timeout_s: float = 10.0) -> None:
    """Wait for the chunk reads still running on zarr's I/O event loop. When one chunk of a
    selection fails, zarr raises at once while the selection's other chunk reads go on; a
    process that exits right after (a CLI reporting the error) would have asyncio print "Task
    was destroyed but it is pending!" for each of them on stderr."""
    import asyncio

    from zarr.core.sync import sync

    async def wait_for_others() -> None:
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=timeout_s)

    try:
        sync(wait_for_others(), timeout=timeout_s + 1)
    except Exception:  # noqa: BLE001 - only tidiness is at stake; the read error is reported
        pass


def check_schema(ds: xr.Dataset) -> None:
    """Raise StoreError naming the first problem if `ds` lacks what every reader relies on:
    `loss` (float, dims scale, mixture, seed, sample, none empty), `test_set` along sample,
    `flops` (finite, > 0) along scale, unique scale/mixture/seed labels, and `correct` /
    `done` with their dims when present. `params`, `weight`, `done` and `correct` are
    optional (stores written by other tools may lack them)."""
    if "loss" not in ds.data_vars:
        raise StoreError("store has no data variable `loss` (dims scale, mixture, seed, sample)")
    for name, dims in (("loss", DIMS), ("correct", DIMS), ("done", DIMS[:3])):
        if name in ds.data_vars and tuple(ds[name].dims) != dims:
            raise StoreError(f"`{name}` must have dims {dims}, "
                             f"found {_one_line(tuple(ds[name].dims), 200)}")
    empty = [d for d in DIMS if ds.sizes[d] == 0]
    if empty:
        raise StoreError(f"store has no {' and no '.join(empty)} entries (`loss` is empty)")
    for name in ("loss", "correct"):
        if name in ds.data_vars and ds[name].dtype.kind not in "fb":
            raise StoreError(f"`{name}` must hold numbers (float or bool), found dtype "
                             f"{_one_line(ds[name].dtype, 60)}")
    for name, dim in (("test_set", "sample"), ("flops", "scale")):
        if name not in ds.coords or ds[name].dims != (dim,):
            raise StoreError(f"store needs coordinate `{name}` along `{dim}`")
    flops = ds["flops"].values
    if flops.dtype.kind not in "iuf" or not (np.isfinite(flops) & (flops > 0)).all():
        raise StoreError("coordinate `flops` must hold finite numbers > 0, found "
                         f"{_one_line(flops.tolist(), 200)}")
    for dim in DIMS[:3]:
        labels = ds[dim].values.tolist()
        if len(set(labels)) != len(labels):
            raise StoreError(f"coordinate `{dim}` has repeated labels: {_one_line(labels, 200)}")


# ------------------------------------------------------------------------------ writing

def create_store(path: str | Path, layout: StoreLayout) -> str:
    """Create the store with full coordinates and NaN fill; idempotent.

    Returns "created", "kept" (same layout already there) or "migrated": the grid changed
    (cells added or removed, a config change that alters some cells' ids), so a new store is
    built that keeps every done cell whose id is unchanged; the old store is kept beside it
    as `losses.zarr.bak-<time>` so no finished result is ever lost.
    """
    path = Path(path)
    if not path.exists():
        # Built beside its place and renamed in: a store left half-made by a full disk or a
        # kill is never mistaken for one to keep or migrate.
        tmp = path.with_name(path.name + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _write_new(tmp, layout)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        tmp.rename(path)
        return "created"
    old = open_store(path)
    if _same_layout(old, layout):
        return "kept"
    tmp = path.with_name(path.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_new(tmp, layout)
        _copy_done_cells(old, tmp, layout)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


def write_scale(path: str | Path, scale: str, loss: np.ndarray, correct: np.ndarray | None = None,
                done: np.ndarray | None = None) -> None:
    """Write every cell of one scale at once (whole chunks, so one writer per scale): `loss`
    and `correct` float32 (mixture, seed, sample), `done` bool (mixture, seed), default all
    True; `done` is written last. For bulk writers (synthetic stores); sweep cells use
    `write_cell`. A done cell with a NaN loss is refused, as in `write_cell`."""
    group = zarr.open_group(str(path), mode="r+")
    i = _index(group, "scale", scale)
    loss = np.asarray(loss, dtype=np.float32)
    if loss.shape != group["loss"].shape[1:]:
        raise ValueError(f"loss has shape {loss.shape}, store expects {group['loss'].shape[1:]}")
    done = np.ones(loss.shape[:2], bool) if done is None else np.asarray(done, dtype=bool)
    if done.shape != loss.shape[:2]:
        raise ValueError(f"done has shape {done.shape}, store expects {loss.shape[:2]}")
    bad = np.isnan(loss).any(-1) & done
    if bad.any():
        raise ValueError(f"scale {scale}: {int(bad.sum())} done cell(s) with NaN losses")
    group["loss"][i] = loss
    if correct is not None:
        group["correct"][i] = np.asarray(correct, dtype=np.float32)
    group["done"][i] = done


def write_weights(path: str | Path, weights: np.ndarray) -> None:
    """Overwrite `weight` (mixture, domain), e.g. with selected subsets' domain make-up once
    they are known (one writer, after the store was created)."""
    group = zarr.open_group(str(path), mode="r+")
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != group["weight"].shape:
        raise ValueError(f"weights have shape {weights.shape}, store expects {group['weight'].shape}")
    group["weight"][:] = weights


def write_dataset(path: str | Path, ds: xr.Dataset, sample_chunk: int | None = None) -> Path:
    """Write a whole in-memory Dataset of the store schema to `path` (replacing what is
    there), laid out like a sweep's store: strings variable-length, variables over
    (scale, mixture, seed[, sample]) chunked 1 along scale/mixture/seed and `sample_chunk`
    (default: all) along sample. Any subset of the schema is written as given (for tests
    and stores made from other tools' results)."""
    path = Path(path)
    ds = ds.copy().compute()
    for name, var in list(ds.variables.items()):
        var.encoding = {}  # chunking/codecs of wherever `ds` was read from do not apply
        if var.dtype.kind in "UT":  # numpy <U or StringDType
            values = (var.dims, _strings(var.values), var.attrs)
            if name in ds.coords:
                ds = ds.assign_coords({name: values})
            else:
                ds[name] = values
    n = ds.sizes.get("sample", 1)
    size = {"scale": 1, "mixture": 1, "seed": 1, "sample": min(sample_chunk or n, n)}
    encoding = {name: {"chunks": tuple(size[d] for d in var.dims)}
                for name, var in ds.data_vars.items()
                if var.dims and tuple(var.dims) == DIMS[:var.ndim]}
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3, encoding=encoding)
    return path


def done_cells(path: str | Path) -> dict[str, bool]:
    """{"scale/mixture/seed": done} for every cell of the store (a cheap read)."""
    group = zarr.open_group(str(path), mode="r")
    done = group["done"][:]
    scales, mixtures, seeds = group["scale"][:], group["mixture"][:], group["seed"][:]
    return {cell_key(str(s), str(m), int(seed)): bool(done[i, j, k])
            for i, s in enumerate(scales) for j, m in enumerate(mixtures)
            for k, seed in enumerate(seeds)}


# --------------------------------------------------------------------------- plain arrays

def zarr_array(path: str | Path, mode: str = "r", shape: tuple[int, ...] | None = None,
               chunks: tuple[int, ...] | None = None, dtype: str | np.dtype | None = None,
               fill_value=None) -> zarr.Array:
    """Open (mode "r"/"r+") or create (mode "w"/"a" with shape, chunks, dtype) a plain Zarr v3
    array at `path`: the building block of the attribution arrays below. Writers from
    different processes must write disjoint whole chunks."""
    if mode in ("r", "r+"):
        return zarr.open_array(str(path), mode=mode)
    return zarr.open_array(str(path), mode=mode, shape=shape, chunks=chunks, dtype=dtype,
                           fill_value=fill_value, zarr_format=3)


# --------------------------------------------------------------- attribution feature arrays
#
# An attribution study's arrays, each a plain Zarr array:
#
#     <out>/features/<width>/train.zarr   (M, n, k) float32  chunks (1, rows, k)
#     <out>/features/<width>/target.zarr  (M, T, k) float32  chunks (1, T, k)
#     <out>/features/<width>/q.zarr       (M, n)    float32  chunks (1, n)
#     <out>/features/<width>/done/<m>     marker: model m featurized
#     <out>/scores/<width>.zarr           (n, T)    float32  chunks (rows, T)
#     <out>/subsets/margins.zarr          (m, T)    float32  chunks (1, T), NaN until trained
#
# M = models per width (ensemble members x checkpoints), n train examples, T targets, k the
# projection dim. Every featurize task writes the whole chunks of its own model index m, every
# subset task its own row of margins: concurrent writers never share a chunk. Arrays are
# created once, at submit time (`FeatureStore.create`), so tasks open them "r+".

class FeatureStore:
    """The projected-gradient features of one width: train (M, n, k), target (M, T, k) and
    q (M, n) float32 arrays under `root`, plus one done marker per model index."""

    def __init__(self, root: str | Path, n_models: int, n_train: int, n_targets: int,
                 proj_dim: int, rows_per_chunk: int = 8192):
        self.root = Path(root)
        self.M, self.n, self.T, self.k = n_models, n_train, n_targets, proj_dim
        self.rows = min(rows_per_chunk, n_train)

    def create(self) -> None:
        """Create the arrays (NaN-filled) unless they exist with this shape."""
        (self.root / "done").mkdir(parents=True, exist_ok=True)
        specs = {"train": ((self.M, self.n, self.k), (1, self.rows, self.k)),
                 "target": ((self.M, self.T, self.k), (1, self.T, self.k)),
                 "q": ((self.M, self.n), (1, self.n))}
        for name, (shape, chunks) in specs.items():
            path = self.root / f"{name}.zarr"
            if path.exists() and tuple(zarr_array(path).shape) == shape:
                continue
            zarr_array(path, "w", shape=shape, chunks=chunks, dtype="float32", fill_value=np.nan)

    def is_done(self, m: int) -> bool:
        return (self.root / "done" / str(m)).exists()

    def write(self, m: int, phi_train: np.ndarray, phi_target: np.ndarray, q: np.ndarray) -> None:
        """Whole chunks of model m: phi_train (n, k), phi_target (T, k), q (n,). The marker
        is written last so a crash leaves the model not done."""
        zarr_array(self.root / "train.zarr", "r+")[m] = np.asarray(phi_train, dtype=np.float32)
        zarr_array(self.root / "target.zarr", "r+")[m] = np.asarray(phi_target, dtype=np.float32)
        zarr_array(self.root / "q.zarr", "r+")[m] = np.asarray(q, dtype=np.float32)
        (self.root / "done" / str(m)).touch()

    def arrays(self):
        """(train (M, n, k), target (M, T, k), q (M, n)) Zarr arrays, read lazily by slices."""
        return tuple(zarr_array(self.root / f"{name}.zarr") for name in ("train", "target", "q"))


def score_array(path: str | Path, n_train: int, n_targets: int, rows: int = 8192, create=False):
    """The (n, T) score matrix of one width; `create=True` makes it (NaN-filled)."""
    if create:
        return zarr_array(path, "w", shape=(n_train, n_targets),
                          chunks=(min(rows, n_train), n_targets), dtype="float32", fill_value=np.nan)
    return zarr_array(path, "r+")


def margins_array(path: str | Path, m: int | None = None, n_targets: int | None = None):
    """(m, T) margins of subset models; created NaN-filled when m and n_targets are given and
    the array does not exist yet."""
    path = Path(path)
    if m is not None and not path.exists():
        return zarr_array(path, "w", shape=(m, n_targets), chunks=(1, n_targets),
                          dtype="float32", fill_value=np.nan)
    return zarr_array(path, "r+")
