"""Tests for pmed.hte: Qini and calibration by hand, comparison with the demo truth."""

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest

from pmed import hte


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


def test_benefit_calibration_groups():
    cate = np.arange(8.0)
    psi = np.arange(8.0) * 2
    cal = hte.benefit_calibration(cate, psi, n_groups=4)
    npt.assert_array_equal(cal["n"], [2, 2, 2, 2])
    npt.assert_allclose(cal["predicted"], [0.5, 2.5, 4.5, 6.5])
    npt.assert_allclose(cal["observed"], [1, 5, 9, 13])


TRUTH = {"1": {"a": 0.5, "b": 0.6}, "2": {"a": 0.7, "b": 0.4}, "3": {"a": 0.3, "b": 0.35}}


def test_true_survival_matrix_and_missing_person():
    m = hte.true_survival_matrix([2, 1], TRUTH, ["a", "b"])
    npt.assert_allclose(m, [[0.7, 0.4], [0.5, 0.6]])
    with pytest.raises(KeyError, match="person 9"):
        hte.true_survival_matrix([9], TRUTH, ["a", "b"])


def test_truth_agreement_hand_example():
    """Best arms b, a, b; recommended b, b, none (fallback a)."""
    m = hte.true_survival_matrix([1, 2, 3], TRUTH, ["a", "b"])
    out = hte.truth_agreement(["b", "b", None], m, ["a", "b"], fallback="a")
    assert out["oracle_agreement"] == pytest.approx(1 / 3)
    assert out["oracle_agreement_recommended"] == pytest.approx(1 / 2)
    assert out["share_no_recommendation"] == pytest.approx(1 / 3)
    assert out["true_value"] == pytest.approx((0.6 + 0.4 + 0.3) / 3)
    assert out["oracle_value"] == pytest.approx((0.6 + 0.7 + 0.35) / 3)
    assert out["best_single_arm_value"] == pytest.approx(1.5 / 3)
    with pytest.raises(ValueError, match="not arms"):
        hte.truth_agreement(["c"], m[:1], ["a", "b"], "a")


def test_harmed_subgroup_recovered_counts_none_as_not_harmful():
    rec = ["io", "chemo", None, "io", "chemo_io"]
    driver = pd.array([1, 1, 1, 0, pd.NA], dtype="Int8")
    out = hte.harmed_subgroup_recovered(rec, driver)
    assert out["n"] == 3
    assert out["share_not_harmful"] == pytest.approx(2 / 3)
    assert out["share_not_harmful_recommended"] == pytest.approx(1 / 2)
