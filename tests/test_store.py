"""The loss store: schema, NaN fill, concurrent cell writes from processes, migration."""
from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import xarray as xr

from s2l.store import StoreLayout, create_store, done_cells, open_store, write_cell

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
