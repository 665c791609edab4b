"""Tests of pmed.imputation: Rubin's rules by hand, MICE behaviour, Nelson-Aalen by hand."""

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest
from scipy import stats

from pmed import imputation as imp


def test_rubin_pool_hand_example():
    """m = 3, estimates 1, 2, 3, variances 0.5 each.
    Qbar = 2, W = 0.5, B = 1, T = 0.5 + (4/3) * 1 = 11/6, r = (4/3)/0.5 = 8/3,
    df = (m - 1)(1 + 1/r)^2 = 2 * (11/8)^2 = 3.78125, fmi = (r + 2/(df + 3)) / (r + 1)."""
    res = imp.rubin_pool(np.array([[1.0], [2.0], [3.0]]), np.array([[0.5], [0.5], [0.5]])).iloc[0]
    npt.assert_allclose([res["estimate"], res["within"], res["between"], res["total"]], [2, 0.5, 1, 11 / 6])
    npt.assert_allclose(res["df"], 3.78125)
    npt.assert_allclose(res["riv"], 8 / 3)
    npt.assert_allclose(res["fmi"], (8 / 3 + 2 / (3.78125 + 3)) / (8 / 3 + 1))
    half = stats.t.ppf(0.975, 3.78125) * np.sqrt(11 / 6)
    npt.assert_allclose([res["ci_low"], res["ci_high"]], [2 - half, 2 + half])


def test_rubin_pool_barnard_rubin_df():
    """Barnard & Rubin (1999): df_obs = (v+1)/(v+3) v (1 - lambda), lambda = (1+1/m) B / T."""
    res = imp.rubin_pool(np.array([[1.0], [2.0], [3.0]]), np.array([[0.5]] * 3), df_complete=20).iloc[0]
    lam = (4 / 3) / (11 / 6)
    df_obs = 21 / 23 * 20 * (1 - lam)
    npt.assert_allclose(res["df"], 1 / (1 / 3.78125 + 1 / df_obs))


def test_rubin_pool_no_between_variance():
    res = imp.rubin_pool(np.array([[1.0, 2.0]] * 4), np.array([[0.04, 0.09]] * 4), names=["a", "b"])
    assert np.isinf(res["df"]).all()
    npt.assert_allclose(res["se"], [0.2, 0.3])
    npt.assert_allclose(res["ci_low"], [1 - 1.959964 * 0.2, 2 - 1.959964 * 0.3], rtol=1e-6)
    with pytest.raises(ValueError, match=">= 2 imputations"):
        imp.rubin_pool(np.array([[1.0]]), np.array([[1.0]]))


@pytest.fixture(scope="module")
def mcar_frame():
    rng = np.random.default_rng(2)
    n = 2000
    x1 = rng.normal(size=n)
    x2 = 2 + x1 + rng.normal(scale=0.5, size=n)
    b = rng.binomial(1, 1 / (1 + np.exp(-2 * x1)))
    df = pd.DataFrame({"x1": x1, "x2": x2, "b": b.astype(float), "aux": rng.normal(size=n)})
    df_miss = df.copy()
    df_miss.loc[rng.random(n) < 0.3, "x2"] = np.nan
    df_miss.loc[rng.random(n) < 0.2, "b"] = np.nan
    return df, df_miss


def test_mice_completes_keeps_observed_and_varies(mcar_frame):
    full, miss = mcar_frame
    imps = imp.mice(miss, ["x1", "x2", "b"], m=3, seed=9, max_iter=5, auxiliary=["aux"])
    assert len(imps) == 3
    for d in imps:
        assert not d[["x2", "b"]].isna().any().any()
        obs = miss["x2"].notna()
        npt.assert_array_equal(d.loc[obs, "x2"], miss.loc[obs, "x2"])
        assert set(np.unique(d["b"])) <= {0.0, 1.0}
        # Imputed x2 tracks x1 (conditional model) and its mean matches the truth (MCAR).
        assert abs(d["x2"].mean() - full["x2"].mean()) < 0.05
    mis = miss["x2"].isna()
    assert not np.allclose(imps[0].loc[mis, "x2"], imps[1].loc[mis, "x2"])
    again = imp.mice(miss, ["x1", "x2", "b"], m=3, seed=9, max_iter=5, auxiliary=["aux"])
    npt.assert_array_equal(again[2]["x2"], imps[2]["x2"])


def test_mice_does_not_depend_on_the_worker_count(mcar_frame):
    """Imputation i draws from default_rng(seed + i) whichever process runs it."""
    _, miss = mcar_frame
    one = imp.mice(miss, ["x1", "x2", "b"], m=3, seed=4, max_iter=3, auxiliary=["aux"], n_jobs=1)
    two = imp.mice(miss, ["x1", "x2", "b"], m=3, seed=4, max_iter=3, auxiliary=["aux"], n_jobs=2)
    for a, b in zip(one, two, strict=True):
        pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(two[2], imp.mice(miss, ["x1", "x2", "b"], m=1, seed=6, max_iter=3,
                                                   auxiliary=["aux"])[0])


def test_mice_rejects_bad_input(mcar_frame):
    _, miss = mcar_frame
    with pytest.raises(KeyError, match="not in the table"):
        imp.mice(miss, ["nope"], m=2, seed=1)
    with pytest.raises(ValueError, match="auxiliary"):
        imp.mice(miss, ["x1"], m=2, seed=1, auxiliary=["x2"])


def test_nelson_aalen_hand():
    """times 1, 2, 2, 3 (events 1, 1, 0, 1) plus one censored at 0.5 (H = 0):
    at risk 4, 3, 1 at t = 1, 2, 3 -> H(1) = 1/4, H(2) = 1/4 + 1/3, H(3) = 1/4 + 1/3 + 1."""
    h = imp.nelson_aalen([1, 2, 2, 3, 0.5], [1, 1, 0, 1, 0])
    npt.assert_allclose(h, [1 / 4, 1 / 4 + 1 / 3, 1 / 4 + 1 / 3, 1 / 4 + 1 / 3 + 1, 0])


def test_mice_pmm_corrects_mar_bias():
    """x2 missing more often when x1 is high (MAR): the complete-case mean of x2 is biased
    low, the MI mean (PMM, Rubin's rules) covers the true mean; imputations are observed values."""
    rng = np.random.default_rng(4)
    n = 3000
    x1 = rng.normal(size=n)
    x2 = 1 + 0.8 * x1 + rng.normal(scale=0.6, size=n)
    df = pd.DataFrame({"x1": x1, "x2": x2})
    miss = rng.random(n) < 1 / (1 + np.exp(-(2 * x1 - 0.5)))
    df.loc[miss, "x2"] = np.nan
    assert df["x2"].mean() < x2.mean() - 0.3  # complete cases are biased
    imps = imp.mice(df, ["x1", "x2"], m=5, seed=3, max_iter=5)
    assert set(np.unique(imps[0].loc[miss, "x2"])) <= set(df["x2"].dropna())
    est = np.array([[d["x2"].mean()] for d in imps])
    var = np.array([[d["x2"].var(ddof=1) / n] for d in imps])
    pooled = imp.rubin_pool(est, var).iloc[0]
    assert pooled["ci_low"] - 0.02 < x2.mean() < pooled["ci_high"] + 0.02
    assert abs(pooled["estimate"] - x2.mean()) < 0.05
