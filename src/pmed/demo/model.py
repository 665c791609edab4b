"""The generating model of the demo study: one latent row per synthetic person.

Everything the OMOP tables later show is derived from the latent table built here, so the
true answers (log hazard ratios, propensity model, eligibility, lab slopes, tumour traits)
are known exactly and written to ``ground_truth.json``.

Time is counted in integer days since 1970-01-01 ("epoch days") inside this module.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

EPOCH = dt.date(1970, 1, 1)


def epoch_day(d: dt.date) -> int:
    """Days since 1970-01-01 of a date."""
    return (d - EPOCH).days


FIRST_INDEX_DAY = epoch_day(dt.date(2015, 1, 1))  # earliest NSCLC diagnosis
LAST_INDEX_DAY = epoch_day(dt.date(2023, 12, 31))  # latest NSCLC diagnosis
ADMIN_END_DAY = epoch_day(dt.date(2025, 12, 31))  # data extraction date (administrative censoring)

# Why a person does not enter the analysis cohort. Exactly one reason per ineligible person,
# so the attrition counts do not depend on the order the criteria are applied in.
REASONS = (
    "no_nsclc",  # never diagnosed with NSCLC (background patients)
    "age_under_18",  # age < 18 years at the NSCLC diagnosis
    "short_prior_observation",  # < 365 days of observation before the diagnosis
    "other_cancer_before",  # breast/colon/prostate cancer recorded on or before the diagnosis
    "no_first_line_within_60d",  # untreated, or first treatment > 60 days after diagnosis
    "treatment_before_diagnosis",  # first immuno/chemo record before the diagnosis
)

# True log hazard ratios per unit of the cohort column (Weibull proportional hazards).
LOG_HR: dict[str, float] = {
    "age_years": 0.02,
    "sex_female": -0.15,
    "smoking_current": 0.25,
    "smoking_former": 0.10,
    "ecog": 0.25,
    "stage_iv": 0.40,
    "copd": 0.15,
    "diabetes": 0.10,
    "heart_failure": 0.25,
    "ckd": 0.10,
    "albumin_g_dl": -0.30,
    "ldh_u_l": 0.0015,
    "neutrophils_10e9_l": 0.05,
    "lymphocytes_10e9_l": -0.15,
    "hemoglobin_g_dl": -0.06,
    "creatinine_mg_dl": 0.0,
    "weight_kg": 0.0,
    "bmi_kg_m2": -0.02,
    "pdl1_pct": -0.002,
    "treated": 0.0,
    "treated:pdl1_pct": -0.010,
}
# Latent tumour traits (not in the EHR): log-HR per unit of the trait.
TRAIT_LOG_HR: dict[str, float] = {
    "log_tumour_volume_ml": 1.0 / 3.0,  # natural log of the true tumour volume in mL (0.3 per SD)
    "heterogeneity": 1.5,  # texture heterogeneity, 0..1 (0.3 per SD)
}
TRAIT_DIST = {
    "log_tumour_volume_ml": {"mean": float(np.log(12.0)), "sd": 0.9},  # normal
    "heterogeneity": {"beta_a": 2.0, "beta_b": 3.0},  # SD = 0.2
    "irregularity": {"beta_a": 2.0, "beta_b": 2.0},  # no effect on hazard
}
# Population mean of the traits' log-hazard term (volume clipping ignored). With the image
# signal off this constant replaces the term, so the hazard level and the number of deaths stay
# close to those of the signal-on data while no trait affects the hazard.
TRAIT_LP_MEAN = (
    TRAIT_LOG_HR["log_tumour_volume_ml"] * TRAIT_DIST["log_tumour_volume_ml"]["mean"]
    + TRAIT_LOG_HR["heterogeneity"] * TRAIT_DIST["heterogeneity"]["beta_a"]
    / (TRAIT_DIST["heterogeneity"]["beta_a"] + TRAIT_DIST["heterogeneity"]["beta_b"])
)
WEIBULL_SHAPE = 1.2  # rho; h0(t) = lambda * rho * t^(rho-1), t in days
# lambda chosen so that median survival is ~11 months at the mean linear predictor
WEIBULL_SCALE = 1.6e-4

# Propensity of immunotherapy (logistic), per unit of the cohort column;
# index_year_c = calendar year of index_date minus 2019.
PROPENSITY: dict[str, float] = {
    "intercept": 0.3,
    "pdl1_pct": 0.03,
    "ecog": -0.5,
    "ckd": -0.8,
    "age_years": -0.02,
    "stage_iv": 0.3,
    "index_year_c": 0.25,
}
PROPENSITY_CENTRE = {"age_years": 66.0, "pdl1_pct": 35.0}  # subtracted before the logit

# Repeated labs after t0: mean slope (units per 30 days) by arm, person SD of the slope,
# measurement noise SD. The ground truth reports the immunotherapy - chemotherapy difference.
LAB_TRAJECTORIES = {
    "ldh_u_l": {"immunotherapy": -6.0, "chemotherapy": 4.0, "slope_sd": 5.0, "noise_sd": 15.0},
    "albumin_g_dl": {"immunotherapy": 0.02, "chemotherapy": -0.05, "slope_sd": 0.04, "noise_sd": 0.15},
    "neutrophils_10e9_l": {"immunotherapy": 0.0, "chemotherapy": -0.4, "slope_sd": 0.3, "noise_sd": 0.6},
}
# Recording precision (decimals) of each numeric covariate; the latent value is rounded to it
# before it enters the hazard, so the cohort stage sees exactly the value the model used.
DECIMALS = {
    "albumin_g_dl": 1, "ldh_u_l": 0, "neutrophils_10e9_l": 2, "lymphocytes_10e9_l": 2,
    "hemoglobin_g_dl": 1, "creatinine_mg_dl": 2, "weight_kg": 1, "bmi_kg_m2": 1, "pdl1_pct": 0,
}


def trait_log_hr(image_signal: bool = True) -> dict[str, float]:
    """True log-HR per unit of each hazard-bearing tumour trait: :data:`TRAIT_LOG_HR`, or 0 for
    every trait when ``image_signal`` is False (the images then carry no prognostic signal)."""
    return {k: (b if image_signal else 0.0) for k, b in TRAIT_LOG_HR.items()}


def simulate_latent(n: int, first_person_id: int, rng: np.random.Generator, rates: dict,
                    image_signal: bool = True) -> pd.DataFrame:
    """Simulate ``n`` persons' latent baseline, treatment, survival and tumour traits.

    Parameters
    ----------
    n : int
        Number of persons.
    first_person_id : int
        person_id of the first row; ids are consecutive.
    rng : numpy.random.Generator
        Source of randomness (the caller seeds it).
    rates : dict
        ``ineligible`` {reason: share of persons}, ``missing`` {column: share},
        ``loss_to_follow_up`` share (see params.yaml ``demo.rates``).
    image_signal : bool
        False: the tumour traits get log-HR 0 (:func:`trait_log_hr`); their term of the log
        hazard is the constant :data:`TRAIT_LP_MEAN` instead. The same random numbers are drawn
        either way; only the death times (and what follows from them) change.

    Returns
    -------
    pandas.DataFrame
        One row per person: ``person_id``, ``reason`` ("eligible" or one of :data:`REASONS`),
        epoch-day columns ``birth_day``, ``index_day``, ``t0_day``, ``obs_start_day``,
        ``obs_end_day``, ``death_day`` (-1 if none), every cohort covariate (true values,
        rounded to recording precision), ``*_observed`` flags, ``treated``,
        ``days_dx_to_treatment``, ``time_days``, ``event``, latent tumour traits and ``lp``.
    """
    pid = np.arange(first_person_id, first_person_id + n, dtype=np.int64)
    shares = rates["ineligible"]
    p_reason = np.array([shares[r] for r in REASONS])
    if p_reason.sum() >= 1:
        raise ValueError(f"demo.rates.ineligible: shares must sum below 1 (got {p_reason.sum()})")
    reason_idx = rng.choice(len(REASONS) + 1, size=n, p=np.append(1 - p_reason.sum(), p_reason))
    reason = np.array(("eligible",) + REASONS, dtype=object)[reason_idx]

    index_day = rng.integers(FIRST_INDEX_DAY, LAST_INDEX_DAY + 1, size=n)
    age = np.clip(rng.normal(66.0, 9.0, n), 30.0, 92.0)
    age = np.where(reason == "age_under_18", rng.uniform(12.0, 17.9, n), age)
    birth_day = index_day - np.round(age * 365.25).astype(np.int64)
    age_years = (index_day - birth_day) / 365.25
    sex_female = rng.random(n) < 0.42

    smoke_u = rng.random(n)
    smoking = np.where(smoke_u < 0.15, 0, np.where(smoke_u < 0.65, 1, 2))  # never/former/current
    ecog = rng.choice(4, size=n, p=[0.30, 0.45, 0.20, 0.05]).astype(float)
    stage_iv = (rng.random(n) < 0.65).astype(np.int8)
    copd = (rng.random(n) < np.where(smoking > 0, 0.33, 0.12)).astype(np.int8)
    diabetes = (rng.random(n) < 0.20).astype(np.int8)
    heart_failure = (rng.random(n) < 0.10).astype(np.int8)
    ckd = (rng.random(n) < 0.12).astype(np.int8)

    albumin = np.clip(rng.normal(3.8 - 0.15 * ecog, 0.5, n), 1.5, 5.5)
    ldh = np.clip(np.exp(rng.normal(np.log(230.0) + 0.15 * stage_iv, 0.35, n)), 80, 2500)
    neut = np.clip(np.exp(rng.normal(np.log(5.2), 0.35, n)), 0.8, 30)
    lymph = np.clip(np.exp(rng.normal(np.log(1.5), 0.4, n)), 0.1, 8)
    hgb = np.clip(rng.normal(np.where(sex_female, 12.2, 13.2), 1.5, n), 6.0, 18.0)
    creat = np.clip(np.exp(rng.normal(np.log(0.9) + 0.6 * ckd, 0.25, n)), 0.3, 8.0)
    height_m = np.where(sex_female, rng.normal(1.63, 0.07, n), rng.normal(1.76, 0.07, n))
    bmi_true = np.clip(rng.normal(25.5, 4.5, n), 15.0, 50.0)
    weight = np.round(bmi_true * height_m**2, 1)
    bmi = weight / height_m**2
    pdl1 = 100.0 * rng.beta(0.5, 0.8, n)

    cov = pd.DataFrame(
        {
            "age_years": age_years, "sex_female": sex_female.astype(np.int8),
            "smoking_current": (smoking == 2).astype(np.int8),
            "smoking_former": (smoking == 1).astype(np.int8),
            "ecog": ecog, "stage_iv": stage_iv, "copd": copd, "diabetes": diabetes,
            "heart_failure": heart_failure, "ckd": ckd,
            "albumin_g_dl": albumin, "ldh_u_l": ldh, "neutrophils_10e9_l": neut,
            "lymphocytes_10e9_l": lymph, "hemoglobin_g_dl": hgb, "creatinine_mg_dl": creat,
            "weight_kg": weight, "bmi_kg_m2": bmi, "pdl1_pct": pdl1,
        }
    )
    for col, dec in DECIMALS.items():
        cov[col] = cov[col].round(dec)
    cov["height_m"] = height_m

    # Treatment assignment (immunotherapy vs platinum chemotherapy).
    index_year_c = pd.to_datetime(index_day, unit="D").year.to_numpy() - 2019
    logit = (
        PROPENSITY["intercept"]
        + PROPENSITY["pdl1_pct"] * (cov["pdl1_pct"] - PROPENSITY_CENTRE["pdl1_pct"])
        + PROPENSITY["ecog"] * cov["ecog"]
        + PROPENSITY["ckd"] * cov["ckd"]
        + PROPENSITY["age_years"] * (cov["age_years"] - PROPENSITY_CENTRE["age_years"])
        + PROPENSITY["stage_iv"] * cov["stage_iv"]
        + PROPENSITY["index_year_c"] * index_year_c
    ).to_numpy()
    treated = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)

    days_dx = np.minimum(rng.poisson(21.0, n), 60)
    late = reason == "no_first_line_within_60d"
    untreated = late & (rng.random(n) < 0.6)
    days_dx = np.where(late, rng.integers(61, 200, n), days_dx)
    days_dx = np.where(reason == "treatment_before_diagnosis", -rng.integers(10, 200, n), days_dx)
    t0_day = index_day + np.where(untreated, 0, days_dx)
    treated_eff = np.where(untreated, 0, treated).astype(np.int8)

    log_vol = rng.normal(TRAIT_DIST["log_tumour_volume_ml"]["mean"], TRAIT_DIST["log_tumour_volume_ml"]["sd"], n)
    log_vol = np.clip(log_vol, np.log(0.5), np.log(150.0))
    het = rng.beta(TRAIT_DIST["heterogeneity"]["beta_a"], TRAIT_DIST["heterogeneity"]["beta_b"], n)
    irr = rng.beta(TRAIT_DIST["irregularity"]["beta_a"], TRAIT_DIST["irregularity"]["beta_b"], n)

    lp_x = linear_predictor(cov, treated=np.zeros(n)) + _trait_lp(log_vol, het, image_signal)
    lp = lp_x + treated_eff * (LOG_HR["treated"] + LOG_HR["treated:pdl1_pct"] * cov["pdl1_pct"].to_numpy())
    u_death = rng.random(n)
    t_death = weibull_time(u_death, lp)

    # Censoring: administrative end or loss to follow-up (observation period ends early).
    admin = ADMIN_END_DAY - t0_day
    ltfu = rng.random(n) < rates["loss_to_follow_up"]
    c_ltfu = np.where(ltfu, rng.integers(30, 3000, n), np.iinfo(np.int64).max)
    censor = np.minimum(admin, c_ltfu)
    event = (t_death <= censor).astype(np.int8)
    time_days = np.where(event == 1, t_death, censor).astype(float)

    prior_obs = rng.integers(365, 3650, n)
    prior_obs = np.where(reason == "short_prior_observation", rng.integers(30, 365, n), prior_obs)
    # at least 30 days of observation before the first event (diagnosis or early treatment)
    obs_start_day = np.minimum(index_day - prior_obs, t0_day - 30)
    obs_end_day = t0_day + time_days.astype(np.int64)

    out = pd.DataFrame({"person_id": pid, "reason": reason})
    out = pd.concat([out, cov], axis=1)
    out["birth_day"] = birth_day
    out["index_day"] = index_day
    out["index_year_c"] = index_year_c
    out["treated"] = treated_eff
    out["untreated"] = untreated
    out["days_dx_to_treatment"] = days_dx
    out["t0_day"] = t0_day
    out["propensity_logit"] = logit
    out["time_days"] = time_days
    out["event"] = event
    out["t_death_days"] = t_death
    out["u_death"] = u_death
    out["lost_to_follow_up"] = ltfu & (event == 0) & (c_ltfu < admin)
    out["death_day"] = np.where(event == 1, t0_day + t_death, -1)
    out["obs_start_day"] = obs_start_day
    out["obs_end_day"] = obs_end_day
    out["log_tumour_volume_ml"] = log_vol
    out["heterogeneity"] = het
    out["irregularity"] = irr
    out["lp"] = lp
    out["lp_untreated"] = lp_x
    for col, share in rates["missing"].items():
        out[f"{col}_observed"] = rng.random(n) >= share
    return out


def linear_predictor(cov: pd.DataFrame, treated: np.ndarray) -> np.ndarray:
    """EHR part of the true log hazard, sum of LOG_HR[c] * column c (incl. treatment terms)."""
    lp = np.zeros(len(cov))
    for col, beta in LOG_HR.items():
        if col == "treated":
            lp += beta * treated
        elif col == "treated:pdl1_pct":
            lp += beta * treated * cov["pdl1_pct"].to_numpy()
        else:
            lp += beta * cov[col].to_numpy(dtype=float)
    return lp


def _trait_lp(log_vol: np.ndarray, het: np.ndarray, image_signal: bool) -> np.ndarray:
    """The tumour traits' term of the true log hazard (:data:`TRAIT_LP_MEAN` when the signal is off)."""
    if not image_signal:
        return np.full(len(log_vol), TRAIT_LP_MEAN)
    return TRAIT_LOG_HR["log_tumour_volume_ml"] * log_vol + TRAIT_LOG_HR["heterogeneity"] * het


def weibull_time(u: np.ndarray, lp: np.ndarray) -> np.ndarray:
    """Death time in whole days (>= 1) from uniforms ``u`` under the Weibull PH model.

    Inverts S(t) = exp(-lambda * t^rho * exp(lp)) at S = u and rounds up to whole days.
    """
    t = (-np.log(u) / (WEIBULL_SCALE * np.exp(lp))) ** (1.0 / WEIBULL_SHAPE)
    return np.maximum(np.ceil(t), 1.0).astype(np.int64)


def survival_at(days: float, lp: np.ndarray) -> np.ndarray:
    """True survival probability S(days | lp) under the Weibull PH model."""
    return np.exp(-WEIBULL_SCALE * days**WEIBULL_SHAPE * np.exp(lp))
