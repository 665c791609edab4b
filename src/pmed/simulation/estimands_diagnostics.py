"""Simulation groups of two diagnostics the stages report with CIs: the PH remedy and the ICC.

- ``ph_remedy`` (02_survival): the remedied Cox model of the proportional-hazards section,
  applied in every replicate to the fixed terms :data:`REMEDY_TERMS` whatever the test says
  (``copd``, the term the default demo flags, is stratified; ``albumin_g_dl``, continuous, gets
  the time interaction at ``survival.ph_cut_days``: early log-HR, late - early change
  ``albumin_g_dl:late`` as the stage reports it, and the late log-HR, Rubin-pooled over the
  imputations like every other term). Truths: with the image signal on, the EHR-only model
  omits tumour traits, so its log-HRs are least-false values that drift over follow-up (the
  frailty the traits act as selects the frail early); :func:`remedy_truth` fits the same remedy
  model on the large population sample. Without the image signal the model is correctly
  specified and PH holds: truth = the generator's conditional log-HRs, early = late. Besides the
  CIs, the stage's PH rule (:func:`pmed.survival.ph_test` on the first imputed set,
  :func:`pmed.survival.ph_violations` with ``ph_alpha`` and ``ph_min_hr_ratio``) is recorded per
  term and for "any term": its rejection rate is the type-I error where PH holds.
- ``icc`` (05_imaging_features): the F-distribution CI of :func:`pmed.imaging.stability.icc_ci`
  on ratings (lesions x perturbations) from a two-way model with a known population ICC
  (:func:`icc_ratings`): normal, and with log-normal lesion effects and t5 errors (radiomic
  features are skewed across lesions); the stage's numbers of lesions and perturbations
  (``imaging_features.stability``), both ICC kinds. It does not use the replicate's cohort.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pmed import survival as sv
from pmed.demo import model
from pmed.imaging.stability import ICC_TYPES, icc, icc_ci
from pmed.imputation import mice, nelson_aalen, rubin_pool
from pmed.simulation import design
from pmed.simulation.estimands import _row
from pmed.simulation.truth import conditional_log_hr

REMEDY_TERMS = ("copd", "albumin_g_dl")  # stratified (binary), time interaction at the cut (continuous)
ICC_VALUES = (0.5, 0.75, 0.9, 0.95)  # true population ICCs (Koo & Li class borders and above)
ICC_DISTRIBUTIONS = ("normal", "skewed")
ICC_EXTRA_N = 10  # a second number of lesions: the demo's MR stability set (fewer than n_images MR series)
RATER_SHARE = 0.25  # variance of the perturbation ("rater") effect, relative to the error variance
ICC_SEED_OFFSET = 901  # the group's random stream: replicate seed + this offset
SKEW_SIGMA = 1.0  # SD of log of the log-normal lesion effect (skewness 6.2)
T_DF = 5  # degrees of freedom of the t-distributed errors


# --- PH remedy -----------------------------------------------------------------------------------------

def remedy_labels(term: str, cut: float) -> dict[str, str]:
    """Estimand names of the time-interaction term: early, late - early and late log-HR."""
    return {"early": f"remedy log-HR {term} (t <= {cut:g} d)", "change": f"remedy log-HR {term}:late (late - early)",
            "late": f"remedy log-HR {term} (t > {cut:g} d)"}


def _remedy_setup(params: dict) -> tuple[list[str], list[str], float]:
    s = params["survival"]
    terms = [*s["covariates"], *s["interactions"]]
    missing = [t for t in REMEDY_TERMS if t not in terms]
    if missing:
        raise KeyError(f"params.yaml survival.covariates: the simulated PH remedy needs term(s) {missing}")
    return terms, list(REMEDY_TERMS), float(s["ph_cut_days"])


def _late_terms(fit, violators: list[str]) -> list[str]:
    return [v for v in violators if f"{v}:late" in fit.params_.index]


def remedy_estimates(fit, violators: list[str]) -> tuple[pd.Series, pd.Series]:
    """Log-HRs and variances of one remedy fit, with the late log-HR beta + beta_late of each
    time-interaction term (variance from the covariance matrix) under the name ``<v>:late_total``."""
    est, cov = fit.params_.astype(float), fit.variance_matrix_
    var = pd.Series(np.diag(cov), index=est.index, dtype=float)
    for v in _late_terms(fit, violators):
        late = f"{v}:late"
        est[f"{late}_total"] = est[v] + est[late]
        var[f"{late}_total"] = var[v] + var[late] + 2 * float(cov.loc[v, late])
    return est, var


def remedy_truth(population: pd.DataFrame, params: dict) -> dict[str, float]:
    """Least-false log-HRs of the remedy model: :func:`pmed.survival.fit_ph_remedy` of the terms
    of params ``survival`` with :data:`REMEDY_TERMS` remedied, fitted on the large population
    sample (true covariate values, the generator's censoring). Keys as :func:`remedy_estimates`."""
    terms, violators, cut = _remedy_setup(params)
    data = sv.add_interactions(population, [t for t in terms if ":" in t])
    fit, _ = sv.fit_ph_remedy(data, "time_days", "event", terms, violators, cut)
    return remedy_estimates(fit, violators)[0].to_dict()


def population_remedy_truth(params: dict, seed: int, scenario: design.Scenario, n_persons: int) -> dict[str, float]:
    """:func:`remedy_truth` on the eligible persons of the scenario's population sample: the
    ``n_persons`` persons of :func:`pmed.simulation.design.truth_rng` (the same persons as the
    main Cox model's least-false truth, :func:`pmed.simulation.truth.population_truth`)."""
    lat = model.simulate_latent(n_persons, 1, design.truth_rng(seed), params["demo"]["rates"],
                                image_signal=scenario.image_signal, heterogeneity=scenario.heterogeneity)
    return remedy_truth(lat[lat["reason"] == "eligible"].reset_index(drop=True), params)


def conditional_remedy_truth(params: dict, heterogeneity: bool) -> dict[str, float]:
    """The remedy model's truths when PH holds (no image signal): the generator's conditional
    log-HRs; the late log-HR of a remedied term equals its early one (keys ``<v>:late`` = 0 and
    ``<v>:late_total`` for every term of :data:`REMEDY_TERMS`; a stratified one has none fitted)."""
    terms, violators, _ = _remedy_setup(params)
    out = conditional_log_hr(terms, heterogeneity)
    for v in violators:
        out[f"{v}:late"], out[f"{v}:late_total"] = 0.0, out[v]
    return out


def cox_imputations(cohort: pd.DataFrame, seed: int, params: dict) -> list[pd.DataFrame]:
    """The m completed data sets of the ``cox_mi`` group (the same call and seed as notebook 02
    and :func:`pmed.simulation.estimands.run_cox_mi`), with the interaction columns."""
    s = params["survival"]
    covariates = list(s["covariates"])
    base = cohort.assign(cumhaz=nelson_aalen(cohort["time_days"], cohort["event"]),
                         event_aux=cohort["event"].astype(float))
    imputed = mice(base, covariates, m=s["n_imputations"], seed=seed + 201, max_iter=s["mice_max_iter"],
                   auxiliary=["event_aux", "cumhaz"])
    return [sv.add_interactions(d, s["interactions"]) for d in imputed]


def run_ph_remedy(cohort: pd.DataFrame, seed: int, params: dict, scenario: design.Scenario,
                  truth: dict[str, float] | None, imputed: list[pd.DataFrame] | None = None) -> list[dict]:
    """Notebook 02's PH section on one replicate: the stage's PH rule per term on the first
    imputed set, and the remedied model of :data:`REMEDY_TERMS` on every imputed set pooled by
    Rubin's rules (as :func:`pmed.survival.fit_ph_remedy_mi`). ``truth``: :func:`remedy_truth`
    values (image signal on); None = PH holds, :func:`conditional_remedy_truth`. ``imputed``: the
    ``cox_mi`` group's completed sets if at hand, else :func:`cox_imputations`."""
    s = params["survival"]
    terms, violators, cut = _remedy_setup(params)
    imputed = cox_imputations(cohort, seed, params) if imputed is None else imputed
    truth = conditional_remedy_truth(params, scenario.heterogeneity) if truth is None else truth
    ph_holds = not scenario.image_signal
    ph = sv.ph_test(sv.fit_cox(imputed[0], "time_days", "event", terms), imputed[0])
    flagged = set(sv.ph_violations(ph, s["ph_alpha"], s["ph_min_hr_ratio"]))
    rule = f"(p < {s['ph_alpha']}, HR ratio >= {s['ph_min_hr_ratio']})"
    rows = [_row("ph_remedy", f"PH rule flags {t} {rule}", ratio, np.nan, np.nan, np.nan, se=np.nan,
                 reject=t in flagged, null_true=ph_holds, ci_kind="test")
            for t, ratio in zip(ph["term"], ph["hr_ratio"], strict=True)]
    rows.append(_row("ph_remedy", f"PH rule flags any term {rule}", len(flagged), np.nan, np.nan, np.nan, se=np.nan,
                     reject=bool(flagged), null_true=ph_holds, ci_kind="test"))
    fits = [sv.fit_ph_remedy(d, "time_days", "event", terms, violators, cut)[0] for d in imputed]
    parts = [remedy_estimates(f, violators) for f in fits]
    names = list(parts[0][0].index)
    pooled = rubin_pool(np.array([e[names].to_numpy() for e, _ in parts]),
                        np.array([v[names].to_numpy() for _, v in parts]), names=names).set_index("term")
    labels = {}
    for v in _late_terms(fits[0], violators):
        lab = remedy_labels(v, cut)
        labels.update({v: lab["early"], f"{v}:late": lab["change"], f"{v}:late_total": lab["late"]})
    for t in names:
        p = pooled.loc[t]
        rows.append(_row("ph_remedy", labels.get(t, f"remedy log-HR {t}"), p["estimate"], p["ci_low"], p["ci_high"],
                         truth[t], se=p["se"], ci_kind="Rubin"))
    return rows


# --- ICC -----------------------------------------------------------------------------------------------

def icc_components(value: float, kind: str, rater_share: float = RATER_SHARE) -> tuple[float, float, float]:
    """Variances (lesion, perturbation, error) whose population ICC of ``kind`` is ``value``:
    ICC(3,1) = lesion / (lesion + error), with lesion + error = 1; ICC(2,1) = lesion / total,
    with total = 1; the perturbation variance is ``rater_share`` x the error variance."""
    if kind not in ICC_TYPES:
        raise ValueError(f"icc_components: kind must be one of {ICC_TYPES}, got {kind!r}")
    if not 0 < value < 1:
        raise ValueError(f"icc_components: the ICC must be in (0, 1), got {value!r}")
    error = (1 - value) / (1 + rater_share) if kind == "2,1" else 1 - value
    return value, rater_share * error, error


def population_icc(lesion: float, rater: float, error: float, kind: str) -> float:
    """Population ICC of a two-way model with these variance components (Shrout & Fleiss 1979)."""
    return lesion / (lesion + error) if kind == "3,1" else lesion / (lesion + rater + error)


def _standard(rng: np.random.Generator, size, law: str) -> np.ndarray:
    """Mean-0, variance-1 draws: "normal", "lognormal" (sigma :data:`SKEW_SIGMA`) or "t" (:data:`T_DF` df)."""
    if law == "normal":
        return rng.standard_normal(size)
    if law == "lognormal":
        s2 = SKEW_SIGMA**2
        return (np.exp(SKEW_SIGMA * rng.standard_normal(size)) - np.exp(s2 / 2)) / np.sqrt((np.exp(s2) - 1) * np.exp(s2))
    if law == "t":
        return rng.standard_t(T_DF, size) / np.sqrt(T_DF / (T_DF - 2))
    raise ValueError(f"unknown law {law!r}")


def icc_ratings(rng: np.random.Generator, n: int, k: int, value: float, kind: str = "3,1",
                distribution: str = "normal", rater_share: float = RATER_SHARE) -> np.ndarray:
    """(n lesions, k perturbations) ratings x_ij = a_i + b_j + e_ij with population ICC ``value``
    of ``kind`` (:func:`icc_components`). "normal": all three normal; "skewed": lesion effects
    log-normal (skewness 6.2, as volume-like features across lesions) and errors t5
    (heavy-tailed), perturbation effects normal; same variances either way."""
    if distribution not in ICC_DISTRIBUTIONS:
        raise ValueError(f"icc_ratings: distribution must be one of {ICC_DISTRIBUTIONS}, got {distribution!r}")
    lesion, rater, error = icc_components(value, kind, rater_share)
    skewed = distribution == "skewed"
    a = np.sqrt(lesion) * _standard(rng, n, "lognormal" if skewed else "normal")
    b = np.sqrt(rater) * rng.standard_normal(k)
    e = np.sqrt(error) * _standard(rng, (n, k), "t" if skewed else "normal")
    return a[:, None] + b[None, :] + e


def icc_settings(params: dict) -> tuple[list[int], int]:
    """Numbers of lesions (params ``imaging_features.stability.n_images`` and :data:`ICC_EXTRA_N`)
    and of perturbations (the length of ``...stability.perturbations``) of the stage."""
    stab = params["imaging_features"]["stability"]
    return sorted({int(stab["n_images"]), ICC_EXTRA_N}, reverse=True), len(stab["perturbations"])


def run_icc(seed: int, params: dict) -> list[dict]:
    """One draw per setting (distribution x kind x number of lesions x true ICC) of the ratings
    and the 95% CI of :func:`pmed.imaging.stability.icc_ci`; truth = the population ICC. Random
    numbers from the replicate's seed + :data:`ICC_SEED_OFFSET` (no cohort needed). "reject" =
    the stage's stability call (lower bound >= ``imaging_features.stability.icc_threshold``),
    its null "true ICC below the threshold"."""
    rng = np.random.default_rng(seed + ICC_SEED_OFFSET)
    ns, k = icc_settings(params)
    threshold = float(params["imaging_features"]["stability"]["icc_threshold"])
    rows = []
    for dist in ICC_DISTRIBUTIONS:
        for kind in ICC_TYPES:
            for n in ns:
                for value in ICC_VALUES:
                    x = icc_ratings(rng, n, k, value, kind, dist)
                    low, high = icc_ci(x, kind)
                    rows.append(_row("icc", f"ICC({kind}) {dist}, {n} lesions x {k}, true {value:g}", icc(x, kind),
                                     low, high, value, reject=low >= threshold, null_true=value < threshold,
                                     ci_kind="F"))
    return rows
