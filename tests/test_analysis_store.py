"""Store -> tables, checked against an independent pandas/scipy computation on synthetic
stores with known structure: NaN (not-done) cells, one and several seeds, chunked reads."""
import itertools

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats as sps

from s2l import store
from s2l.analysis import crossscale, load, pipeline, synthetic

NOT_DONE = [(0, 1, 0), (0, 2, 0), (0, 2, 1), (3, 4, 1), (3, 5, 0), (3, 5, 1), (1, 0, 1)]


def write(tmp_path, ds, name="s.zarr", chunk=None):
    return store.write_dataset(tmp_path / name, ds, sample_chunk=chunk)


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    ds = synthetic.synthetic_dataset(n_scales=4, n_mixtures=12, n_seeds=2, n_per_test_set=30,
                                     not_done=NOT_DONE)
    return ds, write(tmp_path_factory.mktemp("p"), ds, chunk=37)


def independent_means(ds: xr.Dataset, var="loss") -> pd.DataFrame:
    """Seed-averaged per-test-set means via pandas, done cells only: index (scale, mixture,
    test_set) -> value."""
    df = ds[var].to_dataframe().reset_index()
    done = ds["done"].to_dataframe().reset_index()
    df = df.merge(done, on=["scale", "mixture", "seed"])
    df = df[df.done]
    cell = df.groupby(["scale", "mixture", "seed", "test_set"])[var].mean()
    return cell.groupby(["scale", "mixture", "test_set"]).mean()


def test_reduce_matches_pandas_with_small_tiles(partial):
    ds, path = partial
    store = load.open_store(path)
    # a tile budget of 40 samples: one 37-sample chunk per block, no chunk split or read twice
    red = load.reduce_store(store, "s3", tile_bytes=12 * 2 * 4 * 40)
    assert load._sample_blocks(store, 12 * 2 * 4, 12 * 2 * 4 * 40) == [
        slice(0, 37), slice(37, 74), slice(74, 111), slice(111, 150)]  # 37 + 2 fit
    assert load._sample_blocks(store, 12 * 2 * 4, 12 * 2 * 4 * 80) == [
        slice(0, 74), slice(74, 150)]
    got = crossscale.seed_mean(red.loss_mean).to_series().dropna()
    want = independent_means(ds)
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index().astype(float),
                                   check_names=False, check_index_type=False,
                                   rtol=1e-5)
    acc = crossscale.seed_mean(red.acc_mean).sel(test_set="choice").to_series().dropna()
    want_acc = independent_means(ds, "correct").xs("choice", level="test_set")
    np.testing.assert_allclose(acc.sort_index().values, want_acc.sort_index().values, rtol=1e-6)
    assert load.missing_cells(red.done) == [
        (f"s{a}", f"mix{b:02d}", c) for a, b, c in sorted(NOT_DONE)]


def test_correlation_table_matches_scipy(partial):
    ds, path = partial
    a = pipeline.analyze(path, n_boot=200)
    means = independent_means(ds).unstack("test_set")
    assert a.reference == "s3" and a.proxies == ["s0", "s1", "s2"]
    for row in a.correlation.itertuples():
        x = means.loc[row.proxy][row.test_set]
        y = means.loc["s3"][row.test_set]
        both = x.index.intersection(y.index)
        # s0 misses all seeds of mix02 (mix01 keeps seed 1); s3 misses all of mix05
        assert row.n_mixtures == len(both) == {"s0": 10, "s1": 11, "s2": 11}[row.proxy]
        assert row.pearson == pytest.approx(sps.pearsonr(x[both], y[both])[0], abs=1e-5)
        assert row.spearman == pytest.approx(sps.spearmanr(x[both], y[both])[0], abs=1e-5)
        assert row.r2 == pytest.approx(sps.linregress(x[both], y[both]).rvalue ** 2, abs=1e-5)
        assert row.compute_ratio == pytest.approx(float(ds.flops[3] / ds.flops[int(row.proxy[1])]))
        assert row.pearson_lo <= row.pearson <= row.pearson_hi


def test_sample_r2_matches_scipy(partial):
    ds, path = partial
    red = load.reduce_store(load.open_store(path), "s3")
    loss = ds["loss"].where(ds["done"]).mean("seed", skipna=True).values  # (scale, mix, sample)
    for s in (0, 31, 77, 149):
        x, y = loss[0, :, s], loss[3, :, s]
        k = np.isfinite(x) & np.isfinite(y)
        assert red.sample_r2.values[0, s] == pytest.approx(sps.pearsonr(x[k], y[k])[0] ** 2,
                                                           abs=1e-4)
    assert np.isnan(red.sample_r2.sel(scale="s3")).all()


def test_decision_table_matches_pair_loop(partial):
    ds, path = partial
    a = pipeline.analyze(path, n_boot=50)
    means = independent_means(ds).unstack("test_set")
    row = a.decision[(a.decision.proxy == "s1") & (a.decision.test_set == "cloze")
                     & (a.decision.metric == "loss")].iloc[0]
    x, y = means.loc["s1"]["cloze"], means.loc["s3"]["cloze"]
    both = x.index.intersection(y.index)
    agree = [np.sign(x[i] - x[j]) == np.sign(y[i] - y[j])
             for i, j in itertools.combinations(both, 2)]
    assert row.n_pairs == len(agree) == 55
    assert row.decision_accuracy == pytest.approx(np.mean(agree))
    assert set(a.decision.metric) == {"loss", "accuracy"}
    assert set(a.decision[a.decision.metric == "accuracy"].test_set) == {"choice"}


def test_known_structure_bigger_proxy_predicts_better(tmp_path):
    ds = synthetic.synthetic_dataset(n_scales=4, n_mixtures=40, n_seeds=1, n_per_test_set=20)
    a = pipeline.analyze(write(tmp_path, ds), n_boot=100)
    by = a.correlation.groupby("proxy").pearson.mean()
    assert by["s2"] > by["s1"] > by["s0"] and by["s2"] > 0.85
    assert a.correlation.noise_ceiling.isna().all()  # one seed: no ceiling
    assert any("one seed" in n for n in a.notes)


def test_perfect_proxy_and_seed_noise_ceiling(tmp_path):
    ds = synthetic.synthetic_dataset(n_scales=2, n_mixtures=15, n_seeds=3, n_per_test_set=10,
                                     seed_noise=0.0)
    # the proxy is an affine function of the reference: r = 1, every pair ordered alike
    ds["loss"][0] = 2 * ds["loss"][1] + 1
    a = pipeline.analyze(write(tmp_path, ds), n_boot=100)
    assert np.allclose(a.correlation.pearson, 1, atol=1e-6)
    assert np.allclose(a.correlation.pearson_lo, 1, atol=1e-6)
    loss_rows = a.decision[a.decision.metric == "loss"]
    assert (loss_rows.decision_accuracy == 1).all()
    # seeds differ only by per-sample noise eps: near-perfect reliability
    assert (a.correlation.noise_ceiling > 0.95).all()
    assert np.allclose(a.correlation.pearson_vs_ceiling,
                       a.correlation.pearson / a.correlation.noise_ceiling)


def test_done_flag_false_hides_written_data(tmp_path):
    ds = synthetic.synthetic_dataset(n_scales=2, n_mixtures=6, n_seeds=1, n_per_test_set=5)
    ds["done"][0, 2, 0] = False  # loss is still there, e.g. a cell that crashed mid-write
    red = load.reduce_store(load.open_store(write(tmp_path, ds)), "s1")
    assert np.isnan(red.loss_mean.values[0, 2, 0]).all()
    assert load.missing_cells(red.done) == [("s0", "mix02", 0)]


def test_store_from_another_tool_without_done_or_correct(tmp_path):
    ds = synthetic.synthetic_dataset(n_scales=3, n_mixtures=8, n_seeds=2, n_per_test_set=10,
                                     not_done=[(0, 3, 0)])
    other = ds.drop_vars(["done", "correct", "weight"])
    other.attrs = {}
    other.to_zarr(tmp_path / "other.zarr", consolidated=False)  # xarray's defaults, no s2l
    a = pipeline.analyze(tmp_path / "other.zarr", n_boot=50)
    assert a.missing == [("s0", "mix03", 0)]  # derived from all-NaN loss
    assert a.mc_sets == [] and set(a.decision.metric) == {"loss"}
    figs = pipeline.make_figures(a)
    assert "fig3_corr_vs_accuracy.png" in figs  # a placeholder that says why


def test_reference_errors(partial, tmp_path):
    _, path = partial
    with pytest.raises(load.StoreError, match="unknown reference scale 'xl'.*s0, s1"):
        pipeline.analyze(path, reference="xl")
    ds = synthetic.synthetic_dataset(n_scales=3, n_mixtures=5, n_seeds=1, n_per_test_set=5,
                                     not_done=[(2, m, 0) for m in range(4)])
    with pytest.raises(load.StoreError, match="reference scale 's2' has 1 done.*s0, s1"):
        pipeline.analyze(write(tmp_path, ds))
    a = pipeline.analyze(write(tmp_path, ds, "b.zarr"), reference="s1", n_boot=20)
    # s2 (one done mixture) keeps its rows, with NaN statistics rather than made-up numbers
    assert a.proxies == ["s0", "s2"]
    s2 = a.correlation[a.correlation.proxy == "s2"]
    assert (s2.n_mixtures == 1).all() and s2.pearson.isna().all()
    assert a.correlation[a.correlation.proxy == "s0"].pearson.notna().all()
    with pytest.raises(load.StoreError, match="store not found"):
        pipeline.analyze(tmp_path / "nope.zarr")
    bad = xr.Dataset({"x": ("a", np.arange(3))})
    bad.to_zarr(tmp_path / "bad.zarr", consolidated=False)
    with pytest.raises(load.StoreError, match="no data variable `loss`"):
        pipeline.analyze(tmp_path / "bad.zarr")


def test_synthetic_store_on_disk_is_the_dataset_in_memory(tmp_path):
    """write_synthetic_store (through s2l.store, slab by slab) stores exactly the dataset
    synthetic_dataset builds in memory: bit-identical losses, same flags and coordinates."""
    kw = dict(not_done=[(1, 2, 0), (2, 0, 1)])
    path = synthetic.write_synthetic_store(tmp_path / "s.zarr", 3, 4, 2, 6, **kw)
    want = synthetic.synthetic_dataset(3, 4, 2, 6, **kw)
    got = xr.open_zarr(path, consolidated=False)
    for v in ("loss", "correct"):
        assert got[v].encoding["chunks"] == (1, 1, 1, 30)
        np.testing.assert_array_equal(got[v].values.view(np.uint32), want[v].values.view(np.uint32))
    assert got["done"].values.tolist() == want["done"].values.tolist()
    np.testing.assert_array_equal(got["weight"].values, want["weight"].values)
    for c in ("scale", "mixture", "seed", "sample", "test_set", "params", "flops", "domain"):
        assert got[c].values.tolist() == want[c].values.tolist(), c
    assert got.attrs["chance"] == {"choice": 0.25}
