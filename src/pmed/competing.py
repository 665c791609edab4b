"""Competing risks: Aalen-Johansen cumulative incidence, Gray's test, cause-specific and
Fine-Gray Cox models, and a privacy-aware cumulative-incidence plot.

Conventions: ``status`` is 0 censored, 1 event of interest, 2 competing event (death first),
as the cohort's ``<outcome>_status`` columns; ``cause`` picks which non-zero code is "of
interest" (the other one competes). Times are in days (any unit works, it is carried through).

Each estimator reproduces a published R implementation; tests compare with output of
``tests/r/competing_reference.R`` (R 4.2, survival 3.5-3, cmprsk 2.2-11):

- :func:`cumulative_incidence`: ``cmprsk::cuminc`` estimate and variance (Aalen-Johansen
  estimator; delta-method variance with the hypergeometric tie correction of Gray's ``cinc``),
  with a pointwise CI on the log(-log) scale (cmprsk gives no CI); before the first event of
  the cause an exact one-sided bound instead.
- :func:`gray_test`: the k-sample test of ``cmprsk::cuminc`` (Gray 1988, rho = 0 by default).
- :func:`fit_cause_specific`: ``coxph(Surv(time, status == cause) ~ x)`` (Efron ties).
- :func:`fit_fine_gray`: ``coxph(Surv(fgstart, fgstop, fgstatus) ~ x + cluster(id),
  weights = fgwt)`` on the data set of ``survival::finegray`` (Efron ties, robust SE
  clustered by person), computed without building that data set.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceError, ConvergenceWarning
from scipy import stats

from pmed.plots import risk_table_figure, style_risk_table
from pmed.privacy import format_count, release_counts, release_km
from pmed.survival import (
    MIN_EVENTS,
    TooFewEventsError,
    cox_table,
    estimable_terms,
    require_columns,
    require_events,
)

#: lifelines' Newton-Raphson stops at a step below 1e-7 by default: coefficients then differ
#: from R's coxph by up to ~1e-4; 1e-10 brings them within 1e-7 (tests/test_competing.py).
_FIT_OPTIONS = {"precision": 1e-10}

__all__ = [
    "check_competing_data",
    "cumulative_incidence",
    "cif_by_group",
    "cif_at",
    "cif_table",
    "cif_metrics",
    "status_table",
    "gray_test",
    "fit_cause_specific",
    "fit_fine_gray",
    "fit_competing_models",
    "NotConvergedError",
    "cif_plot",
]


class NotConvergedError(RuntimeError):
    """A cause-specific or Fine-Gray fit did not converge (its estimates do not exist or are unusable)."""


def check_competing_data(time, status, name: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """Validated copies of ``time`` (float, finite, >= 0) and ``status`` (int in {0, 1, 2}), shape (n,)."""
    t = np.asarray(time, dtype=float)
    s = np.asarray(status, dtype=float)
    if t.ndim != 1 or t.shape != s.shape:
        raise ValueError(f"{name}: time and status must be 1-D of equal length, got {t.shape} and {s.shape}")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"{name}: time must be finite and >= 0 (found NaN/inf/negative values)")
    bad = sorted(set(np.unique(s[~np.isnan(s)])) - {0.0, 1.0, 2.0})
    if np.isnan(s).any() or bad:
        raise ValueError(f"{name}: status must be 0 (censored), 1 (event) or 2 (competing); found other codes {bad[:5]} or missing")
    return t, s.astype(int)


def _other(cause: int) -> int:
    if cause not in (1, 2):
        raise ValueError(f"cause must be 1 or 2, got {cause!r}")
    return 3 - cause


def _loglog_ci(est: np.ndarray, se: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise CI of a probability on the log(-log) scale: est ** exp(-+ z se / (est log est))."""
    z = stats.norm.ppf(1 - alpha / 2)
    inner = (est > 0) & (est < 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(inner, z * se / np.abs(est * np.log(np.where(inner, est, 0.5))), 0.0)
    low = np.where(inner, est ** np.exp(w), est)
    high = np.where(inner, est ** np.exp(-w), est)
    return low, high


def cumulative_incidence(time, status, cause: int = 1, alpha: float = 0.05) -> pd.DataFrame:
    """Aalen-Johansen cumulative incidence of ``cause`` with cmprsk's variance and a log(-log) CI.

    F(t) = sum over event times t_j <= t of S(t_j-) d_cj / n_j, with S the all-cause
    Kaplan-Meier, d_cj the events of ``cause`` and n_j the number at risk at t_j.
    Var F(t) = sum_j [S(t_j-)^2 / n_j^2] {g(d_cj) [1 - (F(t) - F(t_j)) / S(t_j)]^2
    + g(d_oj) [(F(t) - F(t_j)) / S(t_j)]^2}, with d_oj the competing events and
    g(d) = d (n_j - d) / (n_j - 1) (= 1 for d = 1), the delta-method variance of
    ``cmprsk::cuminc`` (Gray's ``cinc`` routine).

    CI: log(-log) scale, ``est ** exp(-+ z se / (est log est))``. Where no event of the cause
    happened up to t (F(t) = 0, SE 0) that interval would be [0, 0] and never cover; there the
    CI is [0, 1 - (alpha/2)^(1/m)], m the persons not censored by t (an event of either cause
    by t, or follow-up past t). Given m (censoring independent), each of the m had the event by
    t with probability F(t), so seeing none has probability (1 - F(t))^m <= alpha/2 whenever
    F(t) is above the bound: the exact (Clopper-Pearson) upper bound for 0 events in m, about
    3.7/m at alpha = 0.05 (the "rule of three" is alpha = 0.1); 1 when m = 0. The row added
    at time 0 (no observed time there, before anyone's follow-up) keeps [0, 0].

    Returns one row per distinct time (a row at 0 first when no time is 0): ``time``, ``cif``,
    ``variance``, ``se``, ``ci_low``, ``ci_high`` (1 - alpha), ``n_at_risk`` (time >= t),
    ``n_event``, ``n_competing``, ``n_censored`` at that time. Counts are raw: suppress
    before showing (:func:`cif_table`, :func:`cif_plot`).
    """
    t, s = check_competing_data(time, status, "cumulative_incidence")
    other = _other(cause)
    if t.size == 0:
        raise ValueError("cumulative_incidence: no observations")
    u, inv = np.unique(t, return_inverse=True)
    d1 = np.bincount(inv, weights=(s == cause), minlength=u.size)
    d2 = np.bincount(inv, weights=(s == other), minlength=u.size)
    dc = np.bincount(inv, weights=(s == 0), minlength=u.size)
    total = np.bincount(inv, minlength=u.size)
    n = t.size - np.concatenate([[0], np.cumsum(total)[:-1]])
    d = d1 + d2
    s_after = np.cumprod(1 - d / n)                    # all-cause KM S(t_j)
    s_before = np.concatenate([[1.0], s_after[:-1]])   # S(t_j-)
    f = np.cumsum(s_before * d1 / n)

    def weight(k):  # S(t_j-)^2 g(k) / n^2 with the tie factor g(k) / k = (n - k) / (n - 1), 1 when k <= 1
        tie = np.where(k > 1, 1 - (k - 1) / np.maximum(n - 1, 1), 1.0)
        return s_before**2 * tie * k / n**2

    with np.errstate(divide="ignore", invalid="ignore"):
        inv_s = np.where(s_after > 0, 1 / s_after, 0.0)
    # Var F(t) = v1 - 2 F(t) v2 + F(t)^2 v3, with v1, v2, v3 cumulative sums over t_j <= t.
    w1 = weight(d1)
    w2 = np.where(s_after > 0, weight(d2), 0.0)
    a1 = 1 + inv_s * f                                  # events of cause: 1 + F(t_j) / S(t_j)
    a2 = f * inv_s                                      # competing: F(t_j) / S(t_j)
    v1 = np.cumsum(w1 * a1**2 + w2 * a2**2)
    v2 = np.cumsum(w1 * a1 * inv_s + w2 * a2 * inv_s)
    v3 = np.cumsum((w1 + w2) * inv_s**2)
    var = v1 + f**2 * v3 - 2 * f * v2
    # cmprsk updates the variance only at jumps of F (identical elsewhere up to rounding).
    var = pd.Series(np.where(d1 > 0, var, np.nan)).ffill().fillna(0.0).to_numpy()
    out = pd.DataFrame(
        {
            "time": u,
            "cif": f,
            "variance": var,
            "n_at_risk": n.astype(int),
            "n_event": d1.astype(int),
            "n_competing": d2.astype(int),
            "n_censored": dc.astype(int),
        }
    )
    if u[0] > 0:
        first = pd.DataFrame({"time": [0.0], "cif": [0.0], "variance": [0.0], "n_at_risk": [t.size],
                              "n_event": [0], "n_competing": [0], "n_censored": [0]})
        out = pd.concat([first, out], ignore_index=True)
    out["se"] = np.sqrt(np.maximum(out["variance"].to_numpy(), 0.0))
    out["ci_low"], out["ci_high"] = _loglog_ci(out["cif"].to_numpy(), out["se"].to_numpy(), alpha)
    # no event of the cause up to t: exact one-sided bound from the m persons not censored by t
    m = t.size - np.cumsum(out["n_censored"].to_numpy())
    none = (out["cif"].to_numpy() == 0) & (out["time"].to_numpy() >= u[0])  # not the added row at 0
    bound = np.where(m > 0, 1 - (alpha / 2) ** (1 / np.maximum(m, 1)), 1.0)
    out.loc[none, "ci_low"] = 0.0
    out.loc[none, "ci_high"] = bound[none]
    return out[["time", "cif", "variance", "se", "ci_low", "ci_high", "n_at_risk", "n_event", "n_competing", "n_censored"]]


def cif_by_group(time, status, group, cause: int = 1, alpha: float = 0.05) -> dict[str, pd.DataFrame]:
    """:func:`cumulative_incidence` per group label (sorted, as strings)."""
    t, s = check_competing_data(time, status, "cif_by_group")
    g = pd.Series(np.asarray(group)).astype(str).to_numpy()
    if g.shape != t.shape:
        raise ValueError(f"cif_by_group: group {g.shape} and time {t.shape} differ in length")
    return {lab: cumulative_incidence(t[g == lab], s[g == lab], cause, alpha) for lab in sorted(np.unique(g))}


def cif_at(curve: pd.DataFrame, times: Sequence[float]) -> pd.DataFrame:
    """A :func:`cumulative_incidence` curve evaluated at ``times`` (right-continuous step function).

    Returns ``time``, ``cif``, ``variance``, ``se``, ``ci_low``, ``ci_high`` (NaN after the
    group's last follow-up time, as ``cmprsk::timepoints``) and ``n_at_risk`` (time >= t).
    """
    x = np.asarray(times, dtype=float)
    ct = curve["time"].to_numpy(dtype=float)
    idx = np.searchsorted(ct, x, side="right") - 1
    beyond = x > ct[-1]
    out = pd.DataFrame({"time": x})
    for col in ("cif", "variance", "se", "ci_low", "ci_high"):
        vals = curve[col].to_numpy(dtype=float)[np.maximum(idx, 0)]
        out[col] = np.where(beyond | (idx < 0), np.nan, vals)
    nxt = np.searchsorted(ct, x, side="left")  # first curve time >= t
    at_risk = curve["n_at_risk"].to_numpy()
    out["n_at_risk"] = np.where(nxt < ct.size, at_risk[np.minimum(nxt, ct.size - 1)], 0).astype(int)
    return out


def cif_table(curves: Mapping[str, pd.DataFrame], times: Sequence[float], min_cell: int) -> pd.DataFrame:
    """Long table of CIF (and CI) per group at ``times`` for reports.

    Columns ``group``, ``time``, ``cif``, ``ci_low``, ``ci_high``, ``n_at_risk`` (text, counts
    in 1..min_cell-1 shown as "<min_cell"). Estimates are NaN where fewer than ``min_cell``
    persons remain at risk, or after the group's last follow-up time.
    """
    rows = []
    for label, curve in curves.items():
        at = cif_at(curve, times)
        small = at["n_at_risk"].to_numpy() < min_cell
        for col in ("cif", "ci_low", "ci_high"):
            at[col] = np.where(small, np.nan, at[col])
        at["n_at_risk"] = [format_count(n, min_cell) for n in at["n_at_risk"]]
        at.insert(0, "group", label)
        rows.append(at[["group", "time", "cif", "ci_low", "ci_high", "n_at_risk"]])
    return pd.concat(rows, ignore_index=True)


def status_table(status, group, min_cell: int, hide=()) -> pd.DataFrame:
    """Events, competing events, censored and persons per group and in total, as report text.

    Rows: the group labels (sorted) and ``"total"``; columns ``events``, ``competing``,
    ``censored``, ``persons``. Counts pass :func:`pmed.privacy.release_counts` with every row
    (persons = events + competing + censored) and every column (total = sum of the groups)
    as a published relation, so no small count, nor a small sum of hidden ones, can be
    derived from the others. ``hide``: labels (``"total"`` included) whose persons count
    another table hides (:func:`pmed.cohort.summary.hidden_group_sizes`).
    """
    s = np.asarray(status)
    g = pd.Series(np.asarray(group)).astype(str).to_numpy()
    if s.shape != g.shape:
        raise ValueError(f"status_table: status {s.shape} and group {g.shape} differ in length")
    labels = [*sorted(np.unique(g)), "total"]
    cols = ["events", "competing", "censored", "persons"]
    counts = np.array([[np.sum(s[sel] == 1), np.sum(s[sel] == 2), np.sum(s[sel] == 0), np.sum(sel)]
                       for sel in [g == lab for lab in labels[:-1]] + [np.ones(g.size, bool)]], dtype=float)
    idx = np.arange(counts.size).reshape(counts.shape)
    # each relation with its total first: persons of a row, the "total" row of a column
    lines = [[row[-1], *row[:-1]] for row in idx] + [[col[-1], *col[:-1]] for col in idx.T]
    force = np.zeros(counts.shape, bool)
    force[[i for i, lab in enumerate(labels) if lab in hide], -1] = True
    text = release_counts(counts.ravel(), lines, min_cell, force=force.ravel())
    return pd.DataFrame(np.array(text, dtype=object).reshape(counts.shape), index=labels, columns=cols)


def cif_metrics(curves: Mapping[str, pd.DataFrame], times: Sequence[float], min_cell: int) -> dict:
    """``{group: {"<time>": {"estimate", "ci_low", "ci_high"}}}`` from :func:`cif_table` (NaN where suppressed)."""
    table = cif_table(curves, times, min_cell)
    return {
        g: {f"{r.time:g}": {"estimate": r.cif, "ci_low": r.ci_low, "ci_high": r.ci_high} for r in rows.itertuples()}
        for g, rows in table.groupby("group", sort=False)
    }


def _gray_stratum(t, s, g, ng, cause, rho):
    """Score (ng,) and variance (ng, ng) of Gray's test within one stratum (rows of any order)."""
    other = _other(cause)
    u = np.unique(t[s != 0])                                          # event times, any cause
    if u.size == 0:
        return np.zeros(ng), np.zeros((ng, ng))
    pos = np.searchsorted(u, t)                                       # index of each time in u (if an event time)
    hit = (pos < u.size) & (u[np.minimum(pos, u.size - 1)] == t)
    d1 = np.zeros((u.size, ng))
    d2 = np.zeros((u.size, ng))
    np.add.at(d1, (pos[hit & (s == cause)], g[hit & (s == cause)]), 1)
    np.add.at(d2, (pos[hit & (s == other)], g[hit & (s == other)]), 1)
    # at risk (time >= u_j) per group
    rs = np.stack([np.sum(g == k) - np.searchsorted(np.sort(t[g == k]), u, side="left") for k in range(ng)], axis=1).astype(float)
    live = rs > 0
    safe_rs = np.where(live, rs, 1.0)
    step = np.where(live, 1 - (d1 + d2) / safe_rs, 1.0)
    skm = np.cumprod(step, axis=0)                                     # group KM (all causes), right limit
    skmm = np.vstack([np.ones((1, ng)), skm[:-1]])                     # left limit
    f1 = np.cumsum(np.where(live, skmm * d1 / safe_rs, 0.0), axis=0)   # group CIF of cause, right limit
    f1m = np.vstack([np.zeros((1, ng)), f1[:-1]])
    h = np.where(live, rs / np.where(skmm > 0, skmm, 1.0), 0.0)       # rs / S(t-), "h_r" in Gray (1988)
    tr = h.sum(axis=1)
    tq = (h * (1 - f1m)).sum(axis=1)
    nd1 = d1.sum(axis=1)
    f = np.cumsum(nd1 / tr)                                            # pooled CIF under H0
    fm = np.concatenate([[0.0], f[:-1]])
    fb = (1 - fm) ** rho
    score = (fb[:, None] * (d1 - nd1[:, None] * h * (1 - f1m) / tq[:, None])).sum(axis=0)
    a = fb[:, None, None] * (np.einsum("jk,kl->jkl", h, np.eye(ng)) - h[:, :, None] * h[:, None, :] / tr[:, None, None])
    c = np.cumsum(a * (nd1 / (tr * (1 - fm)))[:, None, None], axis=0)
    v = np.zeros((ng, ng))
    v2 = np.zeros((ng, ng))                                            # v2[i, k]
    v3 = np.zeros(ng)
    # events of the cause: every group at risk contributes
    with np.errstate(divide="ignore", invalid="ignore"):
        t4 = np.where(skm > 0, 1 - (1 - f)[:, None] / skm, 1.0)
        t5 = np.where(nd1[:, None] > 1, 1 - (nd1[:, None] - 1) / (tr[:, None] * skmm - 1), 1.0)
        t3 = np.where(live & (nd1[:, None] > 0), t5 * skmm * nd1[:, None] / (tr[:, None] * safe_rs), 0.0)
    b = a - t4[:, None, :] * c                                          # b[j, i, k]
    v3 += (t4**2 * t3).sum(axis=0)
    v2 += np.einsum("jik,jk->ik", b, t4 * t3)
    v += np.einsum("jik,jlk,jk->il", b, b, t3)
    # competing events: groups with such events and S(t) > 0
    ok = (d2 > 0) & (skm > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        u4 = np.where(ok, (1 - f)[:, None] / np.where(skm > 0, skm, 1.0), 0.0)
        u5 = np.where(d2 > 1, 1 - (d2 - 1) / np.maximum(rs - 1, 1), 1.0)
        u3 = np.where(ok, u5 * skmm**2 * d2 / safe_rs**2, 0.0)
    v3 += (u4**2 * u3).sum(axis=0)
    v2 -= np.einsum("jik,jk->ik", c, u4**2 * u3)
    v += np.einsum("jik,jlk,jk->il", c, c, u4**2 * u3)
    c_end = c[-1]
    v += (c_end * v3[None, :]) @ c_end.T + c_end @ v2.T + v2 @ c_end.T
    return score, v


def gray_test(time, status, group, cause: int = 1, strata=None, rho: float = 0.0) -> dict:
    """Gray's (1988) k-sample test of equal cumulative incidence of ``cause`` across groups.

    As ``cmprsk::cuminc(time, status, group, strata, rho)``: score of the first k-1 groups
    (sorted labels) and its variance, summed over strata; statistic = s' V^-1 s,
    chi-square with k - 1 df. Returns ``{"statistic", "df", "p_value", "score"}`` (score: a
    Series by group label, observed minus expected weighted events; the last group is
    omitted as in cmprsk). ``statistic`` is NaN when V is singular.
    """
    t, s = check_competing_data(time, status, "gray_test")
    g_lab = pd.Series(np.asarray(group)).astype(str).to_numpy()
    if g_lab.shape != t.shape:
        raise ValueError(f"gray_test: group {g_lab.shape} and time {t.shape} differ in length")
    labels, g = np.unique(g_lab, return_inverse=True)
    ng = labels.size
    if ng < 2:
        raise ValueError(f"gray_test: need at least 2 groups, got {labels.tolist()}")
    st = np.zeros(t.size, dtype=int) if strata is None else np.unique(pd.Series(np.asarray(strata)).astype(str), return_inverse=True)[1]
    if st.shape != t.shape:
        raise ValueError(f"gray_test: strata {st.shape} and time {t.shape} differ in length")
    score = np.zeros(ng)
    var = np.zeros((ng, ng))
    for k in np.unique(st):
        sc, v = _gray_stratum(t[st == k], s[st == k], g[st == k], ng, cause, rho)
        score += sc
        var += v
    sc, v = score[:-1], var[:-1, :-1]
    try:
        statistic = float(sc @ np.linalg.solve(v, sc))
    except np.linalg.LinAlgError:
        statistic = float("nan")
    df = ng - 1
    return {
        "statistic": statistic,
        "df": df,
        "p_value": float(stats.chi2.sf(statistic, df)),
        "score": pd.Series(sc, index=labels[:-1]),
    }


def fit_cause_specific(
    df: pd.DataFrame,
    duration_col: str,
    status_col: str,
    covariates: Sequence[str],
    cause: int = 1,
    strata: Sequence[str] = (),
    alpha: float = 0.05,
) -> CoxPHFitter:
    """Cause-specific Cox model of ``cause``: other events censored at their time (Efron ties).

    Complete-case on ``covariates``; ``strata`` columns get separate baseline hazards. The
    table of cause-specific HRs is :func:`pmed.survival.cox_table` of the result.
    :class:`NotConvergedError` when Newton-Raphson fails (e.g. a term with no event at a level:
    :func:`fit_competing_models` leaves such terms out first).
    """
    require_columns(df, [duration_col, status_col, *covariates, *strata], "fit_cause_specific")
    _other(cause)
    _, s = check_competing_data(df[duration_col], df[status_col], f"fit_cause_specific ({status_col})")
    frame = df[[duration_col, *covariates, *strata]].astype(float)
    frame["_cs_event"] = (s == cause).astype(int)
    frame = frame.dropna()
    require_events(f"cause-specific Cox model ({status_col} == {cause})", frame["_cs_event"].sum(),
                   len(covariates))
    cph = CoxPHFitter(alpha=alpha)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*failed to converge", category=ConvergenceWarning)
        try:
            cph.fit(frame, duration_col, "_cs_event", strata=list(strata) or None, fit_options=_FIT_OPTIONS)
        except (ConvergenceError, ConvergenceWarning) as err:
            raise NotConvergedError(f"cause-specific Cox model ({status_col} == {cause}) did not converge "
                                    f"({type(err).__name__})") from None
    return cph


def _censoring_weights(t: np.ndarray, s: np.ndarray, at: np.ndarray) -> np.ndarray:
    """G(a-) at each ``a`` in ``at``: censoring Kaplan-Meier just before a (censorings after events at tied times)."""
    ctime, n_cens = np.unique(t[s == 0], return_counts=True)
    at_risk = t.size - np.searchsorted(np.sort(t), ctime, side="right") + n_cens
    prob = np.concatenate([[1.0], np.cumprod(1 - n_cens / at_risk)])
    return prob[np.searchsorted(ctime, at, side="left")]


class _FineGrayRisk:
    """Weighted Efron risk-set sums of the Fine-Gray model at the event times of ``cause``.

    A person is at risk at event time u with weight 1 while T_i >= u and, after a competing
    event, with weight G(u-) / G(T_i-) (survival::finegray's weights, G = censoring
    Kaplan-Meier). The weight factorises, so each risk-set sum is a cumulative sum over
    persons sorted by time: S(u_j) = sum_{T_i >= u_j} v_i + G(u_j-) sum_{competing, T_i < u_j} v_i / G(T_i-),
    O(n p^2) time and O(n + J p^2) memory for J event times (no expanded data set).
    """

    def __init__(self, t, s, x, cause):
        self.x = x - x.mean(axis=0)                       # centred: same fit, no overflow in exp
        n, p = self.x.shape
        self.u, self.d = np.unique(t[s == cause], return_counts=True)
        self.h = np.searchsorted(self.u, t, side="right")  # event times <= T_i: at risk (weight 1) at j < h
        self.dead = s == cause
        self.pos = self.h[self.dead] - 1                   # index of each event's own time
        self.comp = s == _other(cause)
        self.g_u = _censoring_weights(t, s, self.u)        # G(u_j-), (J,)
        self.g_i = np.ones(n)
        self.g_i[self.comp] = _censoring_weights(t, s, t[self.comp])
        self.pairs = [(a, b) for a in range(p) for b in range(a + 1)]
        rep = np.repeat(np.arange(self.u.size), self.d)     # Efron: the l-th of d tied events, flattened
        self.ev_j = rep
        self.ev_frac = (np.arange(rep.size) - np.concatenate([[0], np.cumsum(self.d)[:-1]])[rep]) / self.d[rep]

    def _sums(self, r):
        """Risk-set sums (J,), (J, p), (J, p, p) of r, r x, r x x' and the same over the tied events."""
        x, n_t = self.x, self.u.size
        p = x.shape[1]
        cp = np.flatnonzero(self.comp)

        def per_time(v):                                   # v (n,) -> (J,) risk-set sum
            tail = np.bincount(self.h, weights=v, minlength=n_t + 1)[::-1].cumsum()[::-1][1:]
            after = np.bincount(self.h[cp], weights=v[cp] / self.g_i[cp], minlength=n_t + 1).cumsum()[:n_t]
            return tail + self.g_u * after

        def tied(v):
            return np.bincount(self.pos, weights=v[self.dead], minlength=n_t)

        s0, t0 = per_time(r), tied(r)
        s1 = np.column_stack([per_time(r * x[:, a]) for a in range(p)]).reshape(n_t, p)
        t1 = np.column_stack([tied(r * x[:, a]) for a in range(p)]).reshape(n_t, p)
        s2 = np.zeros((n_t, p, p))
        t2 = np.zeros((n_t, p, p))
        for a, b in self.pairs:
            v = r * x[:, a] * x[:, b]
            s2[:, a, b] = s2[:, b, a] = per_time(v)
            t2[:, a, b] = t2[:, b, a] = tied(v)
        return s0, s1, s2, t0, t1, t2

    def efron(self, beta):
        """Log partial likelihood, score (p,), information (p, p) and the per-event terms at ``beta``."""
        eta = self.x @ beta
        r = np.exp(eta)
        s0, s1, s2, t0, t1, t2 = self._sums(r)
        j, f = self.ev_j, self.ev_frac
        den = s0[j] - f * t0[j]                                          # (E,)
        xbar = (s1[j] - f[:, None] * t1[j]) / den[:, None]              # (E, p)
        loglik = eta[self.dead].sum() - np.log(den).sum()
        score = self.x[self.dead].sum(axis=0) - xbar.sum(axis=0)
        second = (s2[j] - f[:, None, None] * t2[j]) / den[:, None, None]
        info = second.sum(axis=0) - xbar.T @ xbar
        return loglik, score, info, r, den, xbar

    def score_residuals(self, beta):
        """Per-person score residuals (n, p), summed over a person's weighted rows (R's cluster(id))."""
        _, _, _, r, den, xbar = self.efron(beta)
        n_t, p = self.u.size, self.x.shape[1]
        j, f = self.ev_j, self.ev_frac
        haz = 1 / den
        big_h = np.bincount(j, weights=haz, minlength=n_t)
        big_hx = np.column_stack([np.bincount(j, weights=haz * xbar[:, a], minlength=n_t) for a in range(p)])
        hd = np.bincount(j, weights=haz * (1 - f), minlength=n_t)
        hdx = np.column_stack([np.bincount(j, weights=haz * (1 - f) * xbar[:, a], minlength=n_t) for a in range(p)])
        xbar_mean = np.column_stack([np.bincount(j, weights=xbar[:, a], minlength=n_t) for a in range(p)]) / self.d[:, None]

        def cum(v):  # prefix sums with a leading 0: cum(v)[h] = sum_{j < h} v_j
            return np.concatenate([np.zeros((1,) + v.shape[1:]), np.cumsum(v, axis=0)])

        x, h = self.x, self.h
        cum_h, cum_hx = cum(big_h), cum(big_hx)
        resid = -r[:, None] * (x * cum_h[h][:, None] - cum_hx[h])
        c = self.comp                                     # after a competing event: weight G(u_j-) / G(T_i-)
        g_h, g_hx = cum(self.g_u * big_h), cum(self.g_u[:, None] * big_hx)
        w = r[c] / self.g_i[c]
        resid[c] -= w[:, None] * (x[c] * (g_h[-1] - g_h[h[c]])[:, None] - (g_hx[-1] - g_hx[h[c]]))
        dd, pos = self.dead, self.pos
        resid[dd] += r[dd, None] * (x[dd] * (big_h[pos] - hd[pos])[:, None] - (big_hx[pos] - hdx[pos]))
        resid[dd] += x[dd] - xbar_mean[pos]
        return resid


def _newton(model: _FineGrayRisk, p: int, tol: float = 1e-10, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Maximiser of the Efron partial likelihood by Newton-Raphson with step halving; returns beta and information."""
    beta = np.zeros(p)
    loglik, score, info, *_ = model.efron(beta)
    for _ in range(max_iter):
        step = np.linalg.solve(info, score)
        for _half in range(30):
            new = model.efron(beta + step)
            if new[0] >= loglik - 1e-12 * abs(loglik):
                break
            step = step / 2
        beta = beta + step
        loglik, score, info = new[:3]
        if np.max(np.abs(step)) < tol:
            return beta, info
    raise NotConvergedError(f"Fine-Gray model: Newton-Raphson did not converge in {max_iter} iterations")


def fit_fine_gray(
    df: pd.DataFrame,
    duration_col: str,
    status_col: str,
    covariates: Sequence[str],
    cause: int = 1,
    se: str = "cluster",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Fine-Gray subdistribution hazard ratios of ``cause`` (weighted Efron Cox, no expanded data).

    The model of R ``coxph(Surv(fgstart, fgstop, fgstatus) ~ x + cluster(id), weights = fgwt)``
    on ``survival::finegray``'s data set (right-censored data, no strata or delayed entry),
    fitted from the factorised censoring weights of :class:`_FineGrayRisk` in O(n p^2) time
    and O(n) memory instead of on the data set, which has about one row per censoring time
    per competing event (151 M rows at 154,000 persons). Complete-case on ``covariates``.
    ``se="cluster"``: sandwich variance from the per-person score residuals (R ``+ cluster(id)``,
    close to ``cmprsk::crr``'s SE); ``se="naive"``: inverse information. Returns the table of
    :func:`pmed.survival.cox_table` (``log_hr`` = log subdistribution HR, ``se``, CIs, ``hr``,
    ``p_value``) plus ``se_naive``. :class:`NotConvergedError` when Newton-Raphson fails.
    """
    if se not in ("cluster", "naive"):
        raise ValueError(f"fit_fine_gray: se must be 'cluster' or 'naive', got {se!r}")
    require_columns(df, [duration_col, status_col, *covariates], "fit_fine_gray")
    frame = df[[duration_col, status_col, *covariates]].dropna()
    require_events(f"Fine-Gray model ({status_col} == {cause})", (frame[status_col] == cause).sum(),
                   len(covariates))
    t, s = check_competing_data(frame[duration_col], frame[status_col], f"fit_fine_gray ({duration_col}, {status_col})")
    model = _FineGrayRisk(t, s, frame[list(covariates)].to_numpy(dtype=float), cause)
    beta, info = _newton(model, len(covariates))
    naive = np.linalg.inv(info)
    if se == "naive":
        var = naive
    else:
        dfbeta = model.score_residuals(beta) @ naive
        var = dfbeta.T @ dfbeta
    table = cox_table(_Coefs(pd.Series(beta, index=list(covariates)), np.sqrt(np.diag(var))), alpha=alpha)
    table["se_naive"] = np.sqrt(np.diag(naive))
    table.attrs.update(n_persons=len(frame), n_events=int((s == cause).sum()))
    return table


def fit_competing_models(
    df: pd.DataFrame,
    duration_col: str,
    status_col: str,
    terms: Sequence[str],
    cause: int = 1,
    min_events: int = MIN_EVENTS,
    one_hot: Sequence[Sequence[str]] = (),
) -> dict:
    """Cause-specific Cox and Fine-Gray models of ``cause`` on the estimable ``terms``; no error on sparse data.

    Terms are checked first among the complete cases of ``df[terms]``
    (:func:`pmed.survival.estimable_terms`): a term that does not vary, or a 0/1 term (e.g. an
    arm indicator) with fewer than ``min_events`` events of ``cause`` at a level (default
    :data:`pmed.survival.MIN_EVENTS`, the events rule of every fit), is left out of both
    models: with no event in an arm the arm's log-HR has no finite estimate (Cox diverges,
    Fine-Gray fails). ``one_hot`` (e.g. ``[arm indicators]``): the reference level needs as
    many events, else the group's terms are all left out. A model that still cannot be fitted (too few events in all,
    :class:`pmed.survival.TooFewEventsError`, or :class:`NotConvergedError`) is None with a reason.

    Returns ``{"terms": fitted terms, "not_estimable": left-out terms, "n_persons": complete
    cases of the fitted terms, "cs": cause-specific table (:func:`pmed.survival.cox_table`) or
    None, "fg": Fine-Gray table (:func:`fit_fine_gray`) or None, "failed": {"cs"/"fg": reason}}``.
    Reasons hold no count of the data (privacy): safe to print.
    """
    require_columns(df, [duration_col, status_col, *terms], "fit_competing_models")
    frame = df[[duration_col, status_col, *terms]].assign(_cr_event=(df[status_col] == cause).astype(int))
    kept = estimable_terms(frame, list(terms), min_per_level=min_events, event="_cr_event", min_events=min_events,
                           one_hot=one_hot)
    out = {"terms": kept, "not_estimable": [t for t in terms if t not in kept],
           "n_persons": len(frame[[duration_col, status_col, *kept]].dropna()), "cs": None, "fg": None, "failed": {}}
    fits = {"cs": lambda: cox_table(fit_cause_specific(frame, duration_col, status_col, kept, cause)),
            "fg": lambda: fit_fine_gray(frame, duration_col, status_col, kept, cause)}
    for key, fit in fits.items():
        if not kept:
            out["failed"][key] = "not estimable: no term has enough events at each level"
            continue
        try:
            out[key] = fit()
        except TooFewEventsError:
            out["failed"][key] = (f"not estimable: fewer than {max(MIN_EVENTS, len(kept))} events among the "
                                  f"complete cases (>= {MIN_EVENTS} and >= 1 per term needed)")
        except NotConvergedError:
            out["failed"][key] = "not estimable: the fit did not converge"
    return out


class _Coefs:
    """The two attributes :func:`pmed.survival.cox_table` reads from a fitted model."""

    def __init__(self, params: pd.Series, se: np.ndarray):
        self.params_ = params
        self.standard_errors_ = pd.Series(se, index=params.index)


def cif_plot(
    curves: Mapping[str, pd.DataFrame],
    min_cell: int,
    times: Sequence[float],
    time_label: str = "Days since start of first-line treatment",
    ylabel: str = "Cumulative incidence",
    title: str = "",
    ci: bool = True,
):
    """Cumulative incidence curves by group with the numbers at risk under the time axis.

    Privacy: each curve is drawn only while at least ``min_cell`` persons remain at risk
    (:func:`pmed.privacy.release_km`); a group with fewer persons is not drawn (its label is listed
    in the figure's note); counts in 1..min_cell-1 are shown as "<min_cell".
    ``curves``: :func:`cif_by_group` output; ``times``: where numbers at risk are shown.
    Returns the matplotlib Figure.
    """
    shown = {lab: release_km(c, min_cell) for lab, c in curves.items()}
    hidden = [lab for lab, c in shown.items() if c.empty]
    shown = {lab: c for lab, c in shown.items() if not c.empty}
    n_rows = max(len(shown), 1)
    fig, ax, tab = risk_table_figure(n_rows)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    times = [float(x) for x in times]
    top = 0.0
    for i, (label, cur) in enumerate(shown.items()):
        colour = colours[i % len(colours)]
        ax.step(cur["time"], cur["cif"], where="post", color=colour, label=label)
        if ci:
            ax.fill_between(cur["time"], cur["ci_low"], cur["ci_high"], step="post", color=colour, alpha=0.15, lw=0)
        top = max(top, float(cur["ci_high" if ci else "cif"].max()))
        counts = cif_at(curves[label], times)["n_at_risk"]
        for x, n in zip(times, counts, strict=True):
            tab.text(x, n_rows - 1 - i, format_count(n, min_cell), ha="center", va="center", color=colour, fontsize=8)
    ax.set_ylim(0, min(1.0, max(0.05, top * 1.1)))
    if times:
        ax.set_xlim(-0.06 * max(times), max(times) * 1.04)
        ax.set_xticks(times)
    ax.set_ylabel(ylabel)
    if shown:
        ax.legend(loc="upper left", frameon=False)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if hidden:
        ax.text(0.99, 0.02, f"Not shown (< {min_cell} persons): {', '.join(hidden)}", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7)
    plt.setp(ax.get_xticklabels(), visible=False)
    style_risk_table(tab, list(shown), n_rows, time_label)
    return fig
