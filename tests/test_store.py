"""The stores: loss store schema, NaN fill, concurrent cell writes from processes, migration,
variable-length strings, read errors; the attribution arrays."""
from __future__ import annotations

import multiprocessing as mp
import warnings

import numpy as np
import pytest
import xarray as xr

from s2l.store import (DIMS, FeatureStore, StoreError, StoreLayout, create_store, done_cells,
                       margins_array, open_store, read_values, score_array, write_cell,
                       write_dataset, write_scale)

SCALES, MIXTURES, SEEDS = ["xs", "s", "m"], ["a", "b", "c", "d"], [0, 1]


def layout(**kw) -> StoreLayout:
    base = dict(
        scales=SCALES, params=[10, 100, 1000], flops=[6e4, 6e6, 6e8], mixtures=MIXTURES,
        seeds=SEEDS, domains=["code", "prose"],
        weights=np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]]),
        test_set=["heldout-code"] * 5 + ["choice"] * 3, multiple_choice=True,
        cell_ids={f"{s}/{m}/{k}": f"id-{s}{m}{k}" for s in SCALES for m in MIXTURES for k in SEEDS},
        attrs={"sweep": "t"})
    base.update(kw)
    return StoreLayout(**base)


def fake_loss(scale, mixture, seed):
    return np.float32(np.arange(8) + 10 * SCALES.index(scale) + MIXTURES.index(mixture) + 0.5 * seed)


def test_created_store_follows_the_schema(tmp_path):
    path = tmp_path / "losses.zarr"
    assert create_store(path, layout()) == "created"
    ds = xr.open_zarr(path, consolidated=False)
    assert ds["loss"].dims == ("scale", "mixture", "seed", "sample")
    assert ds["loss"].dtype == np.float32
    assert ds["done"].dims == ("scale", "mixture", "seed") and not ds["done"].values.any()
    assert np.isnan(ds["loss"].values).all() and np.isnan(ds["correct"].values).all()
    assert ds["test_set"].dims == ("sample",) and ds["params"].dims == ("scale",)
    assert list(ds["params"].values) == [10, 100, 1000]
    assert ds["flops"].dtype == np.float64 and ds["weight"].dims == ("mixture", "domain")
    np.testing.assert_allclose(ds["weight"].sel(mixture="b").values, [0.75, 0.25])
    assert list(ds.scale.values) == SCALES and list(ds.seed.values) == SEEDS
    assert create_store(path, layout()) == "kept"


def _writer(path, cells):
    for s, m, k in cells:
        correct = np.array([np.nan] * 5 + [1, 0, 1], dtype=np.float32)
        write_cell(path, s, m, k, fake_loss(s, m, k), correct)


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "losses.zarr"
    create_store(path, layout())
    cells = [(s, m, k) for s in SCALES for m in MIXTURES for k in SEEDS]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, cells[i::4])) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ds = open_store(path)
    assert ds["done"].values.all()
    for s, m, k in cells:
        np.testing.assert_array_equal(ds["loss"].sel(scale=s, mixture=m, seed=k).values, fake_loss(s, m, k))
    assert all(done_cells(path).values())


def test_partial_store_is_readable_and_nan_where_not_done(tmp_path):
    path = tmp_path / "losses.zarr"
    create_store(path, layout())
    write_cell(path, "s", "c", 1, fake_loss("s", "c", 1), np.zeros(8))
    ds = open_store(path)
    done = ds["done"].values
    assert done.sum() == 1 and done[1, 2, 1]
    per_cell_nan = np.isnan(ds["loss"].values).any(-1)
    assert (per_cell_nan == ~done).all()


def test_nan_losses_are_refused(tmp_path):
    path = tmp_path / "losses.zarr"
    create_store(path, layout())
    bad = fake_loss("xs", "a", 0)
    bad[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_cell(path, "xs", "a", 0, bad, np.zeros(8))
    assert not open_store(path)["done"].values.any()


def test_grid_change_migrates_keeping_unchanged_done_cells(tmp_path):
    path = tmp_path / "losses.zarr"
    create_store(path, layout())
    write_cell(path, "xs", "a", 0, fake_loss("xs", "a", 0), np.zeros(8))
    write_cell(path, "m", "d", 1, fake_loss("m", "d", 1), np.zeros(8))
    ids = dict(layout().cell_ids)
    ids["m/d/1"] = "changed"  # e.g. a changed training recipe for this scale
    new = layout(mixtures=["a", "d", "e"], weights=np.array([[1, 0], [0, 1], [0.5, 0.5]]),
                 cell_ids={**{k: v for k, v in ids.items() if not k.split("/")[1] in "bc"},
                           **{f"{s}/e/{k}": "new" for s in SCALES for k in SEEDS}})
    assert create_store(path, new) == "migrated"
    ds = open_store(path)
    assert list(ds.mixture.values) == ["a", "d", "e"]
    assert bool(ds["done"].sel(scale="xs", mixture="a", seed=0))
    np.testing.assert_array_equal(ds["loss"].sel(scale="xs", mixture="a", seed=0).values, fake_loss("xs", "a", 0))
    assert not bool(ds["done"].sel(scale="m", mixture="d", seed=1))  # its id changed
    assert int(ds["done"].sum()) == 1
    backups = list(tmp_path.glob("losses.zarr.bak-*"))
    assert len(backups) == 1 and int(open_store(backups[0])["done"].sum()) == 2


def _unstable_spec_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "does not have a Zarr V3 specification" in str(w.message)]


def test_strings_are_variable_length_and_losses_bit_identical(tmp_path):
    """No fixed-width unicode reaches Zarr (it has no v3 spec: zarr warns it may become
    unreadable), whether the store is made by create_store or write_dataset; the losses
    come back bit for bit, one float32 chunk per cell."""
    rng = np.random.default_rng(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = tmp_path / "losses.zarr"
        create_store(path, layout())
        want = rng.normal(3, 1, 8).astype(np.float32)
        write_cell(path, "m", "b", 1, want, np.ones(8))
        ds = xr.Dataset({"loss": (DIMS, rng.normal(size=(2, 3, 1, 4)).astype(np.float32))},
                        coords={"scale": ["xs", "s"], "mixture": np.array(["a", "bb", "ccc"]),
                                "seed": [0], "sample": np.arange(4),
                                "test_set": ("sample", np.array(["t1", "t1", "t22", "t22"]))})
        write_dataset(tmp_path / "w.zarr", ds)
        got = xr.open_zarr(path, consolidated=False)
        back = xr.open_zarr(tmp_path / "w.zarr", consolidated=False)
        assert back["loss"].encoding["chunks"] == (1, 1, 1, 4)
        assert got["loss"].encoding["chunks"] == (1, 1, 1, 8)
        cell = got["loss"].sel(scale="m", mixture="b", seed=1).values
        np.testing.assert_array_equal(cell.view(np.uint32), want.view(np.uint32))
        np.testing.assert_array_equal(back["loss"].values.view(np.uint32),
                                      ds["loss"].values.view(np.uint32))
        assert list(back["mixture"].values) == ["a", "bb", "ccc"]
        assert list(back["test_set"].values) == ["t1", "t1", "t22", "t22"]
        assert "test_set" in back.coords and back["test_set"].dims == ("sample",)
    assert _unstable_spec_warnings(caught) == []


def test_open_store_errors_name_the_problem(tmp_path):
    with pytest.raises(StoreError, match="store not found"):
        open_store(tmp_path / "absent.zarr")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not zarr")
    with pytest.raises(StoreError, match="cannot open .* as a Zarr store"):
        open_store(tmp_path / "plain")
    path = tmp_path / "losses.zarr"
    create_store(path, layout())
    write_cell(path, "s", "a", 0, fake_loss("s", "a", 0), np.zeros(8))
    chunk = path / "loss" / "c" / "1" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:7])  # a truncated chunk (disk full, killed copy)
    ds = open_store(path)
    with pytest.raises(StoreError, match=r"cannot read `loss` \(scale s, mixture a, seed 0\): "
                                         "RuntimeError: Zstd decompression error"):
        read_values(ds["loss"].isel(scale=1, mixture=0, seed=0))
    np.testing.assert_array_equal(read_values(ds["loss"].isel(scale=2, mixture=0, seed=0)),
                                  np.full(8, np.nan, np.float32))  # other chunks still read
    (path / "test_set" / "c" / "0").write_bytes(b"garbage")  # a coordinate: found at open
    with pytest.raises(StoreError, match="cannot read `test_set`"):
        open_store(path)


def test_write_scale_writes_whole_scales_and_refuses_nan_in_done_cells(tmp_path):
    path = tmp_path / "losses.zarr"
    create_store(path, layout())
    loss = np.arange(4 * 2 * 8, dtype=np.float32).reshape(4, 2, 8)
    done = np.ones((4, 2), bool)
    done[1, 0] = False
    loss[1, 0] = np.nan
    write_scale(path, "s", loss, np.zeros_like(loss), done)
    ds = open_store(path)
    np.testing.assert_array_equal(ds["loss"].sel(scale="s").values, loss)
    assert ds["done"].sel(scale="s").values.tolist() == done.tolist()
    assert not ds["done"].sel(scale="xs").values.any()
    loss[2, 1, 3] = np.nan
    with pytest.raises(ValueError, match="1 done cell"):
        write_scale(path, "m", loss, None, done)
    assert not open_store(path)["done"].sel(scale="m").values.any()


def test_feature_store_and_attribution_arrays(tmp_path):
    fs = FeatureStore(tmp_path / "features" / "w8", n_models=3, n_train=10, n_targets=4,
                      proj_dim=5, rows_per_chunk=4)
    fs.create()
    phi = np.arange(50, dtype=np.float32).reshape(10, 5)
    fs.write(1, phi, np.ones((4, 5)), np.full(10, 0.5))
    assert [fs.is_done(m) for m in range(3)] == [False, True, False]
    fs.create()  # same shapes: kept, model 1 still there
    train, target, q = fs.arrays()
    assert train.shape == (3, 10, 5) and train.chunks == (1, 4, 5)
    np.testing.assert_array_equal(train[1], phi)
    assert np.isnan(train[0]).all() and np.isnan(q[2]).all() and (target[1] == 1).all()
    scores = score_array(tmp_path / "scores" / "w8.zarr", 10, 4, rows=4, create=True)
    scores[:4] = 1.0
    assert score_array(tmp_path / "scores" / "w8.zarr", 10, 4)[:].shape == (10, 4)
    margins = margins_array(tmp_path / "margins.zarr", 6, 4)
    margins[2] = np.arange(4)
    again = margins_array(tmp_path / "margins.zarr", 6, 4)  # exists: opened, not recreated
    np.testing.assert_array_equal(again[2], np.arange(4))
    assert np.isnan(again[0]).all()
