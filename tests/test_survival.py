"""Tests of pmed.survival against published R ``survival`` output and hand computations.

Data: NCCTG lung cancer (Loprinzi et al. 1994, J Clin Oncol 12:601) and Rossi recidivism
(Rossi, Berk & Lenihan 1980; Fox 2002 appendix), both as shipped with lifelines.
"""

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest
from lifelines.datasets import load_lung, load_rossi

from pmed import survival as sv

ROSSI_COVARIATES = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]


@pytest.fixture(scope="module")
def lung():
    return load_lung()


@pytest.fixture(scope="module")
def rossi():
    return load_rossi()


def test_cox_rossi_matches_r(rossi):
    """R: coxph(Surv(week, arrest) ~ fin + age + race + wexp + mar + paro + prio, data=rossi)

    Published in Fox (2002), "Cox Proportional-Hazards Regression for Survival Data",
    appendix to An R and S-PLUS Companion to Applied Regression (coef, se(coef)).
    """
    cph = sv.fit_cox(rossi, "week", "arrest", ROSSI_COVARIATES)
    tab = sv.cox_table(cph).set_index("term")
    npt.assert_allclose(
        tab.loc[ROSSI_COVARIATES, "log_hr"],
        [-0.37942, -0.05744, 0.31391, -0.14980, -0.43370, -0.08487, 0.09150],
        atol=1e-4,
    )
    npt.assert_allclose(
        tab.loc[ROSSI_COVARIATES, "se"],
        [0.19138, 0.02200, 0.30799, 0.21222, 0.38187, 0.19576, 0.02865],
        atol=1e-4,
    )
    # exp(coef) column of the same printout.
    npt.assert_allclose(tab.loc[["fin", "prio"], "hr"], [0.68426, 1.09581], atol=1e-4)


def test_cox_lung_matches_r(lung):
    """R: summary(coxph(Surv(time, status) ~ age + sex + ph.ecog, data=lung))

    n = 227 (1 observation deleted due to missingness), events = 164;
    coef 0.011067, -0.552612, 0.463728; se 0.009267, 0.167739, 0.113577;
    lower/upper .95 of exp(coef) for sex 0.4142, 0.7994; Concordance = 0.637.
    """
    cph = sv.fit_cox(lung, "time", "status", ["age", "sex", "ph.ecog"])
    assert cph._n_examples == 227
    tab = sv.cox_table(cph).set_index("term")
    npt.assert_allclose(tab["log_hr"], [0.011067, -0.552612, 0.463728], atol=1e-5)
    npt.assert_allclose(tab["se"], [0.009267, 0.167739, 0.113577], atol=1e-5)
    npt.assert_allclose(tab.loc["sex", ["hr_ci_low", "hr_ci_high"]], [0.4142, 0.7994], atol=1e-4)
    from pmed.metrics import harrell_c

    frame = lung.dropna(subset=["age", "sex", "ph.ecog"])
    c = harrell_c(frame["time"], frame["status"], cph.predict_log_partial_hazard(frame))
    assert abs(c - 0.637) < 5e-4


def test_logrank_lung_sex_matches_r(lung):
    """R: survdiff(Surv(time, status) ~ sex, data=lung)

    N 138/90, Observed 112/53, Expected 91.5817/73.4183, Chisq 10.3267, p = 0.00131116.
    """
    res = sv.logrank(lung["time"], lung["status"], lung["sex"])
    npt.assert_allclose(res["statistic"], 10.3267, atol=1e-4)
    npt.assert_allclose(res["p_value"], 0.00131116, rtol=1e-4)
    assert res["df"] == 1
    g = res["groups"]
    assert g["n"].tolist() == [138, 90] and g["observed"].tolist() == [112, 53]
    npt.assert_allclose(g["expected"], [91.5817, 73.4183], atol=1e-4)


def test_logrank_rossi_fin_matches_r(rossi):
    """R: survdiff(Surv(week, arrest) ~ fin, data=rossi)

    N 216/216, Observed 66/48, Expected 55.6/58.4, (O-E)^2/V 3.84, Chisq= 3.8 on 1 df
    (R prints these to the shown precision only).
    """
    res = sv.logrank(rossi["week"], rossi["arrest"], rossi["fin"])
    assert res["groups"]["observed"].tolist() == [66, 48]
    npt.assert_allclose(res["groups"]["expected"], [55.6, 58.4], atol=0.05)
    npt.assert_allclose(res["statistic"], 3.84, atol=0.005)


def test_kaplan_meier_hand_example():
    """Hand KM: times 1,2,2,3,4 with events 1,1,0,1,0.

    S(1) = 4/5, S(2) = 4/5 * 3/4 = 0.6, S(3) = 0.6 * 1/2 = 0.3, S(4) = 0.3.
    Greenwood var of S(2): 0.6^2 * (1/(5*4) + 1/(4*3)).
    """
    km = sv.kaplan_meier([1, 2, 2, 3, 4], [1, 1, 0, 1, 0]).set_index("time")
    npt.assert_allclose(km.loc[[0.0, 1.0, 2.0, 3.0, 4.0], "survival"], [1, 0.8, 0.6, 0.3, 0.3])
    assert km.loc[2.0, "n_at_risk"] == 4 and km.loc[2.0, "n_censored"] == 1
    # log(-log) CI: S^exp(+-z * sqrt(V) / (S log S)), V = Greenwood sum.
    v = 1 / 20 + 1 / 12
    z = 1.959964
    se_ll = np.sqrt(v) / np.log(0.6)
    npt.assert_allclose(km.loc[2.0, ["ci_low", "ci_high"]], [0.6 ** np.exp(-z * se_ll), 0.6 ** np.exp(z * se_ll)], rtol=1e-5)


def test_median_survival_hand_example():
    """Median = first time S(t) <= 0.5: S = 0.8, 0.6, 0.3 at 1, 2, 3 -> median 3."""
    med = sv.median_survival([1, 2, 2, 3, 4], [1, 1, 0, 1, 0])
    assert med["estimate"] == 3.0
    assert med["ci_low"] <= 3.0 <= med["ci_high"]


def test_numbers_at_risk_counts():
    nar = sv.numbers_at_risk([1, 2, 3, 4, 5, 6], ["a", "a", "a", "b", "b", "b"], [0, 2, 5])
    assert nar.loc["a"].tolist() == [3, 2, 0] and nar.loc["b"].tolist() == [3, 3, 2]


def test_bad_input_names_problem():
    with pytest.raises(ValueError, match="event must be 0/1"):
        sv.kaplan_meier([1, 2], [1, 2])
    with pytest.raises(ValueError, match="time must be finite"):
        sv.logrank([1, -2], [1, 0], [0, 1])
    with pytest.raises(KeyError, match="not in the table"):
        sv.fit_cox(pd.DataFrame({"t": [1.0], "e": [1]}), "t", "e", ["x"])


def test_add_interactions():
    df = sv.add_interactions(pd.DataFrame({"a": [1, 2], "b": [3, 4]}), ["a:b"])
    assert df["a:b"].tolist() == [3.0, 8.0]
    with pytest.raises(ValueError):
        sv.add_interactions(df, ["a*b"])


def test_ph_test_flags_time_varying_effect():
    """Simulated: x has HR 3 before t = 1 and HR 1/3 after; z is proportional (HR 1.5)."""
    rng = np.random.default_rng(1)
    n = 3000
    x = rng.integers(0, 2, n)
    z = rng.normal(size=n)
    # Piecewise-exponential draw with hazard 0.5 * exp(b(t) x + log(1.5) z).
    h1 = 0.5 * np.exp(np.log(3) * x + np.log(1.5) * z)
    h2 = 0.5 * np.exp(-np.log(3) * x + np.log(1.5) * z)
    e1 = rng.exponential(1 / h1)
    t = np.where(e1 < 1, e1, 1 + rng.exponential(1 / h2))
    c = rng.uniform(0, 4, n)
    df = pd.DataFrame({"time": np.minimum(t, c), "event": (t <= c).astype(int), "x": x, "z": z})
    cph = sv.fit_cox(df, "time", "event", ["x", "z"])
    ph = sv.ph_test(cph, df).set_index("term")
    assert ph.loc["x", "p_value"] < 1e-6
    assert ph.loc["z", "p_value"] > 0.01
    resid = sv.scaled_schoenfeld(cph, df)
    assert len(resid) == df["event"].sum() and {"x", "z", "time"} <= set(resid.columns)
    # Remedy by stratification (binary x) removes x from the coefficients.
    model, rem = sv.fit_ph_remedy(df, "time", "event", ["x", "z"], ["x"], cut_time=1.0)
    assert rem["remedy"].tolist() == ["stratified"] and "x" not in model.params_.index
    # Remedy by time interaction recovers log HR log(3) early and -log(3) late.
    model, rem = sv.fit_ph_remedy(df, "time", "event", ["x", "z"], ["x"], cut_time=1.0, max_strata_levels=1)
    assert rem["remedy"].tolist() == ["time interaction at 1"]
    tab = sv.cox_table(model).set_index("term")
    assert abs(tab.loc["x", "log_hr"] - np.log(3)) < 3 * tab.loc["x", "se"]
    late = tab.loc["x", "log_hr"] + tab.loc["x:late", "log_hr"]
    assert abs(late + np.log(3)) < 0.25


def test_fit_cox_mi_equals_single_fit_when_imputations_identical(rossi):
    """With m identical data sets, B = 0: pooled estimate/SE equal the single fit."""
    cph = sv.fit_cox(rossi, "week", "arrest", ["fin", "age", "prio"])
    pooled = sv.fit_cox_mi([rossi, rossi.copy()], "week", "arrest", ["fin", "age", "prio"]).set_index("term")
    npt.assert_allclose(pooled["estimate"], cph.params_, rtol=1e-10)
    npt.assert_allclose(pooled["se"], cph.standard_errors_, rtol=1e-10)
    npt.assert_allclose(pooled["ci_low"], cph.params_ - 1.959964 * cph.standard_errors_, rtol=1e-6)


def test_mi_fits_do_not_depend_on_the_worker_count(rossi):
    rng = np.random.default_rng(1)
    imps = [rossi.assign(age=rossi["age"] + rng.integers(-2, 3, len(rossi))) for _ in range(3)]
    covs = ["fin", "age", "prio"]
    one, two = (sv.fit_cox_mi(imps, "week", "arrest", covs, n_jobs=j) for j in (1, 2))
    pd.testing.assert_frame_equal(one, two)
    (r1, rem1), (r2, rem2) = (sv.fit_ph_remedy_mi(imps, "week", "arrest", covs, ["age"], 20, n_jobs=j) for j in (1, 2))
    pd.testing.assert_frame_equal(r1, r2)
    assert rem1.equals(rem2) and rem1["term"].tolist() == ["age"]
    fits = [sv.fit_ph_remedy(d, "week", "arrest", covs, ["age"], 20)[0] for d in imps]
    pd.testing.assert_frame_equal(r1, sv.pool_models(fits))


def test_true_log_hazard_ratios_and_truth_check():
    gt = {"other": {"a": 1}, "log_hr": {"x": 0.5, "treated:pdl1_pct": -0.01}}
    truth = sv.true_log_hazard_ratios(gt)
    assert truth == {"x": 0.5, "treated:pdl1_pct": -0.01}
    with pytest.raises(KeyError, match="no 'log_hr' mapping"):
        sv.true_log_hazard_ratios({"x": 1})
    est = pd.DataFrame({"term": ["x", "treated:pdl1_pct", "z"], "estimate": [0.6, -0.05, 1.0],
                        "se": [0.1, 0.01, 0.1], "ci_low": [0.404, -0.0696, 0.8], "ci_high": [0.796, -0.0304, 1.2]})
    chk = sv.truth_check(est, truth).set_index("term")
    assert list(chk.index) == ["x", "treated:pdl1_pct"]
    assert chk.loc["x", "inside_ci"] and not chk.loc["treated:pdl1_pct", "inside_ci"]
    npt.assert_allclose(chk["z"], [1.0, -4.0])
    # Bonferroni for 2 tests: |z| <= 2.2414
    assert chk["inside_bonferroni"].tolist() == [True, False]


def test_predict_survival_matches_baseline_formula(rossi):
    """S(t | x) = S0(t) ^ exp((x - mean) beta) with lifelines' centred baseline."""
    cph = sv.fit_cox(rossi, "week", "arrest", ["fin", "age", "prio"])
    s = sv.predict_survival(cph, rossi.iloc[:3], [10.0, 52.0])
    assert s.shape == (3, 2)
    lp = ((rossi.iloc[:3][["fin", "age", "prio"]] - cph._norm_mean) @ cph.params_).to_numpy()
    s0 = cph.baseline_survival_.loc[[10.0, 52.0]].to_numpy().ravel()
    npt.assert_allclose(s, s0[None, :] ** np.exp(lp)[:, None], rtol=1e-10)


def test_time_interaction_remedy_equals_counting_process_fit(rossi):
    """The period-stratified split equals lifelines' counting-process fit with delayed entry
    (CoxPHFitter(entry_col=...)) of the same episode-split data."""
    from lifelines import CoxPHFitter

    model, _ = sv.fit_ph_remedy(rossi, "week", "arrest", ["fin", "age", "prio"], ["age"], cut_time=20,
                                max_strata_levels=1)
    early = rossi.assign(start=0.0, stop=np.minimum(rossi["week"], 20), ev=np.where(rossi["week"] <= 20, rossi["arrest"], 0))
    late = rossi[rossi["week"] > 20].assign(start=20.0, stop=lambda d: d["week"], ev=lambda d: d["arrest"])
    long = pd.concat([early.assign(**{"age:late": 0.0}), late.assign(**{"age:late": late["age"]})])
    ref = CoxPHFitter().fit(long[["start", "stop", "ev", "fin", "age", "prio", "age:late"]],
                            duration_col="stop", event_col="ev", entry_col="start")
    npt.assert_allclose(model.params_.loc[ref.params_.index], ref.params_, rtol=1e-6)
    npt.assert_allclose(model.standard_errors_.loc[ref.params_.index], ref.standard_errors_, rtol=1e-5)


def _step_hr_draw(rng, n, log_hr_early, log_hr_late):
    """x (0/1) has log-HR log_hr_early before t = 1 and log_hr_late after; z is proportional."""
    x = rng.integers(0, 2, n)
    z = rng.normal(size=n)
    h1 = 0.5 * np.exp(log_hr_early * x + np.log(1.5) * z)
    h2 = 0.5 * np.exp(log_hr_late * x + np.log(1.5) * z)
    e1 = rng.exponential(1 / h1)
    t = np.where(e1 < 1, e1, 1 + rng.exponential(1 / h2))
    c = rng.uniform(0, 4, n)
    return pd.DataFrame({"time": np.minimum(t, c), "event": (t <= c).astype(int), "x": x, "z": z})


def test_ph_rule_large_n_flags_only_material_violations():
    """n = 50,000, over 5 draws: a 10% drift of the HR (late/early = 1/1.1) is significant by the
    p-value alone in most draws, but below the material ratio 1.25; a drift to 1/1.5 is flagged
    in every draw. hr_ratio estimates the true late/early ratio (step at t = 1)."""
    children = np.random.SeedSequence(20261127).spawn(10)
    small_p, ratios = [], []
    for child in children[:5]:
        df = _step_hr_draw(np.random.default_rng(child), 50_000, 0.5, 0.5 - np.log(1.1))
        ph = sv.ph_test(sv.fit_cox_counting(df, "time", "event", ["x", "z"]), df)
        assert sv.ph_violations(ph, alpha=0.01, min_hr_ratio=1.25) == []
        small_p.append(ph.set_index("term").loc["x", "p_value"] < 0.01)
        ratios.append(ph.set_index("term").loc["x", "hr_ratio"])
    assert sum(small_p) >= 3  # the p-value rule alone would "remedy" x
    assert abs(np.mean(ratios) - 1 / 1.1) < 0.05
    for child in children[5:]:
        df = _step_hr_draw(np.random.default_rng(child), 50_000, 0.5, 0.5 - np.log(1.5))
        ph = sv.ph_test(sv.fit_cox_counting(df, "time", "event", ["x", "z"]), df)
        assert sv.ph_violations(ph, alpha=0.01, min_hr_ratio=1.25) == ["x"]
        assert abs(ph.set_index("term").loc["x", "hr_ratio"] - 1 / 1.5) < 0.06


def test_ph_violations_rule_and_bad_input(rossi):
    ph = pd.DataFrame({"term": ["a", "b", "c", "GLOBAL"], "p_value": [0.001, 0.001, 0.5, 1e-9],
                       "hr_ratio": [1.3, 1 / 1.3, 3.0, 2.0]})
    assert sv.ph_violations(ph, 0.01, 1.25) == ["a", "b"]
    assert sv.ph_violations(ph, 0.01, 1.5) == []
    assert sv.ph_violations(ph, 0.01) == ["a", "b"]  # min_hr_ratio 1: the p-value rule
    with pytest.raises(ValueError, match="min_hr_ratio"):
        sv.ph_violations(ph, 0.01, 0.8)
    cph = sv.fit_cox(rossi, "week", "arrest", ["fin", "age"])
    with pytest.raises(ValueError, match="time_transform"):
        sv.ph_test(cph, rossi, "sqrt")
    with pytest.raises(KeyError, match="prio"):
        sv.ph_test(cph, rossi, terms={"x": ["prio"]})
    with pytest.raises(ValueError, match="penalised"):
        sv.ph_test(sv.fit_cox(rossi, "week", "arrest", ["fin", "age"], penalizer=0.1), rossi)


def test_median_flat_at_half_takes_midpoint_and_rmst_hand_example():
    """Deaths at 1, 2, 3, 4: S = 0.75, 0.5, 0.25, 0 -> median (2 + 3) / 2 = 2.5 (R's rule).

    RMST to tau = 3: 1 + 0.75 + 0.5 = 2.25; variance sum_j A_j^2 d/(n (n - d)) over deaths
    t_j <= 3 with A_1 = 1.25, A_2 = 0.5, A_3 = 0: 1.25^2/12 + 0.5^2/6.
    """
    assert sv.median_survival([1, 2, 3, 4], [1, 1, 1, 1])["estimate"] == 2.5
    res = sv.rmst([1, 2, 3, 4], [1, 1, 1, 1], tau=3)
    npt.assert_allclose([res["estimate"], res["se"]], [2.25, np.sqrt(1.25**2 / 12 + 0.5**2 / 6)])
    with pytest.raises(ValueError, match="tau"):
        sv.rmst([1, 2], [1, 0], tau=-1)
    with pytest.raises(ValueError, match="exactly 2 groups"):
        sv.rmst_difference([1, 2, 3], [1, 1, 1], ["a", "b", "c"], tau=2)


def test_logrank_hand_example_with_ties():
    """Groups a: 1, 2, 2(c); b: 2, 3. At t=1: n=5 (a 3), d=1 -> E_a 0.6, V 0.24; t=2: n=4 (a 2),
    d=2 (one each) -> E_a 1, V = 2 * 2/3 * 0.5 * 0.5 = 1/3; t=3: n=1 (b). O_a = 2, E_a = 1.6,
    chi2 = 0.4^2 / (0.24 + 1/3)."""
    res = sv.logrank([1, 2, 2, 2, 3], [1, 1, 0, 1, 1], ["a", "a", "a", "b", "b"])
    npt.assert_allclose(res["groups"]["expected"], [1.6, 2.4])
    npt.assert_allclose(res["statistic"], 0.16 / (0.24 + 1 / 3))
    with pytest.raises(ValueError, match="at least 2 groups"):
        sv.logrank([1, 2], [1, 1], ["a", "a"])


def test_fit_cox_counting_right_censored_equals_lifelines(rossi):
    cph = sv.fit_cox(rossi, "week", "arrest", ROSSI_COVARIATES)
    fit = sv.fit_cox_counting(rossi, "week", "arrest", ROSSI_COVARIATES)
    npt.assert_allclose(fit.params_, cph.params_, atol=1e-6)
    npt.assert_allclose(fit.standard_errors_, cph.standard_errors_, rtol=1e-5)
    with pytest.raises(ValueError, match="ties"):
        sv.fit_cox_counting(rossi, "week", "arrest", ["fin"], ties="exact")
    with pytest.raises(ValueError, match="need s < week"):
        sv.fit_cox_counting(rossi.assign(s=rossi["week"]), "week", "arrest", ["fin"], start_col="s")


def test_estimable_terms_drops_constant_and_sparse_columns_among_complete_cases():
    df = pd.DataFrame({"a": [1.0, 2.0, np.nan, 4.0] * 5, "b": [0.0, 0.0, 1.0, 0.0] * 5,
                       "c": [1, 0, 1, 1] * 5, "d": [0] * 19 + [1]})
    # b is 0 wherever a is known; d has one complete case at 1; c has 5 at 0 (>= 5)
    assert sv.estimable_terms(df, ["a", "b", "c", "d"], min_per_level=5) == ["a", "c"]
    assert sv.estimable_terms(df, ["a", "c"], min_per_level=6) == ["a"]


def test_estimable_terms_needs_events_at_each_level_and_in_the_reference_of_a_one_hot_group():
    # arms: ref (rows 0-9), b (10-19), c (20-29); events: 0 in ref, 6 in b, 6 in c; e: every event at e = 1
    df = pd.DataFrame({"b": [0] * 10 + [1] * 10 + [0] * 10, "c": [0] * 20 + [1] * 10,
                       "ev": [0] * 10 + [1] * 6 + [0] * 4 + [1] * 6 + [0] * 4})
    df["e"] = np.where(df["ev"] == 1, 1, np.arange(30) % 2)
    df["x"] = np.linspace(0, 1, 30)
    terms = ["b", "c", "e", "x"]
    assert sv.estimable_terms(df, terms, min_per_level=5) == terms  # persons rule only
    # each arm indicator has >= 5 events at both of its levels; e has none at e = 0
    assert sv.estimable_terms(df, terms, min_per_level=5, event="ev", min_events=5) == ["b", "c", "x"]
    # with the reference arm (b = c = 0, no event) checked, no arm contrast is estimable
    assert sv.estimable_terms(df, terms, min_per_level=5, event="ev", one_hot=[["b", "c"]]) == ["x"]
    df.loc[[0, 1, 2, 3, 4], "ev"] = 1
    assert sv.estimable_terms(df, ["b", "c", "x"], min_per_level=5, event="ev", one_hot=[["b", "c"]]) == ["b", "c", "x"]
