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

# First-line arms (regimens) as in params.yaml cohort.treatment_strategies: label -> code.
ARMS = ("chemo", "io", "chemo_io")  # platinum doublet alone (reference), immunotherapy alone, both
REFERENCE_ARM = "chemo"
ARM_COLUMN = {"io": "arm_io", "chemo_io": "arm_chemo_io"}  # cohort indicator of each non-reference arm

# True log hazard ratios of death per unit of the cohort column (Weibull proportional hazards).
# Arm terms: log-HR of the arm vs chemo = arm_<a> + arm_<a>:pdl1_pct * pdl1_pct
# + arm_<a>:driver_positive * driver_positive (driver = EGFR or ALK, true status).
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
    "driver_positive": -0.30,
    "arm_io": 0.30,
    "arm_chemo_io": -0.35,
    "arm_io:pdl1_pct": -0.017,
    "arm_chemo_io:pdl1_pct": -0.003,
    "arm_io:driver_positive": 1.00,
    "arm_chemo_io:driver_positive": 0.60,
}
# Heterogeneity off: a constant log-HR per arm (about the eligible population's mean of the
# heterogeneous arm effect) and no arm interaction.
CONSTANT_ARM_LOG_HR = {"arm_io": -0.19, "arm_chemo_io": -0.38}

# Driver (EGFR mutation or ALK rearrangement): prevalence by smoking status, EGFR share of
# drivers; driver-positive tumours have lower PD-L1 (100 x Beta(0.4, 1.2) instead of Beta(0.5, 0.8)).
DRIVER = {"prevalence": {"never": 0.35, "former": 0.12, "current": 0.06}, "egfr_share": 0.7}

# Hospitalisation for immune-related pneumonitis: cause-specific Weibull hazard from t0,
# h(t) = lambda * rho * t^(rho-1) * exp(x'gamma), t in days; death competes.
PNEUMONITIS_LOG_HR: dict[str, float] = {
    "arm_io": 1.20,
    "arm_chemo_io": 1.35,
    "copd": 0.60,
    "smoking_current": 0.30,
    "age_years": 0.02,
    "ecog": 0.20,
}
PNEUMONITIS_SHAPE = 0.8
PNEUMONITIS_SCALE = 2.0e-5
CIF_TIMES_DAYS = (30, 90, 180, 365, 730)

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

# Arm assignment: multinomial logit, reference chemo; per unit of the (centred) cohort column.
# log P(arm a) / P(chemo) = intercept_a + sum_c coef_a[c] * (column c - PROPENSITY_CENTRE[c]).
# t0_year = calendar year of t0 (immunotherapy uptake rises over the years); driver_positive is
# the true status (also when untested), ecog the true value (also when unrecorded).
PROPENSITY: dict[str, dict[str, float]] = {
    "io": {"intercept": -0.55, "pdl1_pct": 0.035, "ecog": 0.25, "ckd": 0.5, "age_years": 0.03,
           "stage_iv": 0.0, "driver_positive": -1.0, "t0_year": 0.15},
    "chemo_io": {"intercept": 0.85, "pdl1_pct": 0.008, "ecog": -0.5, "ckd": -0.5, "age_years": -0.02,
                 "stage_iv": 0.3, "driver_positive": -0.5, "t0_year": 0.45},
}
PROPENSITY_CENTRE = {"age_years": 66.0, "pdl1_pct": 35.0, "t0_year": 2019.0}

# Repeated labs after t0: mean slope (units per 30 days) by arm, person SD of the slope,
# measurement noise SD. The ground truth reports each arm's difference from chemo.
LAB_TRAJECTORIES = {
    "ldh_u_l": {"chemo": 4.0, "io": -6.0, "chemo_io": -8.0, "slope_sd": 5.0, "noise_sd": 15.0},
    "albumin_g_dl": {"chemo": -0.05, "io": 0.02, "chemo_io": -0.03, "slope_sd": 0.04, "noise_sd": 0.15},
    "neutrophils_10e9_l": {"chemo": -0.4, "io": 0.0, "chemo_io": -0.4, "slope_sd": 0.3, "noise_sd": 0.6},
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


def hazard_log_hr(heterogeneity: bool = True) -> dict[str, float]:
    """True log-HRs of death per unit of the cohort column: :data:`LOG_HR`, or with
    ``heterogeneity`` False the arm effects :data:`CONSTANT_ARM_LOG_HR` and every arm
    interaction 0 (the same keys either way)."""
    if heterogeneity:
        return dict(LOG_HR)
    return {k: (CONSTANT_ARM_LOG_HR.get(k, 0.0) if k.startswith("arm_") else b) for k, b in LOG_HR.items()}


def simulate_latent(n: int, first_person_id: int, rng: np.random.Generator, rates: dict,
                    image_signal: bool = True, heterogeneity: bool = True) -> pd.DataFrame:
    """Simulate ``n`` persons' latent baseline, arm, survival, pneumonitis and tumour traits.

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
        hazard is the constant :data:`TRAIT_LP_MEAN` instead.
    heterogeneity : bool
        False: constant arm effects, no arm interaction (:func:`hazard_log_hr`).
        Either switch draws the same random numbers; only death times (and what follows from
        them) change.

    Returns
    -------
    pandas.DataFrame
        One row per person: ``person_id``, ``reason`` ("eligible" or one of :data:`REASONS`),
        epoch-day columns ``birth_day``, ``index_day``, ``t0_day``, ``obs_start_day``,
        ``obs_end_day``, ``death_day`` (-1 if none), every cohort covariate (true values,
        rounded to recording precision; ``driver_positive`` true status, ``driver_type``
        "EGFR"/"ALK"/""), ``*_observed`` flags, ``arm`` (assigned arm), ``arm_io``,
        ``arm_chemo_io`` (arm actually started; 0 for untreated persons), ``t0_year``,
        ``days_dx_to_treatment``, ``time_days``, ``event``, ``pneumonitis_time_days``,
        ``pneumonitis_status`` (0 censored, 1 event, 2 death first), latent tumour traits,
        ``lp_x`` (log hazard without the arm terms) and ``lp``.
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
    prev = np.select([smoking == 0, smoking == 1], [DRIVER["prevalence"]["never"], DRIVER["prevalence"]["former"]],
                     DRIVER["prevalence"]["current"])
    driver = (rng.random(n) < prev).astype(np.int8)
    driver_type = np.where(driver == 1, np.where(rng.random(n) < DRIVER["egfr_share"], "EGFR", "ALK"), "")
    pdl1 = 100.0 * np.where(driver == 1, rng.beta(0.4, 1.2, n), rng.beta(0.5, 0.8, n))

    cov = pd.DataFrame(
        {
            "age_years": age_years, "sex_female": sex_female.astype(np.int8),
            "smoking_current": (smoking == 2).astype(np.int8),
            "smoking_former": (smoking == 1).astype(np.int8),
            "ecog": ecog, "stage_iv": stage_iv, "copd": copd, "diabetes": diabetes,
            "heart_failure": heart_failure, "ckd": ckd,
            "albumin_g_dl": albumin, "ldh_u_l": ldh, "neutrophils_10e9_l": neut,
            "lymphocytes_10e9_l": lymph, "hemoglobin_g_dl": hgb, "creatinine_mg_dl": creat,
            "weight_kg": weight, "bmi_kg_m2": bmi, "pdl1_pct": pdl1, "driver_positive": driver,
        }
    )
    for col, dec in DECIMALS.items():
        cov[col] = cov[col].round(dec)
    cov["height_m"] = height_m

    # Time from diagnosis to first line, t0 and its calendar year.
    days_dx = np.minimum(rng.poisson(21.0, n), 60)
    late = reason == "no_first_line_within_60d"
    untreated = late & (rng.random(n) < 0.6)
    days_dx = np.where(late, rng.integers(61, 200, n), days_dx)
    days_dx = np.where(reason == "treatment_before_diagnosis", -rng.integers(10, 200, n), days_dx)
    t0_day = index_day + np.where(untreated, 0, days_dx)
    t0_year = pd.to_datetime(t0_day, unit="D").year.to_numpy().astype(np.int64)
    cov["t0_year"] = t0_year

    # Arm assignment (multinomial logit, reference chemo).
    logits = propensity_logits(cov)
    prob = arm_probabilities(logits)
    arm_code = (rng.random(n)[:, None] > np.cumsum(prob, axis=1)[:, :-1]).sum(axis=1)
    arm = np.array(ARMS, dtype=object)[arm_code]
    arm_eff = np.where(untreated, 0, arm_code)  # untreated persons carry the reference hazard
    arm_ind = {col: (arm_eff == ARMS.index(a)).astype(np.int8) for a, col in ARM_COLUMN.items()}

    log_vol = rng.normal(TRAIT_DIST["log_tumour_volume_ml"]["mean"], TRAIT_DIST["log_tumour_volume_ml"]["sd"], n)
    log_vol = np.clip(log_vol, np.log(0.5), np.log(150.0))
    het = rng.beta(TRAIT_DIST["heterogeneity"]["beta_a"], TRAIT_DIST["heterogeneity"]["beta_b"], n)
    irr = rng.beta(TRAIT_DIST["irregularity"]["beta_a"], TRAIT_DIST["irregularity"]["beta_b"], n)

    log_hr = hazard_log_hr(heterogeneity)
    lp_x = linear_predictor(cov, log_hr) + _trait_lp(log_vol, het, image_signal)
    lp = lp_x + linear_predictor(cov.assign(**arm_ind), log_hr, arm_terms_only=True)
    u_death = rng.random(n)
    t_death = weibull_time(u_death, lp)
    u_pneu = rng.random(n)
    lp_pneu = linear_predictor(cov.assign(**arm_ind), PNEUMONITIS_LOG_HR)
    t_pneu = pneumonitis_time(u_pneu, lp_pneu)

    # Censoring: administrative end or loss to follow-up (observation period ends early).
    admin = ADMIN_END_DAY - t0_day
    ltfu = rng.random(n) < rates["loss_to_follow_up"]
    c_ltfu = np.where(ltfu, rng.integers(30, 3000, n), np.iinfo(np.int64).max)
    censor = np.minimum(admin, c_ltfu)
    event = (t_death <= censor).astype(np.int8)
    time_days = np.where(event == 1, t_death, censor).astype(float)
    # pneumonitis hospitalisation observed: before death (continuous times) and inside follow-up
    pneu_day = np.maximum(np.ceil(t_pneu), 1.0)
    pneu_seen = (t_pneu < weibull_time(u_death, lp, rounded=False)) & (pneu_day <= time_days)
    pneu_status = np.where(pneu_seen, 1, np.where(event == 1, 2, 0)).astype(np.int8)

    prior_obs = rng.integers(365, 3650, n)
    prior_obs = np.where(reason == "short_prior_observation", rng.integers(30, 365, n), prior_obs)
    # at least 30 days of observation before the first event (diagnosis or early treatment)
    obs_start_day = np.minimum(index_day - prior_obs, t0_day - 30)
    obs_end_day = t0_day + time_days.astype(np.int64)

    out = pd.DataFrame({"person_id": pid, "reason": reason})
    out = pd.concat([out, cov], axis=1)
    out["driver_type"] = driver_type
    out["birth_day"] = birth_day
    out["index_day"] = index_day
    out["arm"] = arm
    for col, ind in arm_ind.items():
        out[col] = ind
    out["untreated"] = untreated
    out["days_dx_to_treatment"] = days_dx
    out["t0_day"] = t0_day
    for a in ARM_COLUMN:
        out[f"propensity_logit_{a}"] = logits[:, ARMS.index(a)]
    out["time_days"] = time_days
    out["event"] = event
    out["t_death_days"] = t_death
    out["u_death"] = u_death
    out["u_pneumonitis"] = u_pneu
    out["pneumonitis_time_days"] = np.where(pneu_seen, pneu_day, time_days)
    out["pneumonitis_status"] = pneu_status
    out["lost_to_follow_up"] = ltfu & (event == 0) & (c_ltfu < admin)
    out["death_day"] = np.where(event == 1, t0_day + t_death, -1)
    out["obs_start_day"] = obs_start_day
    out["obs_end_day"] = obs_end_day
    out["log_tumour_volume_ml"] = log_vol
    out["heterogeneity"] = het
    out["irregularity"] = irr
    out["lp"] = lp
    out["lp_x"] = lp_x
    for col, share in rates["missing"].items():
        out[f"{col}_observed"] = rng.random(n) >= share
    return out


def propensity_logits(cov: pd.DataFrame) -> np.ndarray:
    """Multinomial logits (n, len(ARMS)) of the arm assignment; column 0 (chemo) is 0."""
    out = np.zeros((len(cov), len(ARMS)))
    for a, coef in PROPENSITY.items():
        z = np.full(len(cov), coef["intercept"])
        for col, b in coef.items():
            if col != "intercept":
                z = z + b * (cov[col].to_numpy(dtype=float) - PROPENSITY_CENTRE.get(col, 0.0))
        out[:, ARMS.index(a)] = z
    return out


def arm_probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax of multinomial logits, rows sum to 1."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def term_value(df: pd.DataFrame, term: str) -> np.ndarray:
    """Value of a model term: a column, or the product of the columns of ``a:b``."""
    value = np.ones(len(df))
    for col in term.split(":"):
        value = value * df[col].to_numpy(dtype=float)
    return value


def linear_predictor(df: pd.DataFrame, log_hr: dict[str, float], arm_terms_only: bool = False) -> np.ndarray:
    """Sum of ``log_hr[term] * term value`` over the terms. Arm terms (``arm_*``) count only when
    ``df`` has the arm indicator columns; ``arm_terms_only``: the arm terms alone."""
    lp = np.zeros(len(df))
    for term, beta in log_hr.items():
        is_arm = term.startswith("arm_")
        if (arm_terms_only and not is_arm) or (is_arm and not all(c in df.columns for c in term.split(":"))):
            continue
        lp += beta * term_value(df, term)
    return lp


def arm_log_hr(df: pd.DataFrame, arm: str, log_hr: dict[str, float]) -> np.ndarray:
    """True log-HR of death of ``arm`` vs chemo for each row (0 for chemo)."""
    if arm == REFERENCE_ARM:
        return np.zeros(len(df))
    ind = {c: np.full(len(df), int(ARM_COLUMN[arm] == c)) for c in ARM_COLUMN.values()}
    return linear_predictor(df.assign(**ind), log_hr, arm_terms_only=True)


def _trait_lp(log_vol: np.ndarray, het: np.ndarray, image_signal: bool) -> np.ndarray:
    """The tumour traits' term of the true log hazard (:data:`TRAIT_LP_MEAN` when the signal is off)."""
    if not image_signal:
        return np.full(len(log_vol), TRAIT_LP_MEAN)
    return TRAIT_LOG_HR["log_tumour_volume_ml"] * log_vol + TRAIT_LOG_HR["heterogeneity"] * het


def weibull_time(u: np.ndarray, lp: np.ndarray, rounded: bool = True) -> np.ndarray:
    """Death time from uniforms ``u`` under the Weibull PH model: whole days (>= 1), or the
    continuous time when ``rounded`` is False.

    Inverts S(t) = exp(-lambda * t^rho * exp(lp)) at S = u and rounds up to whole days.
    """
    t = (-np.log(u) / (WEIBULL_SCALE * np.exp(lp))) ** (1.0 / WEIBULL_SHAPE)
    if not rounded:
        return t
    return np.maximum(np.ceil(t), 1.0).astype(np.int64)


def pneumonitis_time(u: np.ndarray, lp: np.ndarray) -> np.ndarray:
    """Latent (continuous, days) time to pneumonitis hospitalisation from uniforms ``u``."""
    return (-np.log(u) / (PNEUMONITIS_SCALE * np.exp(lp))) ** (1.0 / PNEUMONITIS_SHAPE)


def survival_at(days: float, lp: np.ndarray) -> np.ndarray:
    """True survival probability S(days | lp) under the Weibull PH model."""
    return np.exp(-WEIBULL_SCALE * days**WEIBULL_SHAPE * np.exp(lp))


def pneumonitis_cif(times: np.ndarray, lp_death: np.ndarray, lp_pneu: np.ndarray, n_grid: int = 400) -> np.ndarray:
    """True cumulative incidence of pneumonitis hospitalisation (death competing) at ``times``.

    CIF(t) = int_0^t S_death(s) dF_pneu(s), with F_pneu = 1 - exp(-Lambda_pneu): numeric
    Riemann-Stieltjes integration (trapezoid in S_death) on a geometric grid of ``n_grid``
    points from 0.01 day. Returns (n persons, len(times)).
    """
    times = np.asarray(times, dtype=float)
    grid = np.unique(np.concatenate([[0.0], np.geomspace(0.01, times.max(), n_grid), times]))
    f_p = 1.0 - np.exp(-PNEUMONITIS_SCALE * grid[None, :] ** PNEUMONITIS_SHAPE * np.exp(lp_pneu)[:, None])
    s_d = np.exp(-WEIBULL_SCALE * grid[None, :] ** WEIBULL_SHAPE * np.exp(lp_death)[:, None])
    inc = np.diff(f_p, axis=1) * 0.5 * (s_d[:, 1:] + s_d[:, :-1])
    cif = np.concatenate([np.zeros((len(lp_death), 1)), np.cumsum(inc, axis=1)], axis=1)
    return cif[:, np.searchsorted(grid, times)]
