"""Figures and texts that do not mislead: points at their true compute, a proxy at chance
accuracy said so, a negative correlation named, one bootstrap (summary = correlate.py), and a
single-scale store that has nothing to correlate."""
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from conftest import load_script as _script
from s2l import store
from s2l.analysis import crossscale, figures, pipeline, stats, summary, synthetic




@pytest.fixture(scope="module")
def made(tmp_path_factory):
    ds = synthetic.synthetic_dataset(n_scales=3, n_mixtures=10, n_seeds=2, n_per_test_set=30)
    return store.write_dataset(tmp_path_factory.mktemp("fig") / "losses.zarr", ds)


LINE = re.compile(r"^\s+(\S+)\s+r=\s*(-?[\d.]+) \[\s*(-?[\d.]+),\s*(-?[\d.]+)\]")


def test_summary_and_correlate_report_the_same_cis(made, tmp_path, capsys):
    assert _script("correlate").main([str(made), "--out", str(tmp_path)]) == 0  # defaults
    capsys.readouterr()
    csv = pd.read_csv(tmp_path / "correlation.csv").set_index(["test_set", "proxy"])
    text, t, seen = summary.summarize(made), None, 0
    for line in text.splitlines():
        if line.startswith("  ") and not line.startswith("    "):
            t, _, ceiling = line.strip().partition("  (noise ceiling")
            assert ceiling, line  # 2 seeds of the reference: its noise ceiling is printed
        elif m := LINE.match(line):
            row = csv.loc[(t, m[1])]
            for got, col in zip(m.groups()[1:], ("pearson", "pearson_lo", "pearson_hi")):
                assert float(got) == pytest.approx(row[col], abs=0.0051), (t, m[1], col)
            seen += 1
    assert seen == len(csv) == 2 * len(synthetic.TEST_SETS)
    a = pipeline.analyze(made, per_sample=False, decisions=False)
    b = pipeline.analyze(made, n_boot=stats.N_BOOT, seed=stats.BOOT_SEED)
    pd.testing.assert_frame_equal(a.correlation[["pearson_lo", "pearson_hi"]],
                                  b.correlation[["pearson_lo", "pearson_hi"]])


def test_a_single_scale_has_nothing_to_correlate(tmp_path, capsys):
    ds = synthetic.synthetic_dataset(n_scales=1, n_mixtures=5, n_seeds=1, n_per_test_set=4)
    path = store.write_dataset(tmp_path / "one.zarr", ds)
    text = summary.summarize(path)
    assert text.startswith("cross-scale summary: nothing to correlate: only one scale (s0)")
    assert summary.write_summary_figure(path, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()
    for name in ("correlate", "report"):
        assert _script(name).main([str(path), "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name / "correlation.csv").exists()
    assert "nothing to correlate" in capsys.readouterr().out
    assert "nothing to correlate" in (tmp_path / "report" / "report.html").read_text()


def test_a_negative_correlation_is_named(tmp_path):
    ds = synthetic.synthetic_dataset(n_scales=2, n_mixtures=10, n_seeds=1, n_per_test_set=10)
    # the proxy's losses mirror the reference's: it ranks every mixture in reverse
    ds["loss"][0] = 8.0 - ds["loss"][1]
    path = store.write_dataset(tmp_path / "neg.zarr", ds)
    a = pipeline.analyze(path, n_boot=200)
    rows = a.correlation[a.correlation.test_set == "qa"]
    assert rows.pearson.iloc[0] < -0.9
    v = crossscale.verdict(rows)
    assert "s0 vs s1 on qa: r = -1.00, NEGATIVE: the proxy ranks mixtures in reverse" in v
    assert "no proxy correlates positively" in v
    assert "NEGATIVE" in summary.format_correlations(a)
    # a positive one is not flagged
    assert "NEGATIVE" not in crossscale.verdict(rows.assign(pearson=0.95, pearson_lo=0.9,
                                                            pearson_hi=0.99))


def test_accuracy_at_chance_is_said(made):
    a = pipeline.analyze(made, n_boot=100)
    rows = a.correlation[a.correlation.test_set == "choice"]
    assert {"proxy_acc_lo", "proxy_acc_hi", "at_chance"} <= set(rows)
    for r in rows.itertuples():  # a Wilson interval on the test set's 30 items
        lo, hi = stats.wilson_interval(r.proxy_acc, 30)
        assert (r.proxy_acc_lo, r.proxy_acc_hi) == pytest.approx((lo, hi))
        assert r.at_chance == (lo <= r.chance <= hi)
    # the Wilson interval is scipy's on an integer count
    want = sps.binomtest(9, 30).proportion_ci(method="wilson")
    assert stats.wilson_interval(9 / 30, 30) == pytest.approx((want.low, want.high))
    s0 = rows[rows.proxy == "s0"].iloc[0]
    assert s0.at_chance  # s0's accuracy is planted at chance (0.25)
    v = crossscale.verdict(rows)
    assert "s0's accuracy on choice" in v and "is at chance (0.25)" in v
    fig = figures.corr_vs_accuracy(a.correlation)
    assert "hollow = accuracy CI covers chance (s0 on choice" in fig.axes[0].get_title()
    assert not any("at chance" in crossscale.verdict(g) for t, g in
                   a.correlation.groupby("test_set") if t != "choice")


def _plotted_x(fig) -> list[np.ndarray]:
    """x of every data line (errorbar lines with markers) on the figure's visible axes."""
    return [line.get_xdata() for ax in fig.axes if ax.get_visible()
            for line in ax.get_lines() if line.get_marker() not in (None, "None", "")]


def test_points_sit_at_their_true_compute_and_test_sets_differ_by_marker(made):
    a = pipeline.analyze(made, n_boot=50)
    true = set(a.correlation.proxy_flops)
    for fig in (figures.corr_vs_compute(a.correlation, a.reference),
                figures.decision_vs_compute(a.decision, a.reference)):
        xs = _plotted_x(fig)
        assert xs and all(set(np.asarray(x, float)) <= true for x in xs)
    fig = figures.corr_vs_compute(a.correlation, a.reference)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(synthetic.TEST_SETS)  # one per test set
    markers = {line.get_marker() for ax in panels for line in ax.get_lines()
               if line.get_marker() not in (None, "None", "", "_")}  # "_": the CI caps
    assert len(markers) == len(synthetic.TEST_SETS)
