"""Tests of pmed.validation against known answers: R (rms/survival) reference output for the
smoothed calibration curve, analytically known ICI over many simulated draws, pmsampsize's own
test cases and the worked example of Riley et al. (BMJ 2020) for the minimum sample size,
and properties of the bootstrap (paired differences, m-out-of-n rescaling, determinism)."""

from pathlib import Path

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest
from lifelines import CoxPHFitter

from pmed import calibration as cal
from pmed import metrics
from pmed import prediction as pr
from pmed import validation as va

REF = Path(__file__).parent / "data" / "r_reference" / "calibration"
HORIZON = 1.0


def _draw(n, rng, beta=0.9, base=0.4, cens=4.0):
    """Exponential survival with log hazard log(base) + beta x, x ~ N(0, 1); uniform censoring."""
    x = rng.normal(size=n)
    rate = base * np.exp(beta * x)
    t_event = rng.exponential(1 / rate)
    t_cens = rng.uniform(0, cens, n)
    return np.minimum(t_event, t_cens), (t_event <= t_cens).astype(int), 1 - np.exp(-rate * HORIZON)


def _true_ici(distort, beta=0.9, base=0.4):
    """E|distort(p) - p| over x ~ N(0, 1), p = 1 - exp(-base exp(beta x)), by dense quadrature."""
    x = np.linspace(-9, 9, 200001)
    dens = np.exp(-x**2 / 2) / np.sqrt(2 * np.pi)
    p = 1 - np.exp(-base * np.exp(beta * x) * HORIZON)
    return float(np.trapezoid(np.abs(distort(p) - p) * dens, x))


# --- restricted cubic splines and the Breslow Cox model ------------------------------------------

def test_rcs_basis_is_linear_beyond_the_outer_knots_and_continuous():
    knots = np.array([0.0, 1.0, 3.0])
    x = np.linspace(-3, 8, 1101)
    b = va.rcs_basis(x, knots)
    assert b.shape == (x.size, 2)
    npt.assert_array_equal(b[:, 0], x)
    left, right = b[x <= 0, 1], b[x >= 3, 1]
    npt.assert_allclose(left, 0.0, atol=1e-15)
    npt.assert_allclose(np.diff(right, 2), 0.0, atol=1e-10)  # linear tail
    # hand value at x = 2: [(2-0)^3 - (2-1)^3 (3-0)/(3-1)] / (3-0)^2
    npt.assert_allclose(va.rcs_basis([2.0], knots)[0, 1], (8 - 1.5) / 9)


def test_cox_breslow_equals_lifelines_without_ties():
    rng = np.random.default_rng(3)
    n = 400
    X = rng.normal(size=(n, 2))
    t = rng.exponential(1 / np.exp(X @ [0.7, -0.4])) + rng.uniform(0, 1e-6, n)  # no ties
    c = rng.exponential(2.0, n)
    time, event = np.minimum(t, c), (t <= c).astype(int)
    beta, surv = va.cox_breslow(time, event, X)
    df = pd.DataFrame({"t": time, "e": event, "a": X[:, 0], "b": X[:, 1]})
    cph = CoxPHFitter().fit(df, "t", "e")
    npt.assert_allclose(beta, cph.params_.to_numpy(), atol=1e-5)  # lifelines stops at a looser tolerance
    new = pd.DataFrame({"a": [-1.0, 0.0, 1.5], "b": [0.5, 0.0, -1.0]})
    at = np.sort(time[event == 1])[100]  # an event time: lifelines interpolates between them
    ref = cph.predict_survival_function(new, times=[at]).to_numpy().ravel()
    npt.assert_allclose(surv(new.to_numpy(), at), ref, rtol=1e-5)


# --- smoothed calibration: R reference and known answers -----------------------------------------

@pytest.mark.parametrize("case", ["calibrated", "overfitted", "underestimated"])
def test_smoothed_calibration_equals_r(case):
    data = pd.read_csv(REF / "data.csv")
    ref = pd.read_csv(REF / "reference.csv").set_index("case").loc[case]
    observed = pd.read_csv(REF / "observed.csv")[case].to_numpy()
    res = va.smoothed_calibration(data["time"], data["event"], data[case], HORIZON)
    npt.assert_allclose(res["observed"], observed, atol=1e-7)
    for k in ("ici", "e50", "e90", "emax"):
        npt.assert_allclose(res[k], ref[k], atol=1e-7)
    assert ref["max_abs_diff_rms_vs_survival"] < 1e-3  # Austin et al.'s rms::cph + survest route agrees


def test_ici_of_a_perfectly_calibrated_model_tends_to_zero_over_draws():
    rng = np.random.default_rng(2019)
    ici = {}
    for n in (500, 4000):  # the true risk is the prediction
        vals = []
        for _ in range(25):
            time, event, p = _draw(n, rng)
            vals.append(va.smoothed_calibration(time, event, p, HORIZON)["ici"])
        ici[n] = np.array(vals)
    assert ici[4000].mean() < 0.01
    assert ici[4000].mean() < 0.6 * ici[500].mean()  # shrinks with n (about 1/sqrt(n))


@pytest.mark.parametrize("distort", [
    lambda p: 1 - (1 - p) ** 1.6,                           # risks overestimated (cloglog + log 1.6)
    lambda p: 1 - np.exp(-np.exp(0.5) * (-np.log(1 - p)) ** 1.5),  # cloglog 0.5 + 1.5 x: too extreme, too high
])
def test_ici_of_a_miscalibrated_model_matches_the_analytic_value(distort):
    """The distortions are linear in cloglog, so the spline Cox model is correctly specified."""
    truth = _true_ici(distort)
    rng = np.random.default_rng(2020)
    est = []
    for _ in range(25):
        time, event, p = _draw(3000, rng)
        est.append(va.smoothed_calibration(time, event, distort(p), HORIZON)["ici"])
    est = np.array(est)
    mc_se = est.std(ddof=1) / np.sqrt(est.size)
    assert truth > 0.03
    assert abs(est.mean() - truth) < max(3 * mc_se, 0.002)


def test_smoothed_calibration_rejects_bad_risks():
    with pytest.raises(ValueError, match="predicted risks"):
        va.smoothed_calibration([1.0, 2.0], [1, 0], [0.2, 1.3], HORIZON)


def test_calibration_errors_hand_values():
    res = va.calibration_errors([0.1, 0.2, 0.5, 0.9], [0.1, 0.3, 0.2, 0.5])
    assert res["ici"] == pytest.approx((0 + 0.1 + 0.3 + 0.4) / 4)
    assert res["e50"] == pytest.approx(0.2)
    assert res["emax"] == pytest.approx(0.4)
    assert res["e90"] == pytest.approx(np.quantile([0, 0.1, 0.3, 0.4], 0.9))


# --- Riley et al. (2020) minimum sample size -------------------------------------------------------

@pytest.mark.parametrize(("r2", "p", "rate", "n", "epp"), [
    # pmsampsize tests/testthat/test_surv.R (cases 3.1-3.4): criteria i, ii, iii, final; EPP i, ii
    (0.051, 25, 0.065, (4286, 866, 4286, 4286), (23.07, 4.66)),
    (0.065, 25, 0.065, (3335, 859, 3335, 3335), (17.95, 4.62)),
    (0.051, 50, 0.065, (8572, 1731, 8572, 8572), (23.07, 4.66)),
    (0.051, 25, 0.1, (4286, 731, 4286, 4286), (35.49, 6.05)),
])
def test_riley_survival_equals_pmsampsize(r2, p, rate, n, epp):
    res = va.riley_sample_size("survival", p, r2, rate=rate, timepoint=2, mean_followup=2.07)
    assert (res["n_i"], res["n_ii"], res["n_iii"], res["n"]) == n
    assert round(res["epp"], 2) == epp[0]
    assert round(res["n_ii"] * rate * 2.07 / p, 2) == epp[1]


def test_riley_survival_worked_example_of_the_bmj_paper():
    """Riley et al. BMJ 2020;368:m441, survival example: 30 parameters, R2_CS 0.051, rate 0.065,
    2-year horizon, mean follow-up 2.07: n = 5143 (692 events, EPP 23.07), max R2_CS 0.555,
    criterion ii shrinkage 0.648 (n 1039), 95% CI of the 2-year risk 0.113-0.130 around 0.122."""
    res = va.riley_sample_size("survival", 30, 0.051, rate=0.065, timepoint=2, mean_followup=2.07)
    assert (res["n_i"], res["n_ii"], res["n"]) == (5143, 1039, 5143)
    assert round(res["max_r2_cs"], 3) == 0.555
    assert round(res["shrinkage_ii"], 3) == 0.648
    assert round(res["events"]) == 692 and round(res["epp"], 2) == 23.07
    assert (round(res["risk_ci_low"], 3), round(res["risk"], 3), round(res["risk_ci_high"], 3)) == (0.113, 0.122, 0.130)
    assert res["margin_met"]


@pytest.mark.parametrize(("r2", "p", "prev", "n", "epp"), [
    # pmsampsize tests/testthat/test_bin.R (cases 4.1-4.4; 4.1 is the BMJ paper's binary example)
    (0.288, 24, 0.174, (623, 662, 221, 662), (4.52, 4.8, 1.6, 4.8)),
    (0.55, 24, 0.174, (255, 532, 221, 532), (1.85, 3.86, 1.6, 3.86)),
    (0.288, 36, 0.174, (934, 992, 221, 992), (4.51, 4.79, 1.07, 4.79)),
    (0.288, 24, 0.25, (623, 590, 289, 623), (6.49, 6.15, 3.01, 6.49)),
])
def test_riley_binary_equals_pmsampsize(r2, p, prev, n, epp):
    res = va.riley_sample_size("binary", p, r2, prevalence=prev)
    assert (res["n_i"], res["n_ii"], res["n_iii"], res["n"]) == n
    sizes = (res["n_i"], res["n_ii"], res["n_iii"], res["n"])
    assert tuple(round(s * prev / p, 2) for s in sizes) == epp


def test_riley_rejects_impossible_inputs():
    with pytest.raises(ValueError, match="max R2_CS"):
        va.riley_sample_size("binary", 10, 0.7, prevalence=0.1)
    with pytest.raises(ValueError, match="prevalence"):
        va.riley_sample_size("binary", 10, 0.1)
    with pytest.raises(ValueError, match="rate"):
        va.riley_sample_size("survival", 10, 0.1, rate=0.1)


# --- performance, bootstrap, paired differences ----------------------------------------------------

@pytest.fixture(scope="module")
def preds():
    rng = np.random.default_rng(42)
    time, event, p = _draw(1200, rng)
    noisy = np.clip(p + rng.normal(0, 0.08, p.size), 0.001, 0.999)
    flat = np.clip(0.3 + 0.2 * (p - p.mean()), 0.001, 0.999)
    risks = {"good": np.stack([p, np.clip(p * 1.05, 0, 0.999)]), "noisy": np.stack([noisy, noisy]),
             "flat": np.stack([flat, flat])}
    return time, event, risks


def test_performance_matches_the_metrics_module(preds):
    time, event, risks = preds
    res = va.performance(time, event, {"good": risks["good"][0]}, HORIZON)
    ref = metrics.risk_metrics(time, event, risks["good"][0], HORIZON, 0.5)
    for k in ("harrell_c", "uno_c", "brier", "calibration_slope", "calibration_intercept", "oe_ratio"):
        assert res[f"good.{k}"] == pytest.approx(ref[k], rel=1e-12)


def test_bootstrap_paired_differences_and_determinism(preds):
    time, event, risks = preds
    pairs = [("noisy", "good"), ("good", "good")]
    a = va.bootstrap_performance(time, event, risks, HORIZON, n_boot=60, seed=1, pairs=pairs)
    b = va.bootstrap_performance(time, event, risks, HORIZON, n_boot=60, seed=1, pairs=pairs, n_jobs=2)
    assert a == b
    assert a["good-good.harrell_c"] == {"estimate": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n_boot": 60}
    d = a["noisy-good.harrell_c"]
    assert d["estimate"] == pytest.approx(a["noisy.harrell_c"]["estimate"] - a["good.harrell_c"]["estimate"])
    # the paired interval is much narrower than the separate intervals suggest
    width = lambda v: v["ci_high"] - v["ci_low"]  # noqa: E731
    assert width(d) < 0.8 * (width(a["noisy.harrell_c"]) + width(a["good.harrell_c"])) / 2
    assert d["ci_high"] < 0  # the noisy model discriminates worse, from the same resamples
    # the estimate is the mean over the two repeats of the full-data values
    reps = [va.performance(time, event, {"good": risks["good"][r]}, HORIZON)["good.brier"] for r in (0, 1)]
    assert a["good.brier"]["estimate"] == pytest.approx(np.mean(reps))


def test_m_out_of_n_bootstrap_rescaled_width_matches_the_full_bootstrap(preds):
    time, event, risks = preds
    one = {"noisy": risks["noisy"][:1]}
    full = va.bootstrap_performance(time, event, one, HORIZON, n_boot=300, seed=5)
    sub = va.bootstrap_performance(time, event, one, HORIZON, n_boot=300, seed=6, max_rows=300)
    same = va.bootstrap_performance(time, event, one, HORIZON, n_boot=40, seed=7, max_rows=time.size)
    plain = va.bootstrap_performance(time, event, one, HORIZON, n_boot=40, seed=7)
    assert same == plain  # max_rows >= n: the ordinary percentile bootstrap
    for k in ("noisy.harrell_c", "noisy.brier", "noisy.calibration_slope"):
        w_full = full[k]["ci_high"] - full[k]["ci_low"]
        w_sub = sub[k]["ci_high"] - sub[k]["ci_low"]
        assert 0.7 < w_sub / w_full < 1.4, k


def test_bootstrap_rejects_mismatched_shapes(preds):
    time, event, risks = preds
    with pytest.raises(ValueError, match="predictions"):
        va.bootstrap_performance(time, event, {"a": risks["good"], "b": risks["good"][:1]}, HORIZON, 10, 1)


# --- per-fold calibration --------------------------------------------------------------------------

def test_fold_calibration_is_the_mean_of_the_per_fold_fits():
    """Hand case: two folds, each recalibrated on its own rows; a fold with one outcome value is skipped."""
    rng = np.random.default_rng(3)
    p = rng.uniform(0.1, 0.9, 90)
    y = (rng.random(90) < p).astype(float)
    w = rng.uniform(1, 2, 90)
    fold = np.repeat([0, 1, 2], 30)
    y[60:] = 1.0  # fold 2: every outcome 1, no finite slope
    y[5], w[5] = np.nan, 0.0  # censored before the horizon: weight 0
    per = [cal.calibration_slope_intercept(y[fold == k][w[fold == k] > 0], p[fold == k][w[fold == k] > 0],
                                           w[fold == k][w[fold == k] > 0]) for k in (0, 1)]
    got = va.fold_calibration(y, p, w, fold)
    assert got["slope"] == pytest.approx((per[0]["slope"] + per[1]["slope"]) / 2, rel=1e-12)
    assert got["intercept"] == pytest.approx((per[0]["intercept"] + per[1]["intercept"]) / 2, rel=1e-12)
    with pytest.raises(ValueError, match="differ in shape"):
        va.fold_calibration(y, p, w, fold[:-1])


def test_fold_calibration_is_not_attenuated_by_fold_shifts_unlike_pooling():
    """Over 200 draws: 5 folds whose models predict logit p = x + c_k (right slope 1, intercepts
    c_k = -1 .. 1 apart). The per-fold mean slope is 1 (MC error about 0.01); pooling the folds'
    predictions attenuates it (the flaw this replaces)."""
    rng = np.random.default_rng(20261129)
    shifts = np.linspace(-1, 1, 5)
    fold = np.repeat(np.arange(5), 300)
    per_fold, pooled = [], []
    for _ in range(200):
        x = rng.normal(0, 1, fold.size)
        y = (rng.random(fold.size) < 1 / (1 + np.exp(-x))).astype(float)
        p = 1 / (1 + np.exp(-(x + shifts[fold])))
        per_fold.append(va.fold_calibration(y, p, np.ones_like(p), fold)["slope"])
        pooled.append(cal.calibration_slope_intercept(y, p)["slope"])
    se = np.std(per_fold, ddof=1) / np.sqrt(len(per_fold))
    assert abs(np.mean(per_fold) - 1) < 3 * se + 0.01  # small-sample bias of a 300-person fit allowed
    assert np.mean(pooled) < 0.9


def test_bootstrap_with_folds_reports_per_fold_calibration(preds):
    time, event, risks = preds
    rng = np.random.default_rng(9)
    fold = np.stack([rng.permutation(np.arange(time.size) % 4) for _ in range(2)])
    a = va.bootstrap_performance(time, event, risks, HORIZON, n_boot=40, seed=2, fold=fold)
    b = va.bootstrap_performance(time, event, risks, HORIZON, n_boot=40, seed=2, fold=fold, n_jobs=2)
    plain = va.bootstrap_performance(time, event, risks, HORIZON, n_boot=40, seed=2)
    assert a == b
    end = metrics.horizon_outcome(time, event, HORIZON)
    y, w = end["y"].to_numpy(), end["ipcw"].to_numpy()
    for name, r in risks.items():
        by_repeat = [va.fold_calibration(y, r[i], w, fold[i]) for i in range(2)]
        for stat in ("slope", "intercept"):
            got = a[f"{name}.calibration_{stat}"]
            assert got["estimate"] == pytest.approx(np.mean([v[stat] for v in by_repeat]), rel=1e-12)
            assert got["ci_low"] < got["estimate"] < got["ci_high"]
        for m in ("harrell_c", "brier", "ici"):  # other metrics: unchanged by the folds
            assert a[f"{name}.{m}"] == plain[f"{name}.{m}"]
    with pytest.raises(ValueError, match="fold has shape"):
        va.bootstrap_performance(time, event, risks, HORIZON, n_boot=5, seed=2, fold=fold[:1])


# --- subgroups, temporal split ---------------------------------------------------------------------

def test_subgroup_performance_suppresses_small_groups(preds):
    time, event, risks = preds
    n = time.size
    sex = np.where(np.arange(n) % 2 == 0, "female", "male")
    rare = np.where(np.arange(n) < 4, "rare", "common")
    tab = va.subgroup_performance(time, event, risks["good"], {"sex": sex, "site": rare}, HORIZON,
                                  n_boot=30, seed=3, min_cell=5)
    assert list(tab["group"]) == ["female", "male", "common", "rare"]
    rare_row = tab.set_index("group").loc["rare"]
    assert rare_row["suppressed"] and rare_row["n"] == "<5" and np.isnan(rare_row["harrell_c"])
    common = tab.set_index("group").loc["common"]
    assert common["n"] == "suppressed"  # else n - common would reveal the rare group's size
    assert not common["suppressed"] and common["harrell_c"] > 0.5
    female = tab.set_index("group").loc["female"]
    assert female["n"] == str(n // 2)
    assert female["harrell_c_ci_low"] <= female["harrell_c"] <= female["harrell_c_ci_high"]
    sel = sex == "female"
    expected = np.mean([metrics.harrell_c(time[sel], event[sel], risks["good"][r][sel]) for r in (0, 1)])
    assert female["harrell_c"] == pytest.approx(expected)


def test_subgroup_m_out_of_n_bootstrap_keeps_the_interval_width(preds):
    time, event, risks = preds
    sex = np.where(np.arange(time.size) % 2 == 0, "female", "male")
    args = (time, event, risks["good"], {"sex": sex}, HORIZON, 300)
    full = va.subgroup_performance(*args, seed=3, min_cell=5)
    sub = va.subgroup_performance(*args, seed=4, min_cell=5, max_rows=150)
    for k in ("harrell_c", "oe_ratio"):
        ratio = (sub[f"{k}_ci_high"] - sub[f"{k}_ci_low"]) / (full[f"{k}_ci_high"] - full[f"{k}_ci_low"])
        assert ratio.between(0.7, 1.4).all(), k
    npt.assert_allclose(sub["harrell_c"], full["harrell_c"])  # same full-data estimates


def test_max_cox_snell_r2_hand_values():
    phi = 0.174
    assert va.max_cox_snell_r2("binary", prevalence=phi) == pytest.approx(
        1 - np.exp(2 * (phi * np.log(phi) + (1 - phi) * np.log(1 - phi))))
    with pytest.raises(ValueError, match="outcome must be"):
        va.max_cox_snell_r2("count", prevalence=phi)


def test_age_bands_and_temporal_split():
    npt.assert_array_equal(va.age_bands([40, 60, 64.9, 65, 80], [60, 70]), ["<60", "60-70", "60-70", "60-70", ">=70"])
    train, test = va.temporal_split([2015, 2016, 2019, 2020, 2021], 2019, min_cell=1)
    npt.assert_array_equal(train, [0, 1, 2])
    npt.assert_array_equal(test, [3, 4])
    with pytest.raises(ValueError, match="temporal_train_until_year"):
        va.temporal_split([2015, 2016, 2019], 2019, min_cell=1)


# --- repeated cross-validation ---------------------------------------------------------------------

def test_repeated_cv_refits_imputation_and_folds_per_repeat():
    rng = np.random.default_rng(8)
    n = 240
    x1, x2 = rng.normal(size=n), rng.integers(0, 2, n).astype(float)
    t_event = rng.exponential(200 * np.exp(-x1))
    t_cens = rng.uniform(0, 500, n)
    df = pd.DataFrame({"time_days": np.minimum(t_event, t_cens), "event": (t_event <= t_cens).astype(int),
                       "x1": x1, "x2": x2})
    df.loc[rng.choice(n, 30, replace=False), "x1"] = np.nan
    end = metrics.horizon_outcome(df["time_days"], df["event"], 180.0)
    settings = pr.ModelSettings(features=("x1", "x2"), interactions=("x1:x2",), cox_penalizer=0.01,
                                gb_n_estimators=10, permutation_repeats=0)
    seeds = {"impute": 1, "cv": 2, "gb": 3}
    args = (df, "time_days", "event", end["y"], end["ipcw"], [90.0, 180.0], settings)
    rcv = va.repeated_cv(*args, n_folds=3, n_repeats=2, seeds=seeds, mice_max_iter=2)
    assert rcv.risk["cox"].shape == (2, n) and rcv.cox_survival.shape == (2, n, 2)
    assert not np.allclose(rcv.risk["cox"][0], rcv.risk["cox"][1])  # new imputation and folds
    npt.assert_allclose(rcv.risk["cox"], 1 - rcv.cox_survival[:, :, -1])
    assert np.isnan(rcv.importances).all() and rcv.importances.shape == (6, 2)
    assert rcv.fold.shape == (2, n) and rcv.models is None
    assert {int(k) for k in np.unique(rcv.fold)} == {0, 1, 2}
    kept = va.repeated_cv(*args, n_folds=3, n_repeats=2, seeds=seeds, mice_max_iter=2, keep_models=True)
    npt.assert_array_equal(kept.risk["gbm"], rcv.risk["gbm"])
    assert len(kept.models) == 2 and all(len(m) == 3 for m in kept.models)
    again = va.repeated_cv(*args, n_folds=3, n_repeats=1, seeds=seeds, mice_max_iter=2)
    npt.assert_array_equal(again.risk["gbm"][0], rcv.risk["gbm"][0])  # repeat 0 does not depend on R
    with pytest.raises(ValueError, match="cv_repeats"):
        va.repeated_cv(*args, n_folds=3, n_repeats=0, seeds=seeds, mice_max_iter=2)


def test_describe_difference_uses_the_paired_interval():
    lower = {"estimate": -0.02, "ci_low": -0.03, "ci_high": -0.01}
    assert va.describe_difference("GB - Cox", "harrell_c", lower).endswith("excludes 0: Cox is better.")
    assert va.describe_difference("GB - Cox", "brier", lower).endswith("excludes 0: GB is better.")
    spans = {"estimate": 0.001, "ci_low": -0.002, "ci_high": 0.004}
    assert va.describe_difference("GB - Cox", "ici", spans).endswith("includes 0: no difference shown.")
    with pytest.raises(ValueError, match="metric"):
        va.describe_difference("GB - Cox", "e50", spans)


def test_ci_table_wide_layout():
    cis = {"a.harrell_c": {"estimate": 0.7, "ci_low": 0.65, "ci_high": 0.75},
           "a.brier": {"estimate": 0.2, "ci_low": 0.19, "ci_high": 0.21},
           "b.harrell_c": {"estimate": 0.6, "ci_low": 0.55, "ci_high": 0.65}}
    tab = va.ci_table_wide(cis, {"a": "A", "b": "B"})
    assert list(tab.columns) == ["A", "B"]
    assert list(tab.index) == ["Harrell's C", "Brier score at horizon"]
    assert tab.loc["Harrell's C", "A"] == "0.700 (0.650 to 0.750)"
    assert pd.isna(tab.loc["Brier score at horizon", "B"])


def test_params_schema_checks_the_validation_keys():
    import copy

    from pmed import config, params_schema

    p = copy.deepcopy(config.load_params())
    p["outcomes"].update(calibration_knots=7, bootstrap_max_rows=1)
    found = "\n".join(params_schema.check(p))
    assert "outcomes.calibration_knots: expected 3, 4 or 5" in found
    assert "outcomes.bootstrap_max_rows: expected an integer >= 2 or null" in found
    p = copy.deepcopy(config.load_params())
    p["outcomes"]["subgroup_age_edges"] = [70, 60]
    assert params_schema.check(p) == ["outcomes.subgroup_age_edges: expected strictly increasing ages, got [70, 60]"]


# --- disclosure control: small counts behind ratios and differences -------------------------------

def test_threshold_counts_hand_case():
    y = np.array([1, 1, 1, 0, 0, np.nan, 1, 0])
    flag = np.array([1, 1, 0, 1, 0, 1, 0, 0])
    assert va.threshold_counts(y, flag) == {"tp": 2, "fp": 1, "fn": 2, "tn": 2}  # the NaN (censored) not counted


def _threshold_case():
    """84 people: 34 deaths, 49 alive, 1 censored; 23 flagged of whom 9 died (canary's run)."""
    y = np.r_[np.ones(34), np.zeros(49), np.nan]
    risk = np.r_[np.full(9, 0.8), np.full(25, 0.2), np.full(14, 0.9), np.full(35, 0.1), 0.5]
    return y, risk


def test_release_threshold_metrics_hides_ratios_of_small_true_positives():
    y, risk = _threshold_case()
    assert va.threshold_counts(y, risk >= 0.7) == {"tp": 9, "fp": 14, "fn": 25, "tn": 35}
    safe = np.r_[np.full(20, 0.8), np.full(14, 0.2), np.full(14, 0.9), np.full(35, 0.1), 0.5]  # tp 20, fp 14
    cis = {f"{k}.{m}": {"estimate": 0.4, "ci_low": 0.3, "ci_high": 0.5, "n_boot": 10}
           for k in ("cox", "logistic") for m in ("sensitivity", "ppv", "net_benefit", "harrell_c")}
    out, hidden = va.release_threshold_metrics(cis, y, {"cox": risk, "logistic": safe}, 0.7, 11)
    assert hidden == ["cox"]
    assert all(out[f"cox.{m}"]["suppressed"] and out[f"cox.{m}"]["estimate"] is None for m in va.THRESHOLD_METRICS)
    assert out["cox.harrell_c"] == cis["cox.harrell_c"] and out["logistic.ppv"] == cis["logistic.ppv"]
    assert cis["cox.ppv"]["estimate"] == 0.4  # input untouched
    table = va.ci_table_wide(out, {"cox": "Cox", "logistic": "Logistic"})
    assert table.loc["PPV at threshold", "Cox"] == "suppressed"
    assert table.loc["PPV at threshold", "Logistic"] == "0.400 (0.300 to 0.500)"
    # a small count in any repeat hides the model; false positives and false negatives count too
    _, hidden = va.release_threshold_metrics(cis, y, {"logistic": np.vstack([safe, risk])}, 0.7, 11)
    assert hidden == ["logistic"]
    few_fp = np.r_[np.full(20, 0.8), np.full(14, 0.2), np.full(5, 0.9), np.full(44, 0.1), 0.5]
    assert va.release_threshold_metrics(cis, y, {"cox": few_fp}, 0.7, 11)[1] == ["cox"]
    assert va.release_threshold_metrics(cis, y, {"cox": safe}, 0.7, 11)[1] == []


def test_release_endpoint_counts_protects_the_censored_count():
    # canary's run: 84 persons, 34 deaths by the horizon, 49 alive past it, 1 censored before
    time = np.r_[np.full(34, 0.5), np.full(49, 2.0), 0.3]
    event = np.r_[np.ones(34), np.zeros(49), 0].astype(int)
    text = va.release_endpoint_counts(time, event, HORIZON, 11)
    assert text == {"persons": "84", "deaths": "34", "alive": "suppressed", "censored": "<11", "events": "34"}
    # events over all follow-up: persons - events = 1 censored overall would follow, so events hidden
    event_later = np.r_[np.ones(34), np.ones(49), 0].astype(int)  # deaths after the horizon too
    assert va.release_endpoint_counts(time, event_later, HORIZON, 11)["events"] == "suppressed"
    # nothing small: every count shown
    time2, event2 = np.r_[time, np.full(11, 0.3)], np.r_[event, np.zeros(11, int)]
    assert va.release_endpoint_counts(time2, event2, HORIZON, 11) == {
        "persons": "95", "deaths": "34", "alive": "49", "censored": "12", "events": "34"}


def test_released_calibration_curve_merges_groups_with_few_deaths():
    rng = np.random.default_rng(5)
    p = np.sort(rng.uniform(0.05, 0.95, 200))
    y = (np.arange(200) >= 30).astype(float)  # the 30 lowest risks: no death; then 170 deaths
    y[[0, 1, 2]] = 1.0  # 3 deaths in the lowest group of 20 (observed 0.15 x 20 = 3 without the fix)
    y[150:170] = 0.0
    w = np.ones(200)
    raw = va.cal.calibration_curve(y, p, w, n_bins=10, min_count=11)
    assert (raw["observed"] * raw["n"]).round().between(1, 10).any()  # the leak the helper removes
    curve = va.released_calibration_curve(y, p, w, 10, 11)
    deaths = (curve["observed"] * curve["n"]).round()
    assert len(curve) >= 1 and not deaths.between(1, 10).any() and not (curve["n"] - deaths).between(1, 10).any()
    assert curve["n"].sum() == 200 and (curve["n"] >= 11).all()
    # no small count: the same curve as calibration_curve
    y_safe = (np.arange(200) % 2).astype(float)  # 25 deaths and 25 survivors per group of 50
    pd.testing.assert_frame_equal(va.released_calibration_curve(y_safe, p, w, 4, 11),
                                  va.cal.calibration_curve(y_safe, p, w, n_bins=4, min_count=11))
    # censored people (weight 0) are not in the curve's groups
    w0 = w.copy()
    w0[150:160] = 0.0
    assert va.released_calibration_curve(y, p, w0, 10, 11)["n"].sum() == 190


def test_subgroup_deaths_hidden_when_group_minus_deaths_is_small():
    # group A: 20 people, 12 deaths by the horizon, 8 alive (20 - 12 = 8 would be derivable)
    time = np.r_[np.full(12, 0.5), np.full(8, 2.0), np.full(20, 0.5), np.full(20, 2.0)]
    event = np.r_[np.ones(12), np.zeros(8), np.ones(20), np.zeros(20)].astype(int)
    group = np.r_[np.full(20, "A"), np.full(40, "B")]
    risk = np.random.default_rng(1).uniform(size=60)
    tab = va.subgroup_performance(time, event, risk, {"g": group}, HORIZON, n_boot=5, seed=1, min_cell=11)
    rows = tab.set_index("group")
    assert rows.loc["A", "n"] == "20" and rows.loc["B", "n"] == "40"
    assert rows.loc["A", "deaths"] == "suppressed" and rows.loc["B", "deaths"] == "suppressed"
    assert rows.loc["A", "suppressed"]  # 8 alive: no metrics either
