"""True values of the estimands, from the demo generator's model (:mod:`pmed.demo.model`).

Population truths are computed once per scenario on a large latent sample (its own seed
stream, :func:`pmed.simulation.design.truth_rng`) by the same formulas as the generator's
``ground_truth.json``; sample truths (:func:`true_survival_365`, :func:`marginal_log_hr_of`)
on the replicate's persons.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter

from pmed import survival as sv
from pmed.demo import model

MARGINAL_HR_PERSONS = 50_000  # eligible persons whose potential death times give a marginal HR


def conditional_log_hr(terms: list[str], heterogeneity: bool) -> dict[str, float]:
    """True conditional log-HR of death per unit of each Cox term (cohort column or ``a:b``),
    given every covariate and the tumour traits (:func:`pmed.demo.model.hazard_log_hr`)."""
    log_hr = model.hazard_log_hr(heterogeneity)
    missing = [t for t in terms if t not in log_hr]
    if missing:
        raise KeyError(f"conditional_log_hr: the generator has no true log-HR for term(s) {missing}")
    return {t: float(log_hr[t]) for t in terms}


def least_false_log_hr(population: pd.DataFrame, terms: list[str]) -> dict[str, float]:
    """Log-HRs the analysis Cox model (``terms``, EHR covariates only) converges to: its fit on
    the large population sample (true covariate values, the generator's censoring).

    With the image signal on, the hazard also depends on tumour traits the EHR model cannot
    include; omitting them (non-collapsibility) pulls its log-HRs towards 0, so the
    conditional log-HRs of :func:`conditional_log_hr` are not what it estimates. This
    "least false" value (Struthers & Kalbfleisch 1986) is."""
    data = sv.add_interactions(population, [t for t in terms if ":" in t])
    return sv.fit_cox(data, "time_days", "event", terms).params_[terms].astype(float).to_dict()


def marginal_log_hr_of(persons: pd.DataFrame, arm: str, heterogeneity: bool, rng: np.random.Generator,
                       copies: int = 50) -> float:
    """Marginal log-HR of ``arm`` vs the reference arm in a population with the covariates and
    tumour traits of ``persons`` (latent rows): uncensored potential death times of ``copies``
    fresh draws per person under both arms (:func:`_potential_hr`). The target of an analysis
    that keeps only these persons, e.g. the treated persons matched within a caliper."""
    log_hr = model.hazard_log_hr(heterogeneity)
    rows = persons.loc[persons.index.repeat(copies)]
    u = rng.random(len(rows))
    return _potential_hr(u, rows["lp_x"].to_numpy(), model.arm_log_hr(rows, model.REFERENCE_ARM, log_hr),
                         model.arm_log_hr(rows, arm, log_hr))


def true_survival_365(latent: pd.DataFrame, heterogeneity: bool, horizon: float = 365.0) -> np.ndarray:
    """(n, k) true S(horizon | x, arm) of each latent row under each arm of :data:`model.ARMS`."""
    log_hr = model.hazard_log_hr(heterogeneity)
    tau = np.column_stack([model.arm_log_hr(latent, a, log_hr) for a in model.ARMS])
    return model.survival_at(horizon, latent["lp_x"].to_numpy()[:, None] + tau)


def _potential_hr(u: np.ndarray, lp_x: np.ndarray, tau_ref: np.ndarray, tau_arm: np.ndarray) -> float:
    """Cox log-HR (arm vs reference) of uncensored potential death times of the same persons
    (common random numbers), as ground_truth.json ``treatment_effect.marginal.hazard_ratio``."""
    t0, t1 = model.weibull_time(u, lp_x + tau_ref), model.weibull_time(u, lp_x + tau_arm)
    df = pd.DataFrame({"time": np.concatenate([t0, t1]).astype(float), "event": 1,
                       "arm": np.repeat([0, 1], len(u))})
    return float(CoxPHFitter().fit(df, "time", "event").params_["arm"])


def population_truth(rng: np.random.Generator, rates: dict, heterogeneity: bool, image_signal: bool,
                     n_persons: int, horizon: float = 365.0, cox_terms: list[str] | None = None) -> dict:
    """Population values of one scenario from ``n_persons`` simulated persons (eligible ones).

    Returns dict: ``marginal_log_hr`` {arm: log of the marginal HR vs chemo, all eligible},
    ``survival_difference`` {arm: mean S_arm(horizon) - S_chemo(horizon)}, ``att_log_hr_io``
    (marginal log-HR io vs chemo among all persons assigned io), ``cox_log_hr`` (with
    ``cox_terms``: :func:`least_false_log_hr` of that model, else None) and ``population``
    (eligible latent rows with ``true_risk`` = 1 - S(horizon) under the arm received, for the
    calibration truth).
    """
    lat = model.simulate_latent(n_persons, 1, rng, rates, image_signal=image_signal, heterogeneity=heterogeneity)
    e = lat[lat["reason"] == "eligible"].reset_index(drop=True)
    s = true_survival_365(e, heterogeneity, horizon)
    ref = model.ARMS.index(model.REFERENCE_ARM)
    log_hr = model.hazard_log_hr(heterogeneity)
    tau = {a: model.arm_log_hr(e, a, log_hr) for a in model.ARMS}
    u, lp_x = e["u_death"].to_numpy(), e["lp_x"].to_numpy()
    first = slice(0, MARGINAL_HR_PERSONS)
    others = [a for a in model.ARMS if a != model.REFERENCE_ARM]
    marginal = {a: _potential_hr(u[first], lp_x[first], tau[model.REFERENCE_ARM][first], tau[a][first])
                for a in others}
    io = (e["arm"] == "io").to_numpy()
    att = _potential_hr(u[io], lp_x[io], tau[model.REFERENCE_ARM][io], tau["io"][io])
    e["true_risk"] = 1.0 - model.survival_at(horizon, e["lp"].to_numpy())
    return {
        "marginal_log_hr": marginal,
        "survival_difference": {a: float(s[:, model.ARMS.index(a)].mean() - s[:, ref].mean()) for a in others},
        "att_log_hr_io": att,
        "cox_log_hr": least_false_log_hr(e, cox_terms) if cox_terms else None,
        "population": e,
        "n_eligible": len(e),
    }
