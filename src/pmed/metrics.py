"""Discrimination and accuracy metrics for risk predictions, and bootstrap CIs.

Survival metrics (Harrell's and Uno's C, cumulative/dynamic time-dependent AUC, Brier score,
integrated Brier score) wrap scikit-survival; inverse-probability-of-censoring weights (IPCW)
come from the Kaplan-Meier estimate of the censoring distribution of the *training* data
(``train_time``/``train_event``; default: the evaluation data themselves). Binary metrics
(AUROC, AUPRC, sensitivity, PPV) accept case weights so that a horizon outcome with IPCW
weights (:func:`horizon_outcome`) is evaluated without bias from censoring.

``risk`` is always "higher = worse" (e.g. predicted probability of death by the horizon,
or a Cox linear predictor); ``survival`` arrays hold predicted S(t | x) with shape (n, k).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score
from sksurv.metrics import brier_score as _sks_brier
from sksurv.metrics import cumulative_dynamic_auc
from sksurv.metrics import integrated_brier_score as _sks_ibs
from sksurv.nonparametric import CensoringDistributionEstimator
from sksurv.util import Surv

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
    """Right-continuous step function (1 before the first jump) at x, or its left limit."""
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


def _concordance_counts(time, event, risk, block: int = 256):
    """Per-event pair counts for concordance indices, in O(n sqrt(n)) vectorised work.

    Event i is comparable with every j with T_j > T_i and with censored j with T_j = T_i
    (scikit-survival's and lifelines' convention). Returns, for each subject (0 for censored
    ones): the number of comparable j with lower risk, with equal risk, and in total.
    """
    t = np.asarray(time, dtype=float)
    e = np.asarray(event).astype(bool)
    r = np.asarray(risk, dtype=float)
    if r.shape != t.shape or np.any(~np.isfinite(r)):
        raise ValueError(f"concordance: risk must be finite with shape {t.shape}, got {r.shape}")
    n = t.size
    order = np.lexsort((~e, t))  # by time, events before censored at the same time
    time_rank = np.unique(t, return_inverse=True)[1]
    key = 2 * time_rank + (~e)
    key_sorted = key[order]
    r_sorted = r[order]
    ev = np.flatnonzero(e)
    start = np.searchsorted(key_sorted, 2 * time_rank[ev] + 1, side="left")  # first comparable
    rq = r[ev]
    n_blocks = -(-n // block)
    less_blocks = np.zeros((ev.size, n_blocks + 1))
    equal_blocks = np.zeros((ev.size, n_blocks + 1))
    for b in range(n_blocks):
        sorted_block = np.sort(r_sorted[b * block:(b + 1) * block])
        lo = np.searchsorted(sorted_block, rq, side="left")
        less_blocks[:, b] = lo
        equal_blocks[:, b] = np.searchsorted(sorted_block, rq, side="right") - lo
    less_suffix = np.cumsum(less_blocks[:, ::-1], axis=1)[:, ::-1]
    equal_suffix = np.cumsum(equal_blocks[:, ::-1], axis=1)[:, ::-1]
    first_full = -(-start // block)
    rows = np.arange(ev.size)
    less = less_suffix[rows, first_full]
    equal = equal_suffix[rows, first_full]
    partial = start[:, None] + np.arange(block)[None, :]
    valid = partial < np.minimum(first_full * block, n)[:, None]
    vals = r_sorted[np.clip(partial, 0, n - 1)]
    less = less + np.sum(valid & (vals < rq[:, None]), axis=1)
    equal = equal + np.sum(valid & (vals == rq[:, None]), axis=1)
    out_less, out_equal, out_total = np.zeros(n), np.zeros(n), np.zeros(n)
    out_less[ev], out_equal[ev], out_total[ev] = less, equal, n - start
    return out_less, out_equal, out_total


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
    """
    t, e = check_survival_data(time, event, "uno_c")
    counts = _concordance_counts(t, e, risk)
    return _uno_from_counts(t, e, tau, _train(time, event, train_time, train_event, "uno_c"), *counts)


def _uno_from_counts(t, e, tau, train, less, equal, total):
    cens = CensoringDistributionEstimator().fit(train)
    w = np.zeros(t.size)
    early = t < tau
    w[early] = cens.predict_ipcw(_surv(t[early], e[early], "uno_c")) ** 2
    if np.sum(w * total) == 0:
        raise ValueError("uno_c: no comparable pairs with an event before tau")
    return float(np.sum(w * (less + 0.5 * equal)) / np.sum(w * total))


def td_auc(time, event, risk, times: Sequence[float], train_time=None, train_event=None) -> np.ndarray:
    """Cumulative/dynamic AUC(t) at each of ``times`` (IPCW; Uno 2007, Hung & Chiang 2010).

    Cases: event by t; controls: still event-free after t. Returns shape (len(times),).
    ``risk`` may be (n,) (one score for all times) or (n, len(times)).
    """
    test = _surv(time, event, "td_auc")
    train = _train(time, event, train_time, train_event, "td_auc")
    auc, _ = cumulative_dynamic_auc(train, test, np.asarray(risk, dtype=float), np.asarray(times, dtype=float))
    return np.asarray(auc, dtype=float)


def brier_score(time, event, survival, times: Sequence[float], train_time=None, train_event=None) -> np.ndarray:
    """IPCW Brier score at each of ``times`` (Graf et al. 1999); ``survival`` shape (n, k)."""
    test = _surv(time, event, "brier_score")
    train = _train(time, event, train_time, train_event, "brier_score")
    surv = np.asarray(survival, dtype=float).reshape(len(test), -1)
    _, bs = _sks_brier(train, test, surv, np.asarray(times, dtype=float))
    return np.asarray(bs, dtype=float)


def integrated_brier_score(
    time, event, survival, times: Sequence[float], train_time=None, train_event=None
) -> float:
    """Integrated Brier score over ``times`` (trapezoid rule, divided by the time range)."""
    test = _surv(time, event, "integrated_brier_score")
    train = _train(time, event, train_time, train_event, "integrated_brier_score")
    return float(_sks_ibs(train, test, np.asarray(survival, dtype=float), np.asarray(times, dtype=float)))


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
    from pmed import calibration as cal

    risk = np.asarray(risk, dtype=float)
    out = horizon_outcome(time, event, horizon)
    y, w = out["y"].to_numpy(), out["ipcw"].to_numpy()
    kw = {"train_time": train_time, "train_event": train_event}
    slope = cal.calibration_slope_intercept(y, risk, w)
    t, e = check_survival_data(time, event, "risk_metrics")
    counts = _concordance_counts(t, e, risk)
    train = _train(time, event, train_time, train_event, "risk_metrics")
    res = {
        "harrell_c": _harrell_from_counts(*counts),
        "uno_c": _uno_from_counts(t, e, horizon, train, *counts),
        "td_auc": float(td_auc(time, event, risk, [horizon], **kw)[0]),
        "brier": float(brier_score(time, event, 1 - risk[:, None], [horizon], **kw)[0]),
        "auroc": auroc(y, risk, w),
        "auprc": auprc(y, risk, w),
        "calibration_slope": slope["slope"],
        "calibration_intercept": slope["intercept"],
        "oe_ratio": cal.observed_expected(y, risk, w),
        "net_benefit": cal.net_benefit(y, risk, threshold, w),
    }
    res.update({k: v for k, v in sensitivity_ppv(y, risk >= threshold, w).items() if k in ("sensitivity", "ppv")})
    if survival is not None:
        res["ibs"] = integrated_brier_score(time, event, survival, times, **kw)
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
    is recorded as NaN. All resamples are drawn up front from ``seed``, so the result does
    not depend on ``n_jobs`` (joblib processes). Returns a DataFrame, one row per replicate.
    """
    if n_boot < 1:
        raise ValueError(f"bootstrap: n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, n, size=n) for _ in range(n_boot)]
    if n_jobs == 1:
        rows = [_guarded(statistic, idx) for idx in samples]
    else:
        from joblib import Parallel, delayed

        rows = Parallel(n_jobs=n_jobs)(delayed(_guarded)(statistic, idx) for idx in samples)
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
