"""Tests of pmed.plots: figures build, and small counts are suppressed on the KM risk table."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pmed import calibration as cal  # noqa: E402
from pmed import plots  # noqa: E402
from pmed import survival as sv  # noqa: E402


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_km_plot_suppresses_small_numbers_at_risk():
    rng = np.random.default_rng(0)
    t = np.concatenate([rng.exponential(300, 60), rng.exponential(150, 15)])
    e = np.ones_like(t, dtype=int)
    g = np.array(["a"] * 60 + ["b"] * 15)
    curves = {lab: sv.kaplan_meier(t[g == lab], e[g == lab]) for lab in ("a", "b")}
    nar = sv.numbers_at_risk(t, g, [0, 100, 200, 400])
    fig = plots.km_plot(curves, nar, min_cell=11)
    texts = _texts(fig)
    shown = {int(x) for x in texts if x.isdigit()}
    assert all(n == 0 or n >= 11 for n in shown)
    small = [n for n in nar.to_numpy().ravel() if 0 < n < 11]
    assert small and texts.count("<11") == len(small)
    assert fig.axes[1].get_xlabel().startswith("Days")
    plt.close(fig)
    with pytest.raises(KeyError, match="numbers-at-risk"):
        plots.km_plot(curves, nar.drop(index="b"), min_cell=11)


def test_km_plot_draws_no_small_risk_set():
    rng = np.random.default_rng(1)
    t = np.concatenate([rng.exponential(300, 60), rng.exponential(150, 8)])
    e = np.ones_like(t, dtype=int)
    g = np.array(["a"] * 60 + ["b"] * 8)
    curves = {lab: sv.kaplan_meier(t[g == lab], e[g == lab]) for lab in ("a", "b")}
    fig = plots.km_plot(curves, sv.numbers_at_risk(t, g, [0, 100, 200]), min_cell=11, ci=False)
    line_a, line_b = fig.axes[0].get_lines()
    last_drawn = line_a.get_xdata().max()
    a = curves["a"]
    assert a.loc[a["time"] <= last_drawn, "n_at_risk"].min() >= 11
    assert a["n_at_risk"].min() < 11 and last_drawn < a["time"].max()
    assert len(line_b.get_xdata()) == 0  # group of 8: not drawn
    assert "not drawn" in line_b.get_label()
    plt.close(fig)


def test_other_figures_build():
    tab = pd.DataFrame({"term": ["a", "b"], "hr": [1.5, 0.7], "hr_ci_low": [1.1, 0.5], "hr_ci_high": [2.0, 0.9]})
    fig = plots.forest_plot(tab)
    assert "1.50 (1.10 to 2.00)" in _texts(fig)
    plt.close(fig)
    p = np.linspace(0.05, 0.9, 100)
    y = (np.arange(100) % 3 == 0).astype(float)
    fig = plots.calibration_plot({"m": cal.calibration_curve(y, p, n_bins=5)})
    plt.close(fig)
    fig = plots.decision_curve_plot({"m": cal.decision_curve(y, p, [0.1, 0.2, 0.3])})
    assert len(fig.axes[0].lines) == 3
    plt.close(fig)
    rng = np.random.default_rng(1)
    res = pd.DataFrame({"x": rng.normal(size=200), "time": np.sort(rng.uniform(0, 700, 200))})
    fig = plots.schoenfeld_plot(res, ["x"], {"x": 0.5})
    assert fig.axes[0].get_title() == "x (p = 0.500)"
    plt.close(fig)


def test_importance_plot_orders_bars():
    tab = pd.DataFrame({"feature": ["a", "b", "c"], "importance": [0.02, 0.05, -0.01], "sd": [0.01, 0.01, 0.0]})
    fig = plots.importance_plot(tab)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["c", "a", "b"]  # largest on top
    plt.close(fig)
    with pytest.raises(KeyError, match="sd"):
        plots.importance_plot(tab.drop(columns="sd"))


def test_ps_overlap_and_love_plot():
    rng = np.random.default_rng(2)
    ps = rng.dirichlet([2, 2, 2], 99)
    t = (np.arange(99) % 3).astype(int)
    fig = plots.ps_overlap_plot(ps, t, ["chemo", "io", "chemo_io"], n_bins=10)
    ax = fig.axes[0]
    assert len(fig.axes) == 3 and len(ax.patches) == 30  # 10 bars per received arm
    assert [x.get_text() for x in ax.get_legend().get_texts()] == [
        "received chemo", "received io", "received chemo_io"]
    assert ax.get_ylabel() == "Density" and fig.axes[1].get_xlabel() == "P(io | covariates)"
    plt.close(fig)
    with pytest.raises(ValueError, match=r"\(n, k\)"):
        plots.ps_overlap_plot(ps, t[:5], ["a", "b", "c"])
    bal = pd.DataFrame({"covariate": ["a", "b", "c"], "smd_crude": [0.3, -0.05, 0.15],
                        "smd_iptw": [0.01, 0.02, -0.03], "smd_matched": [0.05, 0.0, 0.02]})
    fig = plots.love_plot(bal, 0.1)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "c", "a"]  # by |crude SMD|
    assert len(ax.collections) == 3 and ax.lines[0].get_xdata()[0] == 0.1
    plt.close(fig)
    with pytest.raises(KeyError, match="smd_matched"):
        plots.love_plot(bal.drop(columns="smd_matched"), 0.1)


def test_policy_value_plot_panels():
    values = pd.DataFrame({"policy": ["policy", "all a", "all b", "gain vs best single arm"],
                           "estimate": [0.5, 0.4, 0.45, 0.05], "ci_low": [0.45, 0.35, 0.4, 0.01],
                           "ci_high": [0.55, 0.45, 0.5, 0.09]})
    fig = plots.policy_value_plot(values, oracle=0.6)
    ax1, ax2 = fig.axes
    assert [t.get_text() for t in ax1.get_yticklabels()] == ["policy", "all a", "all b"]
    assert [t.get_text() for t in ax2.get_yticklabels()] == ["gain vs best single arm"]
    plt.close(fig)
    with pytest.raises(KeyError, match="ci_low"):
        plots.policy_value_plot(values.drop(columns="ci_low"))


def test_trajectory_band_plot_draws_bands_not_persons():
    bands = pd.DataFrame({"treatment": ["chemo", "chemo", "io", "io"], "months": [0, 1.5, 0, 1.5],
                          "n": [20, 15, 30, 12], "median": [200, 210, 220, 180],
                          "q25": [150, 160, 170, 140], "q75": [260, 270, 280, 230]})
    means = pd.DataFrame({"treatment": ["chemo", "chemo", "io", "io"], "months": [0, 2, 0, 2],
                          "fitted": [200, 212, 215, 175]})
    fig = plots.trajectory_band_plot(bands, means, "LDH (U/L)")
    ax = fig.axes[0]
    assert len(ax.lines) == 4 and len(ax.collections) == 2  # median + mean lines, IQR bands
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "LDH (U/L)"
    assert not any(t in ("20", "15", "30", "12") for t in _texts(fig))
    plt.close(fig)
    with pytest.raises(KeyError, match="q75"):
        plots.trajectory_band_plot(bands.drop(columns="q75"), means, "LDH")


STRATEGIES = {"reference": "chemo", "arms": {
    "chemo": {"all_of": ["chemotherapy"], "none_of": ["immunotherapy"]},
    "io": {"all_of": ["immunotherapy"], "none_of": ["chemotherapy"]},
    "chemo_io": {"all_of": ["chemotherapy", "immunotherapy"]}}}


def test_term_labels_name_units_interactions_and_reference_points():
    terms = ["arm_io", "arm_chemo_io", "arm_io:pdl1_pct", "arm_io:driver_positive",
             "ldh_u_l", "sex_female", "unknown_col"]
    labels = [plots.term_label(t, terms, STRATEGIES) for t in terms]
    assert labels == [
        "Immunotherapy alone vs chemotherapy alone (at PD-L1 0%, driver negative)",
        "Chemotherapy plus immunotherapy vs chemotherapy alone",
        "Immunotherapy alone x PD-L1 (per 1%)",
        "Immunotherapy alone x EGFR/ALK driver positive (vs negative)",
        "LDH (per 1 U/L)", "Female sex (vs male)", "unknown_col"]
    # the notebooks' " x " spelling of an interaction reads the same
    assert plots.term_label("arm_io x pdl1_pct", (), STRATEGIES) == labels[2]
    assert plots.term_label("chemo_io vs chemo", (), STRATEGIES) == \
        "Chemotherapy plus immunotherapy vs chemotherapy alone"


def test_forest_plot_shows_labels():
    tab = pd.DataFrame({"term": ["arm_io", "arm_io:pdl1_pct", "ldh_u_l"], "hr": [1.42, 0.985, 1.001],
                        "hr_ci_low": [1.18, 0.982, 1.0009], "hr_ci_high": [1.70, 0.988, 1.0016]})
    fig = plots.forest_plot(tab, arms=STRATEGIES)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks == ["Immunotherapy alone vs chemotherapy alone (at PD-L1 0%)",
                     "Immunotherapy alone x PD-L1 (per 1%)", "LDH (per 1 U/L)"]
    assert {"0.985 (0.982 to 0.988)", "1.0010 (1.0009 to 1.0016)"} <= set(_texts(fig))
    plt.close(fig)


def test_forest_axis_always_marks_no_effect():
    tab = pd.DataFrame({"term": ["io vs chemo"], "hr": [0.69], "hr_ci_low": [0.56], "hr_ci_high": [0.86]})
    fig = plots.forest_plot(tab, arms=STRATEGIES)
    ax = fig.axes[0]
    assert 1.0 in list(ax.get_xticks()) and ax.get_xlim()[1] > 1.0
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Immunotherapy alone vs chemotherapy alone"]
    plt.close(fig)
