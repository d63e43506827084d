"""The CLIs, the HTML report and the job summary, end to end on synthetic stores."""
import base64
import io
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from conftest import load_script as _script
from s2l import store as loss_store
from s2l.analysis import summary, synthetic

ROOT = Path(__file__).resolve().parents[1]



CLIS = [_script("correlate"), _script("report")]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    ds = synthetic.synthetic_dataset(n_scales=3, n_mixtures=8, n_seeds=2, n_per_test_set=20,
                                     not_done=[(0, 3, 1)])
    # another writer's string coords: numpy 2 StringDType, which refuses .astype(str)
    ds = ds.assign_coords(test_set=("sample", ds.test_set.values.astype(np.dtypes.StringDType())))
    ds.attrs |= {"sweep": "unit-grid", "sweep_yaml": "name: unit-grid\nscales: [s0, s1, s2]\n"}
    path = tmp_path_factory.mktemp("cli") / "losses.zarr"
    ds.to_zarr(path, consolidated=False)
    return ds, path


def run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "analysis" / script), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_correlate_cli_writes_tables_that_match_scipy(store, tmp_path):
    ds, path = store
    res = run("correlate.py", path, "--out", tmp_path, "--n-boot", 100, "--reference", "s1")
    assert res.returncode == 0, res.stderr
    corr = pd.read_csv(tmp_path / "correlation.csv")
    for col in ("proxy", "test_set", "pearson", "spearman", "r2", "compute_ratio",
                "pearson_lo", "pearson_hi", "spearman_lo", "spearman_hi", "n_mixtures"):
        assert col in corr
    assert set(corr.proxy) == {"s0", "s2"}  # --reference s1: the bigger s2 is a proxy too
    mean = ds.loss.where(ds.done).groupby("test_set").mean().mean("seed")
    row = corr[(corr.proxy == "s0") & (corr.test_set == "qa")].iloc[0]
    x, y = mean.sel(scale="s0", test_set="qa").values, mean.sel(scale="s1", test_set="qa").values
    assert row.pearson == pytest.approx(sps.pearsonr(x, y)[0], abs=1e-5)
    dec = pd.read_csv(tmp_path / "decision_accuracy.csv")
    assert set(dec.metric) == {"loss", "accuracy"}
    assert (dec.decision_accuracy.between(0, 1)).all()
    assert pd.read_csv(tmp_path / "missing_cells.csv").values.tolist() == [["s0", "mix03", 1]]
    img = matplotlib.image.imread(tmp_path / "fig2_corr_vs_compute.png")
    assert img.shape[0] > 300 and img.shape[1] > 500
    assert "r=" in res.stdout and "qa" in res.stdout


@pytest.mark.parametrize("args,message", [
    (["--reference", "xl"], "unknown reference scale 'xl'"),
    (["--store-missing"], "store not found"),
])
def test_cli_errors_exit_2(store, tmp_path, args, message):
    _, path = store
    if args == ["--store-missing"]:
        path, args = tmp_path / "absent.zarr", []
    for script in ("correlate.py", "report.py"):
        res = run(script, path, "--out", tmp_path / "o", *args)
        assert res.returncode == 2 and message in res.stderr
        assert not (tmp_path / "o" / "correlation.csv").exists()


def test_report_html(store, tmp_path):
    _, path = store
    res = run("report.py", path, "--out", tmp_path, "--n-boot", 100)
    assert res.returncode == 0, res.stderr
    html = (tmp_path / "report.html").read_text()
    assert "unit-grid" in html and "scales: [s0, s1, s2]" in html  # sweep config
    assert "1 of 48 cells not done" in html and "s0/mix03/seed 1" in html
    verdicts = re.findall(r"<li><b>([\w-]+)</b>: (.*?)</li>", html)
    assert [t for t, _ in verdicts] == list(synthetic.TEST_SETS)
    assert all("r=" in v for _, v in verdicts)
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(images) == 6
    assert matplotlib.image.imread(io.BytesIO(base64.b64decode(images[0]))).shape[0] > 300


def test_summary_text_and_figure(store, tmp_path):
    _, path = store
    text = summary.summarize(path)
    assert "reference s2" in text and text.count("r=") == 2 * len(synthetic.TEST_SETS)
    assert "1 of 48 cells not done" in text
    png = summary.write_summary_figure(path, tmp_path / "sub" / "summary.png")
    assert matplotlib.image.imread(png).shape[1] > 500
    # the sweep's final summary: the same text and figure from one analysis
    both, png2 = summary.summary_and_figure(path, tmp_path / "both.png")
    assert both == text and matplotlib.image.imread(png2).shape == matplotlib.image.imread(png).shape


def test_summary_on_a_store_too_partial(tmp_path):
    ds = synthetic.synthetic_dataset(n_scales=2, n_mixtures=4, n_seeds=1, n_per_test_set=5,
                                     not_done=[(1, m, 0) for m in range(3)])
    loss_store.write_dataset(tmp_path / "p.zarr", ds)
    assert summary.summarize(tmp_path / "p.zarr").startswith("cross-scale summary unavailable: "
                                                             "reference scale 's1' has 1 done")
    assert summary.write_summary_figure(tmp_path / "p.zarr", tmp_path / "x.png") is None
    text, png = summary.summary_and_figure(tmp_path / "p.zarr", tmp_path / "y.png")
    assert text.startswith("cross-scale summary unavailable: ") and png is None
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


def tree(path: Path) -> dict:
    """Every file under `path`: relative name -> (bytes, mtime_ns); a write shows."""
    return {str(p.relative_to(path)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def made(tmp_path):
    """A small store written through s2l.store (as a sweep's would be)."""
    path = synthetic.write_synthetic_store(tmp_path / "made" / "losses.zarr", n_scales=3,
                                           n_mixtures=6, n_seeds=2, n_per_test_set=8)
    return path


def test_cli_reads_the_store_and_never_writes_into_it(made, tmp_path, capsys):
    before = tree(made)
    for cli in CLIS:
        assert cli.main([str(made), "--out", str(tmp_path / cli.__name__), "--n-boot", "20"]) == 0
        assert (tmp_path / cli.__name__ / "correlation.csv").exists()
        for inside in (made, made / "analysis"):  # refused before anything is read or written
            assert cli.main([str(inside if inside == made else made), "--out", str(inside)]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "is inside the store" in err
    assert tree(made) == before
    assert not (made / "analysis").exists()


def _corrupt_chunk(store: Path) -> None:
    chunk = store / "loss" / "c" / "1" / "3" / "0" / "0"  # scale s1, mix03, seed 0
    chunk.write_bytes(b"\x28\xb5\x2f\xfd garbage" + chunk.read_bytes()[:5])


@pytest.mark.parametrize("script", ["correlate.py", "report.py"])
def test_corrupt_chunk_is_one_error_line_exit_2_nothing_written(made, tmp_path, script):
    _corrupt_chunk(made)
    res = run(script, made, "--out", tmp_path / "o", "--n-boot", 20)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: cannot read `loss` "
                                                                  "(scale s1): ")
    assert "Zstd decompression error" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def _no_loss(path):
    path.mkdir()
    loss_store.write_dataset(path, synthetic.synthetic_dataset(2, 4, 1, 3).drop_vars("loss"))


def _with(path, **attrs):
    ds = synthetic.synthetic_dataset(3, 6, 1, 4)
    ds.attrs |= attrs
    loss_store.write_dataset(path, ds)


def _edit(path, change):
    loss_store.write_dataset(path, change(synthetic.synthetic_dataset(3, 6, 1, 4)))


BAD_STORES = {
    "missing": (lambda p: None, "store not found"),
    "not zarr": (lambda p: (p.mkdir(), (p / "x.csv").write_text("a,b\n")),
                 "as a Zarr store: "),
    "a file": (lambda p: p.write_text("loss"), "as a Zarr store: "),
    "broken metadata": (lambda p: (_with(p), (p / "loss" / "zarr.json").write_text("{")),
                        "as a Zarr store: "),
    "no loss": (_no_loss, "no data variable `loss`"),
    "loss dims": (lambda p: _edit(p, lambda d: d.assign(loss=d.loss.transpose("mixture", ...))),
                  "`loss` must have dims"),
    "no samples": (lambda p: _edit(p, lambda d: d.isel(sample=slice(0, 0))),
                   "store has no sample entries"),
    "text loss": (lambda p: _edit(p, lambda d: d.assign(loss=d.loss.astype(str))),
                  "`loss` must hold numbers"),
    "no flops": (lambda p: _edit(p, lambda d: d.drop_vars("flops")), "coordinate `flops`"),
    "bad flops": (lambda p: _edit(p, lambda d: d.assign_coords(flops=d.flops * [1, -1, 1])),
                  "`flops` must hold finite numbers > 0"),
    "repeated mixture": (lambda p: _edit(p, lambda d: d.assign_coords(mixture=["m"] * 6)),
                         "`mixture` has repeated labels"),
    "chance not a map": (lambda p: _with(p, chance=[0.25]), "attribute `chance` must map"),
    "chance not a number": (lambda p: _with(p, chance={"choice": "1/4\n<b>"}),
                            "`chance.choice` must be a number in [0, 1], found '1/4\\n<b>'"),
}


@pytest.mark.parametrize("case", BAD_STORES)
def test_bad_store_is_one_error_line_exit_2_nothing_written(case, tmp_path, capsys):
    make, message = BAD_STORES[case]
    path = tmp_path / "s.zarr"
    make(path)
    for cli in CLIS:
        assert cli.main([str(path), "--out", str(tmp_path / "o"), "--n-boot", "10"]) == 2
        out, err = capsys.readouterr()
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
        assert out == "" and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,message", [
    (["--n-boot", "0"], "must be in [1, 100000]"), (["--n-boot", "1e9"], "not an integer"),
    (["--seed", "-1"], "must be in [0, 4294967295]"),
    ([], "the following arguments are required: --out"),
])
def test_bad_options_exit_2(store, tmp_path, capsys, args, message):
    _, path = store
    if args:
        args += ["--out", str(tmp_path / "o")]
    for cli in CLIS:
        with pytest.raises(SystemExit) as exit_:
            cli.main([str(path), *args])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
