"""Tests for pmed.multiarm: hand examples, agreement with the binary code, simulated truth."""

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter

from pmed import armsim, causal, multiarm, parallel


def test_arm_codes_reference_first_and_errors():
    codes = multiarm.arm_codes(["io", "chemo", "chemo_io", "io"], ["io", "chemo", "chemo_io"], "chemo")
    npt.assert_array_equal(codes, [1, 0, 2, 1])
    assert multiarm.arm_order(["io", "chemo", "chemo_io"], "chemo") == ["chemo", "io", "chemo_io"]
    with pytest.raises(ValueError, match="not arms"):
        multiarm.arm_codes(["io", "surgery"], ["io", "chemo"], "chemo")
    with pytest.raises(ValueError, match="no persons"):
        multiarm.arm_codes(["io", "io"], ["io", "chemo"], "chemo")
    with pytest.raises(KeyError, match="reference"):
        multiarm.arm_order(["io", "chemo"], "chemo_io")


def test_generalized_iptw_hand_example():
    """arm (0, 0, 1, 2): P(A=a) = .5, .5, .25, .25; weights = P(A=a) / ps[i, a]."""
    arm = np.array([0, 0, 1, 2])
    ps = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.2, 0.4, 0.4], [0.1, 0.1, 0.8]])
    npt.assert_allclose(multiarm.generalized_iptw(arm, ps), [1.0, 2.0, 0.625, 0.3125])
    npt.assert_allclose(multiarm.generalized_iptw(arm, ps, stabilized=False), [2, 4, 2.5, 1.25])
    with pytest.raises(ValueError, match=r"\(n, k\)"):
        multiarm.generalized_iptw(arm, ps[:3])


def test_two_arms_reduce_to_the_binary_code():
    """k = 2: multinomial PS = binary logistic PS; weights and Cox HR match pmed.causal."""
    df, _ = armsim.simulate(800, 3)
    df = df[df["arm"] < 2].reset_index(drop=True)
    X = df[list(armsim.COVARIATES)]
    arm = df["arm"].to_numpy()
    ps = multiarm.fit_multinomial_propensity(X, arm)
    npt.assert_allclose(ps[:, 1], causal.fit_propensity(X, arm), atol=1e-5)
    w = multiarm.generalized_iptw(arm, ps)
    npt.assert_allclose(w, causal.iptw_weights(arm, ps[:, 1]), rtol=1e-9)
    hr = multiarm.pairwise_cox(df["time_days"], df["event"], arm, w, ["chemo", "io"])
    ref = causal.weighted_cox(df.assign(treated=arm), "time_days", "event", ["treated"], w)
    npt.assert_allclose(hr.loc["arm_io", ["coef", "se"]].to_numpy(float),
                        ref.loc["treated", ["coef", "se"]].to_numpy(float), rtol=1e-6)


def test_km_influence_variance_near_greenwood_and_weight_scale_free():
    rng = np.random.default_rng(11)
    t = rng.exponential(300, 600)
    c = rng.uniform(0, 900, 600)
    time, event = np.minimum(t, c), (t <= c).astype(int)
    s, var = multiarm.km_survival_if(time, event, np.ones(600), 365)
    kmf = KaplanMeierFitter().fit(time, event)
    assert s == pytest.approx(float(kmf.survival_function_at_times(365).iloc[0]))
    # Greenwood: S^2 sum d / (R (R - d)); the influence form has R^2: equal to O(1/n)
    at = kmf.event_table.loc[kmf.event_table.index <= 365]
    green = s**2 * np.sum(at["observed"] / (at["at_risk"] * (at["at_risk"] - at["observed"])))
    assert var == pytest.approx(green, rel=0.05)
    s2, var2 = multiarm.km_survival_if(time, event, np.full(600, 3.0), 365)
    assert (s2, var2) == pytest.approx((s, var))


def test_balance_pairs_layout():
    X = pd.DataFrame({"x": [0.0, 1.0, 0.0, 1.0, 2.0, 2.0]})
    arm = np.array([0, 0, 1, 1, 2, 2])
    tab = multiarm.balance_pairs(X, arm, ["a", "b", "c"], {"crude": np.ones(6)})
    assert list(tab["contrast"]) == ["b vs a", "c vs a"]
    # b vs a: equal means -> 0; c vs a: (2 - .5) / sqrt((0 + .25) / 2)
    npt.assert_allclose(tab["smd_crude"], [0.0, 1.5 / np.sqrt(0.125)])


def _marginal_truth(n: int, seed: int) -> np.ndarray:
    """True S_a(365) - S_chemo(365) in the simulated population (large sample of the truth)."""
    _, truth = armsim.simulate(n, seed)
    return truth["arm_values"][1:] - truth["arm_values"][0]


def test_iptw_differences_recover_truth_over_replicates():
    """Confounded assignment: crude differences are biased, IPTW ones are not (5 draws)."""
    true = _marginal_truth(200_000, 0)
    err_iptw, err_crude = [], []
    for seed in range(5):
        df, _ = armsim.simulate(3000, 100 + seed, censoring="independent")
        arm = df["arm"].to_numpy()
        w = multiarm.generalized_iptw(arm, multiarm.fit_multinomial_propensity(df[list(armsim.COVARIATES)], arm))
        for weights, err in ((w, err_iptw), (None, err_crude)):
            d = multiarm.survival_differences(df["time_days"], df["event"], arm, weights, armsim.ARMS, 365)
            err.append(d["difference"].to_numpy() - true)
    bias_iptw = np.abs(np.mean(err_iptw, axis=0))
    assert (bias_iptw < 0.03).all(), bias_iptw
    assert np.abs(np.mean(err_crude, axis=0)).max() > bias_iptw.max()


def test_mi_iptw_pools_and_equals_single_analysis_without_missing():
    df, _ = armsim.simulate(1200, 8, censoring="independent")
    arm = df["arm"].to_numpy()
    cov = list(armsim.COVARIATES)
    full = multiarm.mi_iptw(df, cov, arm, armsim.ARMS, 365, m=3, seed=1)
    w = multiarm.generalized_iptw(arm, multiarm.fit_multinomial_propensity(df[cov], arm))
    d = multiarm.survival_differences(df["time_days"], df["event"], arm, w, armsim.ARMS, 365)
    npt.assert_allclose(full["survival_difference"]["estimate"], d["difference"])
    holes = df.copy()
    rng = np.random.default_rng(2)
    holes.loc[rng.random(len(df)) < 0.2, "albumin_g_dl"] = np.nan
    mi = multiarm.mi_iptw(holes, cov, arm, armsim.ARMS, 365, m=3, seed=1, max_iter=2)
    assert list(mi["log_hr"]["term"]) == ["io", "chemo_io"]
    assert (mi["log_hr"]["fmi"] > 0).all()
    assert mi["weights"].shape == (3, len(df))
    npt.assert_allclose(mi["survival_difference"]["estimate"], d["difference"], atol=0.03)


def test_mi_iptw_and_bootstrap_do_not_depend_on_the_worker_count():
    df, _ = armsim.simulate(800, 3, censoring="independent")
    arm = df["arm"].to_numpy()
    cov = list(armsim.COVARIATES)
    rng = np.random.default_rng(5)
    df.loc[rng.random(len(df)) < 0.2, "albumin_g_dl"] = np.nan
    one, two = (multiarm.mi_iptw(df, cov, arm, armsim.ARMS, 365, m=3, seed=2, max_iter=2, n_jobs=j) for j in (1, 2))
    for key in ("log_hr", "survival_difference"):
        pd.testing.assert_frame_equal(one[key], two[key])
    npt.assert_array_equal(one["weights"], two["weights"])
    pd.testing.assert_frame_equal(one["completed"], two["completed"])
    assert len(one["completed_sets"]) == 3 and one["completed"] is one["completed_sets"][0]
    assert not one["completed_sets"][0].equals(one["completed_sets"][1])
    t, e = df["time_days"], df["event"]
    b1, b2 = (multiarm.bootstrap_differences(one["completed_sets"], t, e, arm, armsim.ARMS, 365, 6, 8, n_jobs=j)
              for j in (1, 2))
    pd.testing.assert_frame_equal(b1, b2)


def test_bootstrap_over_imputations_uses_set_b_mod_m():
    """MI Boot pooled (Schomaker & Heumann 2018): replicate b resamples imputed set b mod m."""
    df, _ = armsim.simulate(600, 4, censoring="independent")
    arm, cov = df["arm"].to_numpy(), list(armsim.COVARIATES)
    t, e = df["time_days"].to_numpy(float), df["event"].to_numpy(float)
    x0 = df[cov]
    x1 = x0.assign(albumin_g_dl=x0["albumin_g_dl"] + np.random.default_rng(1).normal(0, 0.5, len(df)))
    single = multiarm.bootstrap_differences(x0, t, e, arm, armsim.ARMS, 365, 8, 3)
    pd.testing.assert_frame_equal(multiarm.bootstrap_differences([x0, x0], t, e, arm, armsim.ARMS, 365, 8, 3), single)
    reps = []
    for b, idx in enumerate(parallel.resamples(len(df), 8, 3)):
        x = (x0, x1)[b % 2].iloc[idx]
        w = multiarm.generalized_iptw(arm[idx], multiarm.fit_multinomial_propensity(x, arm[idx]))
        reps.append(multiarm.survival_differences(t[idx], e[idx], arm[idx], w, armsim.ARMS, 365)["difference"])
    both = multiarm.bootstrap_differences([x0, x1], t, e, arm, armsim.ARMS, 365, 8, 3, n_jobs=2)
    npt.assert_allclose(both[["ci_low", "ci_high"]].to_numpy().T, np.quantile(np.array(reps), [0.025, 0.975], axis=0),
                        rtol=1e-12)


@pytest.mark.slow
def test_mi_iptw_ci_coverage_over_replicates():
    """95% CI of the pooled IPTW survival difference covers the truth in >= 80% of 20 draws."""
    true = _marginal_truth(200_000, 0)
    covered = []
    for seed in range(20):
        df, _ = armsim.simulate(2000, 500 + seed, censoring="independent")
        rng = np.random.default_rng(seed)
        df.loc[rng.random(len(df)) < 0.15, "albumin_g_dl"] = np.nan
        res = multiarm.mi_iptw(df, list(armsim.COVARIATES), df["arm"].to_numpy(), armsim.ARMS, 365,
                               m=5, seed=seed, max_iter=3)["survival_difference"]
        covered.append(((res["ci_low"] <= true) & (true <= res["ci_high"])).to_numpy())
    assert np.mean(covered) >= 0.8


def test_km_by_arm_carries_unweighted_numbers_at_risk():
    curves = multiarm.km_by_arm([1, 2, 3, 1, 2], [1, 0, 1, 1, 1], [0, 0, 0, 1, 1], [2, 2, 2, 1, 1], ["a", "b"])
    assert list(curves) == ["a", "b"]
    assert curves["a"]["n_at_risk"].tolist() == [3, 2, 1]
    npt.assert_allclose(curves["a"]["survival"], [2 / 3, 2 / 3, 0])
