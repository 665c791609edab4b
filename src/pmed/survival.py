"""Time-to-event analysis: Kaplan-Meier, log-rank, RMST, Cox PH (single and multiply imputed), PH checks.

Conventions: times are in days (any unit works, it is carried through unchanged); ``event`` is
1 for the event of interest (death) and 0 for censoring. Cox models use lifelines'
``CoxPHFitter`` (Efron ties, as R ``survival::coxph``); :func:`fit_cox_counting` fits (start, stop]
data with Efron or Breslow ties. Kaplan-Meier confidence intervals are Greenwood on the log(-log)
scale by default (R ``survfit(..., conf.type = "log-log")``). The PH test is R ``cox.zph``'s
(survival >= 3.0). Reference values: tests/data/r_reference/survival (R script tests/r/).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from scipy import stats

from pmed.imputation import rubin_pool
from pmed.parallel import run_tasks

__all__ = [
    "MIN_EVENTS",
    "EVENTS_PER_PARAMETER",
    "TooFewEventsError",
    "require_events",
    "check_survival_data",
    "kaplan_meier",
    "median_survival",
    "rmst",
    "rmst_difference",
    "numbers_at_risk",
    "logrank",
    "add_interactions",
    "fit_cox",
    "cox_table",
    "pool_models",
    "fit_cox_mi",
    "require_columns",
    "true_log_hazard_ratios",
    "estimable_terms",
    "truth_check",
    "predict_survival",
    "CoxFit",
    "fit_cox_counting",
    "cox_score_test",
    "baseline_hazard",
    "ph_test",
    "ph_violations",
    "scaled_schoenfeld",
    "fit_ph_remedy",
]


# The events rule of every model fit (survival, competing risks, treatment, prediction,
# imaging): below it a fit fails with a linear-algebra or convergence error, or gives estimates
# that do not exist (separation). Not a power rule (10 events per parameter is the usual advice
# for stable coefficients); it only stops fits that cannot be trusted at all.
MIN_EVENTS = 5  # events of the smallest fit
EVENTS_PER_PARAMETER = 1  # and at least this many events per unpenalised coefficient


class TooFewEventsError(ValueError):
    """A model would be fitted on too few events: the cohort is too small or degenerate."""


def require_events(model: str, n_events: int, n_parameters: int = 0, what: str = "events") -> None:
    """:class:`TooFewEventsError` "too few events for <model>: k events, need >= m (rule)"
    unless ``n_events`` >= max(:data:`MIN_EVENTS`, :data:`EVENTS_PER_PARAMETER` x
    ``n_parameters``). Penalised fits pass ``n_parameters=0``; ``what`` names the counted
    outcome (e.g. "persons" of an arm for a propensity model)."""
    n_events = int(n_events)
    need = max(MIN_EVENTS, math.ceil(EVENTS_PER_PARAMETER * n_parameters))
    if n_events < need:
        rule = f">= {MIN_EVENTS} {what}"
        if n_parameters:
            rule += (f" and >= {EVENTS_PER_PARAMETER} per parameter, {n_parameters} "
                     f"parameter{'s' if n_parameters > 1 else ''}")
        raise TooFewEventsError(f"too few {what} for {model}: {n_events} {what}, need >= {need} "
                                f"({rule})")


def check_survival_data(time, event, name: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """Validated float copies of ``time`` (>= 0, finite) and ``event`` (0/1), shape (n,)."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float)
    if t.ndim != 1 or t.shape != e.shape:
        raise ValueError(f"{name}: time and event must be 1-D of equal length, got {t.shape} and {e.shape}")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"{name}: time must be finite and >= 0 (found NaN/inf/negative values)")
    if not np.all(np.isin(e, (0.0, 1.0))):
        raise ValueError(f"{name}: event must be 0/1 (found {sorted(set(np.unique(e)) - {0.0, 1.0})[:5]})")
    return t, e.astype(int)


def numbers_at_risk(time, group, times: Sequence[float]) -> pd.DataFrame:
    """Number still at risk (time >= t) per group at each of ``times``.

    Returns a DataFrame indexed by group label (sorted) with one integer column per time.
    Counts are raw: pass them through :mod:`pmed.privacy` before showing them.
    """
    t = np.asarray(time, dtype=float)
    g = pd.Series(np.asarray(group)).astype(str).to_numpy()
    if t.shape != g.shape:
        raise ValueError(f"numbers_at_risk: time {t.shape} and group {g.shape} differ in length")
    rows = {}
    for label in sorted(np.unique(g)):
        tt = t[g == label]
        rows[label] = [int(np.sum(tt >= x)) for x in times]
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(times))


def add_interactions(df: pd.DataFrame, interactions: Sequence[str]) -> pd.DataFrame:
    """Copy of ``df`` with product columns for terms written ``"a:b"`` (named the same)."""
    out = df.copy()
    for term in interactions:
        parts = term.split(":")
        if len(parts) != 2:
            raise ValueError(f"interaction {term!r}: expected the form 'column_a:column_b'")
        missing = [p for p in parts if p not in out.columns]
        if missing:
            raise KeyError(f"interaction {term!r}: column(s) {missing} not in the table")
        out[term] = out[parts[0]].astype(float) * out[parts[1]].astype(float)
    return out


def _model_frame(df, duration_col, event_col, covariates, strata=()):
    cols = [duration_col, event_col, *covariates, *strata]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"Cox model: column(s) {missing} not in the table (has {list(df.columns)})")
    frame = df[cols].astype(float)
    check_survival_data(frame[duration_col], frame[event_col], "Cox model")
    return frame


def fit_cox(
    df: pd.DataFrame,
    duration_col: str,
    event_col: str,
    covariates: Sequence[str],
    strata: Sequence[str] = (),
    penalizer: float = 0.0,
    l1_ratio: float = 0.0,
    alpha: float = 0.05,
) -> CoxPHFitter:
    """Fit a Cox PH model (Efron ties) on the rows of ``df`` without missing values.

    ``covariates`` name columns of ``df`` (interaction columns must already exist, see
    :func:`add_interactions`); ``strata`` are columns defining separate baseline hazards.
    Rows with a missing covariate are dropped (complete-case); use :func:`fit_cox_mi` for
    multiply imputed data.
    """
    frame = _model_frame(df, duration_col, event_col, covariates, strata).dropna()
    require_events("Cox model", frame[event_col].sum(), 0 if penalizer else len(covariates))
    cph = CoxPHFitter(penalizer=penalizer, l1_ratio=l1_ratio, alpha=alpha)
    cph.fit(frame, duration_col=duration_col, event_col=event_col, strata=list(strata) or None)
    return cph


def cox_table(cph: CoxPHFitter, alpha: float = 0.05) -> pd.DataFrame:
    """Coefficient table of a fitted model: log-HR, SE, Wald CI, HR and CI, p-value per term."""
    z = stats.norm.ppf(1 - alpha / 2)
    coef = cph.params_
    se = cph.standard_errors_
    out = pd.DataFrame(
        {
            "term": coef.index.astype(str),
            "log_hr": coef.to_numpy(),
            "se": se.to_numpy(),
        }
    )
    out["ci_low"] = out["log_hr"] - z * out["se"]
    out["ci_high"] = out["log_hr"] + z * out["se"]
    out["hr"] = np.exp(out["log_hr"])
    out["hr_ci_low"] = np.exp(out["ci_low"])
    out["hr_ci_high"] = np.exp(out["ci_high"])
    out["p_value"] = 2 * stats.norm.sf(np.abs(out["log_hr"] / out["se"]))
    return out.reset_index(drop=True)


def pool_models(models: Sequence, alpha: float = 0.05) -> pd.DataFrame:
    """Pool lifelines models fitted on m completed data sets with Rubin's rules.

    Returns the table of :func:`pmed.imputation.rubin_pool` (``term``, ``estimate`` = pooled
    log-HR, ``se``, ``ci_low``, ``ci_high``, ``df``, ``fmi``, ...) plus ``hr``, ``hr_ci_low``,
    ``hr_ci_high``.
    """
    if len(models) < 2:
        raise ValueError(f"pool_models: need >= 2 fitted models, got {len(models)}")
    names = list(models[0].params_.index)
    if any(list(mod.params_.index) != names for mod in models):
        raise ValueError("pool_models: the models do not share the same terms")
    est = np.array([mod.params_.to_numpy() for mod in models])
    var = np.array([mod.standard_errors_.to_numpy() ** 2 for mod in models])
    pooled = rubin_pool(est, var, alpha=alpha, names=[str(n) for n in names])
    pooled["hr"] = np.exp(pooled["estimate"])
    pooled["hr_ci_low"] = np.exp(pooled["ci_low"])
    pooled["hr_ci_high"] = np.exp(pooled["ci_high"])
    return pooled


def fit_cox_mi(
    imputations: Sequence[pd.DataFrame],
    duration_col: str,
    event_col: str,
    covariates: Sequence[str],
    strata: Sequence[str] = (),
    alpha: float = 0.05,
    n_jobs: int = 1,
) -> pd.DataFrame:
    """Cox model fitted on each completed data set and pooled with Rubin's rules.

    The m fits run in ``n_jobs`` processes with one BLAS thread each
    (:func:`pmed.parallel.run_tasks`; the result does not depend on ``n_jobs``).
    Returns the table of :func:`pool_models` (one row per term).
    """
    if len(imputations) < 2:
        raise ValueError(f"fit_cox_mi: need >= 2 imputed data sets, got {len(imputations)}")
    frames = [_model_frame(d, duration_col, event_col, covariates, strata) for d in imputations]
    if any(f[list(covariates)].isna().any().any() for f in frames):
        raise ValueError("fit_cox_mi: an imputed data set still has missing covariate values")
    models = run_tasks(lambda f: fit_cox(f, duration_col, event_col, covariates, strata, alpha=alpha), frames, n_jobs)
    return pool_models(models, alpha=alpha)


def fit_ph_remedy_mi(
    imputations: Sequence[pd.DataFrame],
    duration_col: str,
    event_col: str,
    covariates: Sequence[str],
    violators: Sequence[str],
    cut_time: float,
    n_jobs: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`fit_ph_remedy` on each completed data set, pooled by :func:`pool_models`.

    The m fits run in ``n_jobs`` processes with one BLAS thread each (result independent of
    ``n_jobs``). Returns the pooled table and the remedies table (the same for every data set).
    """
    frames = [_model_frame(d, duration_col, event_col, covariates) for d in imputations]
    fits = run_tasks(lambda f: fit_ph_remedy(f, duration_col, event_col, covariates, violators, cut_time),
                     frames, n_jobs)
    return pool_models([fit for fit, _ in fits]), fits[0][1]


def require_columns(df: pd.DataFrame, columns: Sequence[str], table: str) -> None:
    """KeyError naming ``table`` and the absent columns unless all ``columns`` are in ``df``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{table}: missing column(s) {missing}; expected them per the cohort contract")


def estimable_terms(
    df: pd.DataFrame, terms: Sequence[str], min_per_level: int = 10, event: str | None = None,
    min_events: int = MIN_EVENTS, one_hot: Sequence[Sequence[str]] = (),
) -> list[str]:
    """The ``terms`` a Cox model can estimate among the complete cases of ``df[terms]``.

    Drops a term that does not vary there, and a 0/1 term with fewer than ``min_per_level``
    complete cases at either level (e.g. an arm x driver product when one driver-positive
    patient of that arm has complete data: its likelihood has no finite maximum). With
    ``event`` (a 0/1 column of ``df``, e.g. "outcome of interest happened"), a 0/1 term also
    needs ``min_events`` events at each level (default :data:`MIN_EVENTS`): with none at one
    level its log-HR diverges; a rare outcome can have no event in a small arm. ``one_hot``:
    groups of 0/1 terms coding one categorical variable (e.g. the arm indicators); its
    reference level (all of the group 0) needs as many persons and events as a level, else the
    whole group is dropped (with no event in the reference arm no arm contrast is estimable,
    yet each indicator has events at both of its own levels).
    """
    complete = df[list(terms)].dropna()
    events = None if event is None else df.loc[complete.index, event].to_numpy() == 1
    keep = []
    for t in terms:
        values = complete[t]
        if values.nunique() < 2:
            continue
        if set(values.unique()) <= {0, 1}:
            level = values.to_numpy() == 1
            if min(level.sum(), (~level).sum()) < min_per_level:
                continue
            if events is not None and min((events & level).sum(), (events & ~level).sum()) < min_events:
                continue
        keep.append(t)
    for group in one_hot:
        ref = (complete[list(group)] == 0).all(axis=1).to_numpy()
        if ref.sum() < min_per_level or (events is not None and (events & ref).sum() < min_events):
            keep = [t for t in keep if t not in group]
    return keep


def true_log_hazard_ratios(ground_truth: dict) -> dict[str, float]:
    """The true log-HRs of death in a demo ``ground_truth.json`` document: its ``log_hr``
    mapping (cohort column or ``a:b`` product term -> log-HR per unit). KeyError if absent."""
    if not isinstance(ground_truth.get("log_hr"), dict):
        raise KeyError("ground_truth.json: no 'log_hr' mapping of true log hazard ratios")
    return {str(k): float(v) for k, v in ground_truth["log_hr"].items()}


def truth_check(estimates: pd.DataFrame, truth: dict[str, float], n_tests: int | None = None) -> pd.DataFrame:
    """Estimated vs true log-HRs, one row per term present in both.

    ``estimates`` needs ``term``, ``estimate`` (or ``log_hr``), ``se``, ``ci_low``, ``ci_high``.
    Columns: ``term``, ``true``, ``estimate``, ``ci_low``, ``ci_high``, ``z`` ((estimate -
    true) / se), ``inside_ci`` and ``inside_bonferroni`` (inside the Wald interval at level
    0.05 / ``n_tests``, default the number of terms: with k terms, all k nominal 95% CIs
    cover their truths only with probability ~0.95^k even for a correct model).
    """
    est = estimates.rename(columns={"log_hr": "estimate"}).set_index("term")
    terms = [t for t in est.index if t in truth]
    k = n_tests or len(terms)
    z_crit = stats.norm.ppf(1 - 0.025 / k)
    out = pd.DataFrame(
        {
            "term": terms,
            "true": [truth[t] for t in terms],
            "estimate": est.loc[terms, "estimate"].to_numpy(),
            "ci_low": est.loc[terms, "ci_low"].to_numpy(),
            "ci_high": est.loc[terms, "ci_high"].to_numpy(),
        }
    )
    se = est.loc[terms, "se"].to_numpy()
    out["z"] = (out["estimate"] - out["true"]) / se
    out["inside_ci"] = (out["true"] >= out["ci_low"]) & (out["true"] <= out["ci_high"])
    out["inside_bonferroni"] = np.abs(out["z"]) <= z_crit
    return out


def predict_survival(cph: CoxPHFitter, df: pd.DataFrame, times: Sequence[float]) -> np.ndarray:
    """Predicted S(t | x) of a fitted Cox model for each row of ``df``, shape (n, len(times))."""
    strata = cph.strata or []
    cols = list(cph.params_.index) + ([strata] if isinstance(strata, str) else list(strata))
    require_columns(df, cols, "predict_survival")
    surv = cph.predict_survival_function(df[cols].astype(float), times=list(times))
    return surv.to_numpy().T


def fit_ph_remedy(
    df: pd.DataFrame,
    duration_col: str,
    event_col: str,
    covariates: Sequence[str],
    violators: Sequence[str],
    cut_time: float,
    max_strata_levels: int = 5,
) -> tuple[CoxPHFitter, pd.DataFrame]:
    """Refit a Cox model with the proportional-hazards violations remedied.

    A violating covariate with at most ``max_strata_levels`` distinct values becomes a
    stratification variable (its own baseline hazard; no HR is estimated for it). Any other
    violator gets a time interaction: follow-up is split at ``cut_time`` and the term
    ``<name>:late`` (= covariate x 1{t > cut_time}) is added, so the HR is exp(beta) before
    and exp(beta + beta_late) after ``cut_time`` (a piecewise-constant HR).

    Returns the fitted model and a table ``term``, ``remedy`` ("stratified" or
    "time interaction at <cut_time>").
    """
    unknown = [v for v in violators if v not in covariates]
    if unknown:
        raise KeyError(f"fit_ph_remedy: violators {unknown} are not model covariates")
    frame = _model_frame(df, duration_col, event_col, covariates).dropna()
    require_events("Cox model (PH remedy)", frame[event_col].sum(), len(covariates) + len(violators))
    strata, timevarying, rows = [], [], []
    for v in violators:
        if frame[v].nunique() <= max_strata_levels:
            strata.append(v)
            rows.append((v, "stratified"))
        else:
            timevarying.append(v)
            rows.append((v, f"time interaction at {cut_time:g}"))
    remedies = pd.DataFrame(rows, columns=["term", "remedy"])
    kept = [c for c in covariates if c not in strata]
    if not timevarying:
        return fit_cox(frame, duration_col, event_col, kept, strata=strata), remedies
    # Split follow-up at cut_time into an early record (0, min(T, c)] and, for T > c, a late
    # record (c, T]. Every late event time exceeds c, so all late records are at risk from c:
    # stratifying by period (separate baseline hazards before/after c, which do not overlap
    # in time) gives exactly the counting-process partial likelihood without delayed entry.
    early = frame.copy()
    early["stop"] = np.minimum(frame[duration_col], cut_time)
    early["event_tv"] = np.where(frame[duration_col] <= cut_time, frame[event_col], 0)
    early["period_after_cut"] = 0
    late = frame[frame[duration_col] > cut_time].copy()
    late["stop"] = late[duration_col]
    late["event_tv"] = late[event_col]
    late["period_after_cut"] = 1
    for v in timevarying:
        early[f"{v}:late"] = 0.0
        late[f"{v}:late"] = late[v]
    long = pd.concat([early, late], ignore_index=True)
    tv_cols = kept + [f"{v}:late" for v in timevarying]
    model = CoxPHFitter()
    model.fit(
        long[["stop", "event_tv", *tv_cols, *strata, "period_after_cut"]],
        duration_col="stop",
        event_col="event_tv",
        strata=[*strata, "period_after_cut"],
    )
    return model, remedies


# --- Kaplan-Meier, median, restricted mean, log-rank ----------------------------------------------------

_CONF_TYPES = ("log-log", "log", "plain")


def _km_counts(time, event, entry=None) -> dict:
    """KM at each distinct time (event or censoring), O(n log n).

    Returns arrays ``time``, ``n_at_risk`` (entry < t <= time), ``n_events``, ``n_censored``,
    ``survival`` and ``greenwood`` (sum of d / (n (n - d)), the variance of log S).
    """
    grid, inverse = np.unique(time, return_inverse=True)
    n_events = np.bincount(inverse, weights=event, minlength=grid.size)
    n_all = np.bincount(inverse, minlength=grid.size)
    at_risk = time.size - np.concatenate([[0], np.cumsum(n_all)[:-1]])
    if entry is not None:
        at_risk = at_risk - (entry.size - np.searchsorted(np.sort(entry), grid, side="left"))
    with np.errstate(divide="ignore", invalid="ignore"):
        surv = np.cumprod(1.0 - n_events / at_risk)
        gw = np.cumsum(np.where(at_risk > n_events, n_events / (at_risk * (at_risk - n_events)), 0.0))
    return {"time": grid, "n_at_risk": at_risk.astype(int), "n_events": n_events.astype(int),
            "n_censored": (n_all - n_events).astype(int), "survival": surv, "greenwood": gw}


def _km_band(surv: np.ndarray, greenwood: np.ndarray, alpha: float, conf_type: str):
    """Pointwise band as R survfit's ``conf.type`` (NaN where R gives NA)."""
    z = stats.norm.ppf(1 - alpha / 2)
    se = np.sqrt(greenwood)  # SE of log S (R's std.err)
    with np.errstate(divide="ignore", invalid="ignore"):
        if conf_type == "log-log":
            s = np.where((surv > 0) & (surv < 1), surv, np.nan)
            half = z * se / np.log(s)  # < 0
            return s ** np.exp(-half), s ** np.exp(half)
        if conf_type == "log":
            s = np.where(surv > 0, surv, np.nan)
            return np.exp(np.log(s) - z * se), np.minimum(np.exp(np.log(s) + z * se), 1.0)
        if conf_type == "plain":
            s = np.where(surv > 0, surv, np.nan)
            return np.maximum(s - z * se * s, 0.0), np.minimum(s + z * se * s, 1.0)
    raise ValueError(f"conf_type must be one of {_CONF_TYPES}, got {conf_type!r}")


def kaplan_meier(time, event, alpha: float = 0.05, conf_type: str = "log-log") -> pd.DataFrame:
    """Kaplan-Meier estimate with a pointwise (1 - alpha) Greenwood band.

    Parameters
    ----------
    time, event : array-like, shape (n,)
        Follow-up time and event indicator (1 = event).
    alpha : float
        Two-sided level of the confidence band.
    conf_type : {"log-log", "log", "plain"}
        Scale of the band, as R ``survfit(conf.type=)`` (R's default is "log").

    Returns
    -------
    DataFrame with one row per distinct time (including 0): ``time``, ``survival``,
    ``ci_low``, ``ci_high`` (where R reports NA, at S = 1 or S = 0, the band is S itself),
    ``n_at_risk`` (at risk just before ``time``), ``n_events``, ``n_censored``.
    """
    t, e = check_survival_data(time, event, "kaplan_meier")
    km = _km_counts(t, e)
    low, high = _km_band(km["survival"], km["greenwood"], alpha, conf_type)
    out = pd.DataFrame({
        "time": km["time"], "survival": km["survival"],
        "ci_low": np.where(np.isnan(low), km["survival"], low),
        "ci_high": np.where(np.isnan(high), km["survival"], high),
        "n_at_risk": km["n_at_risk"], "n_events": km["n_events"], "n_censored": km["n_censored"],
    })
    if t.size and km["time"][0] > 0:
        first = pd.DataFrame({"time": [0.0], "survival": [1.0], "ci_low": [1.0], "ci_high": [1.0],
                              "n_at_risk": [t.size], "n_events": [0], "n_censored": [0]})
        out = pd.concat([first, out], ignore_index=True)
    return out


def _first_below_half(curve: np.ndarray, times: np.ndarray) -> float:
    """R print.survfit's median rule: first time the curve is < 0.5 (a flat at 0.5: the midpoint to
    the next drop); inf when it never gets there."""
    tol = np.sqrt(np.finfo(float).eps)
    keep = ~np.isnan(curve) & (curve < 0.5 + tol)
    if not keep.any():
        return float("inf")
    x, y = times[keep], curve[keep]
    lower = np.flatnonzero(y < y[0])
    if abs(y[0] - 0.5) < tol and lower.size:
        return float((x[0] + x[lower[0]]) / 2)
    return float(x[0])


def median_survival(time, event, alpha: float = 0.05, conf_type: str = "log-log") -> dict[str, float]:
    """Median survival time with its (1 - alpha) CI, as R ``print(survfit(..., conf.type=))``.

    The CI limits are where the band's curves cross 0.5. Returns ``{"estimate", "ci_low",
    "ci_high"}`` in the unit of ``time``; a value is ``inf`` when its curve never drops to
    0.5 during follow-up (R: NA).
    """
    t, e = check_survival_data(time, event, "median_survival")
    km = _km_counts(t, e)
    low, high = _km_band(km["survival"], km["greenwood"], alpha, conf_type)
    return {
        "estimate": _first_below_half(km["survival"], km["time"]),
        "ci_low": _first_below_half(low, km["time"]),
        "ci_high": _first_below_half(high, km["time"]),
    }


def rmst(time, event, tau: float, alpha: float = 0.05) -> dict[str, float]:
    """Restricted mean survival time up to ``tau``: area under the KM curve on [0, tau].

    As R ``print(survfit(...), rmean = tau)`` (``rmean``, ``se(rmean)``): variance
    sum over event times t_j <= tau of A_j^2 d_j / (n_j (n_j - d_j)), A_j the area under the
    curve from t_j to tau (the same estimator as survRM2::rmst2). Beyond the last time the curve
    is carried forward. Returns ``{"tau", "estimate", "se", "ci_low", "ci_high"}`` (normal CI).
    """
    t, e = check_survival_data(time, event, "rmst")
    if not np.isfinite(tau) or tau <= 0:
        raise ValueError(f"rmst: tau must be a positive finite time, got {tau}")
    km = _km_counts(t, e)
    keep = km["time"] <= tau
    grid = np.concatenate([[0.0], km["time"][keep], [tau]])
    surv = np.concatenate([[1.0], km["survival"][keep]])
    area = np.diff(grid) * surv  # rectangles between consecutive times
    tail = np.cumsum(area[::-1])[::-1][1:]  # area from each kept time to tau
    d, n = km["n_events"][keep], km["n_at_risk"][keep]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(n > d, d / (n * (n - d)), 0.0)
    est, se = float(area.sum()), float(np.sqrt(np.sum(tail**2 * h)))
    z = stats.norm.ppf(1 - alpha / 2)
    return {"tau": float(tau), "estimate": est, "se": se, "ci_low": est - z * se, "ci_high": est + z * se}


def rmst_difference(time, event, group, tau: float, reference=None, alpha: float = 0.05) -> dict:
    """Difference in restricted mean survival time (other group minus ``reference``) up to ``tau``.

    Two groups; per-group RMST and SE as :func:`rmst` (R survival / survRM2), the difference's
    SE sqrt(se_1^2 + se_0^2) (independent groups), normal CI and two-sided p-value, as
    survRM2::rmst2's "RMST (arm=1)-(arm=0)" row. ``reference`` defaults to the first sorted label.
    Returns ``{"tau", "groups" (DataFrame by label: estimate, se, ci_low, ci_high), "reference",
    "difference", "se", "ci_low", "ci_high", "p_value"}``.
    """
    t, e = check_survival_data(time, event, "rmst_difference")
    g = pd.Series(np.asarray(group)).astype(str).to_numpy()
    labels = sorted(np.unique(g))
    if len(labels) != 2:
        raise ValueError(f"rmst_difference: need exactly 2 groups, got {len(labels)}")
    ref = labels[0] if reference is None else str(reference)
    if ref not in labels:
        raise ValueError(f"rmst_difference: reference {reference!r} is not a group label")
    other = labels[1] if ref == labels[0] else labels[0]
    per = {lab: rmst(t[g == lab], e[g == lab], tau, alpha) for lab in (ref, other)}
    diff = per[other]["estimate"] - per[ref]["estimate"]
    se = float(np.hypot(per[other]["se"], per[ref]["se"]))
    z = stats.norm.ppf(1 - alpha / 2)
    return {
        "tau": float(tau),
        "groups": pd.DataFrame(per).T[["estimate", "se", "ci_low", "ci_high"]],
        "reference": ref,
        "difference": float(diff),
        "se": se,
        "ci_low": float(diff - z * se),
        "ci_high": float(diff + z * se),
        "p_value": float(2 * stats.norm.sf(abs(diff) / se)),
    }


def _string_codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct labels (as str) and each value's code; factorises before converting to str."""
    codes, uniques = pd.factorize(values, sort=False)
    labels, inverse = np.unique(np.array([str(u) for u in uniques]), return_inverse=True)
    return labels, inverse[codes]


def logrank(time, event, group, strata=None) -> dict:
    """Log-rank (Mantel-Haenszel) test of equal survival across k groups, as R ``survdiff`` (rho=0).

    ``strata`` (optional, shape (n,)): observed, expected and variance are summed over strata
    (R ``survdiff(Surv(t, e) ~ group + strata(s))``). Rows with a missing group or stratum are
    dropped. Computed from sorted cumulative counts in O(n log n + D k^2) (D distinct event
    times). Returns ``{"statistic", "df", "p_value", "groups"}``, ``groups`` a DataFrame indexed
    by group label (sorted) with ``n``, ``observed`` and ``expected`` event counts.
    """
    t, e = check_survival_data(time, event, "logrank")
    g_raw = pd.Series(np.asarray(group))
    s_raw = pd.Series(np.zeros(t.size) if strata is None else np.asarray(strata))
    if s_raw.size != t.size or g_raw.size != t.size:
        raise ValueError("logrank: time, event, group and strata must have equal length")
    ok = (g_raw.notna() & s_raw.notna()).to_numpy()
    t, e = t[ok], e[ok]
    labels, gi = _string_codes(g_raw[ok])
    _, si = _string_codes(s_raw[ok])
    k = labels.size
    if k < 2:
        raise ValueError(f"logrank: need at least 2 groups, got {labels.tolist()}")
    observed, expected, var = np.zeros(k), np.zeros(k), np.zeros((k, k))
    for s in np.unique(si):
        rows = si == s
        ts, es, gs = t[rows], e[rows], gi[rows]
        event_times = np.unique(ts[es == 1])
        if event_times.size == 0:
            continue
        # At risk per (event time, group): members of the group with time >= t.
        n_g = np.empty((event_times.size, k))
        for j in range(k):
            tj = np.sort(ts[gs == j])
            n_g[:, j] = tj.size - np.searchsorted(tj, event_times, side="left")
        dead = es == 1
        d_g = np.zeros((event_times.size, k))
        np.add.at(d_g, (np.searchsorted(event_times, ts[dead]), gs[dead]), 1.0)
        n, d = n_g.sum(axis=1), d_g.sum(axis=1)
        share = n_g / n[:, None]
        observed += d_g.sum(axis=0)
        expected += d @ share
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(n > 1, d * (n - d) / (n - 1), 0.0)
        var += np.diag(w @ share) - (share * w[:, None]).T @ share
    used = np.flatnonzero(expected > 0)[1:]  # R: groups with expected > 0, the first dropped
    diff = (observed - expected)[used]
    stat = float(diff @ np.linalg.solve(var[np.ix_(used, used)], diff)) if used.size else 0.0
    df = int(used.size)
    groups = pd.DataFrame(
        {"n": np.bincount(gi, minlength=k).astype(int), "observed": observed.astype(int), "expected": expected},
        index=labels,
    )
    return {"statistic": stat, "df": df, "p_value": float(stats.chi2.sf(stat, df)), "groups": groups}


# --- Cox partial-likelihood engine (Efron / Breslow ties, strata, (start, stop] data) ----------------
# All quantities come from cumulative sums over the rows sorted by time: O(n log n + n p^2) time and
# O(n p) memory, never an (event times x n) matrix. The second-moment sum over the risk sets,
# sum_s c_s S2_s / S0_s, is rewritten as X' diag(w) X with w_i = r_i * (sum of c_s / S0_s over the
# deaths whose risk set holds row i), a cumulative sum over event times.

_TIES = ("efron", "breslow")


def _check_ties(ties: str) -> None:
    if ties not in _TIES:
        raise ValueError(f"ties: expected one of {_TIES}, got {ties!r}")


def _rev_cumsum(a: np.ndarray) -> np.ndarray:
    """Reverse cumulative sum along axis 0 with a trailing zero row: out[k] = a[k:].sum(0)."""
    out = np.zeros((a.shape[0] + 1, *a.shape[1:]))
    out[:-1] = np.cumsum(a[::-1], axis=0)[::-1]
    return out


class _Stratum:
    """Risk-set sums of one stratum at one linear predictor ``eta``.

    Attributes over the D distinct event times ``times``: ``d`` (deaths), ``xd`` (sum of x over
    the deaths, (D, p)); over the n_death "slots" (Efron: the d terms of a tied time, Breslow:
    d copies of one term): ``slot`` (index into ``times``), ``frac`` (Efron's r / d), ``s0``
    (risk-set sum), ``mean`` (weighted covariate mean, (n_death, p)).
    """

    def __init__(self, start, stop, event, X, eta, ties):
        self.start, self.stop, self.X = start, stop, X
        self.risk = np.exp(eta)
        dead = event == 1
        order = np.argsort(stop[dead], kind="stable")
        dead_idx = np.flatnonzero(dead)[order]
        self.dead_idx = dead_idx
        self.times, first, self.d = np.unique(stop[dead_idx], return_index=True, return_counts=True)
        slot = np.repeat(np.arange(self.times.size), self.d)
        self.slot = slot
        within = np.arange(dead_idx.size) - first[slot]
        self.frac = within / self.d[slot] if ties == "efron" else np.zeros(dead_idx.size)
        rx = self.risk[:, None] * X
        # Risk-set sums at each event time: rows with stop >= t minus rows with start >= t.
        by_stop = np.argsort(stop, kind="stable")
        k = np.searchsorted(stop[by_stop], self.times, side="left")
        s0 = _rev_cumsum(self.risk[by_stop])[k]
        s1 = _rev_cumsum(rx[by_stop])[k]
        if start is not None:
            by_start = np.argsort(start, kind="stable")
            k = np.searchsorted(start[by_start], self.times, side="left")
            s0 = s0 - _rev_cumsum(self.risk[by_start])[k]
            s1 = s1 - _rev_cumsum(rx[by_start])[k]
        if dead_idx.size:
            d0 = np.add.reduceat(self.risk[dead_idx], first)
            d1 = np.add.reduceat(rx[dead_idx], first, axis=0)
            self.xd = np.add.reduceat(X[dead_idx], first, axis=0)
        else:  # a stratum without events adds nothing
            d0, d1, self.xd = np.zeros(0), np.zeros((0, X.shape[1])), np.zeros((0, X.shape[1]))
        self.dead_eta_sum = float(eta[dead_idx].sum())
        self.s0 = s0[slot] - self.frac * d0[slot]
        self.mean = (s1[slot] - self.frac[:, None] * d1[slot]) / self.s0[:, None]

    def loglik(self) -> float:
        return self.dead_eta_sum - float(np.log(self.s0).sum())

    def score(self, c: np.ndarray) -> np.ndarray:
        """sum over event times of c(t) * (sum of x over deaths - sum of the slot means), (p,)."""
        return c @ self.xd - c[self.slot] @ self.mean

    def information(self, c: np.ndarray) -> np.ndarray:
        """sum over death slots of c(t) * (weighted covariance of the risk set), (p, p)."""
        cs = c[self.slot]
        a = np.bincount(self.slot, cs / self.s0, minlength=self.times.size)
        cum = np.concatenate([[0.0], np.cumsum(a)])
        w = cum[np.searchsorted(self.times, self.stop, side="right")]
        if self.start is not None:
            w = w - cum[np.searchsorted(self.times, self.start, side="right")]
        w = w * self.risk
        # Efron: the dying rows enter the r-th slot with weight 1 - r/d.
        b = np.bincount(self.slot, cs * self.frac / self.s0, minlength=self.times.size)
        w[self.dead_idx] -= self.risk[self.dead_idx] * b[self.slot]  # dead_idx: distinct rows
        return (self.X * w[:, None]).T @ self.X - (self.mean * cs[:, None]).T @ self.mean

    def hazard_increments(self) -> np.ndarray:
        """Baseline hazard jump at each event time (risk exp(eta)): sum over its slots of 1 / S0."""
        return np.bincount(self.slot, 1.0 / self.s0, minlength=self.times.size)

    def schoenfeld(self) -> np.ndarray:
        """Schoenfeld residual of each death (x minus the mean of its time's slot means), (n_death, p)."""
        if self.times.size == 0:
            return np.zeros((0, self.X.shape[1]))
        mean_of_slots = np.add.reduceat(self.mean, np.searchsorted(self.slot, np.arange(self.times.size)), axis=0)
        return self.X[self.dead_idx] - (mean_of_slots / self.d[:, None])[self.slot]


class _CoxData:
    """Validated, centred arrays of a Cox model: X (n, p), stop, event, optional start, strata codes."""

    def __init__(self, df, stop_col, event_col, covariates, start_col=None, strata=(), name="Cox model"):
        cols = [c for c in (start_col, stop_col, event_col) if c] + list(covariates) + list(strata)
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise KeyError(f"{name}: column(s) {missing} not in the table")
        frame = df[cols].dropna()
        self.stop, self.event = check_survival_data(frame[stop_col], frame[event_col], name)
        self.start = None
        if start_col:
            self.start = frame[start_col].to_numpy(dtype=float)
            if not np.all(self.start < self.stop):
                raise ValueError(f"{name}: need {start_col} < {stop_col} on every row")
        self.covariates = list(covariates)
        X = frame[self.covariates].to_numpy(dtype=float)
        self.means = X.mean(axis=0)
        self.X = X - self.means
        if strata:
            self.strata_labels = frame[list(strata)].astype(str).agg("|".join, axis=1).to_numpy()
            _, self.codes = np.unique(self.strata_labels, return_inverse=True)
        else:
            self.strata_labels = np.full(len(frame), "", dtype=object)
            self.codes = np.zeros(len(frame), dtype=int)
        if self.event.sum() == 0:
            raise ValueError(f"{name}: no events")

    def strata_rows(self):
        for k in np.unique(self.codes):
            yield np.flatnonzero(self.codes == k)

    def stratum(self, rows, beta, ties) -> _Stratum:
        start = None if self.start is None else self.start[rows]
        X = self.X[rows]
        return _Stratum(start, self.stop[rows], self.event[rows], X, X @ beta, ties)

    def derivatives(self, beta, ties):
        """Log partial likelihood, score (p,) and information (p, p) at ``beta``."""
        p = beta.size
        ll, u, imat = 0.0, np.zeros(p), np.zeros((p, p))
        for rows in self.strata_rows():
            s = self.stratum(rows, beta, ties)
            ones = np.ones(s.times.size)
            ll += s.loglik()
            u += s.score(ones)
            imat += s.information(ones)
        return ll, u, imat


def _score_statistic(u: np.ndarray, imat: np.ndarray) -> float:
    return float(u @ np.linalg.solve(imat, u))


@dataclass
class CoxFit:
    """A Cox model fitted by :func:`fit_cox_counting` (attribute names as lifelines' for reuse).

    ``params_`` / ``standard_errors_`` (Series by covariate), ``variance_matrix_`` (DataFrame),
    ``log_likelihood_`` and ``log_likelihood_null_``, ``score_test`` (dict: R summary(coxph)'s
    "Score (logrank) test" at beta = 0: ``statistic``, ``df``, ``p_value``), ``n``, ``n_events``,
    ``ties``, the column names the model was fitted with and ``means_`` (R ``fit$means``, the
    centring of :func:`baseline_hazard`).
    """

    params_: pd.Series
    standard_errors_: pd.Series
    variance_matrix_: pd.DataFrame
    log_likelihood_: float
    log_likelihood_null_: float
    score_test: dict
    n: int
    n_events: int
    ties: str
    stop_col: str
    event_col: str
    start_col: str | None
    strata: list[str]
    means_: pd.Series


def fit_cox_counting(
    df: pd.DataFrame,
    stop_col: str,
    event_col: str,
    covariates: Sequence[str],
    start_col: str | None = None,
    strata: Sequence[str] = (),
    ties: str = "efron",
    max_iter: int = 30,
    tol: float = 1e-12,
) -> CoxFit:
    """Cox PH model by Newton-Raphson, as R ``coxph(Surv(start, stop, event) ~ x + strata(s))``.

    Rows are episodes (start, stop] (``start_col``; omit it for right-censored data, start = 0):
    a row is at risk at t when start < t <= stop, so time-varying covariates are split into
    episodes. ``ties``: "efron" (R's default) or "breslow". Rows with a missing value are dropped.
    Stops when the relative change of the log-likelihood is below ``tol``.
    """
    _check_ties(ties)
    data = _CoxData(df, stop_col, event_col, covariates, start_col, strata, "fit_cox_counting")
    require_events("Cox model (fit_cox_counting)", data.event.sum(), len(data.covariates))
    p = len(data.covariates)
    beta = np.zeros(p)
    ll0, u0, i0 = data.derivatives(beta, ties)
    ll, u, imat = ll0, u0, i0
    for _ in range(max_iter):
        step = np.linalg.solve(imat, u)
        new = beta + step
        ll_new, u_new, i_new = data.derivatives(new, ties)
        halvings = 0
        while ll_new < ll - 1e-10 * abs(ll) and halvings < 30:  # step halving (as R coxph)
            new = (beta + new) / 2
            ll_new, u_new, i_new = data.derivatives(new, ties)
            halvings += 1
        done = abs(ll_new - ll) <= tol * abs(ll_new)
        beta, ll, u, imat = new, ll_new, u_new, i_new
        if done:
            break
    else:
        raise RuntimeError(f"fit_cox_counting: no convergence in {max_iter} Newton steps")
    var = np.linalg.inv(imat)
    names = data.covariates
    no_centre = np.all(np.isin(data.X + data.means, (-1.0, 0.0, 1.0)), axis=0)  # R coxph's nocenter
    stat = _score_statistic(u0, i0)
    return CoxFit(
        params_=pd.Series(beta, index=names),
        standard_errors_=pd.Series(np.sqrt(np.diag(var)), index=names),
        variance_matrix_=pd.DataFrame(var, index=names, columns=names),
        log_likelihood_=float(ll),
        log_likelihood_null_=float(ll0),
        score_test={"statistic": stat, "df": p, "p_value": float(stats.chi2.sf(stat, p))},
        n=int(data.stop.size),
        n_events=int(data.event.sum()),
        ties=ties,
        stop_col=stop_col,
        event_col=event_col,
        start_col=start_col,
        strata=list(strata),
        means_=pd.Series(np.where(no_centre, 0.0, data.means), index=names),
    )


# --- Proportional-hazards test (R cox.zph, survival >= 3.0) -------------------------------------------

_TRANSFORMS = ("km", "rank", "identity", "log")


def _model_spec(cph) -> dict:
    """Columns, ties and coefficients of a lifelines CoxPHFitter or a :class:`CoxFit`."""
    if isinstance(cph, CoxFit):
        return {"stop": cph.stop_col, "event": cph.event_col, "start": cph.start_col, "strata": cph.strata,
                "ties": cph.ties, "beta": cph.params_}
    if getattr(cph, "penalizer", 0) not in (0, 0.0):
        raise ValueError("ph_test: the model is penalised; the score test assumes an unpenalised fit")
    strata = cph.strata or []
    return {"stop": cph.duration_col, "event": cph.event_col, "start": getattr(cph, "entry_col", None),
            "strata": [strata] if isinstance(strata, str) else list(strata), "ties": "efron", "beta": cph.params_}


def _transformed_times(data: _CoxData, transform: str) -> np.ndarray:
    """g(t) at each row's stop time, centred at its mean over the events (as R cox.zph)."""
    t = data.stop
    if transform == "identity":
        g = t.copy()
    elif transform == "log":
        if np.any(t <= 0):
            raise ValueError("ph_test: transform 'log' needs all times > 0")
        g = np.log(t)
    elif transform == "rank":
        g = stats.rankdata(t)
    elif transform == "km":  # 1 - left-continuous KM of all rows (strata pooled)
        km = _km_counts(t, data.event, data.start)
        surv_left = np.concatenate([[1.0], km["survival"]])
        g = 1.0 - surv_left[np.searchsorted(km["time"], t, side="left")]
    else:
        raise ValueError(f"ph_test: time_transform must be one of {_TRANSFORMS}, got {transform!r}")
    return g - g[data.event == 1].mean()


def _covariate_scale(x: np.ndarray) -> float:
    """Unit of the effect size: the difference of a two-valued covariate, else 2 SD (Gelman 2008)."""
    values = np.unique(x)
    return float(values[-1] - values[0]) if values.size == 2 else float(2 * x.std(ddof=1))


def ph_test(
    cph,
    df: pd.DataFrame,
    time_transform: str = "km",
    terms: dict[str, Sequence[str]] | None = None,
    include_global: bool = False,
) -> pd.DataFrame:
    """Proportional-hazards score test per term, as R ``cox.zph`` (survival >= 3.0).

    For each term the model is extended by x * g(t) (g = ``time_transform`` of follow-up time:
    "km" = 1 - left-continuous Kaplan-Meier, "rank", "identity" or "log"; centred over the
    events) and the score test of the new coefficients is taken at the fitted betas (interaction
    coefficients 0), with the model's ties (lifelines: Efron) and strata. ``cph`` is a lifelines
    ``CoxPHFitter`` (unpenalised) or a :class:`CoxFit`; ``df`` the data it was fitted on.
    ``terms`` groups columns into one test (e.g. the dummies of a factor: ``{"ecog": ["ecog_1",
    "ecog_2"]}``); default one term per covariate. ``include_global`` appends R's "GLOBAL" row.

    Returns one row per term: ``term``, ``statistic`` (chi-square), ``df``, ``p_value`` and the
    effect size of the violation: ``log_hr_change`` = the one-step estimate of the interaction
    coefficient times the spread of g between the 10th and 90th percentile of the event times,
    per unit of the covariate for a two-valued covariate (else per 2 SD) - the change of the
    log-HR from early to late follow-up - and ``hr_ratio`` = exp(log_hr_change) (HR late / HR
    early). For a multi-column term the largest absolute change of its columns is shown.
    """
    spec = _model_spec(cph)
    names = [str(c) for c in spec["beta"].index]
    data = _CoxData(df, spec["stop"], spec["event"], names, spec["start"], spec["strata"], "ph_test")
    terms = {n: [n] for n in names} if terms is None else {k: list(v) for k, v in terms.items()}
    unknown = sorted({c for cols in terms.values() for c in cols} - set(names))
    if unknown:
        raise KeyError(f"ph_test: terms name column(s) {unknown} that are not model covariates")
    beta = spec["beta"].to_numpy(dtype=float)
    p = beta.size
    g = _transformed_times(data, time_transform)
    u = np.zeros(2 * p)
    imat = np.zeros((2 * p, 2 * p))
    for rows in data.strata_rows():
        s = data.stratum(rows, beta, spec["ties"])
        if s.times.size == 0:
            continue
        gt = g[rows][s.dead_idx][np.searchsorted(s.slot, np.arange(s.times.size))]  # g per event time
        ones = np.ones_like(gt)
        i_bg = s.information(gt)
        imat[:p, :p] += s.information(ones)
        imat[:p, p:] += i_bg
        imat[p:, :p] += i_bg.T
        imat[p:, p:] += s.information(gt * gt)
        u[p:] += s.score(gt)
    g_dead = g[data.event == 1]
    spread = float(np.quantile(g_dead, 0.9) - np.quantile(g_dead, 0.1))
    scale = np.array([_covariate_scale(data.X[:, k]) for k in range(p)])
    rows_out = []
    groups = list(terms.items()) + ([("GLOBAL", names)] if include_global else [])
    for term, cols in groups:
        jj = [names.index(c) for c in cols]
        kk = list(range(p)) + [p + j for j in jj]
        step = np.linalg.solve(imat[np.ix_(kk, kk)], u[kk])
        stat = float(step @ u[kk])
        change = step[p:] * spread * scale[jj]
        biggest = float(change[np.argmax(np.abs(change))])
        rows_out.append((term, stat, len(jj), float(stats.chi2.sf(stat, len(jj))), biggest, float(np.exp(biggest))))
    return pd.DataFrame(rows_out, columns=["term", "statistic", "df", "p_value", "log_hr_change", "hr_ratio"])


def ph_violations(ph: pd.DataFrame, alpha: float, min_hr_ratio: float = 1.0) -> list[str]:
    """Terms of :func:`ph_test` whose PH violation is both significant and material.

    A term is flagged when ``p_value < alpha`` AND its HR changes between early and late
    follow-up by at least the factor ``min_hr_ratio`` in either direction (``hr_ratio >=
    min_hr_ratio`` or ``<= 1 / min_hr_ratio``). With n growing, every fixed departure from PH
    becomes significant (p -> 0), so the p-value alone flags ever more terms; the ratio
    converges to the true early/late change instead, so the rule then flags exactly the terms
    whose change is at least ``min_hr_ratio``. ``min_hr_ratio = 1`` is the p-value rule alone.
    The "GLOBAL" row is never returned.
    """
    if min_hr_ratio < 1:
        raise ValueError(f"ph_violations: min_hr_ratio must be >= 1, got {min_hr_ratio}")
    material = np.abs(np.log(ph["hr_ratio"].to_numpy(dtype=float))) >= np.log(min_hr_ratio) - 1e-12
    flagged = (ph["p_value"].to_numpy(dtype=float) < alpha) & material & (ph["term"] != "GLOBAL").to_numpy()
    return ph.loc[flagged, "term"].tolist()


def scaled_schoenfeld(cph, df: pd.DataFrame) -> pd.DataFrame:
    """Scaled Schoenfeld residuals, one row per event, columns = covariates plus ``time``.

    n_events * r_i @ Var(beta) with r_i the Schoenfeld residual of death i (Efron: its
    covariates minus the mean of the tied time's Efron means, as R ``residuals(fit,
    "schoenfeld")``); R ``cox.zph``'s ``y`` adds beta. Their smoothed mean against time
    estimates beta(t) - beta (flat = proportional hazards). Sorted by time.
    """
    spec = _model_spec(cph)
    names = [str(c) for c in spec["beta"].index]
    data = _CoxData(df, spec["stop"], spec["event"], names, spec["start"], spec["strata"], "scaled_schoenfeld")
    beta = spec["beta"].to_numpy(dtype=float)
    resid, times, imat = [], [], np.zeros((beta.size, beta.size))
    for rows in data.strata_rows():
        s = data.stratum(rows, beta, spec["ties"])
        resid.append(s.schoenfeld())
        times.append(s.stop[s.dead_idx])
        imat += s.information(np.ones(s.times.size))
    r = np.vstack(resid)
    out = pd.DataFrame(r.shape[0] * r @ np.linalg.inv(imat), columns=names)
    out["time"] = np.concatenate(times)
    return out.sort_values("time", kind="stable").reset_index(drop=True)


def baseline_hazard(fit: CoxFit, df: pd.DataFrame, centered: bool = True) -> pd.DataFrame:
    """Baseline cumulative hazard of a :class:`CoxFit`, as R ``basehaz(fit, centered)``.

    Per stratum, at every distinct stop time: ``strata`` (labels joined by "|", "" if none),
    ``time``, ``cumhaz``. The jump at an event time with d deaths is d / S0 (Breslow fit) or
    sum_{r<d} 1 / (S0 - r/d * S0_deaths) (Efron fit; R survfit.coxph's default for it), S0 the
    risk-set sum of exp((x - m) beta) with m = ``fit.means_`` (``centered``; R's ``fit$means``:
    0 for a column whose values all lie in {-1, 0, 1}, else the column mean) or m = 0.
    """
    data = _CoxData(df, fit.stop_col, fit.event_col, list(fit.params_.index), fit.start_col, fit.strata,
                    "baseline_hazard")
    beta = fit.params_.to_numpy(dtype=float)
    reference = fit.means_.to_numpy(dtype=float) if centered else np.zeros(beta.size)
    shift = float((reference - data.means) @ beta)  # the engine's risks are centred at data.means
    parts = []
    for rows in data.strata_rows():
        s = data.stratum(rows, beta, fit.ties)
        grid = np.unique(s.stop)
        jumps = np.zeros(grid.size)
        jumps[np.searchsorted(grid, s.times)] = s.hazard_increments() * np.exp(shift)
        parts.append(pd.DataFrame({"strata": data.strata_labels[rows[0]], "time": grid, "cumhaz": np.cumsum(jumps)}))
    return pd.concat(parts, ignore_index=True)


def cox_score_test(model, df: pd.DataFrame | None = None) -> dict:
    """R ``summary(coxph)``'s "Score (logrank) test" that all coefficients are 0.

    ``model``: a :class:`CoxFit` (its stored test) or a lifelines ``CoxPHFitter`` with the data
    ``df`` it was fitted on (Efron ties, its strata). Returns ``statistic`` (u(0)' I(0)^-1 u(0),
    chi-square), ``df`` and ``p_value``.
    """
    if isinstance(model, CoxFit):
        return dict(model.score_test)
    if df is None:
        raise ValueError("cox_score_test: pass the data the lifelines model was fitted on (df)")
    spec = _model_spec(model)
    names = [str(c) for c in spec["beta"].index]
    data = _CoxData(df, spec["stop"], spec["event"], names, spec["start"], spec["strata"], "cox_score_test")
    _, u, imat = data.derivatives(np.zeros(len(names)), spec["ties"])
    stat = _score_statistic(u, imat)
    return {"statistic": stat, "df": len(names), "p_value": float(stats.chi2.sf(stat, len(names)))}
