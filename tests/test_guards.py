"""A tiny cohort (20 persons, 3 deaths; 14 persons for three arms) stops every model fit with
"too few events for <model>: k events, need >= m (rule)", never a LinAlgError or a
ConvergenceError; enough events pass."""

import re

import numpy as np
import pandas as pd
import pytest

from pmed import causal, competing, multiarm, policy, prediction, radiomics_model
from pmed import survival as sv
from pmed.survival import TooFewEventsError

COVARIATES = ["age_years", "ecog", "pdl1_pct", "arm_io"]


def tiny_cohort(n: int = 20, deaths: int = 3, pneumonitis: int = 2, arms=("chemo", "io")):
    """``n`` persons, the first ``deaths`` dead, ``pneumonitis`` (of the others) with the event;
    arms assigned in turn."""
    rng = np.random.default_rng(7)
    event = np.r_[np.ones(deaths), np.zeros(n - deaths)].astype(int)
    status = np.zeros(n, dtype=int)
    status[deaths:deaths + pneumonitis] = 1
    status[:deaths] = 2
    treatment = np.array([arms[i % len(arms)] for i in range(n)])
    return pd.DataFrame({
        "person_id": np.arange(1, n + 1),
        "time_days": rng.uniform(30, 900, n).round(),
        "event": event,
        "pneumonitis_time_days": rng.uniform(10, 500, n).round(),
        "pneumonitis_status": status,
        "age_years": rng.normal(66, 9, n),
        "ecog": rng.integers(0, 3, n).astype(float),
        "pdl1_pct": rng.uniform(0, 100, n),
        "treatment": treatment,
        "arm_io": (treatment == "io").astype(int),
    })


def message(text: str):
    return pytest.raises(TooFewEventsError, match=f"^{re.escape(text)}$")


def test_the_rule():
    sv.require_events("m", 5)
    sv.require_events("m", 12, 12)
    with message("too few events for m: 4 events, need >= 5 (>= 5 events)"):
        sv.require_events("m", 4)
    with message("too few events for m: 11 events, need >= 12 (>= 5 events and >= 1 per "
                 "parameter, 12 parameters)"):
        sv.require_events("m", 11, 12)
    assert issubclass(TooFewEventsError, ValueError)


RULE4 = "need >= 5 (>= 5 events and >= 1 per parameter, 4 parameters)"


def test_survival_cox_fits():
    df = tiny_cohort()
    with message(f"too few events for Cox model: 3 events, {RULE4}"):
        sv.fit_cox(df, "time_days", "event", COVARIATES)
    with message(f"too few events for Cox model: 3 events, {RULE4}"):
        sv.fit_cox_mi([df, df], "time_days", "event", COVARIATES)
    with message(f"too few events for Cox model (fit_cox_counting): 3 events, {RULE4}"):
        sv.fit_cox_counting(df, "time_days", "event", COVARIATES)
    with message("too few events for Cox model (PH remedy): 3 events, need >= 5 (>= 5 events "
                 "and >= 1 per parameter, 5 parameters)"):
        sv.fit_ph_remedy(df, "time_days", "event", COVARIATES, ["ecog"], 180)


def test_competing_risk_fits():
    df = tiny_cohort()
    with message("too few events for cause-specific Cox model (pneumonitis_status == 1): "
                 f"2 events, {RULE4}"):
        competing.fit_cause_specific(df, "pneumonitis_time_days", "pneumonitis_status", COVARIATES)
    with message("too few events for Fine-Gray model (pneumonitis_status == 1): 2 events, "
                 f"{RULE4}"):
        competing.fit_fine_gray(df, "pneumonitis_time_days", "pneumonitis_status", COVARIATES)


def test_treatment_fits():
    df = tiny_cohort()
    with message("too few persons for propensity model (the smaller of treated and untreated): "
                 "10 persons, need >= 11 (>= 5 persons and >= 1 per parameter, 11 parameters)"):
        X = pd.DataFrame(np.random.default_rng(1).normal(size=(20, 11)))
        causal.fit_propensity(X, df["arm_io"].to_numpy())
    with message("too few events for weighted Cox model: 3 events, need >= 5 (>= 5 events and "
                 ">= 1 per parameter, 1 parameter)"):
        causal.weighted_cox(df, "time_days", "event", ["arm_io"], np.ones(20))
    three = tiny_cohort(n=14, arms=("chemo", "io", "chemo_io"))
    arm = multiarm.arm_codes(three["treatment"], ["chemo", "io", "chemo_io"], "chemo")
    with message("too few persons for propensity model (arm code 2): 4 persons, need >= 5 "
                 "(>= 5 persons and >= 1 per parameter, 3 parameters)"):
        multiarm.fit_multinomial_propensity(three[["age_years", "ecog", "pdl1_pct"]], arm)
    with message("too few persons for propensity model (arm chemo_io): 4 persons, need >= 5 "
                 "(>= 5 persons and >= 1 per parameter, 3 parameters)"):
        multiarm.mi_iptw(three, ["age_years", "ecog", "pdl1_pct"], arm, ["chemo", "io", "chemo_io"],
                         365, m=2, seed=1)
    arm2 = df["arm_io"].to_numpy()
    with message("too few events for IPTW Cox model (arms vs the reference): 3 events, need >= 5 "
                 "(>= 5 events and >= 1 per parameter, 1 parameter)"):
        multiarm.mi_iptw(df, ["age_years", "ecog", "pdl1_pct"], arm2, ["chemo", "io"], 365, m=2,
                         seed=1)


def test_policy_fits():
    df = tiny_cohort()
    X = df[["age_years", "ecog"]].to_numpy()
    arm = df["arm_io"].to_numpy()
    with message("too few events for the outcome Cox model of arm 0: 2 events, need >= 5 "
                 "(>= 5 events)"):
        policy.run_repeats(X, df[["pdl1_pct"]], arm, df["time_days"], df["event"], 365,
                           n_repeats=1, n_folds=2, seed=1, min_leaf=2)
    with message("too few events for the outcome Cox model of arm 0 (training rows of fold 0): "
                 "0 events, need >= 5 (>= 5 events)"):
        policy.crossfit_scores(X, arm, df["time_days"], df["event"], 365, np.arange(20) % 2)


def test_prediction_and_imaging_models():
    df = tiny_cohort()
    settings = prediction.ModelSettings(features=("age_years", "ecog"),
                                        interactions=("ecog:arm_io",))
    df = sv.add_interactions(df, settings.interactions)
    y = np.where(df["time_days"] <= 365, df["event"], 0).astype(float)
    with message("too few events for the risk models (Cox, logistic, boosting): 3 events, need >= "
                 "5 (>= 5 events and >= 1 per parameter, 3 parameters)"):
        prediction.cross_validated_predictions(df, "time_days", "event", y, np.ones(20), [365],
                                               settings, 2, 1, 1)
    models = {"clinical": radiomics_model.CoxModel(clinical=["age_years", "ecog"])}
    with message("too few events for the imaging Cox models: 3 events, need >= 5 (>= 5 events "
                 "and >= 1 per parameter, 2 parameters)"):
        radiomics_model.cross_validated_predictions(df, df["time_days"], df["event"], models, 2, 1,
                                                    1, 365)


def test_enough_events_fit():
    df = tiny_cohort(n=60, deaths=30, pneumonitis=12)
    assert sv.fit_cox(df, "time_days", "event", COVARIATES).params_.shape == (4,)
    assert len(competing.fit_cause_specific(df, "pneumonitis_time_days", "pneumonitis_status",
                                            ["age_years"]).params_) == 1
