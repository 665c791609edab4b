"""Calibration of predicted risks and decision-curve analysis.

All functions take a binary outcome ``y`` (1 = event by the horizon), a predicted risk ``p``
in (0, 1) and optional case weights (e.g. IPCW weights from
:func:`pmed.metrics.horizon_outcome`; rows with weight 0 are ignored).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.special import logit

__all__ = [
    "calibration_slope_intercept",
    "calibration_curve",
    "observed_expected",
    "net_benefit",
    "decision_curve",
]

_EPS = 1e-8


def _inputs(y, p, weights, name):
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=float)
    if not (y.shape == p.shape == w.shape):
        raise ValueError(f"{name}: y {y.shape}, p {p.shape}, weights {w.shape} differ in shape")
    keep = w > 0
    y, p, w = y[keep], p[keep], w[keep]
    if np.any(np.isnan(y)) or np.any((y < 0) | (y > 1)):
        raise ValueError(f"{name}: y must lie in [0, 1] wherever the weight is > 0")
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"{name}: predicted risks p must lie in [0, 1]")
    return y, np.clip(p, _EPS, 1 - _EPS), w


def calibration_slope_intercept(y, p, weights=None) -> dict[str, float]:
    """Logistic recalibration of predicted risks (Cox 1958; Van Calster et al. 2016).

    ``slope``: b in logit P(y=1) = a + b logit(p) (1 = ideal, < 1 = predictions too
    extreme). ``intercept``: calibration-in-the-large, a in logit P(y=1) = a + logit(p)
    (offset model; 0 = ideal, > 0 = risks underestimated). ``y`` may be fractional.
    """
    y, p, w = _inputs(y, p, weights, "calibration_slope_intercept")
    lp = logit(p)
    fam = sm.families.Binomial()
    slope_fit = sm.GLM(y, sm.add_constant(lp), family=fam, var_weights=w).fit()
    citl_fit = sm.GLM(y, np.ones_like(lp), family=fam, offset=lp, var_weights=w).fit()
    return {"slope": float(slope_fit.params[1]), "intercept": float(citl_fit.params[0])}


def calibration_curve(y, p, weights=None, n_bins: int = 10, min_count: int = 1) -> pd.DataFrame:
    """Observed vs predicted risk in ``n_bins`` quantile groups of ``p``.

    Adjacent groups are merged until every group holds at least ``min_count`` people (pass
    the minimum cell size, so no plotted point summarises a small group).
    Returns one row per bin: ``bin``, ``n`` (people with weight > 0), ``predicted`` (mean p),
    ``observed`` (weighted event proportion) and ``ci_low``/``ci_high`` (Wilson 95% interval
    with the Kish effective sample size).
    """
    y, p, w = _inputs(y, p, weights, "calibration_curve")
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    bins = _merge_small_bins(np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2),
                             min_count)
    rows = []
    for b in np.unique(bins):
        sel = bins == b
        ws = w[sel]
        obs = float(np.sum(ws * y[sel]) / ws.sum())
        n_eff = ws.sum() ** 2 / np.sum(ws**2)
        z = 1.959964
        centre = (obs + z**2 / (2 * n_eff)) / (1 + z**2 / n_eff)
        half = z * np.sqrt(obs * (1 - obs) / n_eff + z**2 / (4 * n_eff**2)) / (1 + z**2 / n_eff)
        rows.append(
            {
                "bin": int(b) + 1,
                "n": int(sel.sum()),
                "predicted": float(np.mean(p[sel])),
                "observed": obs,
                "ci_low": float(centre - half),
                "ci_high": float(centre + half),
            }
        )
    return pd.DataFrame(rows)


def _merge_small_bins(bins: np.ndarray, min_count: int) -> np.ndarray:
    """Bin labels 0..k-1 after merging each group under ``min_count`` into its smaller neighbour."""
    labels, bins = np.unique(bins, return_inverse=True)
    counts = list(np.bincount(bins))
    groups = [[i] for i in range(len(counts))]
    while len(counts) > 1 and min(counts) < min_count:
        i = int(np.argmin(counts))
        j = i + 1 if i == 0 or (i + 1 < len(counts) and counts[i + 1] < counts[i - 1]) else i - 1
        lo, hi = sorted((i, j))
        groups[lo] += groups.pop(hi)
        counts[lo] += counts.pop(hi)
    new = np.empty(len(labels), dtype=int)
    for g, members in enumerate(groups):
        new[members] = g
    return new[bins]


def observed_expected(y, p, weights=None) -> float:
    """Ratio of the (weighted) observed event proportion to the mean predicted risk."""
    y, p, w = _inputs(y, p, weights, "observed_expected")
    return float(np.sum(w * y) / np.sum(w) / np.mean(p))


def net_benefit(y, p, threshold: float, weights=None) -> float:
    """Net benefit of treating people with p >= ``threshold`` (Vickers & Elkin 2006).

    NB = TP/N - FP/N * pt / (1 - pt), with (weighted) counts.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"net_benefit: threshold must be in (0, 1), got {threshold}")
    y, p, w = _inputs(y, p, weights, "net_benefit")
    treat = p >= threshold
    n = w.sum()
    tp = np.sum(w * treat * y)
    fp = np.sum(w * treat * (1 - y))
    return float(tp / n - fp / n * threshold / (1 - threshold))


def decision_curve(y, p, thresholds: Sequence[float], weights=None) -> pd.DataFrame:
    """Net benefit of the model, of treating everyone and of treating no one per threshold.

    Returns columns ``threshold``, ``model``, ``treat_all``, ``treat_none`` (= 0).
    """
    y_, _, w = _inputs(y, p, weights, "decision_curve")
    prevalence = np.sum(w * y_) / np.sum(w)
    rows = []
    for pt in thresholds:
        rows.append(
            {
                "threshold": float(pt),
                "model": net_benefit(y, p, pt, weights),
                "treat_all": float(prevalence - (1 - prevalence) * pt / (1 - pt)),
                "treat_none": 0.0,
            }
        )
    return pd.DataFrame(rows)
