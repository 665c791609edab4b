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


def test_other_figures_build():
    tab = pd.DataFrame({"term": ["a", "b"], "hr": [1.5, 0.7], "hr_ci_low": [1.1, 0.5], "hr_ci_high": [2.0, 0.9]})
    fig = plots.forest_plot(tab)
    assert "1.5 (1.1-2)" in _texts(fig)
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
