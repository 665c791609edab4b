"""Time-to-event analysis: Kaplan-Meier, log-rank, Cox PH (single and multiply imputed), PH checks.

Conventions: times are in days (any unit works, it is carried through unchanged); ``event`` is
1 for the event of interest (death) and 0 for censoring. Cox models use lifelines'
``CoxPHFitter`` (Efron ties, as R ``survival::coxph``); Kaplan-Meier confidence intervals are
Greenwood on the log(-log) scale (R ``survfit(..., conf.type = "log-log")``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test, proportional_hazard_test
from lifelines.utils import median_survival_times
from scipy import stats

from pmed.imputation import rubin_pool

__all__ = [
    "check_survival_data",
    "kaplan_meier",
    "median_survival",
    "numbers_at_risk",
    "logrank",
    "add_interactions",
    "fit_cox",
    "cox_table",
    "pool_models",
    "fit_cox_mi",
    "require_columns",
    "true_log_hazard_ratios",
    "truth_check",
    "predict_survival",
    "ph_test",
    "scaled_schoenfeld",
    "fit_ph_remedy",
]


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


def kaplan_meier(time, event, alpha: float = 0.05) -> pd.DataFrame:
    """Kaplan-Meier estimate with pointwise (1 - alpha) log(-log) Greenwood CI.

    Parameters
    ----------
    time, event : array-like, shape (n,)
        Follow-up time and event indicator (1 = event).
    alpha : float
        Two-sided level of the confidence band.

    Returns
    -------
    DataFrame with one row per distinct time (including 0): ``time``, ``survival``,
    ``ci_low``, ``ci_high``, ``n_at_risk`` (at risk just before ``time``), ``n_events``,
    ``n_censored``.
    """
    t, e = check_survival_data(time, event, "kaplan_meier")
    kmf = KaplanMeierFitter(alpha=alpha).fit(t, e)
    ci = kmf.confidence_interval_survival_function_
    table = kmf.event_table
    out = pd.DataFrame(
        {
            "time": kmf.survival_function_.index.to_numpy(dtype=float),
            "survival": kmf.survival_function_.iloc[:, 0].to_numpy(),
            "ci_low": ci.iloc[:, 0].to_numpy(),
            "ci_high": ci.iloc[:, 1].to_numpy(),
            "n_at_risk": table["at_risk"].to_numpy(dtype=int),
            "n_events": table["observed"].to_numpy(dtype=int),
            "n_censored": table["censored"].to_numpy(dtype=int),
        }
    )
    return out


def median_survival(time, event, alpha: float = 0.05) -> dict[str, float]:
    """Median survival time with its (1 - alpha) CI from the KM log(-log) band.

    Returns ``{"estimate", "ci_low", "ci_high"}`` in the unit of ``time``; a bound is
    ``inf`` when the survival curve (or its band) never drops to 0.5 during follow-up.
    """
    t, e = check_survival_data(time, event, "median_survival")
    kmf = KaplanMeierFitter(alpha=alpha).fit(t, e)
    ci = median_survival_times(kmf.confidence_interval_survival_function_)
    return {
        "estimate": float(kmf.median_survival_time_),
        "ci_low": float(ci.iloc[0, 0]),
        "ci_high": float(ci.iloc[0, 1]),
    }


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


def logrank(time, event, group) -> dict:
    """Log-rank (Mantel-Haenszel) test of equal survival across groups (R ``survdiff``, rho=0).

    Returns ``{"statistic", "df", "p_value", "groups"}``, where ``groups`` is a DataFrame
    indexed by group label with ``n``, ``observed`` and ``expected`` event counts.
    """
    t, e = check_survival_data(time, event, "logrank")
    g = pd.Series(np.asarray(group)).astype(str).to_numpy()
    labels = np.unique(g)
    if labels.size < 2:
        raise ValueError(f"logrank: need at least 2 groups, got {labels.tolist()}")
    res = multivariate_logrank_test(t, g, e)
    # Expected events under H0: sum over event times of d_j * n_gj / n_j.
    event_times = np.unique(t[e == 1])
    at_risk = (t[None, :] >= event_times[:, None]).astype(float)
    deaths = ((t[None, :] == event_times[:, None]) & (e[None, :] == 1)).astype(float)
    d_total = deaths.sum(axis=1)
    n_total = at_risk.sum(axis=1)
    groups = pd.DataFrame(
        {
            "n": [int(np.sum(g == lab)) for lab in labels],
            "observed": [int(e[g == lab].sum()) for lab in labels],
            "expected": [float(np.sum(d_total * at_risk[:, g == lab].sum(axis=1) / n_total)) for lab in labels],
        },
        index=labels,
    )
    return {
        "statistic": float(res.test_statistic),
        "df": int(labels.size - 1),
        "p_value": float(res.p_value),
        "groups": groups,
    }


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
    if frame[event_col].sum() == 0:
        raise ValueError("Cox model: no events in the (complete-case) data")
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
) -> pd.DataFrame:
    """Cox model fitted on each completed data set and pooled with Rubin's rules.

    Returns the table of :func:`pool_models` (one row per term).
    """
    if len(imputations) < 2:
        raise ValueError(f"fit_cox_mi: need >= 2 imputed data sets, got {len(imputations)}")
    models = []
    for data in imputations:
        if data[list(covariates)].isna().any().any():
            raise ValueError("fit_cox_mi: an imputed data set still has missing covariate values")
        models.append(fit_cox(data, duration_col, event_col, covariates, strata))
    return pool_models(models, alpha=alpha)


def require_columns(df: pd.DataFrame, columns: Sequence[str], table: str) -> None:
    """KeyError naming ``table`` and the absent columns unless all ``columns`` are in ``df``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{table}: missing column(s) {missing}; expected them per the cohort contract")


def true_log_hazard_ratios(ground_truth: dict) -> dict[str, float]:
    """The true log-HR mapping inside a demo ``ground_truth.json`` document.

    It is the (first, depth-first) dict of numbers that has the key ``"treated:pdl1_pct"``
    (cohort column names -> log-HR per unit). KeyError if there is none.
    """
    stack = [ground_truth]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            if "treated:pdl1_pct" in node and all(isinstance(v, (int, float)) for v in node.values()):
                return {str(k): float(v) for k, v in node.items()}
            stack.extend(node.values())
    raise KeyError("ground_truth.json: no mapping of log hazard ratios with key 'treated:pdl1_pct'")


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
    cols = list(cph.params_.index) + list(cph.strata or [])
    require_columns(df, cols, "predict_survival")
    surv = cph.predict_survival_function(df[cols].astype(float), times=list(times))
    return surv.to_numpy().T


def ph_test(cph: CoxPHFitter, df: pd.DataFrame, time_transform: str = "km") -> pd.DataFrame:
    """Scaled-Schoenfeld-residual test of proportional hazards per covariate.

    Grambsch-Therneau score test of a linear trend of the scaled residuals in g(t), with
    g = KM transform by default (as R ``cox.zph``'s default ``transform = "km"``).
    ``df`` is the data the model was fitted on. Returns ``term``, ``statistic`` (chi-square,
    1 df) and ``p_value``.
    """
    frame = df[[cph.duration_col, cph.event_col, *cph.params_.index, *(cph.strata or [])]].dropna()
    res = proportional_hazard_test(cph, frame, time_transform=time_transform)
    summ = res.summary
    return pd.DataFrame(
        {
            "term": [str(i) for i in summ.index],
            "statistic": summ["test_statistic"].to_numpy(dtype=float),
            "p_value": summ["p"].to_numpy(dtype=float),
        }
    )


def scaled_schoenfeld(cph: CoxPHFitter, df: pd.DataFrame) -> pd.DataFrame:
    """Scaled Schoenfeld residuals, one row per event, columns = covariates plus ``time``.

    Their smoothed mean against time estimates beta(t) - beta (flat = proportional hazards).
    """
    frame = df[[cph.duration_col, cph.event_col, *cph.params_.index, *(cph.strata or [])]].dropna()
    resid = cph.compute_residuals(frame, kind="scaled_schoenfeld")
    out = resid.copy()
    out["time"] = frame.loc[resid.index, cph.duration_col].to_numpy(dtype=float)
    return out.sort_values("time").reset_index(drop=True)


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
