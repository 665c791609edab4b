"""Truths of the simulation study's outcomes-stage rows (ICI/E50/E90, subgroups, temporal) and
imaging per-model C / td-AUC: hand-checkable cases. The 2-replicate run of these groups is in
tests/test_simulation.py (``small_run``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from pmed import calibration, metrics
from pmed.simulation import estimands


@pytest.mark.parametrize("draw", range(3))  # three fresh draws, no fixed seed
def test_calibration_errors_of_perfect_and_shifted_risks(draw):
    """p = true risk: ICI = E50 = E90 = 0 exactly; p = expit(logit(r) + 0.4) (monotone in r, so
    E[r | p] = expit(logit(p) - 0.4) exactly): the errors of that curve, computed by hand."""
    r = np.random.default_rng().beta(2, 2.5, 20_000)
    assert estimands.true_calibration_errors(r, r) == {"ici": 0.0, "e50": 0.0, "e90": 0.0, "emax": 0.0}
    p = expit(logit(r) + 0.4)
    d = np.abs(p - expit(logit(p) - 0.4))
    got = estimands.true_calibration_errors(r, p)
    assert got["ici"] == pytest.approx(d.mean(), abs=5e-4)
    assert got["e50"] == pytest.approx(np.median(d), abs=3e-3)
    assert got["e90"] == pytest.approx(np.quantile(d, 0.9), abs=3e-3)


def test_subgroup_truth_by_hand():
    """O/E = mean true risk / mean risk; risks equal to the true risks: O/E 1 and intercept 0;
    halved risks: O/E 2; Harrell's C of risks ordered like the death times: 1."""
    people = pd.DataFrame({"time_days": [50.0, 120.0, 300.0, 400.0, 800.0], "event": [1, 1, 1, 0, 0],
                           "true_risk": [0.9, 0.7, 0.5, 0.3, 0.2]})
    r = people["true_risk"].to_numpy()
    same = estimands.subgroup_truth(people, r)
    assert same["oe_ratio"] == pytest.approx(1.0) and same["calibration_intercept"] == pytest.approx(0.0, abs=1e-8)
    assert same["harrell_c"] == 1.0
    half = estimands.subgroup_truth(people, r / 2)
    assert half["oe_ratio"] == pytest.approx(2.0) and half["calibration_intercept"] > 0
    assert estimands.subgroup_truth(people, r[::-1])["harrell_c"] == 0.0


def test_subgroup_labels_and_arms():
    frame = pd.DataFrame({"arm_io": [0, 1, 0, 0], "arm_chemo_io": [0, 0, 1, 0]})
    assert list(estimands.arm_labels(frame)) == ["chemo", "io", "chemo_io", "chemo"]
    g = estimands.outcome_subgroups([1, 0, 1, 0], [59.9, 60.0, 70.0, 85.0], ["chemo", "io", "chemo_io", "chemo"],
                                    [60, 70])
    assert list(g["sex"]) == ["female", "male", "female", "male"]
    assert list(g["age band (years)"]) == ["<60", "60-70", ">=70", ">=70"]
    assert list(g["arm"]) == ["chemo", "io", "chemo_io", "chemo"]


def test_auc_by_hand():
    """Cases 3, 2; controls 1, 2: pairs (3,1) (3,2) (2,1) concordant, (2,2) tied -> 3.5 / 4."""
    assert estimands._auc(np.array([3.0, 2.0]), np.array([1.0, 2.0])) == pytest.approx(0.875)
    assert estimands._auc(np.array([0.0]), np.array([1.0, 2.0])) == 0.0


def test_threshold_truths_by_hand():
    """r = (0.9, 0.6, 0.2, 0.1), risks (0.8, 0.75, 0.3, 0.72), threshold 0.7: flagged 1, 2, 4;
    sum r f = 1.6, sum r = 1.8 -> sensitivity 8/9; PPV 1.6/3; net benefit
    (1.6 - 1.4 x 0.7/0.3) / 4. No one flagged: sensitivity 0, PPV NaN, net benefit 0."""
    r = np.array([0.9, 0.6, 0.2, 0.1])
    got = estimands.true_threshold_metrics(r, np.array([0.8, 0.75, 0.3, 0.72]), 0.7)
    assert got["sensitivity"] == pytest.approx(8 / 9) and got["ppv"] == pytest.approx(1.6 / 3)
    assert got["net_benefit"] == pytest.approx((1.6 - 1.4 * 0.7 / 0.3) / 4)
    none = estimands.true_threshold_metrics(r, np.full(4, 0.1), 0.7)
    assert none["sensitivity"] == 0 and np.isnan(none["ppv"]) and none["net_benefit"] == 0


@pytest.mark.parametrize("draw", range(3))  # three fresh draws, no fixed seed
def test_threshold_and_null_brier_truths_are_the_estimators_with_known_outcomes(draw):
    """With r in {0, 1} (outcomes known) the truths equal the stage's estimators on y = r
    (metrics.sensitivity_ppv, calibration.net_benefit; null Brier = Brier of the overall risk);
    with r in (0, 1), the estimators on y ~ Bernoulli(r) of 200,000 people are within 4 SE."""
    rng = np.random.default_rng()
    p = rng.random(300)
    y = (rng.random(300) < p).astype(float)
    got = estimands.true_threshold_metrics(y, p, 0.6)
    ref = metrics.sensitivity_ppv(y, p >= 0.6)
    assert got["sensitivity"] == pytest.approx(ref["sensitivity"]) and got["ppv"] == pytest.approx(ref["ppv"])
    assert got["net_benefit"] == pytest.approx(calibration.net_benefit(y, p, 0.6))
    assert estimands.null_brier(y) == pytest.approx(np.mean((y - y.mean()) ** 2))
    r = rng.beta(2, 3, 200_000)
    p = np.clip(r + rng.normal(0, 0.1, r.size), 0.001, 0.999)
    y = (rng.random(r.size) < r).astype(float)
    truth = estimands.true_threshold_metrics(r, p, 0.5)
    f = p >= 0.5
    sens, ppv = y[f].sum() / y.sum(), y[f].mean()
    assert sens == pytest.approx(truth["sensitivity"], abs=4 * np.sqrt(sens * (1 - sens) / y.sum()))
    assert ppv == pytest.approx(truth["ppv"], abs=4 * np.sqrt(ppv * (1 - ppv) / f.sum()))
    assert np.mean((y - y.mean()) ** 2) == pytest.approx(estimands.null_brier(r), abs=0.002)


def test_apparent_c_truth_without_missing_values_is_the_c_of_the_true_covariates():
    """A cohort without missing predictors imposes none, so the truth is Harrell's C of the
    population's own covariates x beta (interaction column built as a product)."""
    rng = np.random.default_rng(4)
    people = pd.DataFrame({"a": rng.normal(size=400), "b": rng.integers(0, 2, 400).astype(float),
                           "time_days": rng.exponential(300, 400), "event": rng.integers(0, 2, 400)})
    cohort = people[["a", "b"]].iloc[:50]
    beta = np.array([0.5, -1.0, 0.3])
    got = estimands.apparent_c_truth(cohort, people, ["a", "b"], ["a:b"], ["a", "b", "a:b"], beta, 1, 2)
    lp = 0.5 * people["a"] - people["b"] + 0.3 * people["a"] * people["b"]
    assert got == metrics.harrell_c(people["time_days"], people["event"], lp.to_numpy())


def test_true_integrated_brier_by_hand():
    """Two people, true S (0.9, 0.6) and (0.5, 0.2) at days 1 and 3, predicted = true: Brier
    at day 1 = (0.9 x 0.1 + 0.5 x 0.5) / 2 = 0.17, at day 3 = (0.6 x 0.4 + 0.2 x 0.8) / 2 = 0.2,
    IBS = trapezoid (0.17 + 0.2) / 2 x 2 / (3 - 1) = 0.185; predicting 1 everywhere: Brier =
    mean(1 - S) = 0.3 and 0.6, IBS 0.45."""
    S = np.array([[0.9, 0.6], [0.5, 0.2]])
    assert estimands.true_integrated_brier(S, S, [1.0, 3.0]) == pytest.approx(0.185)
    assert estimands.true_integrated_brier(S, np.ones_like(S), [1.0, 3.0]) == pytest.approx(0.45)
    with pytest.raises(ValueError, match="k >= 2 times"):
        estimands.true_integrated_brier(S[:, :1], S[:, :1], [1.0])


@pytest.mark.parametrize("draw", range(3))  # three fresh draws, no fixed seed
def test_true_integrated_brier_is_what_the_ipcw_estimator_estimates(draw):
    """Whole-day death times of the generator's Weibull model (model.weibull_time), censored only
    after the last grid time (IPCW weights 1): the stage's integrated Brier score
    (metrics.integrated_brier_score) of distorted predicted curves on 100,000 people is within
    4 SE of the truth from their true log hazards (:func:`estimands.true_survival_at`, grid of
    non-integer days as the stage's 365 x j / 4)."""
    from pmed.demo import model

    rng = np.random.default_rng()
    n, times = 100_000, [91.25, 182.5, 273.75, 365.0]
    lp = rng.normal(0, 0.8, n) + np.log(np.log(2) / (model.WEIBULL_SCALE * 300**model.WEIBULL_SHAPE))
    t = model.weibull_time(rng.random(n), lp).astype(float)
    event = (t <= 400).astype(int)
    t = np.minimum(t, 400.0)
    true = estimands.true_survival_at(lp, times)
    surv = true ** np.exp(0.5 * rng.normal(size=(n, 1)))  # each person's curve mis-scaled
    got = metrics.integrated_brier_score(t, event, surv, times)
    per = np.array([(tj < t).astype(float) for tj in times]).T
    contrib = np.trapezoid((per - surv) ** 2, times, axis=1) / (times[-1] - times[0])
    assert got == pytest.approx(contrib.mean())  # no censoring before 400 days: weights 1
    assert got == pytest.approx(estimands.true_integrated_brier(true, surv, times), abs=4 * contrib.std() / np.sqrt(n))


@pytest.mark.parametrize("draw", range(3))  # three fresh draws, no fixed seed
def test_least_false_log_or_recovers_a_correctly_specified_logistic_model(draw):
    """Death by the horizon drawn from a logistic model in a, b and a:b (coefficients -0.5, 0.8,
    -0.6, 0.4): on 100,000 people the truth recovers each coefficient within 4 of its SEs
    (SE from the information matrix, computed here); death days beyond the horizon count as
    alive, a death on the horizon day as dead."""
    rng = np.random.default_rng()
    n = 100_000
    people = pd.DataFrame({"a": rng.normal(size=n), "b": rng.integers(0, 2, n).astype(float)})
    X = np.column_stack([np.ones(n), people["a"], people["b"], people["a"] * people["b"]])
    beta = np.array([-0.5, 0.8, -0.6, 0.4])
    p = expit(X @ beta)
    died = rng.random(n) < p
    people["t_death_days"] = np.where(died, rng.integers(1, 366, n), rng.integers(366, 3000, n)).astype(float)
    got = estimands.least_false_log_or(people, ["a", "b"], ["a:b"], 365.0)
    assert list(got) == ["a", "b", "a:b"]
    se = np.sqrt(np.diag(np.linalg.inv(X.T @ (X * (p * (1 - p))[:, None]))))[1:]
    for (term, value), b, s in zip(got.items(), beta[1:], se, strict=True):
        assert value == pytest.approx(b, abs=4 * s), term
