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

from s2l.analysis import summary, synthetic

ROOT = Path(__file__).resolve().parents[1]


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


def test_summary_on_a_store_too_partial(tmp_path):
    ds = synthetic.synthetic_dataset(n_scales=2, n_mixtures=4, n_seeds=1, n_per_test_set=5,
                                     not_done=[(1, m, 0) for m in range(3)])
    ds.to_zarr(tmp_path / "p.zarr", consolidated=False)
    assert summary.summarize(tmp_path / "p.zarr").startswith("cross-scale summary unavailable: "
                                                             "reference scale 's1' has 1 done")
    assert summary.write_summary_figure(tmp_path / "p.zarr", tmp_path / "x.png") is None
