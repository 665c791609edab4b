"""The simulation study's survival-stage groups (pmed.simulation.estimands_survival): truths on
hand-checkable cases (Weibull medians, CIF without a competing event, a true Fine-Gray model),
that the stage's estimators target these truths under the generator's censoring (large latent
samples, tolerances of 4 standard errors), and a 2-replicate run through the study."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from pmed import competing as cr
from pmed import config
from pmed import survival as sv
from pmed.demo import model
from pmed.simulation import estimands_survival as es
from pmed.simulation import study

ARMS = ("chemo", "io", "chemo_io")


@pytest.fixture(scope="module")
def population() -> pd.DataFrame:
    """Eligible latent rows of 60,000 simulated persons (about 46,000)."""
    rates = config.load_params()["demo"]["rates"]
    lat = model.simulate_latent(60_000, 1, np.random.default_rng(11), rates)
    return lat[lat["reason"] == "eligible"].reset_index(drop=True)


def test_arm_median_of_one_weibull_is_its_closed_form():
    """One linear predictor: S(t) = exp(-lambda t^rho e^lp) = 1/2 at t = (ln 2 / (lambda e^lp))^(1/rho),
    rounded up to the generator's whole days."""
    for lp in (-1.0, 0.0, 0.7):
        t = (np.log(2) / (model.WEIBULL_SCALE * np.exp(lp))) ** (1 / model.WEIBULL_SHAPE)
        assert es.arm_median_days(np.full(50, lp)) == np.ceil(t)


def test_arm_median_of_a_mixture_is_its_population_median():
    """Two linear predictors (30% / 70%): the median day m has mean S(m) < 1/2 <= mean S(m - 1),
    and equals the sample median of 400,000 generated death days within 4 SE + 1 day (whole
    days); SE = 1 / (2 f(m) sqrt(n)), f the death-day density at m (about 1.5 days)."""
    lp = np.repeat([-0.8, 0.9], [30, 70])
    m = es.arm_median_days(lp)
    assert np.mean(model.survival_at(m, lp)) < 0.5 <= np.mean(model.survival_at(m - 1, lp))
    rng = np.random.default_rng()
    lp_big = np.repeat(lp, 4000)
    days = model.weibull_time(rng.random(lp_big.size), lp_big)
    density = np.mean(model.survival_at(m - 1, lp)) - np.mean(model.survival_at(m, lp))
    se = 1 / (2 * density * np.sqrt(days.size))
    assert abs(np.median(days) - m) <= 4 * se + 1


def test_km_median_under_the_generator_censoring_targets_the_arm_truth(population):
    """The generator's censoring (loss to follow-up; administrative end depending on t0 year)
    leaves the per-arm KM median consistent for the truth: within 4 SE (SE from the KM CI width)."""
    for a in ARMS:
        sel = (population["arm"] == a).to_numpy()
        km = sv.median_survival(population.loc[sel, "time_days"], population.loc[sel, "event"])
        se = (km["ci_high"] - km["ci_low"]) / 3.92
        assert abs(km["estimate"] - es.arm_median_days(population.loc[sel, "lp"])) <= 4 * se


def test_true_cif_without_death_is_the_weibull_distribution_function():
    """Death practically impossible (lp_death = -50): the CIF is 1 - exp(-lambda_p t^rho_p e^lp), averaged."""
    lp_event = np.array([-1.0, 0.0, 1.0, 2.0])
    want = np.mean(1 - np.exp(-model.PNEUMONITIS_SCALE * 365.0**model.PNEUMONITIS_SHAPE * np.exp(lp_event)))
    assert es.true_cif(np.full(4, -50.0), lp_event, 365.0, chunk=3) == pytest.approx(want, rel=1e-6)
    assert es.true_cif(np.full(4, 1.0), lp_event, 365.0) < want  # death competes


def test_true_cif_is_the_uncensored_share_and_the_aalen_johansen_target(population):
    """Per arm: the share of persons whose latent pneumonitis time is <= 365 days and before death
    (uncensored), and the Aalen-Johansen estimate from the observed (censored) columns, are each
    within 4 SE of the truth."""
    lp_event = model.linear_predictor(population, model.PNEUMONITIS_LOG_HR)
    t_event = model.pneumonitis_time(population["u_pneumonitis"].to_numpy(), lp_event)
    t_death = model.weibull_time(population["u_death"].to_numpy(), population["lp"].to_numpy(), rounded=False)
    for a in ARMS:
        sel = (population["arm"] == a).to_numpy()
        true = es.true_cif(population.loc[sel, "lp"], lp_event[sel], 365.0)
        share = np.mean((t_event[sel] <= 365) & (t_event[sel] < t_death[sel]))
        assert abs(share - true) <= 4 * np.sqrt(true * (1 - true) / sel.sum())
        aj = cr.cif_at(cr.cumulative_incidence(population.loc[sel, "pneumonitis_time_days"],
                                               population.loc[sel, "pneumonitis_status"]), [365.0])
        assert abs(aj["cif"].iloc[0] - true) <= 4 * aj["se"].iloc[0]


def test_cause_specific_truth_conditional_or_least_false(population):
    """02's model has every term of the generator's pneumonitis hazard: the truth is the generator's
    log-HRs (0 for the other terms), and the model's fit on the population is within 4 SE of them.
    Without copd (more common in smokers) the truth is the least-false fit: the smoking terms absorb
    part of the copd effect (about +0.15 each vs the full fit on the same persons; > 0.08 asserted)."""
    terms = es.competing_terms(config.load_params())
    truth = es.cause_specific_truth(population, "pneumonitis", terms)
    assert truth == {t: model.PNEUMONITIS_LOG_HR.get(t, 0.0) for t in terms}
    fit = cr.fit_cause_specific(population, "pneumonitis_time_days", "pneumonitis_status", terms)
    for t in terms:
        assert abs(fit.params_[t] - truth[t]) <= 4 * fit.standard_errors_[t]
    no_copd = [t for t in terms if t != "copd"]
    lf = es.cause_specific_truth(population, "pneumonitis", no_copd)
    assert set(lf) == set(no_copd)
    for t in ("smoking_current", "smoking_former"):
        assert lf[t] - fit.params_[t] > 0.08
    with pytest.raises(ValueError, match="survival.competing_outcomes"):
        es.cause_specific_truth(population, "nausea", terms)


def test_fine_gray_truth_recovers_the_coefficients_of_a_true_fine_gray_model():
    """Fine & Gray's (1999) design: F1(t | x) = 1 - (1 - p (1 - e^-t))^exp(x'b), competing times
    exponential given x, independent uniform censoring; 40,000 persons: within 4 robust SE of b."""
    rng = np.random.default_rng()
    n, p, b = 40_000, 0.4, np.array([0.5, -0.4])
    x = np.column_stack([rng.integers(0, 2, n), rng.normal(0, 1, n)])
    e = np.exp(x @ b)
    f_inf = 1 - (1 - p) ** e                                   # P(cause 1 | x)
    cause1 = rng.random(n) < f_inf
    u = rng.random(n)
    t1 = -np.log(1 - (1 - (1 - u * f_inf) ** (1 / e)) / p)     # inverse of F1(t | x) / F1(inf | x)
    t2 = rng.exponential(1 / np.exp(x @ np.array([0.3, 0.2])))
    t = np.where(cause1, t1, t2)
    c = rng.uniform(0, 3, n)
    df = pd.DataFrame({"ev_time_days": np.minimum(t, c), "ev_status": np.where(t <= c, np.where(cause1, 1, 2), 0),
                       "x1": x[:, 0], "x2": x[:, 1]})
    got = es.fine_gray_truth(df, "ev", ["x1", "x2"])
    se = cr.fit_fine_gray(df, "ev_time_days", "ev_status", ["x1", "x2"]).set_index("term")["se"]
    for k, term in enumerate(["x1", "x2"]):
        assert abs(got[term] - b[k]) <= 4 * se[term]


def test_truth_sample_same_persons_in_every_scenario():
    """The truth sample's own stream: the scenario switches change death times only (same arms and
    covariates, other linear predictors); eligible rows only; other master seed, other persons."""
    rates = config.load_params()["demo"]["rates"]
    cols = ["arm", "copd", "age_years", "lp"]
    on = es.truth_sample(5, rates, True, True, 3000, cols)
    off = es.truth_sample(5, rates, False, True, 3000, cols)
    pd.testing.assert_frame_equal(on[cols[:3]], off[cols[:3]])
    assert not np.allclose(on["lp"], off["lp"])
    assert 0.6 < len(on) / 3000 < 0.9  # eligible share of the generator (about 0.77)
    assert not es.truth_sample(6, rates, True, True, 3000, cols)[cols[:3]].equals(on[cols[:3]])


def _small_settings() -> study.Settings:
    p = copy.deepcopy(config.load_params())
    p["simulation"].update(replicates=2, n_persons=1000, truth_n_persons=20000, workers=1, scenarios={
        "small": {"heterogeneity": True, "image_signal": True, "estimands": ["km", "competing"]}})
    return study.Settings.from_params(p)


def test_two_replicates_of_km_and_competing_through_the_study():
    """Rows per replicate: a median per arm, a CIF per arm and a cause-specific and a Fine-Gray
    log-HR per term, with the population truths; the cause-specific null holds exactly where the
    generator's log-HR is 0 and "reject" means the CI excludes 0."""
    settings = _small_settings()
    result = study.run(settings)
    assert result["failures"].empty, result["failures"].to_dict("records")
    pops = study.population_truths(settings)["small"]
    truths = result["truths"]["small"]
    assert truths["km_median_days"] == pops["km_median_days"]
    table = result["table"]
    terms = es.competing_terms(settings.params)
    assert sorted(table["replicate"].unique()) == [0, 1]
    fitted = 0
    for r in (0, 1):
        rows = table[table["replicate"] == r].set_index("estimand")
        for a in ARMS:
            km = rows.loc[f"median OS {a} (days)"]
            assert km["true"] == pops["km_median_days"][a] and km["ci_low"] <= km["estimate"] <= km["ci_high"]
            assert rows.loc[f"CIF pneumonitis 365 days {a}", "true"] == pops["competing"]["pneumonitis"]["cif"][a]
        model_rows = [e for e in rows.index if "log-HR" in e or "log-SHR" in e]
        if not model_rows:  # a term not estimable in this replicate (02's rule): no model rows at all
            assert len(rows) == 2 * len(ARMS)
            continue
        fitted += 1
        for t in terms:
            cs = rows.loc[f"cause-specific log-HR pneumonitis {t}"]
            assert cs["true"] == model.PNEUMONITIS_LOG_HR.get(t, 0.0)
            assert cs["null_true"] == (t not in model.PNEUMONITIS_LOG_HR)
            assert cs["reject"] == (cs["ci_low"] > 0 or cs["ci_high"] < 0)
            fg = rows.loc[f"Fine-Gray log-SHR pneumonitis {t}"]
            assert fg["true"] == pops["competing"]["pneumonitis"]["fine_gray"][t] and not fg["null_true"]
        assert len(rows) == 2 * len(ARMS) + 2 * len(terms)
    assert fitted >= 1
    summary = result["summary"].set_index("estimand")
    assert summary.loc["median OS chemo (days)", "n_rep"] == 2
