"""Tests for pmed.hte: recommendations compared with the demo truth, by hand."""

import numpy.testing as npt
import pandas as pd
import pytest

from pmed import hte

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
