"""Competing risks: Aalen-Johansen cumulative incidence, Gray's test, cause-specific and
Fine-Gray Cox models, and a privacy-aware cumulative-incidence plot.

Conventions: ``status`` is 0 censored, 1 event of interest, 2 competing event (death first),
as the cohort's ``<outcome>_status`` columns; ``cause`` picks which non-zero code is "of
interest" (the other one competes). Times are in days (any unit works, it is carried through).

Each estimator reproduces a published R implementation; tests compare with output of
``tests/r/competing_reference.R`` (R 4.2, survival 3.5-3, cmprsk 2.2-11):

- :func:`cumulative_incidence`: ``cmprsk::cuminc`` estimate and variance (Aalen-Johansen
  estimator; delta-method variance with the hypergeometric tie correction of Gray's ``cinc``),
  with a pointwise CI on the log(-log) scale (cmprsk gives no CI).
- :func:`gray_test`: the k-sample test of ``cmprsk::cuminc`` (Gray 1988, rho = 0 by default).
- :func:`fit_cause_specific`: ``coxph(Surv(time, status == cause) ~ x)`` (Efron ties).
- :func:`finegray`: the weighted counting-process data set of ``survival::finegray`` and
  :func:`fit_fine_gray`: ``coxph(Surv(fgstart, fgstop, fgstatus) ~ x + cluster(id),
  weights = fgwt)`` (Efron ties, robust SE clustered by person; ``se="row"`` gives coxph's
  default of one cluster per row).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.exceptions import StatisticalWarning
from scipy import stats

from pmed.plots import risk_table_figure, style_risk_table
from pmed.privacy import format_count, release_counts, release_km
from pmed.survival import cox_table, require_columns, require_events

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
    "finegray",
    "fit_fine_gray",
    "cif_plot",
]


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


def status_table(status, group, min_cell: int) -> pd.DataFrame:
    """Events, competing events, censored and persons per group and in total, as report text.

    Rows: the group labels (sorted) and ``"total"``; columns ``events``, ``competing``,
    ``censored``, ``persons``. Counts pass :func:`pmed.privacy.release_counts` with every row
    (persons = events + competing + censored) and every column (total = sum of the groups)
    as a published relation, so no small count can be derived from the others.
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
    lines = [list(row) for row in idx] + [list(col) for col in idx.T]
    text = release_counts(counts.ravel(), lines, min_cell)
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
    cph.fit(frame, duration_col, "_cs_event", strata=list(strata) or None, fit_options=_FIT_OPTIONS)
    return cph


def finegray(df: pd.DataFrame, duration_col: str, status_col: str, cause: int = 1, id_col: str | None = None) -> pd.DataFrame:
    """Weighted counting-process data set of the Fine-Gray model, as R ``survival::finegray``.

    Persons with the competing event stay in the risk set after it, with weight G(t) / G(T_i)
    (G = Kaplan-Meier of the censoring distribution, censorings after events at tied times),
    split at the censoring times where G changes and kept only over intervals that contain
    an event of ``cause`` (others do not enter the partial likelihood). Right-censored data
    without strata (finegray's delayed-entry and strata cases are not supported).

    Returns the columns of ``df`` (rows repeated) plus ``fgstart``, ``fgstop``, ``fgstatus``
    (1 = event of ``cause``), ``fgwt`` and ``fgid`` (``df[id_col]``, or the row position).
    Times start at 0 (at 2 * min(time) - 1 when a time is 0, as finegray).
    """
    require_columns(df, [duration_col, status_col] + ([id_col] if id_col else []), "finegray")
    other = _other(cause)
    t, s = check_competing_data(df[duration_col], df[status_col], f"finegray ({duration_col}, {status_col})")
    if not (s == cause).any():
        raise ValueError(f"finegray: no event with {status_col} == {cause}")
    zero = 0.0 if t.min() > 0 else 2 * t.min() - 1
    # censoring Kaplan-Meier at its jump times (a person with an event at c is not at risk of censoring at c)
    ctime, n_cens = np.unique(t[s == 0], return_counts=True)
    at_risk = t.size - np.searchsorted(np.sort(t), ctime, side="right") + n_cens
    gprob = np.cumprod(1 - n_cens / at_risk)
    cut = np.concatenate([ctime, [t.max()]])             # interval j = (cut[j-1], cut[j]]
    prob = np.concatenate([[1.0], gprob])                # G on interval j (G just after cut[j-1])
    keep = np.zeros(cut.size, dtype=bool)                # intervals with an event of the cause
    keep[np.searchsorted(cut, np.unique(t[s == cause]), side="left")] = True
    keep[0] = True
    kept = np.flatnonzero(keep)

    rows, start, stop, wt = [np.arange(t.size)], [np.full(t.size, zero)], [t.copy()], [np.ones(t.size)]
    comp = np.flatnonzero(s == other)
    j0 = np.searchsorted(cut, t[comp], side="left")       # interval holding each competing time
    stop[0][comp] = cut[j0]                              # first row runs to the end of that interval
    for i, j in zip(comp, j0, strict=True):
        later = kept[kept > j]
        if later.size:
            rows.append(np.full(later.size, i))
            start.append(cut[later - 1])
            stop.append(cut[later])
            wt.append(prob[later] / prob[j])
    row = np.concatenate(rows)
    order = np.lexsort((np.concatenate(start), row))
    row = row[order]
    out = df.iloc[row].reset_index(drop=True)
    out["fgstart"] = np.concatenate(start)[order]
    out["fgstop"] = np.concatenate(stop)[order]
    out["fgstatus"] = (s[row] == cause).astype(int)
    out["fgwt"] = np.concatenate(wt)[order]
    out["fgid"] = df[id_col].to_numpy()[row] if id_col else row
    return out


def _efron_score_residuals(x, start, stop, event, weight, beta):
    """Score residuals (n, p) of a weighted Efron Cox model on (start, stop] data (unweighted, as R)."""
    risk = np.exp(x @ beta)
    wr = weight * risk
    ev_t = np.unique(stop[event == 1])
    # risk-set sums at each event time: rows with stop >= t minus rows with start >= t
    o_stop, o_start = np.argsort(stop), np.argsort(start)

    def tail_sum(sorted_key, order, vals):
        csum = np.concatenate([np.cumsum(vals[order][::-1], axis=0)[::-1], np.zeros((1,) + vals.shape[1:])])
        return csum[np.searchsorted(sorted_key, ev_t, side="left")]

    vals = np.column_stack([wr, wr[:, None] * x])
    risk_sum = tail_sum(stop[o_stop], o_stop, vals) - tail_sum(start[o_start], o_start, vals)
    dead = event == 1
    pos = np.searchsorted(ev_t, stop[dead])
    p = x.shape[1]
    tie = np.zeros((ev_t.size, p + 2))                   # sum w*risk, sum w*risk*x, sum w over deaths
    np.add.at(tie, pos, np.column_stack([wr[dead], wr[dead, None] * x[dead], weight[dead]]))
    nd = np.bincount(pos, minlength=ev_t.size)
    mean_w = tie[:, -1] / nd
    kmax = nd.max()
    frac = np.arange(kmax)[None, :] / nd[:, None]        # k / d for k < d (masked beyond d)
    valid = np.arange(kmax)[None, :] < nd[:, None]
    denom = risk_sum[:, :1] - frac * tie[:, :1]          # (J, K)
    haz = np.where(valid, mean_w[:, None] / denom, 0.0)
    xbar = (risk_sum[:, None, 1:] - frac[:, :, None] * tie[:, None, 1:p + 1]) / denom[:, :, None]  # (J, K, p)
    big_h = haz.sum(axis=1)
    big_hx = np.einsum("jk,jkp->jp", haz, xbar)
    down = np.where(valid, 1 - frac, 0.0)
    hd = (haz * down).sum(axis=1)
    hdx = np.einsum("jk,jkp->jp", haz * down, xbar)
    xbar_mean = np.einsum("jk,jkp->jp", valid / nd[:, None], xbar)
    cum_h = np.concatenate([[0.0], np.cumsum(big_h)])
    cum_hx = np.vstack([np.zeros((1, p)), np.cumsum(big_hx, axis=0)])
    lo = np.searchsorted(ev_t, start, side="right")
    hi = np.searchsorted(ev_t, stop, side="right")
    resid = -risk[:, None] * (x * (cum_h[hi] - cum_h[lo])[:, None] - (cum_hx[hi] - cum_hx[lo]))
    # a death at its own time: observed term, and only a (1 - k/d) share of each Efron step
    resid[dead] += risk[dead, None] * (x[dead] * big_h[pos, None] - big_hx[pos])
    resid[dead] -= risk[dead, None] * (x[dead] * hd[pos, None] - hdx[pos])
    resid[dead] += x[dead] - xbar_mean[pos]
    return resid


def fit_fine_gray(
    df: pd.DataFrame,
    duration_col: str,
    status_col: str,
    covariates: Sequence[str],
    cause: int = 1,
    id_col: str | None = None,
    se: str = "cluster",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Fine-Gray subdistribution hazard ratios of ``cause``: :func:`finegray` + weighted Cox.

    Complete-case on ``covariates``. The weighted Efron Cox fit on (fgstart, fgstop] is
    lifelines' ``CoxPHFitter`` with ``entry_col`` and ``weights_col``; its robust (sandwich)
    variance is computed here from the score residuals: ``se="cluster"`` sums them per person
    (R ``+ cluster(id)``, close to ``cmprsk::crr``'s SE), ``se="row"`` treats each row as
    independent (``coxph``'s default with non-integer weights), ``se="naive"`` is the inverse
    information. Returns the table of :func:`pmed.survival.cox_table` (``log_hr`` = log
    subdistribution HR, ``se``, CIs, ``hr``, ``p_value``) plus ``se_naive``.
    """
    if se not in ("cluster", "row", "naive"):
        raise ValueError(f"fit_fine_gray: se must be 'cluster', 'row' or 'naive', got {se!r}")
    require_columns(df, [duration_col, status_col, *covariates] + ([id_col] if id_col else []), "fit_fine_gray")
    frame = df[[duration_col, status_col, *covariates] + ([id_col] if id_col else [])].dropna()
    require_events(f"Fine-Gray model ({status_col} == {cause})", (frame[status_col] == cause).sum(),
                   len(covariates))
    frame = frame.astype({c: float for c in covariates})
    fg = finegray(frame, duration_col, status_col, cause, id_col)
    fit_cols = [*covariates, "fgstart", "fgstop", "fgstatus", "fgwt"]
    cph = CoxPHFitter(alpha=alpha)
    with warnings.catch_warnings():  # non-integer weights: lifelines warns; the sandwich SE is computed below
        warnings.simplefilter("ignore", StatisticalWarning)
        cph.fit(fg[fit_cols], duration_col="fgstop", event_col="fgstatus", entry_col="fgstart", weights_col="fgwt",
                fit_options=_FIT_OPTIONS)
    beta = cph.params_.to_numpy()
    naive = cph.variance_matrix_.to_numpy()
    if se == "naive":
        var = naive
    else:
        x = fg[list(covariates)].to_numpy(dtype=float)
        resid = _efron_score_residuals(x, fg["fgstart"].to_numpy(float), fg["fgstop"].to_numpy(float),
                                       fg["fgstatus"].to_numpy(), fg["fgwt"].to_numpy(float), beta)
        dfbeta = (fg["fgwt"].to_numpy(float)[:, None] * resid) @ naive
        if se == "cluster":
            dfbeta = pd.DataFrame(dfbeta).groupby(fg["fgid"].to_numpy()).sum().to_numpy()
        var = dfbeta.T @ dfbeta
    table = cox_table(_Coefs(cph.params_, np.sqrt(np.diag(var))), alpha=alpha)
    table["se_naive"] = np.sqrt(np.diag(naive))
    table.attrs.update(n_rows=len(fg), n_persons=len(frame), n_events=int((fg["fgstatus"] == 1).sum()))
    return table


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
