"""Discrimination and accuracy metrics for risk predictions, and bootstrap CIs.

Survival metrics (Harrell's and Uno's C, cumulative/dynamic time-dependent AUC, Brier score,
integrated Brier score) equal scikit-survival's (tested on random data with ties) but run in
O(n log n) time and O(n) memory: the concordance counts come from one sort and a bitwise
radix count of later subjects with lower risk, not from pairs. Inverse-probability-of-censoring
weights (IPCW) come from the Kaplan-Meier estimate of the censoring distribution of the
*training* data (scikit-survival's ``CensoringDistributionEstimator``; ``train_time``/
``train_event``, default: the evaluation data themselves). Binary metrics (AUROC, AUPRC, sensitivity, PPV) accept case weights so that a horizon outcome with IPCW
weights (:func:`horizon_outcome`) is evaluated without bias from censoring.

``risk`` is always "higher = worse" (e.g. predicted probability of death by the horizon,
or a Cox linear predictor); ``survival`` arrays hold predicted S(t | x) with shape (n, k).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score
from sksurv.nonparametric import CensoringDistributionEstimator
from sksurv.util import Surv

from pmed.parallel import resamples, run_tasks
from pmed.survival import check_survival_data

__all__ = [
    "horizon_outcome",
    "harrell_c",
    "uno_c",
    "td_auc",
    "brier_score",
    "integrated_brier_score",
    "auroc",
    "auprc",
    "sensitivity_ppv",
    "risk_metrics",
    "risk_metrics_by_model",
    "resamples",
    "bootstrap",
    "ci_table",
]


def _surv(time, event, name):
    t, e = check_survival_data(time, event, name)
    return Surv.from_arrays(event=e.astype(bool), time=t)


def _train(time, event, train_time, train_event, name):
    if (train_time is None) != (train_event is None):
        raise ValueError(f"{name}: give both train_time and train_event, or neither")
    if train_time is None:
        return _surv(time, event, name)
    return _surv(train_time, train_event, name)


def _censoring_km(time, event):
    """Kaplan-Meier of the censoring distribution: (jump times, G at those times)."""
    t, e = check_survival_data(time, event, "censoring KM")
    cens_times, n_cens = np.unique(t[e == 0], return_counts=True)
    n_risk = t.size - np.searchsorted(np.sort(t), cens_times, side="left")
    return cens_times, np.cumprod(1 - n_cens / n_risk)


def _step(times, values, x, left: bool):
    """Right-continuous step function (1 before the first jump) at x, or its left limit;
    1 everywhere when there is no jump (e.g. a censoring KM of a sample nobody left)."""
    if len(values) == 0:
        return np.ones(np.shape(x))
    idx = np.searchsorted(times, x, side="left" if left else "right") - 1
    return np.where(idx >= 0, values[np.clip(idx, 0, None)], 1.0)


def horizon_outcome(time, event, horizon: float) -> pd.DataFrame:
    """Binary outcome "event by ``horizon``" with IPCW weights for censoring before it.

    Returns a DataFrame (same row order) with ``y`` (1 = event at t <= horizon, 0 = known
    event-free at the horizon, NaN = censored before the horizon: status unknown), ``known``
    (bool) and ``ipcw``: 1 / G(T_i-) for events by the horizon, 1 / G(horizon) for people
    followed past it, 0 for those censored earlier; G is the KM estimate of the censoring
    survival function. Weighted means of ``y`` then estimate the horizon risk consistently
    (equal to 1 - KM(horizon) for a single group).
    """
    t, e = check_survival_data(time, event, "horizon_outcome")
    if horizon <= 0:
        raise ValueError(f"horizon_outcome: horizon must be > 0, got {horizon}")
    case = (t <= horizon) & (e == 1)
    control = t > horizon
    known = case | control
    cens_times, g = _censoring_km(t, e)
    g_case = _step(cens_times, g, t, left=True)
    g_h = float(_step(cens_times, g, np.array([horizon]), left=False)[0])
    w = np.where(case, 1 / g_case, np.where(control, 1 / g_h, 0.0))
    y = np.where(case, 1.0, np.where(control, 0.0, np.nan))
    return pd.DataFrame({"y": y, "known": known, "ipcw": w})


def _later_smaller_equal(rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position k of ``rank`` (n,) non-negative ints: #{j > k: rank_j < rank_k}, #{j > k: rank_j == rank_k}.

    Bitwise radix partition, most significant bit first: at each bit the positions are
    stably split, within their segment of equal higher bits, into bit 0 then bit 1, and
    every element with bit 1 counts the bit-0 elements after it in its segment. O(n log n)
    time (vectorised O(n) work per bit of the largest rank), O(n) memory.
    """
    n = rank.size
    idx = np.int32 if n < 2**31 - 1 else np.int64  # narrower indices: less memory traffic
    rank = rank.astype(idx)
    pos = np.arange(n, dtype=idx)
    perm = pos.copy()
    seg_start, seg_end = np.zeros(n, dtype=idx), np.full(n, n, dtype=idx)
    less = np.zeros(n, dtype=np.int64)
    for b in range(int(rank.max()).bit_length() - 1 if n else -1, -1, -1):
        bit = (rank[perm] >> b) & 1
        zero = 1 - bit
        cz = np.cumsum(zero, dtype=idx)  # zeros at arranged positions <= k
        zeros_to_end = cz[seg_end - 1]
        zeros_before_seg = cz[seg_start] - zero[seg_start]
        less[perm] += bit * (zeros_to_end - cz)  # bit-0 elements after k in its segment
        split = seg_start + zeros_to_end - zeros_before_seg
        zeros_before_k = cz - zero - zeros_before_seg
        new_pos = np.where(bit == 0, seg_start + zeros_before_k, split + (pos - seg_start - zeros_before_k))
        perm[new_pos] = perm.copy()
        seg_start[new_pos], seg_end[new_pos] = np.where(bit == 0, seg_start, split), np.where(bit == 0, split, seg_end)
    equal = np.empty(n, dtype=np.int64)
    equal[perm] = seg_end - 1 - pos  # segments are now the classes of equal rank, in position order
    return less, equal


def _concordance_counts(time, event, risk):
    """Per-event pair counts for concordance indices, in O(n log n) time and O(n) memory.

    Event i is comparable with every j with T_j > T_i and with censored j with T_j = T_i
    (scikit-survival's, lifelines' and R ``survival::concordance``'s convention; two events
    at the same time are not comparable). Risks are tied only when exactly equal. Returns,
    for each subject (0 for censored ones): the number of comparable j with lower risk,
    with equal risk, and in total (int64 arrays, shape (n,)).

    Subjects are ordered by time, events before censorings at the same time and, among
    events at one time, by decreasing risk; every later subject is comparable except the
    later events at the same time, which all have lower or equal risk and are subtracted.
    """
    t = np.asarray(time, dtype=float)
    e = np.asarray(event).astype(bool)
    r = np.asarray(risk, dtype=float)
    if r.shape != t.shape or np.any(~np.isfinite(r)):
        raise ValueError(f"concordance: risk must be finite with shape {t.shape}, got {r.shape}")
    n = t.size
    order = np.lexsort((-r, ~e, t))
    rank = np.unique(r[order], return_inverse=True)[1].astype(np.int64).ravel()
    less, equal = _later_smaller_equal(rank)
    ev = np.flatnonzero(e[order])  # arranged positions of the events
    t_ev, rank_ev = t[order][ev], rank[ev]
    new_time = np.r_[True, t_ev[1:] != t_ev[:-1]]
    new_class = new_time | np.r_[True, rank_ev[1:] != rank_ev[:-1]]
    time_end = _run_end(new_time)  # index (among events) past the last event at this time
    class_end = _run_end(new_class)  # ... past the last event at this time with this risk
    k = np.arange(ev.size)
    out_less, out_equal, out_total = (np.zeros(n, dtype=np.int64) for _ in range(3))
    out_less[order[ev]] = less[ev] - (time_end - class_end)
    out_equal[order[ev]] = equal[ev] - (class_end - 1 - k)
    out_total[order[ev]] = (n - 1 - ev) - (time_end - 1 - k)
    return out_less, out_equal, out_total


def _run_end(starts: np.ndarray) -> np.ndarray:
    """For runs marked by ``starts`` (bool (m,), True at each run's first element): the end
    (exclusive) of each element's run."""
    first = np.flatnonzero(starts)
    return np.repeat(np.r_[first[1:], starts.size], np.diff(np.r_[first, starts.size]))


def harrell_c(time, event, risk) -> float:
    """Harrell's concordance index: P(higher risk | pair ordered by an observed event).

    Ties in risk count 1/2; an event is comparable with later times and with censorings
    at its own time (as scikit-survival's ``concordance_index_censored`` and R's
    ``survival::concordance``).
    """
    t, e = check_survival_data(time, event, "harrell_c")
    return _harrell_from_counts(*_concordance_counts(t, e, risk))


def _harrell_from_counts(less, equal, total):
    if total.sum() == 0:
        raise ValueError("harrell_c: no comparable pairs (no event before another time)")
    return float((less.sum() + 0.5 * equal.sum()) / total.sum())


def uno_c(time, event, risk, tau: float, train_time=None, train_event=None) -> float:
    """Uno's IPCW concordance index truncated at ``tau`` (Uno et al. 2011, Stat Med 30:1105).

    Pairs are weighted by 1 / G(T_i)^2, G the KM censoring survival of the training data
    (scikit-survival's ``CensoringDistributionEstimator``); events at T_i >= tau get weight 0.
    Equals scikit-survival's ``concordance_index_ipcw`` with exact risk ties (``tied_tol=0``).
    """
    t, e = check_survival_data(time, event, "uno_c")
    cens = _censoring(_train(time, event, train_time, train_event, "uno_c"))
    return _uno_from_counts(t, e, tau, cens, *_concordance_counts(t, e, risk))


def _censoring(train) -> CensoringDistributionEstimator:
    return CensoringDistributionEstimator().fit(train)


def _uno_from_counts(t, e, tau, cens, less, equal, total):
    w = np.zeros(t.size)
    early = t < tau
    w[early] = cens.predict_ipcw(_surv(t[early], e[early], "uno_c")) ** 2
    if np.sum(w * total) == 0:
        raise ValueError("uno_c: no comparable pairs with an event before tau")
    return float(np.sum(w * (less + 0.5 * equal)) / np.sum(w * total))


def _check_times(t, times, name) -> np.ndarray:
    times = np.atleast_1d(np.asarray(times, dtype=float))
    if times.ndim != 1 or np.any(np.diff(times) <= 0):
        raise ValueError(f"{name}: times must be strictly increasing, got {times.tolist()}")
    if times.max() >= t.max() or times.min() < t.min():
        raise ValueError(f"{name}: all times must be within the follow-up of the data [{t.min()}; {t.max()}[")
    return times


def _td_auc_fitted(cens, t, e, risk, times, tied_tol: float = 1e-8) -> np.ndarray:
    """td-AUC at ``times`` with a fitted censoring estimator: O(n log n) per time point.

    Cases (event by s) weigh 1 / G(T_i), controls (T_j > s) 1; pairs ordered by risk count
    1, ties 1/2, risks within ``tied_tol`` of their neighbour in sorted order being tied
    (scikit-survival's ``cumulative_dynamic_auc``).
    """
    times = _check_times(t, times, "td_auc")
    risk = np.asarray(risk, dtype=float)
    if risk.shape not in ((t.size,), (t.size, times.size)):
        raise ValueError(f"td_auc: risk must have shape ({t.size},) or ({t.size}, {times.size}), got {risk.shape}")
    ipcw = cens.predict_ipcw(_surv(t, e, "td_auc"))
    auc = np.empty(times.size)
    for k, s in enumerate(times):
        r = risk if risk.ndim == 1 else risk[:, k]
        o = np.argsort(-r, kind="stable")
        group = np.cumsum(np.r_[True, np.abs(np.diff(r[o])) > tied_tol]) - 1
        case_w = np.bincount(group, weights=(ipcw * ((t <= s) & (e == 1)))[o])
        controls = np.bincount(group, weights=(t > s)[o].astype(float))
        below = controls.sum() - np.cumsum(controls)  # controls with lower risk than the group
        with np.errstate(invalid="ignore", divide="ignore"):
            auc[k] = np.sum(case_w * (below + 0.5 * controls)) / (case_w.sum() * controls.sum())
    return auc


def _brier_fitted(cens, t, e, survival, times) -> np.ndarray:
    times = _check_times(t, times, "brier_score")
    surv = np.asarray(survival, dtype=float).reshape(t.size, -1)
    if surv.shape[1] != times.size:
        raise ValueError(f"brier_score: survival has {surv.shape[1]} columns for {times.size} times")
    g_times = cens.predict_proba(times)
    g_times[g_times == 0] = np.inf
    g_obs = cens.predict_proba(t)
    g_obs[g_obs == 0] = np.inf
    event = e == 1
    return np.array([
        np.mean(surv[:, k] ** 2 * ((t <= s) & event) / g_obs + (1 - surv[:, k]) ** 2 * (t > s) / g_times[k])
        for k, s in enumerate(times)
    ])


def _ibs_fitted(cens, t, e, survival, times) -> float:
    times = _check_times(t, times, "integrated_brier_score")
    if times.size < 2:
        raise ValueError("integrated_brier_score: at least two time points are needed")
    return float(np.trapezoid(_brier_fitted(cens, t, e, survival, times), times) / (times[-1] - times[0]))


def td_auc(time, event, risk, times: Sequence[float], train_time=None, train_event=None) -> np.ndarray:
    """Cumulative/dynamic AUC(t) at each of ``times`` (IPCW; Uno 2007, Hung & Chiang 2010).

    Cases: event by t; controls: still event-free after t. Returns shape (len(times),).
    ``risk`` may be (n,) (one score for all times) or (n, len(times)); ``times`` strictly
    increasing within [min, max[ of the follow-up. Equals scikit-survival's
    ``cumulative_dynamic_auc`` (one sort per time point, no n x n work).
    """
    t, e = check_survival_data(time, event, "td_auc")
    cens = _censoring(_train(time, event, train_time, train_event, "td_auc"))
    return _td_auc_fitted(cens, t, e, risk, times)


def brier_score(time, event, survival, times: Sequence[float], train_time=None, train_event=None) -> np.ndarray:
    """IPCW Brier score at each of ``times`` (Graf et al. 1999); ``survival`` shape (n, k).

    Equals scikit-survival's ``brier_score``.
    """
    t, e = check_survival_data(time, event, "brier_score")
    cens = _censoring(_train(time, event, train_time, train_event, "brier_score"))
    return _brier_fitted(cens, t, e, survival, times)


def integrated_brier_score(
    time, event, survival, times: Sequence[float], train_time=None, train_event=None
) -> float:
    """Integrated Brier score over ``times`` (trapezoid rule, divided by the time range)."""
    t, e = check_survival_data(time, event, "integrated_brier_score")
    cens = _censoring(_train(time, event, train_time, train_event, "integrated_brier_score"))
    return _ibs_fitted(cens, t, e, survival, times)


def _binary_inputs(y, score, weights, name):
    y = np.asarray(y, dtype=float)
    s = np.asarray(score, dtype=float)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    if not (y.shape == s.shape == w.shape):
        raise ValueError(f"{name}: y {y.shape}, score {s.shape}, weights {w.shape} differ in shape")
    keep = w > 0
    if np.any(np.isnan(y[keep])) or not np.all(np.isin(y[keep], (0.0, 1.0))):
        raise ValueError(f"{name}: y must be 0/1 wherever the weight is > 0")
    return y[keep], s[keep], w[keep]


def auroc(y, score, weights=None) -> float:
    """(Weighted) area under the ROC curve; rows with weight 0 are ignored."""
    y, s, w = _binary_inputs(y, score, weights, "auroc")
    return float(roc_auc_score(y, s, sample_weight=w))


def auprc(y, score, weights=None) -> float:
    """(Weighted) average precision (area under the precision-recall curve)."""
    y, s, w = _binary_inputs(y, score, weights, "auprc")
    return float(average_precision_score(y, s, sample_weight=w))


def sensitivity_ppv(y, flag, weights=None) -> dict[str, float]:
    """(Weighted) sensitivity, specificity, PPV and NPV of a 0/1 ``flag`` (e.g. high risk)."""
    y, f, w = _binary_inputs(y, flag, weights, "sensitivity_ppv")
    f = f.astype(bool)
    tp, fp = np.sum(w * (y == 1) * f), np.sum(w * (y == 0) * f)
    fn, tn = np.sum(w * (y == 1) * ~f), np.sum(w * (y == 0) * ~f)
    div = lambda a, b: float(a / b) if b > 0 else float("nan")  # noqa: E731
    return {
        "sensitivity": div(tp, tp + fn),
        "specificity": div(tn, tn + fp),
        "ppv": div(tp, tp + fp),
        "npv": div(tn, tn + fn),
    }


def risk_metrics(
    time,
    event,
    risk,
    horizon: float,
    threshold: float,
    survival=None,
    times: Sequence[float] | None = None,
    train_time=None,
    train_event=None,
) -> dict[str, float]:
    """All accuracy measures of one risk prediction for death by ``horizon``.

    Parameters
    ----------
    time, event : array, shape (n,)
        Observed follow-up and event indicator.
    risk : array, shape (n,)
        Predicted probability of the event by ``horizon``.
    threshold : float
        Risk threshold defining "high risk" (net benefit, sensitivity, PPV).
    survival, times : optional
        Predicted survival curves (n, k) at ``times`` (must include ``horizon``), for the
        integrated Brier score over ``times``.

    Returns
    -------
    dict with ``harrell_c``, ``uno_c`` (truncated at the horizon), ``td_auc`` (at the
    horizon), ``brier`` (at the horizon), ``auroc``, ``auprc``, ``calibration_slope``,
    ``calibration_intercept``, ``oe_ratio``, ``net_benefit``, ``sensitivity``, ``ppv``
    (binary measures IPCW-weighted, see :func:`horizon_outcome`), and ``ibs`` if curves given.
    """
    curves = None if survival is None else {"model": survival}
    return risk_metrics_by_model(time, event, {"model": risk}, horizon, threshold, curves, times,
                                 train_time, train_event)["model"]


def risk_metrics_by_model(
    time,
    event,
    risks: Mapping[str, np.ndarray],
    horizon: float,
    threshold: float,
    survival: Mapping[str, np.ndarray] | None = None,
    times: Sequence[float] | None = None,
    train_time=None,
    train_event=None,
) -> dict[str, dict[str, float]]:
    """:func:`risk_metrics` of several models' risks ``{model: (n,)}`` for the same people.

    The horizon outcome, its IPCW weights and the censoring distribution are computed once
    and shared (the same values as separate :func:`risk_metrics` calls). ``survival`` maps
    some of the models to curves (n, k) at ``times`` (their ``ibs``). Returns
    ``{model: metrics}`` in the order of ``risks``.
    """
    from pmed import calibration as cal

    t, e = check_survival_data(time, event, "risk_metrics")
    out = horizon_outcome(t, e, horizon)
    y, w = out["y"].to_numpy(), out["ipcw"].to_numpy()
    cens = _censoring(_train(time, event, train_time, train_event, "risk_metrics"))
    survival = survival or {}
    res = {}
    for name, risk in risks.items():
        risk = np.asarray(risk, dtype=float)
        counts = _concordance_counts(t, e, risk)
        slope = cal.calibration_slope_intercept(y, risk, w)
        m = {
            "harrell_c": _harrell_from_counts(*counts),
            "uno_c": _uno_from_counts(t, e, horizon, cens, *counts),
            "td_auc": float(_td_auc_fitted(cens, t, e, risk, [horizon])[0]),
            "brier": float(_brier_fitted(cens, t, e, 1 - risk[:, None], [horizon])[0]),
            "auroc": auroc(y, risk, w),
            "auprc": auprc(y, risk, w),
            "calibration_slope": slope["slope"],
            "calibration_intercept": slope["intercept"],
            "oe_ratio": cal.observed_expected(y, risk, w),
            "net_benefit": cal.net_benefit(y, risk, threshold, w),
        }
        m.update({k: v for k, v in sensitivity_ppv(y, risk >= threshold, w).items() if k in ("sensitivity", "ppv")})
        if name in survival:
            m["ibs"] = _ibs_fitted(cens, t, e, survival[name], times)
        res[name] = m
    return res


def _guarded(statistic, idx):
    try:
        return statistic(idx)
    except ValueError:
        return {}


def bootstrap(
    statistic: Callable[[np.ndarray], dict[str, float]],
    n: int,
    n_boot: int,
    seed: int,
    n_jobs: int = 1,
) -> pd.DataFrame:
    """Replicates of ``statistic`` over ``n_boot`` resamples (with replacement) of n rows.

    ``statistic(idx)`` receives an int array of row indices, shape (n,), and returns a dict
    of floats. A replicate where it raises ``ValueError`` (e.g. a resample with no events)
    is recorded as NaN. Resamples come from :func:`pmed.parallel.resamples` (``seed``) in the calling
    process and run in ``n_jobs`` processes with one BLAS thread each
    (:func:`pmed.parallel.run_tasks`), so the result does not depend on ``n_jobs``.
    Returns a DataFrame, one row per replicate.
    """
    if n_boot < 1:
        raise ValueError(f"bootstrap: n_boot must be >= 1, got {n_boot}")
    rows = run_tasks(partial(_guarded, statistic), resamples(n, n_boot, seed), n_jobs)
    return pd.DataFrame(rows)


def ci_table(point: dict[str, float], replicates: pd.DataFrame, alpha: float = 0.05) -> dict[str, dict]:
    """Percentile bootstrap CIs: ``{name: {"estimate", "ci_low", "ci_high", "n_boot"}}``.

    ``estimate`` is the full-sample value from ``point``; NaN replicates are dropped and
    ``n_boot`` counts the valid ones.
    """
    out = {}
    for name, est in point.items():
        reps = replicates[name].dropna().to_numpy(dtype=float) if name in replicates else np.array([])
        if reps.size:
            lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
        else:
            lo = hi = float("nan")
        out[name] = {"estimate": float(est), "ci_low": float(lo), "ci_high": float(hi), "n_boot": int(reps.size)}
    return out
