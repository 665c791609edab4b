"""Survival-stage estimand groups of the simulation study besides ``cox_mi`` (notebook 02_survival).

Each ``run_<group>`` makes 02's calls on a replicate cohort (same helpers, same params.yaml
settings) and returns rows of the replicate table (:data:`pmed.simulation.estimands.ROW_FIELDS`);
the truths come once per scenario from a large sample of the generator's persons
(:func:`population_truths`; :data:`TRUTH_SCALE` times params ``simulation.truth_n_persons``: at
100,000 persons the least-false Fine-Gray log-SHRs still vary by SD 0.02-0.08 between samples).

- ``km``: Kaplan-Meier median OS per treatment arm with 02's 95% CI
  (:func:`pmed.survival.median_survival`: log-log band, R ``print.survfit``'s rule). Truth: the
  median death time of the arm's population (eligible persons assigned the arm), from the
  generator's survival functions of the population sample's persons (:func:`arm_median_days`).
  KM estimates it because censoring before the medians is loss to follow-up only, which is
  independent of everything: the administrative end of data (censoring by calendar year of t0,
  which within an arm is associated with the covariates through the arm's propensity) censors
  no one before 670 days (latest t0 2024-02-29, data end 2025-12-31).
- ``competing``: per outcome of params ``survival.competing_outcomes`` (death competing; the
  generator's: pneumonitis), the cause-specific Cox and the Fine-Gray model of 02 (terms: the
  arm indicators + ``survival.competing_covariates``, complete cases), log-HR of every term with
  its Wald 95% CI (Fine-Gray: robust SE clustered by person), and the Aalen-Johansen cumulative
  incidence at :data:`CIF_DAYS` per arm with its log(-log) CI (``cif_table``, as 02 prints it).
  Truths: cause-specific, the generator's conditional log-HRs (0 for terms it does not have)
  when the model has every term of the generator's hazard, else the model's least-false
  log-HRs (its fit on the population sample); Fine-Gray, the least-false subdistribution
  log-HR (:func:`pmed.competing.fit_fine_gray` of the same model on the population sample,
  with the generator's censoring, since the KM-weighted estimator's limit depends on it);
  cumulative incidence, the mean over the arm's population of the generator's per-person CIF
  (:func:`true_cif`, uncensored).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import optimize

from pmed import competing as cr
from pmed import survival as sv
from pmed.demo import model
from pmed.simulation import design
from pmed.simulation.estimands import _row

CIF_DAYS = 365.0  # day of the cumulative incidence checked (one of 02's survival.km_times_days)
TRUTH_SCALE = 10  # persons of the truth sample per person of params simulation.truth_n_persons
TRUTH_CHUNK = 200_000  # persons simulated at a time for the truth sample (memory)
GENERATOR_HAZARDS = {"pneumonitis": model.PNEUMONITIS_LOG_HR}
"""Competing outcome name -> the generator's true cause-specific log-HRs (terms absent = 0)."""


def arm_median_days(lp: np.ndarray) -> float:
    """Median of the death-day distribution of a population with linear predictors ``lp`` (n,).

    Solves mean_i S(t | lp_i) = 1/2 for the continuous time t (the generator's Weibull
    S(t | lp) = exp(-lambda t^rho e^lp), :func:`pmed.demo.model.survival_at`) and rounds up as
    the generator's death days (ceil, >= 1): P(day <= d) = P(t <= d), so the median day (the
    first day at which the survival is below 1/2, R's rule) is ceil(t).
    """
    lp = np.asarray(lp, dtype=float)
    if lp.size == 0:
        raise ValueError("arm_median_days: no persons")
    t = optimize.brentq(lambda x: float(np.mean(model.survival_at(np.exp(x), lp))) - 0.5, -20.0, 30.0, xtol=1e-12)
    return float(max(np.ceil(np.exp(t)), 1.0))


def true_cif(lp_death: np.ndarray, lp_event: np.ndarray, days: float, chunk: int = 5000) -> float:
    """Mean true cumulative incidence at ``days`` of the generator's pneumonitis (death competing)
    over persons with death and pneumonitis linear predictors ``lp_death``, ``lp_event`` (n,):
    :func:`pmed.demo.model.pneumonitis_cif` per person, in chunks of ``chunk`` persons."""
    lp_death, lp_event = np.asarray(lp_death, float), np.asarray(lp_event, float)
    total = sum(float(model.pneumonitis_cif(np.array([days]), lp_death[i:i + chunk], lp_event[i:i + chunk]).sum())
                for i in range(0, lp_death.size, chunk))
    return total / lp_death.size


def cause_specific_truth(population: pd.DataFrame, name: str, terms: list[str]) -> dict[str, float]:
    """True cause-specific log-HRs of outcome ``name`` per model term: the generator's conditional
    ones (terms it does not have: 0) when ``terms`` holds every term of its hazard, else the
    least-false log-HRs, :func:`pmed.competing.fit_cause_specific` on ``population`` (columns
    ``<name>_time_days``, ``<name>_status`` and ``terms``)."""
    hazard = _generator_hazard(name)
    if set(hazard) <= set(terms):
        return {t: float(hazard.get(t, 0.0)) for t in terms}
    fit = cr.fit_cause_specific(population, f"{name}_time_days", f"{name}_status", terms)
    return fit.params_[terms].astype(float).to_dict()


def fine_gray_truth(population: pd.DataFrame, name: str, terms: list[str]) -> dict[str, float]:
    """Least-false Fine-Gray log subdistribution HRs of outcome ``name``: :func:`pmed.competing.fit_fine_gray`
    of ``terms`` on ``population`` (its observed ``<name>_time_days``, ``<name>_status``)."""
    fit = cr.fit_fine_gray(population, f"{name}_time_days", f"{name}_status", terms)
    return fit.set_index("term").loc[terms, "log_hr"].astype(float).to_dict()


def _generator_hazard(name: str) -> dict[str, float]:
    if name not in GENERATOR_HAZARDS:
        raise ValueError(f"params.yaml survival.competing_outcomes: the demo generator has no model of {name!r}; "
                         f"the simulation knows {sorted(GENERATOR_HAZARDS)}")
    return GENERATOR_HAZARDS[name]


def competing_terms(params: dict) -> list[str]:
    """Terms of 02's competing-risks models: the arm indicators (sorted, as 02) + ``survival.competing_covariates``."""
    strat = params["cohort"]["treatment_strategies"]
    arms = sorted(f"arm_{a}" for a in strat["arms"] if a != strat["reference"])
    return arms + list(params["survival"]["competing_covariates"])


def truth_sample(seed: int, rates: dict, heterogeneity: bool, image_signal: bool, n_persons: int,
                 columns: list[str]) -> pd.DataFrame:
    """``columns`` of the eligible latent rows of ``n_persons`` simulated persons (in chunks of
    :data:`TRUTH_CHUNK`), from the stream ``SeedSequence(seed, spawn_key=(design.TRUTH_KEY, 1))``
    (not a replicate's, not :func:`pmed.simulation.design.truth_rng`'s; the same persons in
    every scenario, whose switches change death times only)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(design.TRUTH_KEY, 1)))
    parts = []
    for start in range(0, n_persons, TRUTH_CHUNK):
        lat = model.simulate_latent(min(TRUTH_CHUNK, n_persons - start), start + 1, rng, rates,
                                    image_signal=image_signal, heterogeneity=heterogeneity)
        parts.append(lat.loc[lat["reason"] == "eligible", columns])
    return pd.concat(parts, ignore_index=True)


def population_truths(params: dict, seed: int, heterogeneity: bool, image_signal: bool, n_persons: int) -> dict:
    """Truths of ``km`` and ``competing`` in one scenario, from :func:`truth_sample` of ``n_persons``
    persons (true covariates, ``arm``, arm indicators, ``lp``, observed outcome columns with the
    generator's censoring).

    Returns ``{"km_median_days": {arm: days}, "competing": {name: {"cause_specific": {term: log-HR},
    "fine_gray": {term: log-SHR}, "cif": {arm: CIF at CIF_DAYS}}}}``.
    """
    terms = competing_terms(params)
    names = list(params["survival"]["competing_outcomes"])
    hazard_cols = {c for name in names for t in _generator_hazard(name) for c in t.split(":")}
    outcome_cols = [f"{name}_{suffix}" for name in names for suffix in ("time_days", "status")]
    columns = sorted(set(terms) | hazard_cols | {"arm", "lp", *model.ARM_COLUMN.values(), *outcome_cols})
    population = truth_sample(seed, params["demo"]["rates"], heterogeneity, image_signal, n_persons, columns)
    arm = population["arm"].to_numpy()
    arms = sorted(np.unique(arm))
    lp = population["lp"].to_numpy(float)
    out = {"km_median_days": {a: arm_median_days(lp[arm == a]) for a in arms}, "competing": {},
           "n_eligible_survival_truths": len(population)}
    for name in names:
        lp_event = model.linear_predictor(population, _generator_hazard(name))  # arm terms from the indicators
        out["competing"][name] = {
            "cause_specific": cause_specific_truth(population, name, terms),
            "fine_gray": fine_gray_truth(population, name, terms),
            "cif": {a: true_cif(lp[arm == a], lp_event[arm == a], CIF_DAYS) for a in arms},
        }
    return out


def run_km(cohort: pd.DataFrame, pop: dict) -> list[dict]:
    """Notebook 02: KM median OS per arm (``treatment``) with its log-log 95% CI; truth ``pop["km_median_days"]``."""
    rows = []
    for g in sorted(cohort["treatment"].unique()):
        sel = (cohort["treatment"] == g).to_numpy()
        m = sv.median_survival(cohort.loc[sel, "time_days"], cohort.loc[sel, "event"])
        rows.append(_row("km", f"median OS {g} (days)", m["estimate"], m["ci_low"], m["ci_high"],
                         pop["km_median_days"][g], reject=np.nan, null_true=False, ci_kind="KM log-log"))
    return rows


def run_competing(cohort: pd.DataFrame, params: dict, pop: dict) -> list[dict]:
    """Notebook 02's competing-risks cell per outcome: cause-specific Cox and Fine-Gray log-HRs
    of every term (Wald CIs; "reject" = CI excludes 0, null true where the truth is 0) and the
    cumulative incidence at :data:`CIF_DAYS` per arm (``cif_table``; model SE = the
    Aalen-Johansen SE); truths ``pop["competing"]`` (:func:`population_truths`)."""
    min_cell = params["common"]["min_cell_size"]
    arm_terms = sorted(c for c in cohort.columns if c.startswith("arm_"))
    terms = arm_terms + list(params["survival"]["competing_covariates"])
    if terms != competing_terms(params):
        raise ValueError(f"run_competing: cohort arm indicators {arm_terms} do not match params.yaml "
                         "cohort.treatment_strategies (non-reference arms)")
    rows = []
    for name in params["survival"]["competing_outcomes"]:
        tcol, scol = f"{name}_time_days", f"{name}_status"
        truth = pop["competing"][name]
        time_, status = cr.check_competing_data(cohort[tcol], cohort[scol], f"replicate cohort ({tcol}, {scol})")
        curves = cr.cif_by_group(time_, status, cohort["treatment"])
        shown = cr.cif_table(curves, [CIF_DAYS], min_cell).set_index("group")
        for g, curve in curves.items():
            se = float(cr.cif_at(curve, [CIF_DAYS])["se"].iloc[0])
            rows.append(_row("competing", f"CIF {name} {CIF_DAYS:g} days {g}", shown.loc[g, "cif"],
                             shown.loc[g, "ci_low"], shown.loc[g, "ci_high"], truth["cif"][g], se=se,
                             reject=np.nan, null_true=False, ci_kind="Aalen-Johansen log(-log)"))
        cs = sv.cox_table(cr.fit_cause_specific(cohort, tcol, scol, terms)).set_index("term")
        fg = cr.fit_fine_gray(cohort, tcol, scol, terms).set_index("term")
        for label, table, key, kind in (("cause-specific log-HR", cs, "cause_specific", "wald"),
                                        ("Fine-Gray log-SHR", fg, "fine_gray", "wald (robust)")):
            for t in terms:
                true = truth[key][t]
                rows.append(_row("competing", f"{label} {name} {t}", table.loc[t, "log_hr"], table.loc[t, "ci_low"],
                                 table.loc[t, "ci_high"], true, se=table.loc[t, "se"],
                                 null_true=key == "cause_specific" and true == 0, ci_kind=kind))
    return rows
