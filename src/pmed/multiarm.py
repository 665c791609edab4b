"""Average effects of k >= 2 treatment arms against a reference arm (generalised IPTW).

Estimands (the ATE in the analysis cohort, each non-reference arm ``a`` vs the reference
``r``): the marginal hazard ratio ``HR_a`` (weighted Cox model with one indicator per
non-reference arm, robust SE) and the difference in survival probability at a horizon
``S_a(h) - S_r(h)`` (weighted Kaplan-Meier).

Arms are coded 0..k-1 with the REFERENCE ARM = 0 (:func:`arm_codes`). Propensity scores come
from a multinomial logistic regression ``P(A = a | X)`` (:func:`fit_multinomial_propensity`);
the generalised stabilised weight of a person on arm ``a`` is ``P(A = a) / P(A = a | X)``
(Imbens 2000, Biometrika 87:706; McCaffrey et al. 2013, Stat Med 32:3388).

Missing confounders (:func:`mi_iptw`): multiple imputation by chained equations
(:mod:`pmed.imputation`, with the arm indicators, the event and the Nelson-Aalen cumulative
hazard in the imputation model), the propensity model and weights estimated WITHIN each
imputed data set, and the m estimates pooled by Rubin's rules (the "MIte" approach that
Leyrat et al. 2019, Stat Methods Med Res 28:3, found valid).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from pmed.causal import Z95, standardized_mean_difference, weighted_cox, weighted_km
from pmed.imputation import mice, nelson_aalen, rubin_pool
from pmed.parallel import resamples, run_tasks
from pmed.survival import require_events


def arm_codes(treatment: Sequence, arms: Sequence[str], reference: str) -> np.ndarray:
    """Integer code (n,) of each person's arm: the reference arm is 0, the others 1..k-1.

    Parameters
    ----------
    treatment : (n,) arm labels (cohort column ``treatment``).
    arms : all k arm labels (params ``cohort.treatment_strategies.arms`` keys), any order.
    reference : the reference arm label; must be in ``arms``.

    Codes follow :func:`arm_order` (reference first, then ``arms`` order).
    """
    order = arm_order(arms, reference)
    lab = pd.Series(np.asarray(treatment, dtype=object))
    unknown = sorted(set(lab.dropna()) - set(order))
    if lab.isna().any() or unknown:
        raise ValueError(f"treatment: labels {unknown or ['<missing>']} are not arms {order}")
    codes = lab.map({a: i for i, a in enumerate(order)}).to_numpy(int)
    absent = [order[i] for i in range(len(order)) if not (codes == i).any()]
    if absent:
        raise ValueError(f"treatment: arm(s) {absent} have no persons; every arm needs some")
    return codes


def arm_order(arms: Sequence[str], reference: str) -> list[str]:
    """Arm labels with the reference first (code 0), then the others in the given order."""
    arms = list(arms)
    if reference not in arms:
        raise KeyError(f"reference arm {reference!r} is not one of the arms {arms}")
    if len(set(arms)) != len(arms) or len(arms) < 2:
        raise ValueError(f"arms must be >= 2 distinct labels, got {arms}")
    return [reference] + [a for a in arms if a != reference]


def fit_multinomial_propensity(X: pd.DataFrame | np.ndarray, arm: np.ndarray, C: float = np.inf) -> np.ndarray:
    """Generalised propensity scores ``P(A = a | X)``, shape (n, k), from multinomial logistic.

    Parameters
    ----------
    X : (n, p) complete numeric covariates (standardised internally).
    arm : (n,) codes 0..k-1 (:func:`arm_codes`).
    C : inverse L2 penalty of scikit-learn's LogisticRegression (inf = unpenalised).
    """
    Xv = np.asarray(X, dtype=float)
    if np.isnan(Xv).any():
        raise ValueError("fit_multinomial_propensity: X has missing values; impute first")
    arm = np.asarray(arm, dtype=int)
    k = arm.max() + 1
    _require_arm_sizes(arm, Xv.shape[1])
    mu, sd = Xv.mean(0), Xv.std(0)
    sd[sd == 0] = 1.0
    model = LogisticRegression(C=C, max_iter=5000)
    with threadpool_limits(limits=1):  # small fit: threaded BLAS is slower on a shared machine
        model.fit((Xv - mu) / sd, arm)
    out = np.zeros((len(arm), k))
    out[:, model.classes_] = model.predict_proba((Xv - mu) / sd)
    return out


def _require_arm_sizes(arm: np.ndarray, n_covariates: int, labels: Sequence[str] | None = None) -> None:
    """:class:`pmed.survival.TooFewEventsError` naming the smallest arm unless every arm has
    enough persons for a multinomial propensity model of ``n_covariates`` covariates."""
    counts = np.bincount(arm, minlength=len(labels) if labels is not None else 0)
    a = int(np.argmin(counts))
    name = labels[a] if labels is not None else f"code {a}"
    require_events(f"propensity model (arm {name})", counts[a], n_covariates, what="persons")


def generalized_iptw(
    arm: np.ndarray, ps: np.ndarray, stabilized: bool = True, truncate_quantile: float | None = None
) -> np.ndarray:
    """Weights (n,) ``P(A = a_i) / ps[i, a_i]`` (numerator 1 when not ``stabilized``).

    ``truncate_quantile`` (in (0.5, 1)) caps the weights at that quantile of all weights.
    """
    arm = np.asarray(arm, dtype=int)
    ps = np.asarray(ps, dtype=float)
    if ps.ndim != 2 or ps.shape[0] != arm.size or arm.max() >= ps.shape[1]:
        raise ValueError(f"generalized_iptw: ps must be (n, k) with n = {arm.size}, got {ps.shape}")
    own = ps[np.arange(arm.size), arm]
    if not ((own > 0) & (own <= 1)).all():
        raise ValueError("generalized_iptw: propensity of the received arm must lie in (0, 1]")
    num = np.bincount(arm, minlength=ps.shape[1])[arm] / arm.size if stabilized else 1.0
    w = num / own
    if truncate_quantile is not None:
        if not 0.5 < truncate_quantile < 1:
            raise ValueError(f"truncate_quantile must be in (0.5, 1), got {truncate_quantile}")
        w = np.minimum(w, np.quantile(w, truncate_quantile))
    return w


def balance_pairs(
    X: pd.DataFrame, arm: np.ndarray, labels: Sequence[str], weights: dict[str, np.ndarray],
    threshold: float = 0.1,
) -> pd.DataFrame:
    """SMD of every covariate for each non-reference arm vs the reference, per weighting.

    Parameters
    ----------
    X : (n, p) covariates; arm : (n,) codes (0 = reference); labels : arm labels by code.
    weights : weighting name -> (n,) weights (e.g. ``{"crude": ones, "iptw": w}``).

    Returns
    -------
    DataFrame, one row per (``contrast`` "<arm> vs <reference>", ``covariate``), columns
    ``smd_<name>`` and ``imbalanced_<name>`` (|SMD| > ``threshold``) per weighting. SMDs as
    :func:`pmed.causal.standardized_mean_difference` (unweighted pooled SD of the pair).
    """
    arm = np.asarray(arm, dtype=int)
    rows = []
    for a in range(1, len(labels)):
        sel = (arm == a) | (arm == 0)
        t = (arm[sel] == a).astype(int)
        for c in X.columns:
            x = X[c].to_numpy(float)[sel]
            row = {"contrast": f"{labels[a]} vs {labels[0]}", "covariate": c}
            for name, w in weights.items():
                s = standardized_mean_difference(x, t, np.asarray(w, dtype=float)[sel])
                row[f"smd_{name}"] = s
                row[f"imbalanced_{name}"] = abs(s) > threshold
            rows.append(row)
    return pd.DataFrame(rows)


def km_by_arm(time, event, arm, weights, labels: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Weighted Kaplan-Meier curve of every arm: label -> :func:`pmed.causal.weighted_km`
    table (``time``, ``survival``, unweighted ``n_at_risk`` for :func:`pmed.privacy.release_km`)."""
    time, event, arm, w = _arrays(time, event, arm, weights)
    return {labels[a]: weighted_km(time[arm == a], event[arm == a], w[arm == a])
            for a in range(len(labels))}


def _arrays(time, event, arm, weights):
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=float)
    arm = np.asarray(arm, dtype=int)
    w = np.ones(time.size) if weights is None else np.asarray(weights, dtype=float)
    if not time.size == event.size == arm.size == w.size:
        raise ValueError("time, event, arm and weights must have the same length")
    return time, event, arm, w


def km_survival_if(time, event, weights, horizon: float) -> tuple[float, float]:
    """Weighted KM survival at ``horizon`` and its robust (influence-function) variance.

    The influence of person i on ``S(h)`` is
    ``-S(h) w_i [dN_i(T_i)/R(T_i) 1{T_i <= h} - sum_{t_j <= min(T_i, h)} d_j / R_j^2]``
    (R, d: weighted numbers at risk and deaths), treating the weights as fixed; the variance
    is the sum of squared influences (equal to Greenwood's when all weights are 1 and there
    are no ties, asymptotically). Returns ``(S(h), variance)``.
    """
    time, event, _, w = _arrays(time, event, np.zeros(np.size(time)), weights)
    km = weighted_km(time, event, w)
    tj = km["time"].to_numpy()
    keep = tj <= horizon
    s_h = float(km["survival"].to_numpy()[keep][-1]) if keep.any() else 1.0
    R = km["at_risk"].to_numpy()
    d = np.where(keep, km["events"].to_numpy(), 0.0)
    cum = np.cumsum(d / R**2)
    pos = np.searchsorted(tj, np.minimum(time, horizon), side="right") - 1
    comp = np.where(pos >= 0, cum[np.clip(pos, 0, None)], 0.0)
    jump = np.where((event == 1) & (time <= horizon),
                    1.0 / R[np.clip(np.searchsorted(tj, time), 0, tj.size - 1)], 0.0)
    infl = -s_h * w * (jump - comp)
    return s_h, float(np.sum(infl**2))


def survival_differences(time, event, arm, weights, labels: Sequence[str], horizon: float) -> pd.DataFrame:
    """Weighted KM survival at ``horizon`` per arm and differences vs the reference (code 0).

    Returns DataFrame, one row per non-reference arm: ``arm``, ``survival``,
    ``survival_reference``, ``difference``, ``variance`` (influence-function variance of
    the difference, arms independent, weights treated as fixed).
    """
    time, event, arm, w = _arrays(time, event, arm, weights)
    est = [km_survival_if(time[arm == a], event[arm == a], w[arm == a], horizon)
           for a in range(len(labels))]
    return pd.DataFrame({
        "arm": list(labels[1:]),
        "survival": [est[a][0] for a in range(1, len(labels))],
        "survival_reference": est[0][0],
        "difference": [est[a][0] - est[0][0] for a in range(1, len(labels))],
        "variance": [est[a][1] + est[0][1] for a in range(1, len(labels))],
    })


def pairwise_cox(time, event, arm, weights, labels: Sequence[str]) -> pd.DataFrame:
    """Marginal HR of every non-reference arm vs the reference: weighted Cox, robust SE.

    One Cox model ``Surv(time, event) ~ arm_<a> + ...`` (one 0/1 indicator per non-reference
    arm) with case weights and the sandwich SE (R: ``coxph(..., weights = w, robust = TRUE)``).
    Returns :func:`pmed.causal.weighted_cox`'s table indexed by ``arm_<label>``.
    """
    time, event, arm, w = _arrays(time, event, arm, weights)
    cols = [f"arm_{lab}" for lab in labels[1:]]
    df = pd.DataFrame({c: (arm == a + 1).astype(float) for a, c in enumerate(cols)})
    df["time"], df["event"] = time, event
    return weighted_cox(df, "time", "event", cols, None if weights is None else w)


def bootstrap_differences(
    X: pd.DataFrame | Sequence[pd.DataFrame], time, event, arm, labels: Sequence[str], horizon: float, n_boot: int,
    seed: int, truncate_quantile: float | None = None, n_jobs: int = 1,
) -> pd.DataFrame:
    """Percentile bootstrap 95% CI of each IPTW survival difference vs the reference.

    In every replicate persons are resampled (:func:`pmed.parallel.resamples` from ``seed``),
    the multinomial propensity model is refitted, the generalised stabilised weights
    recomputed and :func:`survival_differences` taken. ``X``: the confounders, one frame or
    the m imputed frames of :func:`mi_iptw` (``"completed_sets"``); replicate b uses frame
    b mod m and the percentiles pool all replicates ("MI Boot pooled", Schomaker & Heumann
    2018, Stat Med 37:2252, doi:10.1002/sim.7654), so the CI carries the imputation variance.
    Replicates run in ``n_jobs`` processes with one BLAS thread each (the result does not
    depend on ``n_jobs``). Returns DataFrame ``arm``, ``ci_low``, ``ci_high``.
    """
    time, event, arm, _ = _arrays(time, event, arm, None)
    if n_boot < 2:
        raise ValueError(f"bootstrap_differences: n_boot must be >= 2, got {n_boot}")
    sets = [X] if isinstance(X, pd.DataFrame) else list(X)
    k, n = len(labels), arm.size

    def replicate(item: tuple[np.ndarray, pd.DataFrame]) -> np.ndarray:
        idx, x = item
        a = arm[idx]
        if np.bincount(a, minlength=k).min() == 0:  # an arm absent: replicate left out
            return np.full(k - 1, np.nan)
        w = generalized_iptw(a, fit_multinomial_propensity(x.iloc[idx], a), truncate_quantile=truncate_quantile)
        return survival_differences(time[idx], event[idx], a, w, labels, horizon)["difference"].to_numpy()

    items = ((idx, sets[b % len(sets)]) for b, idx in enumerate(resamples(n, n_boot, seed)))
    reps = np.array(run_tasks(replicate, items, n_jobs), dtype=float)
    lo, hi = np.nanquantile(reps, [0.025, 0.975], axis=0)
    return pd.DataFrame({"arm": list(labels[1:]), "ci_low": lo, "ci_high": hi})


def mi_iptw(
    df: pd.DataFrame, covariates: Sequence[str], arm: np.ndarray, labels: Sequence[str],
    horizon: float, m: int, seed: int, max_iter: int = 5, truncate_quantile: float | None = None,
    time_col: str = "time_days", event_col: str = "event", n_jobs: int = 1,
) -> dict:
    """IPTW effects of every arm vs the reference under multiple imputation (Rubin's rules).

    For each of ``m`` data sets imputed by :func:`pmed.imputation.mice` (imputation model:
    ``covariates`` + the arm indicators, the event and its Nelson-Aalen cumulative hazard):
    multinomial propensity, generalised stabilised weights, :func:`pairwise_cox` (log-HR,
    robust variance) and :func:`survival_differences` (influence-function variance). The m
    estimates are pooled by :func:`pmed.imputation.rubin_pool`. The m imputations and their
    analyses run in ``n_jobs`` processes with one BLAS thread each
    (:func:`pmed.parallel.run_tasks`; the result does not depend on ``n_jobs``).

    Returns
    -------
    dict: ``log_hr`` and ``survival_difference`` (pooled tables, ``term`` = arm label, with
    ``estimate``, ``se``, ``ci_low``, ``ci_high``, ``fmi``; the HR table also ``hr``,
    ``hr_ci_low``, ``hr_ci_high``), ``weights`` (m, n), ``ps`` (m, n, k), ``completed_sets``
    (the m completed ``covariates`` frames, index of ``df``) and ``completed`` (the first).
    """
    missing = [c for c in [*covariates, time_col, event_col] if c not in df.columns]
    if missing:
        raise KeyError(f"mi_iptw: cohort lacks column(s) {missing}")
    arm = np.asarray(arm, dtype=int)
    _require_arm_sizes(arm, len(covariates), labels)  # before the imputations (minutes)
    require_events("IPTW Cox model (arms vs the reference)", df[event_col].sum(), len(labels) - 1)
    data = df[list(covariates)].apply(pd.to_numeric, errors="raise").astype(float).reset_index(drop=True)
    aux = pd.DataFrame({f"_arm{a}": (arm == a).astype(float) for a in range(1, len(labels))})
    time = df[time_col].to_numpy(float)
    event = df[event_col].to_numpy(float)
    aux["_event"] = event
    aux["_cumhaz"] = nelson_aalen(time, event)
    data = pd.concat([data, aux], axis=1)
    incomplete = data[list(covariates)].isna().any().any()

    def analyse(i: int):  # imputation i (seed + i, as mice(m, seed)) and its IPTW analysis
        comp = (mice(data, list(covariates), 1, seed + i, max_iter=max_iter, auxiliary=list(aux.columns))[0]
                if incomplete else data)
        ps = fit_multinomial_propensity(comp[list(covariates)], arm)
        w = generalized_iptw(arm, ps, truncate_quantile=truncate_quantile)
        cox = pairwise_cox(time, event, arm, w, labels)
        rd = survival_differences(time, event, arm, w, labels, horizon)
        return (cox["coef"].to_numpy(), cox["se"].to_numpy() ** 2, rd["difference"].to_numpy(),
                rd["variance"].to_numpy(), w, ps, comp[list(covariates)].set_axis(df.index))

    results = run_tasks(analyse, range(m if incomplete else 1), n_jobs)
    hr_est, hr_var, rd_est, rd_var, ws, pss, sets = (list(x) for x in zip(*results, strict=True))
    if not incomplete:  # m identical analyses of the complete data
        ws, pss, sets = ws * m, pss * m, sets * m
    names = list(labels[1:])
    if m == 1 or not incomplete:
        pooled_hr = _single(hr_est[0], hr_var[0], names)
        pooled_rd = _single(rd_est[0], rd_var[0], names)
    else:
        pooled_hr = rubin_pool(np.array(hr_est), np.array(hr_var), names=names)
        pooled_rd = rubin_pool(np.array(rd_est), np.array(rd_var), names=names)
    pooled_hr["hr"] = np.exp(pooled_hr["estimate"])
    pooled_hr["hr_ci_low"] = np.exp(pooled_hr["ci_low"])
    pooled_hr["hr_ci_high"] = np.exp(pooled_hr["ci_high"])
    return {"log_hr": pooled_hr, "survival_difference": pooled_rd, "weights": np.array(ws), "ps": np.array(pss),
            "completed": sets[0], "completed_sets": sets}


def _single(est: np.ndarray, var: np.ndarray, names: list[str]) -> pd.DataFrame:
    """One complete-data analysis in :func:`pmed.imputation.rubin_pool`'s layout (normal CI)."""
    se = np.sqrt(var)
    return pd.DataFrame({"term": names, "estimate": est, "se": se, "ci_low": est - Z95 * se,
                         "ci_high": est + Z95 * se, "fmi": 0.0})
