"""Tests for pmed.policy on hand examples and on simulated data with known truth (pmed.armsim)."""

import itertools

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest
from sksurv.linear_model import CoxPHSurvivalAnalysis

from pmed import armsim, policy

MODS = ["pdl1_obs", "driver_obs"]


def test_ridge_cox_matches_scikit_survival_with_ties():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    t = np.round(rng.exponential(300 * np.exp(-0.5 * X[:, 0])) / 10) * 10 + 1  # many ties
    c = rng.uniform(0, 900, 400)
    time, event = np.minimum(t, c), (t <= c)
    y = np.array(list(zip(event, time, strict=True)), dtype=[("e", bool), ("t", float)])
    ref = CoxPHSurvivalAnalysis(alpha=0.5, ties="breslow").fit(X, y)
    mine = policy.RidgeCox(X, time, event.astype(float), alpha=0.5)
    npt.assert_allclose(mine.coef_, ref.coef_, atol=1e-7)
    h = ref.cum_baseline_hazard_
    npt.assert_allclose(mine.base(np.asarray(h.x)), np.asarray(h.y), rtol=1e-7)


def _scores(df, method):
    X = df[list(armsim.COVARIATES)].to_numpy()
    folds = np.arange(len(df)) % 5
    return policy.crossfit_scores(X, df["arm"], df["time_days"], df["event"], 365.0, folds,
                                  censoring=method)["gamma"]


def test_aipcw_scores_unbiased_under_covariate_dependent_censoring():
    """Mean DR score of each arm = true S_a(365) in the population (4 draws, n = 2500)."""
    err = []
    for seed in range(4):
        df, truth = armsim.simulate(2500, 40 + seed, censoring="covariate")
        err.append(_scores(df, "aipcw").mean(0) - truth["survival"].mean(0))
    assert np.abs(np.mean(err, axis=0)).max() < 0.025, np.mean(err, axis=0)


def test_km_ipcw_scores_unbiased_when_censoring_is_independent():
    err = []
    for seed in range(3):
        df, truth = armsim.simulate(2500, 60 + seed, censoring="independent")
        err.append(_scores(df, "km_ipcw").mean(0) - truth["survival"].mean(0))
    assert np.abs(np.mean(err, axis=0)).max() < 0.025


def test_crossfit_scores_rejects_unknown_method():
    with pytest.raises(ValueError, match="censoring"):
        policy.crossfit_scores(np.zeros((4, 1)), [0, 1, 0, 1], [1, 2, 3, 4], [1, 1, 0, 0], 2.0,
                               np.array([0, 0, 1, 1]), censoring="km")


def test_policy_tree_finds_planted_rule_and_equals_brute_force():
    """Arm 1 best iff x1 = 1 and x2 >= .5, arm 2 best iff x1 = 0; the tree must find it."""
    rng = np.random.default_rng(3)
    n = 400
    X = pd.DataFrame({"x1": rng.integers(0, 2, n).astype(float), "x2": rng.random(n),
                      "x3": rng.random(n)})
    gamma = np.zeros((n, 3))
    gamma[:, 1] = np.where((X["x1"] == 1) & (X["x2"] >= 0.5), 1.0, -1.0)
    gamma[:, 2] = np.where(X["x1"] == 0, 0.5, -0.5)
    gamma += rng.normal(0, 0.1, gamma.shape)
    tree = policy.fit_policy_tree(X, gamma, min_leaf=20, n_cuts=9)
    arm, _ = policy.apply_tree(tree, X)
    best = np.where(X["x1"] == 0, 2, np.where(X["x2"] >= 0.5, 1, 0))
    assert np.mean(arm == best) > 0.95
    # exhaustive search over every depth-2 tree on the same cut points gives the same value
    cuts = {c: policy._cuts(X[c].to_numpy(), 9) for c in X.columns}
    Xv = X.to_numpy()

    def leaf_best(rows):
        return gamma[rows].sum(0).max() if rows.sum() >= 20 else -np.inf

    brute = -np.inf
    for j, c in itertools.product(range(3), range(9)):
        if c >= cuts[X.columns[j]].size:
            continue
        left = Xv[:, j] < cuts[X.columns[j]][c]
        sides = []
        for side in (left, ~left):
            opts = [leaf_best(side)]
            for j2, col in enumerate(X.columns):
                for cut in cuts[col]:
                    lo = side & (Xv[:, j2] < cut)
                    opts.append(leaf_best(lo) + leaf_best(side & ~lo))
            sides.append(max(opts))
        brute = max(brute, sum(sides))
    value = gamma[np.arange(n), arm].sum()
    assert value == pytest.approx(brute)


def test_apply_tree_missing_modifier_on_path_only():
    tree = {"feature": "a", "cut": 0.5,
            "left": {"arm": 0},
            "right": {"feature": "b", "cut": 10.0, "left": {"arm": 1}, "right": {"arm": 2}}}
    X = pd.DataFrame({"a": [0.0, 1.0, 1.0, np.nan, 1.0], "b": [np.nan, 5.0, 20.0, 1.0, np.nan]})
    arm, rule = policy.apply_tree(tree, X)
    npt.assert_array_equal(arm, [0, 1, 2, -1, -1])
    assert rule[0] == "a < 0.5"  # b missing but not needed on this path
    assert rule[1] == "a >= 0.5 and b < 10"
    assert rule[3] == "no recommendation: a missing"
    assert rule[4] == "no recommendation: b missing"
    text = policy.describe_tree(tree, ["x", "y", "z"])
    assert text.splitlines()[0] == "if a < 0.5:" and "-> z" in text


def test_blp_test_size_and_power_on_draws():
    """Slope p-value: ~5% rejections under a useless proxy (400 draws), ~all under a good one."""
    rng = np.random.default_rng(5)
    rej_null, rej_alt = [], []
    for _ in range(400):
        s = rng.normal(size=300)
        rej_null.append(policy.blp_test(rng.normal(size=300) * 2, s)["p"] < 0.05)
        rej_alt.append(policy.blp_test(0.5 * s + rng.normal(size=300) * 2, s)["p"] < 0.05)
    assert 0.02 <= np.mean(rej_null) <= 0.09
    assert np.mean(rej_alt) > 0.9
    assert policy.blp_test(np.ones(5), np.zeros(5))["p"] == 1.0


def test_holm_and_combined_pvalues_by_hand():
    npt.assert_allclose(policy.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    assert policy.combine_pvalues([0.01, 0.02, 0.5]) == pytest.approx(0.04)
    assert policy.combine_pvalues([0.6, 0.9]) == 1.0


def test_stability_by_hand():
    lab = np.array([["a", "a", "b"], ["a", "b", "b"], ["a", "a", "b"]], dtype=object)
    st = policy.stability(lab)
    npt.assert_array_equal(st["mode"], ["a", "a", "b"])
    npt.assert_allclose(st["agreement"], [1, 2 / 3, 1])
    assert st["flip_rate"] == pytest.approx(2 / 9)
    assert st["unanimous"] == pytest.approx(2 / 3)
    assert np.isnan(policy.stability(lab[:1])["flip_rate"])


def test_policy_value_hand_example():
    """Two persons, one repeat; policy gives arm 1 to the first, none (fallback 0) to the second."""
    gamma = np.array([[[0.2, 0.9], [0.6, 0.1]]])
    out = policy.policy_value(gamma, np.array([[1, -1]]), np.array([[0, 0]]), ["c", "t"], 50, 1)
    est = dict(zip(out["policy"], out["estimate"], strict=True))
    assert est["policy"] == pytest.approx(0.75)
    assert est["all c"] == pytest.approx(0.4)
    assert est["all t"] == pytest.approx(0.5)
    assert est["gain vs best single arm"] == pytest.approx(0.25)


def _run(df, seed, n_repeats=2, n_folds=3):
    X = df[list(armsim.COVARIATES)].to_numpy()
    return policy.run_repeats(X, df[MODS], df["arm"].to_numpy(), df["time_days"], df["event"], 365.0,
                              n_repeats=n_repeats, n_folds=n_folds, seed=seed, min_leaf=len(df) // 20)


def _true_value(res, truth):
    act = np.where(res["action"] < 0, res["fallback"], res["action"])
    return float(np.take_along_axis(truth["survival"][None], act[..., None], 2).mean())


def _issued(df, res):
    """Held-out value CI of the issued (modal) recommendations and their true value."""
    rt = policy.recommendation_table(df.index, res, armsim.ARMS, True, 0.0)
    R = res["gamma"].shape[0]
    fallback = int(res["gamma"].mean((0, 1)).argmax())
    act = policy.issued_actions(rt["recommendation"], armsim.ARMS, R)
    val = policy.policy_value(res["gamma"], act, np.full(act.shape, fallback), armsim.ARMS, 200, 0)
    return val.set_index("policy").loc["policy"], act[0], fallback


def test_heterogeneity_rejects_policy_gains_and_value_covers_truth():
    """Strong qualitative heterogeneity: the test rejects (>= 2 of 3 draws), the policy beats
    every single arm in truth, and the held-out value CI covers the policy's true value."""
    covered = rejected = covered_issued = 0
    for seed in range(3):
        df, truth = armsim.simulate(3000, 200 + seed, missing_modifier_share=0.05)
        res = _run(df, seed, n_repeats=3)
        rejected += policy.heterogeneity_test(res["p_splits"], armsim.ARMS, 0.05)["reject"].any()
        val = policy.policy_value(res["gamma"], res["action"], res["fallback"], armsim.ARMS, 200, seed)
        v = val.set_index("policy").loc["policy"]
        true_v = _true_value(res, truth)
        assert true_v > truth["arm_values"].max()
        covered += v["ci_low"] <= true_v <= v["ci_high"]
        # missing modifier -> "no recommendation", never an imputed value
        miss = df[MODS].isna().any(axis=1).to_numpy()
        assert (res["action"][:, ~miss] >= 0).all()
        rt = policy.recommendation_table(df.index, res, armsim.ARMS, True, 0.01)
        assert rt.loc[rt["recommendation"].isna(), "reason"].str.startswith("no recommendation: ").all()
        assert rt["recommendation"].isna().sum() <= miss.sum()
        v_issued, act, fb = _issued(df, res)
        true_issued = truth["survival"][np.arange(len(df)), np.where(act < 0, fb, act)].mean()
        covered_issued += v_issued["ci_low"] <= true_issued <= v_issued["ci_high"]
    assert covered >= 2 and covered_issued >= 2
    assert rejected >= 2


def test_no_heterogeneity_declines_to_personalise():
    """Constant effects: at most one of 4 draws rejects (size, few draws; see the slow test)."""
    rejections = 0
    for seed in range(4):
        df, _ = armsim.simulate(1500, 300 + seed, heterogeneity="none")
        res = _run(df, seed, n_repeats=1, n_folds=2)
        rejections += policy.heterogeneity_test(res["p_splits"], armsim.ARMS, 0.05)["reject"].any()
    assert rejections <= 1
    rt = policy.recommendation_table(df.index, res, armsim.ARMS, False, 0.7)
    assert rt["reason"].str.startswith("recommend by average effect").all()
    assert rt["recommendation"].nunique() == 1
    assert rt["recommendation"].iloc[0] == armsim.ARMS[int(res["gamma"].mean((0, 1)).argmax())]


@pytest.mark.slow
def test_heterogeneity_test_size_over_many_draws():
    """Constant effects: rejection rate at alpha = 0.05 stays <= 0.10 over 30 draws."""
    rej = []
    for seed in range(30):
        df, _ = armsim.simulate(2000, 1000 + seed, heterogeneity="none")
        res = _run(df, seed, n_repeats=2, n_folds=3)
        rej.append(policy.heterogeneity_test(res["p_splits"], armsim.ARMS, 0.05)["reject"].any())
    assert np.mean(rej) <= 0.10


@pytest.mark.slow
def test_power_and_value_coverage_over_many_draws():
    """Strong heterogeneity: rejection rate >= 0.6, far above alpha (measured 0.70-0.75 over
    these 20 draws, n = 3000, R = 3, depending on the censoring-model variant), and >= 85% CI
    coverage of the true value of the single-repeat trees and of the issued recommendations."""
    rej, cov, cov_issued = [], [], []
    for seed in range(20):
        df, truth = armsim.simulate(3000, 2000 + seed)
        res = _run(df, seed, n_repeats=3)
        rej.append(policy.heterogeneity_test(res["p_splits"], armsim.ARMS, 0.05)["reject"].any())
        v = policy.policy_value(res["gamma"], res["action"], res["fallback"], armsim.ARMS, 200, seed)
        v = v.set_index("policy").loc["policy"]
        cov.append(v["ci_low"] <= _true_value(res, truth) <= v["ci_high"])
        v_issued, act, fb = _issued(df, res)
        true_issued = truth["survival"][np.arange(len(df)), np.where(act < 0, fb, act)].mean()
        cov_issued.append(v_issued["ci_low"] <= true_issued <= v_issued["ci_high"])
    assert np.mean(rej) >= 0.6
    assert np.mean(cov) >= 0.85 and np.mean(cov_issued) >= 0.85


def test_issued_actions_codes_and_none():
    act = policy.issued_actions(["b", None, "a"], ["a", "b"], 2)
    npt.assert_array_equal(act, [[1, -1, 0], [1, -1, 0]])


def test_ridge_cox_without_events_has_zero_baseline_hazard():
    """A censoring model fitted on a fold where nobody was censored: H0 = 0, G(t) = 1."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(12, 2))
    fit = policy.RidgeCox(X, rng.uniform(1, 5, 12), np.zeros(12), alpha=0.5)
    assert np.all(fit.coef_ == 0)
    assert np.array_equal(fit.base(np.array([[0.5, 3.0], [9.0, 1.0]])), np.zeros((2, 2)))
