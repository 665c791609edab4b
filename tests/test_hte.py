"""Tests for pmed.hte: hand examples and a simulation with a known CATE."""

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest

from pmed import hte


def test_horizon_outcome_ipcw_hand_example():
    """Censoring KM (one arm): censored at 200 (4 at risk) -> G = 3/4 from day 200 on.

    Died day 100: y=0, w=1/G(100-)=1; censored 200 < h: unknown, w=0; followed to 400 and
    500: y=1, w=1/G(365)=4/3; died day 300: y=0, w=1/G(300-)=4/3. Weights sum to n.
    """
    out = hte.horizon_outcome([100, 200, 400, 500, 300], [1, 0, 0, 1, 1], [0] * 5, 365)
    npt.assert_array_equal(out["y"], [0, 0, 1, 1, 0])
    npt.assert_array_equal(out["known"], [True, False, True, True, True])
    npt.assert_allclose(out["ipcw"], [1, 0, 4 / 3, 4 / 3, 4 / 3])
    assert out["ipcw"].sum() == pytest.approx(5)


def test_qini_hand_example():
    """psi (1, 0, 1, -1) ranked as given: gains .25 .25 .5 .25 vs random .0625k -> Q=0.15625."""
    score = np.array([3.0, 2.0, 1.0, 0.0])
    psi = np.array([1.0, 0.0, 1.0, -1.0])
    assert hte.qini_coefficient(score, psi) == pytest.approx(0.15625)
    assert hte.qini_coefficient(-score, psi) == pytest.approx(-0.15625)
    curve = hte.qini_curve(score, psi, n_points=5)
    npt.assert_allclose(curve["gain"], [0, 0.25, 0.25, 0.5, 0.25])
    npt.assert_allclose(curve["random"], [0, 0.0625, 0.125, 0.1875, 0.25])
    # a constant score ranks in input order
    assert hte.qini_coefficient(np.zeros(4), psi) == pytest.approx(0.15625)
    with pytest.raises(ValueError, match="shape"):
        hte.qini_curve(score, psi[:3])


def test_qini_randomised_trial_form():
    """RCT with e=1/2, no censoring: psi = 2AY - 2(1-A)Y (Radcliffe's uplift in expectation).

    Persons ranked: (A=1,Y=1), (A=0,Y=0), (A=1,Y=0), (A=0,Y=1):
    psi = 2, 0, 0, -2; gains .5 .5 .5 0; random 0 -> Q = 1.5/4.
    """
    a = np.array([1, 0, 1, 0])
    y = np.array([1, 0, 0, 1])
    psi = 2 * a * y - 2 * (1 - a) * y
    assert hte.qini_coefficient(np.array([4, 3, 2, 1]), psi) == pytest.approx(0.375)


def test_recommend_band_and_ci():
    rec = hte.recommend(
        cate=[0.10, 0.01, -0.08, 0.10, -0.08],
        ci_low=[0.02, -0.02, -0.15, -0.01, -0.15],
        ci_high=[0.18, 0.04, -0.01, 0.2, 0.01],
        band=0.02,
    )
    assert list(rec) == ["immunotherapy", "no clear preference", "chemotherapy",
                         "no clear preference", "no clear preference"]


def test_policy_values_hand_example():
    v = hte.policy_values([1, 0], [0.8, 0.2], [0.5, 0.6], n_boot=50, seed=1)
    assert v["policy"]["estimate"] == pytest.approx(0.7)
    assert v["all_immunotherapy"]["estimate"] == pytest.approx(0.5)
    assert v["all_chemotherapy"]["estimate"] == pytest.approx(0.55)
    assert v["gain_vs_best_single"]["estimate"] == pytest.approx(0.15)
    assert v["policy"]["ci_low"] <= 0.7 <= v["policy"]["ci_high"]


def test_true_better_immunotherapy_sign_of_log_hr():
    """log-HR of treatment 0.1 - 0.012 pdl1 < 0 exactly when pdl1 > 8.33."""
    df = pd.DataFrame({"pdl1_pct": [0.0, 8.0, 9.0, 80.0]})
    truth = {"treated": 0.1, "treated:pdl1_pct": -0.012, "age_years": 0.02}
    npt.assert_array_equal(hte.true_better_immunotherapy(df, truth), [False, False, True, True])
    with pytest.raises(KeyError, match="treated"):
        hte.true_better_immunotherapy(df, {"age_years": 0.1})


def test_benefit_calibration_groups():
    cate = np.arange(8.0)
    psi = np.arange(8.0) * 2
    cal = hte.benefit_calibration(cate, psi, n_groups=4)
    npt.assert_array_equal(cal["n"], [2, 2, 2, 2])
    npt.assert_allclose(cal["predicted"], [0.5, 2.5, 4.5, 6.5])
    npt.assert_allclose(cal["observed"], [1, 5, 9, 13])


def _simulate(n, seed):
    """Confounded survival data; true log-HR of treatment 0.3 - 1.0 x1 (x1 ~ N(0, 1))."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    a = rng.binomial(1, 1 / (1 + np.exp(-(0.5 * x1 - 0.5 * x2))))
    log_hr = 0.5 * x2 + a * (0.3 - 1.0 * x1)
    t = rng.exponential(365 / np.exp(log_hr))
    c = rng.uniform(100, 900, n)
    X = pd.DataFrame({"x1": x1, "x2": x2})
    true_cate = np.exp(-np.exp(0.5 * x2 + 0.3 - x1)) - np.exp(-np.exp(0.5 * x2))
    return X, a, np.minimum(t, c), (t <= c).astype(int), true_cate


def test_dr_learner_recovers_heterogeneity():
    X, a, time, event, true_cate = _simulate(3000, seed=5)
    out = hte.horizon_outcome(time, event, a, 365)
    scores = hte.dr_scores(X, a, out, n_folds=5, seed=2)
    cate = hte.cross_fit_cate(X, scores["psi"], scores["fold"])
    assert np.corrcoef(cate["cate"], true_cate)[0, 1] > 0.8
    # the average of the DR scores estimates the ATE at the horizon
    assert scores["psi"].mean() == pytest.approx(true_cate.mean(), abs=0.04)
    q = hte.qini_with_ci(cate["cate"], scores["psi"], n_boot=100, seed=3)
    assert q["ci_low"] > 0
    assert ((cate["cate"] > 0) == (true_cate > 0)).mean() > 0.8
    assert (cate["ci_low"] < cate["cate"]).all() and (cate["cate"] < cate["ci_high"]).all()
    with pytest.raises(ValueError, match="outcome_learner"):
        hte.dr_scores(X, a, out, outcome_learner="forest")


def test_horizon_outcome_censoring_at_horizon_counts_in_g():
    """Censored exactly at h = 365 is unknown and lowers G(h): 3 at risk -> G(365) = 2/3."""
    out = hte.horizon_outcome([100, 365, 400, 500, 300], [1, 0, 0, 0, 1], [1] * 5, 365)
    npt.assert_array_equal(out["known"], [True, False, True, True, True])
    npt.assert_allclose(out["ipcw"], [1, 0, 1.5, 1.5, 1])
    assert out["ipcw"].sum() == pytest.approx(5)


def test_dr_learner_with_gradient_boosting_nuisance():
    X, a, time, event, true_cate = _simulate(1000, seed=8)
    out = hte.horizon_outcome(time, event, a, 365)
    scores = hte.dr_scores(X, a, out, n_folds=2, seed=1, outcome_learner="gbm")
    assert scores[["mu0", "mu1"]].stack().between(0, 1).all()
    cate = hte.cross_fit_cate(X, scores["psi"], scores["fold"])
    assert np.corrcoef(cate["cate"], true_cate)[0, 1] > 0.6


def test_recommendation_table_columns_and_labels():
    cate = pd.DataFrame({"cate": [0.1, -0.1, 0.01, 0.1], "ci_low": [0.02, -0.2, -0.05, -0.01],
                         "ci_high": [0.2, -0.01, 0.07, 0.2]})
    tab = hte.recommendation_table(np.array([7, 8, 9, 10]), cate, band=0.02)
    assert tab["recommendation"].tolist() == [
        "immunotherapy", "chemotherapy", "no clear preference", "no clear preference"]
    assert tab["person_id"].dtype == np.int64
    npt.assert_array_equal(tab["predicted_benefit"], cate["cate"])
    with pytest.raises(ValueError, match="person ids"):
        hte.recommendation_table(np.array([7, 8]), cate, 0.02)
    with pytest.raises(KeyError, match="ci_high"):
        hte.recommendation_table(np.array([7, 8, 9, 10]), cate.drop(columns="ci_high"), 0.02)


def test_agreement_with_truth_hand_example():
    """Policy right for patients 1, 2, 4 of 4 -> 3/4; firm: patients 1 (right), 3 (wrong) -> 1/2."""
    policy = np.array([1, 0, 1, 0])
    rec = np.array(["immunotherapy", "no clear preference", "immunotherapy", "no clear preference"])
    true_better = np.array([True, False, False, False])
    out = hte.agreement_with_truth(policy, rec, true_better)
    assert out == {"policy": 0.75, "firm": 0.5, "n_firm": 2}
    none_firm = hte.agreement_with_truth(policy, np.full(4, "no clear preference"), true_better)
    assert np.isnan(none_firm["firm"]) and none_firm["n_firm"] == 0
    with pytest.raises(ValueError, match="shape"):
        hte.agreement_with_truth(policy[:3], rec, true_better)
