"""Simulation groups ph_remedy and icc (pmed.simulation.estimands_diagnostics): known answers.

Unseeded random draws (a new sample every run); tolerances are several standard errors wide.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from pmed import config
from pmed import survival as sv
from pmed.demo import model
from pmed.imaging.stability import ICC_TYPES, icc, icc_ci
from pmed.simulation import design, study
from pmed.simulation import estimands_diagnostics as ed


@pytest.fixture(scope="module")
def params():
    return config.load_params()


@pytest.mark.parametrize("kind", ICC_TYPES)
@pytest.mark.parametrize("value", [0.3, 0.75, 0.95])
def test_icc_components_give_the_population_icc(kind, value):
    lesion, rater, error = ed.icc_components(value, kind)
    assert (lesion + error if kind == "3,1" else lesion + rater + error) == pytest.approx(1.0)
    assert rater == pytest.approx(ed.RATER_SHARE * error)
    assert ed.population_icc(lesion, rater, error, kind) == pytest.approx(value)
    other = "2,1" if kind == "3,1" else "3,1"  # the other kind differs (rater variance in or out)
    assert ed.population_icc(lesion, rater, error, other) != pytest.approx(value)


@pytest.mark.parametrize("law", ["normal", "lognormal", "t"])
def test_standardised_laws_have_mean_0_variance_1(law):
    x = ed._standard(np.random.default_rng(), 1_000_000, law)
    assert abs(x.mean()) < 0.01
    assert x.var() == pytest.approx(1.0, abs=0.06)
    if law == "lognormal":  # skewness exp(3 s^2)... formula (e^{s^2} + 2) sqrt(e^{s^2} - 1) = 6.18 for s = 1
        assert ((x - x.mean()) ** 3).mean() / x.std() ** 3 > 3


@pytest.mark.parametrize("distribution", ed.ICC_DISTRIBUTIONS)
@pytest.mark.parametrize("value", [0.5, 0.9])
def test_rating_generator_has_its_population_icc(distribution, value):
    rng = np.random.default_rng()
    x = ed.icc_ratings(rng, 40_000, 5, value, "3,1", distribution)  # many lesions: ICC(3,1) consistent
    # SE of the estimate ~ ICC (1 - ICC) sqrt((excess kurtosis + 2) / n): about 0.002 (normal) and,
    # with the log-normal lesion effect's excess kurtosis of 111, 0.053 ICC (1 - ICC) (0.013 at 0.5)
    tol = 0.02 if distribution == "normal" else value * (1 - value) / 4  # >= 4.5 SE
    assert icc(x, "3,1") == pytest.approx(value, abs=tol)
    if distribution == "normal":  # ICC(2,1) needs many raters too (the rater variance)
        y = ed.icc_ratings(rng, 2_000, 400, value, "2,1", distribution)
        assert icc(y, "2,1") == pytest.approx(value, abs=0.02)


@pytest.mark.parametrize("kind", ICC_TYPES)
def test_icc_ci_covers_under_the_normal_model(kind):
    """400 draws of the stage's design (30 lesions x 5 perturbations): a correct 95% interval
    covers in 0.95 +- 4 MC SE (0.906-0.994)."""
    rng = np.random.default_rng()
    hits = []
    for _ in range(400):
        low, high = icc_ci(ed.icc_ratings(rng, 30, 5, 0.75, kind), kind)
        hits.append(low <= 0.75 <= high)
    assert 0.906 <= np.mean(hits) <= 0.994


def test_icc_ci_on_a_large_sample_is_narrow_around_the_truth():
    x = ed.icc_ratings(np.random.default_rng(), 20_000, 5, 0.8)
    low, high = icc_ci(x)
    assert high - low < 0.02
    assert low - 0.01 <= 0.8 <= high + 0.01  # within the width of the CI (a miss of a correct CI is < 0.01 away)


def test_run_icc_rows(params):
    rows = pd.DataFrame(ed.run_icc(int(np.random.default_rng().integers(2**31)), params))
    ns, k = ed.icc_settings(params)
    assert k == len(params["imaging_features"]["stability"]["perturbations"])
    assert len(rows) == len(ed.ICC_DISTRIBUTIONS) * len(ICC_TYPES) * len(ns) * len(ed.ICC_VALUES)
    assert (rows["ci_low"] <= rows["estimate"]).all() and (rows["estimate"] <= rows["ci_high"]).all()
    assert set(rows["true"]) == set(ed.ICC_VALUES)


def test_remedy_truth_is_the_generating_log_hr_under_ph(params):
    """No image signal: conditional PH holds, so the remedy model on a large population converges
    to the generator's log-HRs, early = late (within 4.5 SE of the fit per term)."""
    lat = model.simulate_latent(40_000, 1, np.random.default_rng(), params["demo"]["rates"],
                                image_signal=False, heterogeneity=True)
    pop = lat[lat["reason"] == "eligible"].reset_index(drop=True)
    terms, violators, cut = ed._remedy_setup(params)
    fit, _ = sv.fit_ph_remedy(sv.add_interactions(pop, [t for t in terms if ":" in t]), "time_days", "event",
                              terms, violators, cut)
    est, var = ed.remedy_estimates(fit, violators)
    truth = ed.conditional_remedy_truth(params, heterogeneity=True)
    assert "copd" not in est.index and "albumin_g_dl:late" in est.index  # stratified / time interaction
    assert set(est.index) <= set(truth)
    z = {t: (est[t] - truth[t]) / np.sqrt(var[t]) for t in est.index}
    assert max(abs(v) for v in z.values()) < 4.5, z
    assert ed.remedy_truth(pop, params) == pytest.approx(est.to_dict())


def test_run_ph_remedy_rows(params):
    """One replicate: a flag row per term + any; late log-HR = early + change (Rubin's point
    estimate is the mean over imputations); its SE at least the larger part's within variance."""
    sc = design.Scenario("test", heterogeneity=True, image_signal=False, estimands=("ph_remedy",))
    seed = int(np.random.default_rng().integers(2**31))
    cohort, _ = design.simulate_cohort(seed, sc, 1500, params)
    rows = pd.DataFrame(ed.run_ph_remedy(cohort, seed, params, sc, None)).set_index("estimand")
    terms = [*params["survival"]["covariates"], *params["survival"]["interactions"]]
    tests = rows[rows["ci_kind"] == "test"]
    assert len(tests) == len(terms) + 1 and tests["null_true"].all()
    assert tests["reject"].iloc[-1] == tests["reject"].iloc[:-1].any()
    lab = ed.remedy_labels("albumin_g_dl", params["survival"]["ph_cut_days"])
    early, change, late = (rows.loc[lab[k]] for k in ("early", "change", "late"))
    assert late["estimate"] == pytest.approx(early["estimate"] + change["estimate"])
    assert early["true"] == late["true"] == model.hazard_log_hr(True)["albumin_g_dl"] and change["true"] == 0
    assert "remedy log-HR copd" not in rows.index
    fitted = rows[rows["ci_kind"] == "Rubin"]
    assert len(fitted) == len(terms) - 1 + 2 and (fitted["ci_low"] < fitted["ci_high"]).all()


def test_study_dispatches_both_groups_with_the_remedy_truth_hook(params):
    p = {**params, "survival": {**params["survival"], "n_imputations": 2, "mice_max_iter": 2}}
    p["simulation"] = {**params["simulation"], "replicates": 1, "n_persons": 800, "truth_n_persons": 20_000,
                       "workers": 1, "scenarios": {"s": {"heterogeneity": True, "image_signal": True,
                                                         "estimands": ["ph_remedy", "icc"]}}}
    result = study.run(study.Settings.from_params(p), log=io.StringIO())
    assert result["failures"].empty
    table = result["table"]
    assert set(table["group"]) == {"ph_remedy", "icc"}
    truth = result["truths"]["s"]["ph_remedy"]  # the hook's least-false values reach the rows
    lab = ed.remedy_labels("albumin_g_dl", p["survival"]["ph_cut_days"])
    late = table.set_index("estimand").loc[lab["late"]]
    assert late["true"] == pytest.approx(truth["albumin_g_dl:late_total"])
