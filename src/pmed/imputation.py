"""Multiple imputation by chained equations (MICE) and Rubin's rules.

The chained equations use predictive mean matching (PMM; mice's default method, van Buuren
2018, "Flexible Imputation of Missing Data", 2nd ed., section 3.4): each incomplete column
is regressed on all other columns with a Bayesian linear model whose coefficients and residual
variance are drawn from their posterior (Rubin 1987, p. 167), and each missing value is
replaced by the observed value of one of the ``donors`` observed rows whose predicted means
are closest (type-1 matching). Imputed values are therefore always values that occur in the
data (binary stays 0/1, ECOG stays 0-4, labs stay plausible).

For a survival analysis the imputation model should contain the outcome: pass the event
indicator and the Nelson-Aalen cumulative hazard (:func:`nelson_aalen`) as ``auxiliary``
columns (White & Royston 2009, Stat Med 28:1982, doi:10.1002/sim.3618).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from pmed.parallel import run_tasks

__all__ = ["nelson_aalen", "mice", "rubin_pool"]

#: Ridge factor added to the diagonal of X'X (relative), as mice's ``ridge = 1e-05``.
RIDGE = 1e-5


def nelson_aalen(time, event) -> np.ndarray:
    """Nelson-Aalen cumulative hazard H(T_i) at each subject's own time, shape (n,).

    Ties: all events at a time count at that time (H jumps by d_j / n_j).
    """
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float)
    if t.shape != e.shape:
        raise ValueError(f"nelson_aalen: time {t.shape} and event {e.shape} differ in shape")
    event_times, d = np.unique(t[e == 1], return_counts=True)
    n = t.size - np.searchsorted(np.sort(t), event_times, side="left")
    cumhaz = np.cumsum(d / n)
    idx = np.searchsorted(event_times, t, side="right") - 1
    return np.where(idx >= 0, cumhaz[np.clip(idx, 0, None)], 0.0)


def _pmm_draw(x_obs, y_obs, x_mis, donors, rng):
    """One PMM draw for the missing rows: Bayesian regression draw, then donor matching."""
    n_obs, p = x_obs.shape
    xtx = x_obs.T @ x_obs
    xtx += np.diag(RIDGE * np.diag(xtx))
    v = np.linalg.inv(xtx)
    beta_hat = v @ x_obs.T @ y_obs
    resid = y_obs - x_obs @ beta_hat
    sigma = np.sqrt(resid @ resid / rng.chisquare(max(n_obs - p, 1)))
    beta_star = beta_hat + sigma * np.linalg.cholesky((v + v.T) / 2) @ rng.standard_normal(p)
    yhat_obs = x_obs @ beta_hat
    yhat_mis = x_mis @ beta_star
    order = np.argsort(yhat_obs, kind="stable")
    sorted_hat = yhat_obs[order]
    k = min(donors, n_obs)
    pos = np.searchsorted(sorted_hat, yhat_mis)
    # Candidate window of 2k sorted neighbours around each insertion point; keep the k closest.
    window = np.clip(pos[:, None] + np.arange(-k, k)[None, :], 0, n_obs - 1)
    dist = np.abs(sorted_hat[window] - yhat_mis[:, None])
    nearest = np.take_along_axis(window, np.argsort(dist, axis=1, kind="stable")[:, :k], axis=1)
    chosen = nearest[np.arange(len(yhat_mis)), rng.integers(0, k, len(yhat_mis))]
    return y_obs[order[chosen]]


def mice(
    df: pd.DataFrame,
    columns: Sequence[str],
    m: int,
    seed: int,
    max_iter: int = 10,
    auxiliary: Sequence[str] = (),
    donors: int = 5,
    n_jobs: int = 1,
) -> list[pd.DataFrame]:
    """``m`` completed copies of ``df`` with missing values in ``columns`` imputed by PMM.

    Parameters
    ----------
    df : DataFrame
        Analysis table, one row per person.
    columns : list of str
        Columns to impute (and to use as predictors of each other).
    m : int
        Number of imputations (>= 2 for Rubin's rules; 1 gives a single stochastic imputation).
    seed : int
        Imputation i draws from ``numpy.random.default_rng(seed + i)``.
    max_iter : int
        Rounds of chained equations (each visits every incomplete column once).
    auxiliary : list of str
        Complete columns used only as predictors (e.g. event, cumulative hazard).
    donors : int
        Number of closest observed rows a PMM donor is drawn from.
    n_jobs : int
        Processes the imputations run in, one BLAS thread each (:func:`pmed.parallel.run_tasks`);
        the imputations do not depend on it.

    Returns
    -------
    list of m DataFrames, same index and columns as ``df``; observed values are unchanged.
    """
    if m < 1:
        raise ValueError(f"mice: m must be >= 1 imputation, got {m}")
    cols = list(columns) + list(auxiliary)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"mice: column(s) {missing} not in the table")
    if df[list(auxiliary)].isna().any().any():
        raise ValueError(f"mice: auxiliary columns {list(auxiliary)} must be complete")
    data = df[cols].astype(float).to_numpy()
    miss = np.isnan(data)
    empty = [c for j, c in enumerate(cols) if miss[:, j].all()]
    if empty:
        raise ValueError(f"mice: column(s) {empty} have no observed values")
    # Standardise predictors for numerical stability (PMM is invariant to it).
    centre = np.nanmean(data, axis=0)
    scale = np.nanstd(data, axis=0)
    scale[scale == 0] = 1.0
    incomplete = [j for j in range(len(columns)) if miss[:, j].any()]

    def impute(i: int) -> np.ndarray:  # imputation i: the filled ``columns``, shape (n, len(columns))
        rng = np.random.default_rng(seed + i)
        filled = data.copy()
        for j in incomplete:  # start from random draws of the observed values
            obs = data[~miss[:, j], j]
            filled[miss[:, j], j] = rng.choice(obs, miss[:, j].sum())
        z = (filled - centre) / scale  # standardised predictors, updated column by column
        for _ in range(max_iter):
            for j in incomplete:
                mis = miss[:, j]
                others = np.delete(z, j, axis=1)
                x_obs = np.column_stack([np.ones((~mis).sum()), others[~mis]])
                x_mis = np.column_stack([np.ones(mis.sum()), others[mis]])
                filled[mis, j] = _pmm_draw(x_obs, data[~mis, j], x_mis, donors, rng)
                z[:, j] = (filled[:, j] - centre[j]) / scale[j]
        return filled[:, :len(columns)]

    return [df.assign(**dict(zip(columns, filled.T, strict=True)))
            for filled in run_tasks(impute, range(m), n_jobs)]


def rubin_pool(
    estimates: np.ndarray,
    variances: np.ndarray,
    alpha: float = 0.05,
    names: Sequence[str] | None = None,
    df_complete: float | None = None,
) -> pd.DataFrame:
    """Pool m analyses of completed data with Rubin's rules.

    Parameters
    ----------
    estimates, variances : array, shape (m, p)
        Point estimates and their squared standard errors from each completed data set.
    alpha : float
        Two-sided level of the t-based confidence interval.
    names : list of str, optional
        Parameter names (default ``"0".."p-1"``).
    df_complete : float, optional
        Complete-data degrees of freedom; if given, the Barnard-Rubin (1999) small-sample
        degrees of freedom are used, otherwise Rubin's (1987) large-sample ones.

    Returns
    -------
    DataFrame with one row per parameter: ``term``, ``estimate`` (mean), ``within`` (W, mean
    variance), ``between`` (B, variance across imputations), ``total`` (T = W + (1 + 1/m) B),
    ``se`` (sqrt T), ``df``, ``ci_low``, ``ci_high``, ``p_value`` (t test of 0), ``riv``
    (relative increase in variance) and ``fmi`` (fraction of missing information).
    """
    q = np.atleast_2d(np.asarray(estimates, dtype=float))
    u = np.atleast_2d(np.asarray(variances, dtype=float))
    if q.shape != u.shape:
        raise ValueError(f"rubin_pool: estimates {q.shape} and variances {u.shape} differ")
    m, p = q.shape
    if m < 2:
        raise ValueError(f"rubin_pool: need >= 2 imputations, got {m}")
    qbar = q.mean(axis=0)
    w = u.mean(axis=0)
    b = q.var(axis=0, ddof=1)
    t = w + (1 + 1 / m) * b
    riv = (1 + 1 / m) * b / w
    with np.errstate(divide="ignore"):
        df = np.where(b > 0, (m - 1) * (1 + 1 / riv) ** 2, np.inf)
    if df_complete is not None:
        lam = (1 + 1 / m) * b / t
        df_obs = (df_complete + 1) / (df_complete + 3) * df_complete * (1 - lam)
        df = 1 / (1 / df + 1 / df_obs)
    tq = stats.t.ppf(1 - alpha / 2, df)
    se = np.sqrt(t)
    fmi = (riv + 2 / (df + 3)) / (riv + 1)
    return pd.DataFrame(
        {
            "term": list(names) if names is not None else [str(i) for i in range(p)],
            "estimate": qbar,
            "within": w,
            "between": b,
            "total": t,
            "se": se,
            "df": df,
            "ci_low": qbar - tq * se,
            "ci_high": qbar + tq * se,
            "p_value": 2 * stats.t.sf(np.abs(qbar / se), df),
            "riv": riv,
            "fmi": fmi,
        }
    )
