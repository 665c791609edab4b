"""Average treatment effect on overall survival: propensity score, IPTW, matching, balance.

The estimand is the average treatment effect (ATE) in the analysis cohort, on two scales:
the marginal hazard ratio (weighted Cox model, robust SE) and the difference in survival
probability at a horizon (weighted Kaplan-Meier, bootstrap CI). Treatment is coded
``treated = 1`` (immunotherapy) vs ``0`` (platinum chemotherapy).

Missing covariates (rule used by :func:`design_matrix`): single imputation of each missing
value by the column median (mode for 0/1 columns), plus one 0/1 missing indicator per
column that has any missing value. This keeps every patient in the propensity model and
lets missingness itself predict treatment.
"""

from __future__ import annotations

import warnings
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.exceptions import StatisticalWarning
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression

from pmed.parallel import resamples, run_tasks
from pmed.survival import require_events

Z95 = 1.959963984540054


def _check_columns(df: pd.DataFrame, columns: Sequence[str], table: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{table}: missing column(s) {missing}; has {list(df.columns)}")


def _check_binary(treated: np.ndarray, name: str = "treated") -> np.ndarray:
    arr = np.asarray(treated)
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1 values, got {np.unique(arr)[:5]}")
    if arr.min() == arr.max():
        raise ValueError(f"{name} has a single group ({arr[0]}); both 0 and 1 are needed")
    return arr.astype(int)


def design_matrix(df: pd.DataFrame, covariates: Sequence[str]) -> pd.DataFrame:
    """Numeric covariate matrix with median/mode imputation and missing indicators.

    Parameters
    ----------
    df : DataFrame, one row per person, holding ``covariates``.
    covariates : cohort column names (numeric).

    Returns
    -------
    DataFrame, shape (n, p + m): the imputed covariates, then ``<col>_missing`` (0/1) for
    each of the m covariates with any missing value. Index of ``df``.
    """
    _check_columns(df, covariates, "design_matrix (cohort)")
    out = {}
    indicators = {}
    for col in covariates:
        x = pd.to_numeric(df[col], errors="raise").astype(float)
        miss = x.isna()
        if miss.all():
            raise ValueError(f"design_matrix: column {col!r} is entirely missing")
        if miss.any():
            observed = x[~miss]
            is_binary = observed.isin((0.0, 1.0)).all()
            fill = float(observed.mode().iloc[0]) if is_binary else float(observed.median())
            x = x.fillna(fill)
            indicators[f"{col}_missing"] = miss.astype(float)
        out[col] = x
    out.update(indicators)
    return pd.DataFrame(out, index=df.index)


def fit_propensity(X: pd.DataFrame, treated: np.ndarray) -> np.ndarray:
    """Propensity scores P(treated = 1 | X) from an unpenalised logistic regression.

    Parameters
    ----------
    X : DataFrame (n, p), complete numeric covariates (see :func:`design_matrix`).
    treated : array (n,) of 0/1.

    Returns
    -------
    ndarray (n,) of probabilities in (0, 1).
    """
    t = _check_binary(treated)
    Xv = np.asarray(X, dtype=float)
    if np.isnan(Xv).any():
        raise ValueError("fit_propensity: X has missing values; build it with design_matrix()")
    require_events("propensity model (the smaller of treated and untreated)",
                   min(t.sum(), t.size - t.sum()), Xv.shape[1], what="persons")
    mu, sd = Xv.mean(0), Xv.std(0)
    sd[sd == 0] = 1.0
    model = LogisticRegression(C=np.inf, max_iter=5000)
    model.fit((Xv - mu) / sd, t)
    return model.predict_proba((Xv - mu) / sd)[:, 1]


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p))."""
    p = np.asarray(p, dtype=float)
    return np.log(p) - np.log1p(-p)


def iptw_weights(
    treated: np.ndarray,
    ps: np.ndarray,
    stabilized: bool = True,
    trim: float = 0.0,
    truncate_quantile: float | None = None,
) -> np.ndarray:
    """Inverse probability of treatment weights for the ATE.

    Weights are ``P(T=1)/ps`` for the treated and ``P(T=0)/(1-ps)`` for the controls when
    ``stabilized`` (numerators 1 otherwise). Then, in this order:

    - trimming: persons with ``ps`` outside ``[trim, 1 - trim]`` get weight 0 (excluded);
    - truncation: weights above the ``truncate_quantile`` quantile (or below the
      ``1 - truncate_quantile`` quantile) of the kept persons' weights are set to it.

    The stabilising marginal P(T=1) is computed over all persons before trimming.

    Returns
    -------
    ndarray (n,) of non-negative weights.
    """
    t = _check_binary(treated)
    ps = np.asarray(ps, dtype=float)
    if ps.shape != t.shape or not ((ps > 0) & (ps < 1)).all():
        raise ValueError("iptw_weights: ps must have the shape of treated and lie in (0, 1)")
    if not 0 <= trim < 0.5:
        raise ValueError(f"iptw_weights: trim must be in [0, 0.5), got {trim}")
    p1 = t.mean() if stabilized else 1.0
    p0 = 1 - t.mean() if stabilized else 1.0
    w = np.where(t == 1, p1 / ps, p0 / (1 - ps))
    kept = (ps >= trim) & (ps <= 1 - trim)
    w = np.where(kept, w, 0.0)
    if truncate_quantile is not None:
        if not 0.5 < truncate_quantile < 1:
            raise ValueError(f"truncate_quantile must be in (0.5, 1), got {truncate_quantile}")
        lo, hi = np.quantile(w[kept], [1 - truncate_quantile, truncate_quantile])
        w = np.where(kept, np.clip(w, lo, hi), 0.0)
    return w


def match_nearest(
    logit_ps: np.ndarray, treated: np.ndarray, caliper_sd: float = 0.2, seed: int = 0
) -> np.ndarray:
    """Greedy 1:1 nearest-neighbour matching on the logit PS, without replacement.

    Treated persons are taken in a random (seeded) order; each gets the closest unused
    control if within ``caliper_sd`` x SD(logit PS) (SD over all persons), else stays
    unmatched. Among equally close controls the one first in row order is taken.

    The controls are sorted by score once; the unused ones nearest a score are found with
    two "next unused to the right / left" union-find arrays, so a match costs O(log n)
    (amortised) instead of a scan of all controls: O(n log n) in total.

    Returns
    -------
    ndarray (k, 2) of row positions (treated, control) of the k matched pairs.
    """
    t = _check_binary(treated)
    lp = np.asarray(logit_ps, dtype=float)
    caliper = caliper_sd * lp.std(ddof=1)
    treated_idx = np.flatnonzero(t == 1)
    control_idx = np.flatnonzero(t == 0)
    order = np.lexsort((control_idx, lp[control_idx]))  # by score, then row
    values = lp[control_idx][order]
    rows = control_idx[order]
    n_c = values.size
    val, row = values.tolist(), rows.tolist()
    right = list(range(n_c + 1))  # right[k]: a later-or-equal sorted position, n_c = none
    left = list(range(n_c + 1))  # left[k + 1]: an earlier-or-equal sorted position + 1, 0 = none

    def find(parent, k):
        root = k
        while parent[root] != root:
            root = parent[root]
        while parent[k] != root:
            parent[k], k = root, parent[k]
        return root

    def first_unused_of_value(v):  # unused control with score v lowest in row order
        return find(right, bisect_left(val, v))

    rng = np.random.default_rng(seed)
    pairs = []
    for i in rng.permutation(treated_idx).tolist():
        x = float(lp[i])
        p = bisect_left(val, x)
        best, best_d = None, np.inf
        k = find(right, p)  # scores >= x, increasing distance (ties in distance: all of them)
        while k < n_c:
            d = abs(val[k] - x)
            if d > best_d:
                break
            if d < best_d or row[k] < row[best]:
                best, best_d = k, d
            k = find(right, bisect_right(val, val[k]))
        k = find(left, p) - 1  # scores < x, decreasing
        while k >= 0:
            d = abs(val[k] - x)
            if d > best_d:
                break
            first = first_unused_of_value(val[k])
            if d < best_d or row[first] < row[best]:
                best, best_d = first, d
            k = find(left, bisect_left(val, val[k])) - 1
        if best is not None and best_d <= caliper:
            right[best], left[best + 1] = best + 1, best
            pairs.append((i, row[best]))
    return np.array(pairs, dtype=int).reshape(-1, 2)


def matching_weights(pairs: np.ndarray, n: int) -> np.ndarray:
    """Weights (n,) equal to 1 for persons in a matched pair, 0 otherwise."""
    w = np.zeros(n)
    w[pairs.ravel()] = 1.0
    return w


def pair_ids(pairs: np.ndarray, n: int) -> np.ndarray:
    """Pair number (0..k-1) of each of the n persons, -1 for the unmatched (cluster ids)."""
    ids = np.full(n, -1)
    ids[pairs[:, 0]] = np.arange(len(pairs))
    ids[pairs[:, 1]] = np.arange(len(pairs))
    return ids


def _weighted_mean_var(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    mean = np.sum(w * x) / np.sum(w)
    var = np.sum(w * (x - mean) ** 2) / np.sum(w)
    return float(mean), float(var)


def standardized_mean_difference(
    x: np.ndarray, treated: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """SMD of one covariate: (mean_1 - mean_0) / sqrt((var_1 + var_0) / 2).

    Means use ``weights``; the denominator always uses the UNWEIGHTED group variances
    (population form, divisor n), so that before/after SMDs share one scale (as cobalt's
    default). Returns 0 when the denominator is 0 and the means agree.
    """
    t = _check_binary(treated)
    x = np.asarray(x, dtype=float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    m1, _ = _weighted_mean_var(x[t == 1], w[t == 1])
    m0, _ = _weighted_mean_var(x[t == 0], w[t == 0])
    _, v1 = _weighted_mean_var(x[t == 1], np.ones((t == 1).sum()))
    _, v0 = _weighted_mean_var(x[t == 0], np.ones((t == 0).sum()))
    denom = np.sqrt((v1 + v0) / 2)
    if denom == 0:
        return 0.0 if np.isclose(m1, m0) else float(np.sign(m1 - m0) * np.inf)
    return float((m1 - m0) / denom)


def balance_table(
    X: pd.DataFrame, treated: np.ndarray, weights: dict[str, np.ndarray], threshold: float = 0.1
) -> pd.DataFrame:
    """SMD of every column of ``X`` under each weighting in ``weights`` (name -> (n,) array).

    Returns
    -------
    DataFrame: one row per covariate, column ``smd_<name>`` per weighting, and
    ``imbalanced_<name>`` (|SMD| > ``threshold``).
    """
    rows = {}
    for name, w in weights.items():
        rows[f"smd_{name}"] = [
            standardized_mean_difference(X[c].to_numpy(), treated, w) for c in X.columns
        ]
        rows[f"imbalanced_{name}"] = [abs(s) > threshold for s in rows[f"smd_{name}"]]
    out = pd.DataFrame(rows, index=pd.Index(X.columns, name="covariate"))
    return out.reset_index()


def weighted_km(time: np.ndarray, event: np.ndarray, weights: np.ndarray | None = None) -> pd.DataFrame:
    """Weighted Kaplan-Meier estimate.

    Parameters
    ----------
    time : (n,) follow-up times (days); event : (n,) 0/1; weights : (n,) >= 0 (default 1).

    Returns
    -------
    DataFrame with one row per distinct time (ascending): ``time``, ``at_risk`` (weighted),
    ``events`` (weighted), ``survival``, ``n_at_risk`` (unweighted persons at risk, for
    :func:`pmed.privacy.release_km`).
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=float)
    w = np.ones_like(time) if weights is None else np.asarray(weights, dtype=float)
    if np.isnan(time).any() or (time < 0).any():
        raise ValueError("weighted_km: time must be non-negative and not missing")
    keep = w > 0
    time, event, w = time[keep], event[keep], w[keep]
    order = np.argsort(time, kind="stable")
    time, event, w = time[order], event[order], w[order]
    uniq, first = np.unique(time, return_index=True)
    d = np.add.reduceat(w * event, first)
    removed = np.add.reduceat(w, first)
    at_risk = removed[::-1].cumsum()[::-1]
    n_at_risk = np.diff(np.append(first, len(time)))[::-1].cumsum()[::-1]
    surv = np.cumprod(1 - d / at_risk)
    return pd.DataFrame({"time": uniq, "at_risk": at_risk, "events": d, "survival": surv,
                         "n_at_risk": n_at_risk})


def survival_at(km: pd.DataFrame, horizon: float) -> float:
    """S(horizon) from a :func:`weighted_km` table (right-continuous step function)."""
    before = km["time"].to_numpy() <= horizon
    return float(km["survival"].to_numpy()[before][-1]) if before.any() else 1.0


def risk_difference(
    time: np.ndarray, event: np.ndarray, treated: np.ndarray, weights: np.ndarray, horizon: float
) -> dict:
    """Survival at ``horizon`` by group from weighted KM, and their difference (1 minus 0).

    Returns ``{"survival_treated", "survival_control", "difference"}`` (probabilities).
    """
    t = _check_binary(treated)
    w = np.asarray(weights, dtype=float)
    s1 = survival_at(weighted_km(time[t == 1], event[t == 1], w[t == 1]), horizon)
    s0 = survival_at(weighted_km(time[t == 0], event[t == 0], w[t == 0]), horizon)
    return {"survival_treated": s1, "survival_control": s0, "difference": s1 - s0}


def cox_score_residuals(time, event, X, beta, weights=None) -> np.ndarray:
    """Efron score residuals of a (weighted) Cox model, shape (n, p), in O(n p) time.

    Per person i (unweighted, as R ``residuals(coxph, "score")`` with ties = "efron"):
    ``delta_i (x_i - xbar_i) - sum over death times t <= T_i of r_i dLambda_t (x_i - xbar_t)``,
    where the d tied deaths at a time are split into d Efron steps (step j removes the
    fraction j/d of the dying persons' weighted risk from the risk set, and the dying
    persons take part in step j with that fraction removed). ``r_i = exp(x_i beta)``.
    Risk-set sums are reverse cumulative sums over persons sorted by time and the per-time
    terms are cumulated over death times, so no person-by-time matrix is formed.
    ``sum_i w_i resid_i`` is the score, 0 at the maximum of the weighted Efron likelihood.

    Parameters
    ----------
    time, event : (n,) follow-up and 0/1; X : (n, p) covariates; beta : (p,) log-HRs;
    weights : (n,) case weights > 0 (default 1).
    """
    t = np.asarray(time, dtype=float)
    d = np.asarray(event).astype(bool)
    X = np.asarray(X, dtype=float).reshape(t.size, -1)
    w = np.ones(t.size) if weights is None else np.asarray(weights, dtype=float)
    order = np.argsort(t, kind="stable")
    ts, ds, Xs, ws = t[order], d[order], X[order], w[order]
    r = np.exp((Xs - Xs.mean(0)) @ np.asarray(beta, dtype=float))  # centring cancels in every ratio
    wr = ws * r
    c0 = np.cumsum(wr[::-1])[::-1]  # risk-set sums from each sorted position on
    c1 = np.cumsum((wr[:, None] * Xs)[::-1], axis=0)[::-1]
    death_times, first_death, n_deaths = np.unique(ts[ds], return_index=True, return_counts=True)
    # one entry per death (sorted), j = its Efron step 0..d-1 within its time
    k = np.repeat(np.arange(death_times.size), n_deaths)
    frac = (np.arange(k.size) - np.repeat(first_death, n_deaths)) / n_deaths[k]
    at = np.searchsorted(ts, death_times, side="left")
    e0 = np.add.reduceat(wr[ds], first_death)  # dying persons' weighted risk per time
    e1 = np.add.reduceat(wr[ds][:, None] * Xs[ds], first_death, axis=0)
    mean_w = np.add.reduceat(ws[ds], first_death) / n_deaths
    denom = c0[at][k] - frac * e0[k]
    h = mean_w[k] / denom  # hazard increment of each Efron step
    xbar = (c1[at][k] - frac[:, None] * e1[k]) / denom[:, None]
    H, G = np.add.reduceat(h, first_death), np.add.reduceat(h[:, None] * xbar, first_death, axis=0)
    H_dead = np.add.reduceat((1 - frac) * h, first_death)
    G_dead = np.add.reduceat(((1 - frac) * h)[:, None] * xbar, first_death, axis=0)
    M = np.add.reduceat(xbar, first_death, axis=0) / n_deaths[:, None]
    cum_H, cum_G = np.r_[0.0, np.cumsum(H)], np.vstack([np.zeros(X.shape[1]), np.cumsum(G, axis=0)])
    # death times before T_i (plus T_i itself for a censoring there); deaths add their own time
    m = np.where(ds, np.searchsorted(death_times, ts, "left"), np.searchsorted(death_times, ts, "right"))
    resid = -r[:, None] * (Xs * cum_H[m][:, None] - cum_G[m])
    i = np.flatnonzero(ds)
    kd = m[i]
    resid[i] += (Xs[i] - M[kd]) - r[i, None] * (Xs[i] * H_dead[kd][:, None] - G_dead[kd])
    out = np.empty_like(resid)
    out[order] = resid
    return out


def weighted_cox(
    df: pd.DataFrame,
    duration_col: str,
    event_col: str,
    covariates: Sequence[str],
    weights: np.ndarray | None = None,
    cluster: np.ndarray | None = None,
) -> pd.DataFrame:
    """Cox PH model (Efron ties) with optional case weights and robust (sandwich) SE.

    Equivalent R call: ``coxph(Surv(time, event) ~ covariates, weights = w, robust = TRUE)``
    (``+ cluster(id)`` when ``cluster`` is given, e.g. matched-pair ids, so the sandwich sums
    score residuals within clusters). With neither weights nor cluster the model-based SE is
    returned. Rows with weight 0 are dropped. The coefficients come from lifelines; the
    sandwich ``D'D`` with ``D = (w x score residuals) V`` (summed within clusters; V the
    model-based variance) uses :func:`cox_score_residuals`, O(n p).

    Returns
    -------
    DataFrame indexed by covariate: ``coef`` (log-HR), ``se``, ``hr``, ``ci_low``,
    ``ci_high`` (95% CI of the HR), ``p``.
    """
    _check_columns(df, [duration_col, event_col, *covariates], "weighted_cox")
    data = df[[duration_col, event_col, *covariates]].copy()
    robust = weights is not None or cluster is not None
    w = np.ones(len(data)) if weights is None else np.asarray(weights, dtype=float)
    groups = np.arange(len(data)) if cluster is None else np.asarray(cluster)
    keep = w > 0
    data, w, groups = data[keep], w[keep], groups[keep]
    require_events("weighted Cox model", data[event_col].sum(), len(covariates))
    cph = CoxPHFitter()
    with warnings.catch_warnings():  # non-integer weights: lifelines warns that its SE is naive
        warnings.simplefilter("ignore", StatisticalWarning)
        cph.fit(data.assign(_w=w), duration_col=duration_col, event_col=event_col, weights_col="_w")
    coef = cph.params_.to_numpy()
    V = cph.variance_matrix_.to_numpy()
    if robust:
        resid = cox_score_residuals(data[duration_col], data[event_col], data[list(covariates)], coef, w)
        D = pd.DataFrame((w[:, None] * resid) @ V).groupby(groups).sum().to_numpy()
        V = D.T @ D
    se = np.sqrt(np.diag(V))
    return pd.DataFrame(
        {
            "coef": coef,
            "se": se,
            "hr": np.exp(coef),
            "ci_low": np.exp(coef - Z95 * se),
            "ci_high": np.exp(coef + Z95 * se),
            "p": 2 * norm.sf(np.abs(coef / se)),
        },
        index=pd.Index(list(covariates), name="covariate"),
    )


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float], n: int, n_boot: int, seed: int, level: float = 0.95,
    n_jobs: int = 1,
) -> tuple[float, float, np.ndarray]:
    """Percentile bootstrap CI of ``statistic(rows)`` where ``rows`` are resampled positions.

    ``statistic`` receives an int array (n,) of row positions drawn with replacement
    (:func:`pmed.parallel.resamples` from ``seed``); replicates run in ``n_jobs`` processes
    with one BLAS thread each, so the result does not depend on ``n_jobs``.
    Returns (ci_low, ci_high, replicate values).
    """
    if n_boot < 2:
        raise ValueError(f"bootstrap_ci: n_boot must be >= 2, got {n_boot}")
    reps = np.array(run_tasks(statistic, resamples(n, n_boot, seed), n_jobs), dtype=float)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return float(lo), float(hi), reps


def hr_to_rr(hr: float) -> float:
    """Approximate risk ratio for a hazard ratio of a common outcome (VanderWeele 2017).

    RR = (1 - 0.5**sqrt(HR)) / (1 - 0.5**sqrt(1/HR)).
    """
    return (1 - 0.5 ** np.sqrt(hr)) / (1 - 0.5 ** np.sqrt(1 / hr))


def e_value(estimate: float, ci_low: float, ci_high: float, scale: str = "rr") -> dict:
    """E-value of a point estimate and of the CI limit nearest the null.

    VanderWeele & Ding (2017), Ann Intern Med 167:268: for a risk ratio RR >= 1,
    E = RR + sqrt(RR (RR - 1)); for RR < 1 use 1/RR. The CI E-value is that of the limit
    closer to 1, or 1 if the CI includes 1. ``scale="hr_common"`` first converts hazard
    ratios of a common outcome (> 15% by end of follow-up) with :func:`hr_to_rr`;
    ``scale="rr"`` (or a rare-outcome HR) uses the values as risk ratios.

    Returns ``{"estimate": E, "ci": E_ci}``.
    """
    if scale not in ("rr", "hr_common"):
        raise ValueError(f"e_value: scale must be 'rr' or 'hr_common', got {scale!r}")
    vals = np.array([estimate, ci_low, ci_high], dtype=float)
    if (vals <= 0).any() or not ci_low <= estimate <= ci_high:
        raise ValueError(f"e_value: need 0 < ci_low <= estimate <= ci_high, got {vals}")
    if scale == "hr_common":
        vals = hr_to_rr(vals)
    est, lo, hi = vals

    def _e(rr: float) -> float:
        rr = 1 / rr if rr < 1 else rr
        return float(rr + np.sqrt(rr * (rr - 1)))

    if lo <= 1 <= hi:
        e_ci = 1.0
    else:
        e_ci = _e(lo) if est > 1 else _e(hi)
    return {"estimate": _e(est), "ci": e_ci}


def bootstrap_iptw_difference(
    X: pd.DataFrame,
    time: np.ndarray,
    event: np.ndarray,
    treated: np.ndarray,
    horizon: float,
    n_boot: int,
    seed: int,
    trim: float = 0.0,
    truncate_quantile: float | None = None,
    n_jobs: int = 1,
) -> tuple[float, float, np.ndarray]:
    """Percentile bootstrap 95% CI of the IPTW survival difference at ``horizon``.

    In every replicate persons are resampled, the propensity model is refitted on the
    resampled ``X`` (:func:`fit_propensity`), stabilised weights are recomputed
    (:func:`iptw_weights` with ``trim`` and ``truncate_quantile``) and
    :func:`risk_difference` is taken.

    Parameters
    ----------
    X : DataFrame (n, p), design matrix (:func:`design_matrix`).
    time : (n,) days; event : (n,) 1 = death; treated : (n,) 1 = immunotherapy.
    horizon : days. n_boot : replicates. seed : seed of the resampling.
    n_jobs : processes for the replicates (:func:`bootstrap_ci`; result independent of it).

    Returns
    -------
    (ci_low, ci_high, replicates (n_boot,)) of S_1(horizon) - S_0(horizon) (probability).
    """
    t = _check_binary(treated)
    time = np.asarray(time, dtype=float)
    event = np.asarray(event)
    if not len(X) == len(time) == len(event) == len(t):
        raise ValueError(
            f"bootstrap_iptw_difference: X ({len(X)}), time ({len(time)}), event ({len(event)}) "
            f"and treated ({len(t)}) must have the same length"
        )

    def replicate(idx: np.ndarray) -> float:
        t_b = t[idx]
        ps_b = fit_propensity(X.iloc[idx], t_b)
        w_b = iptw_weights(t_b, ps_b, trim=trim, truncate_quantile=truncate_quantile)
        return risk_difference(time[idx], event[idx], t_b, w_b, horizon)["difference"]

    return bootstrap_ci(replicate, len(t), n_boot, seed, n_jobs=n_jobs)


def effects_table(
    time: np.ndarray,
    event: np.ndarray,
    treated: np.ndarray,
    weights: dict[str, np.ndarray | None],
    horizon: float,
    clusters: dict[str, np.ndarray] | None = None,
) -> tuple[dict, dict, pd.DataFrame]:
    """Survival difference and hazard ratio of treatment under several weightings.

    For each analysis ``k`` in ``weights``: :func:`risk_difference` at ``horizon`` with the
    weights (None = all 1) and :func:`weighted_cox` of ``treated`` with the weights (None =
    unweighted, model-based SE) and the cluster ids ``clusters[k]`` if given.

    Parameters
    ----------
    time : (n,) days; event : (n,) 1 = death; treated : (n,) 1 = immunotherapy.
    weights : analysis name -> (n,) case weights or None.
    horizon : days.
    clusters : analysis name -> (n,) cluster ids (e.g. :func:`pair_ids`), optional.

    Returns
    -------
    rd : name -> output of :func:`risk_difference`.
    hr : name -> ``{"estimate", "ci_low", "ci_high"}`` of the HR (1 vs 0).
    table : DataFrame, one row per analysis in ``weights`` order: ``analysis`` (the name),
        ``survival_difference``, ``hr``, ``hr_ci_low``, ``hr_ci_high``.
    """
    t = _check_binary(treated)
    time = np.asarray(time, dtype=float)
    event = np.asarray(event)
    clusters = clusters or {}
    unknown = sorted(set(clusters) - set(weights))
    if unknown:
        raise KeyError(f"effects_table: clusters given for analyses {unknown} not in weights")
    df = pd.DataFrame({"time": time, "event": event, "treated": t})
    rd, hr = {}, {}
    for k, w in weights.items():
        rd[k] = risk_difference(time, event, t, np.ones(len(t)) if w is None else w, horizon)
        c = weighted_cox(df, "time", "event", ["treated"], w, cluster=clusters.get(k)).loc["treated"]
        hr[k] = {"estimate": float(c["hr"]), "ci_low": float(c["ci_low"]), "ci_high": float(c["ci_high"])}
    table = pd.DataFrame({
        "analysis": list(weights),
        "survival_difference": [rd[k]["difference"] for k in weights],
        "hr": [hr[k]["estimate"] for k in weights],
        "hr_ci_low": [hr[k]["ci_low"] for k in weights],
        "hr_ci_high": [hr[k]["ci_high"] for k in weights],
    })
    return rd, hr, table


def truth_comparison(
    estimates: dict[str, dict[str, dict]], truth: dict[str, float]
) -> pd.DataFrame:
    """Estimates next to true values: bias and whether the CI covers the truth.

    Parameters
    ----------
    estimates : estimand -> analysis -> ``{"estimate", "ci_low", "ci_high"}`` (a missing CI
        limit counts as NaN).
    truth : estimand -> true value (NaN if unknown).

    Returns
    -------
    DataFrame ``estimand``, ``analysis``, ``estimate``, ``ci_low``, ``ci_high``, ``true``,
    ``true_inside_ci`` (False when a limit is NaN), ``bias`` (estimate - true).
    """
    missing = sorted(set(estimates) - set(truth))
    if missing:
        raise KeyError(f"truth_comparison: no true value for estimand(s) {missing}")
    rows = [
        (name, analysis, float(d["estimate"]), float(d.get("ci_low", np.nan)),
         float(d.get("ci_high", np.nan)), float(truth[name]))
        for name, by_analysis in estimates.items() for analysis, d in by_analysis.items()
    ]
    table = pd.DataFrame(rows, columns=["estimand", "analysis", "estimate", "ci_low", "ci_high", "true"])
    table["true_inside_ci"] = (table["ci_low"] <= table["true"]) & (table["true"] <= table["ci_high"])
    table["bias"] = table["estimate"] - table["true"]
    return table
