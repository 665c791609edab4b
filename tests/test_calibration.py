"""Tests of pmed.calibration against known answers and hand computations."""

import numpy as np
import numpy.testing as npt
import pytest
from scipy.special import expit, logit

from pmed import calibration as cal


@pytest.mark.filterwarnings(
    # reason: fractional outcomes near 0/1 trip statsmodels' separation heuristic; the fit is exact
    "ignore::statsmodels.tools.sm_exceptions.PerfectSeparationWarning"
)
def test_calibration_slope_and_intercept_known_answer():
    """If the true risk is expit(a + b logit(p)), logistic recalibration returns exactly b
    (fractional outcomes = the true risks, so the MLE is exact); likewise the offset model
    returns a for risks expit(a + logit(p))."""
    p = np.linspace(0.02, 0.95, 60)
    y_slope = expit(-0.3 + 0.6 * logit(p))
    res = cal.calibration_slope_intercept(y_slope, p)
    npt.assert_allclose(res["slope"], 0.6, atol=1e-6)
    y_citl = expit(0.4 + logit(p))
    npt.assert_allclose(cal.calibration_slope_intercept(y_citl, p)["intercept"], 0.4, atol=1e-6)


def test_calibration_slope_simulated_binary():
    """Predictions twice as extreme (logit scale) as the truth -> slope ~ 0.5."""
    rng = np.random.default_rng(5)
    lp = rng.normal(-0.5, 1.0, 20000)
    y = rng.binomial(1, expit(lp))
    res = cal.calibration_slope_intercept(y, expit(2 * lp))
    assert abs(res["slope"] - 0.5) < 0.03


def test_net_benefit_hand():
    """y = 1,1,0,0,1; p = .9,.4,.6,.2,.7.
    pt = 0.5: treated 0,2,4 -> TP 2, FP 1 -> 2/5 - 1/5 * 1 = 0.2.
    pt = 0.25: treated 0,1,2,4 -> TP 3, FP 1 -> 3/5 - 1/5 * 1/3."""
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.4, 0.6, 0.2, 0.7])
    npt.assert_allclose(cal.net_benefit(y, p, 0.5), 0.2)
    npt.assert_allclose(cal.net_benefit(y, p, 0.25), 0.6 - 0.2 / 3)
    dc = cal.decision_curve(y, p, [0.25, 0.5])
    npt.assert_allclose(dc["treat_all"], [0.6 - 0.4 / 3, 0.6 - 0.4])
    npt.assert_allclose(dc["model"], [0.6 - 0.2 / 3, 0.2])
    assert (dc["treat_none"] == 0).all()
    # Weights act as replication: weight 2 on row 2 (a false positive at pt 0.5).
    npt.assert_allclose(cal.net_benefit(y, p, 0.5, weights=[1, 1, 2, 1, 1]), 2 / 6 - 2 / 6)
    with pytest.raises(ValueError, match="threshold"):
        cal.net_benefit(y, p, 1.0)


def test_calibration_curve_and_oe():
    p = np.linspace(0.05, 0.9, 100)
    curve = cal.calibration_curve(p, p, n_bins=5)
    assert curve["n"].sum() == 100 and len(curve) == 5
    npt.assert_allclose(curve["observed"], curve["predicted"], rtol=1e-12)
    assert np.all(curve["ci_low"] <= curve["observed"]) and np.all(curve["ci_high"] >= curve["observed"])
    y = np.array([1, 0, 0, 0])
    npt.assert_allclose(cal.observed_expected(y, [0.5, 0.5, 0.5, 0.5]), 0.25 / 0.5)
    with pytest.raises(ValueError, match="predicted risks"):
        cal.observed_expected(y, [1.5, 0.5, 0.5, 0.5])


def test_calibration_groups_merged_to_min_count():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, 70)
    y = rng.binomial(1, p)
    curve = cal.calibration_curve(y, p, n_bins=10, min_count=11)
    assert curve["n"].sum() == 70 and curve["n"].min() >= 11
    assert curve["predicted"].is_monotonic_increasing
    assert len(cal.calibration_curve(y, p, n_bins=10)) == 10
