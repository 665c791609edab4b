"""Validation of the horizon-risk models to TRIPOD+AI (stage 03_outcomes).

* :func:`repeated_cv`: R repeats of k-fold cross-validation; every repeat re-draws the
  single PMM imputation of the predictors (new seed; covariates only, no outcome) and the fold
  split, and every fold refits all three models (the penalty is fixed in params, not tuned,
  so there is no tuning step to nest). Out-of-fold predictions, shape (R, n) per model.
* :func:`bootstrap_performance`: performance of those predictions with percentile bootstrap
  CIs from >= 1,000 resamples of people, each resample evaluated on the out-of-fold
  predictions of one repeat (replicate b uses repeat b mod R), so the interval contains
  sampling variation of the people *and* the fold-split/imputation variation; the models are
  not refitted per resample (the interval does not contain the variation from refitting on
  resampled training sets). Paired model differences (e.g. C of boosting - C of Cox) come from
  the same resamples. The calibration slope and intercept are computed per test fold and
  averaged over the R x k folds (:func:`fold_calibration`), not on the pooled predictions. Above ``max_rows`` people each replicate resamples ``max_rows`` of them
  (m-out-of-n bootstrap) and its deviation from the full-data value is scaled by sqrt(m / n).
* :func:`smoothed_calibration`: calibration curve at the horizon by the Cox-model approach of
  Austin, Harrell & van Klaveren (2020, Stat Med 39:2714): a Cox model of the observed
  follow-up on a restricted cubic spline of the complementary log-log of the predicted risk;
  its predicted risk at the horizon is the "observed" risk. ICI, E50, E90 and Emax are the
  mean, median, 90th percentile and maximum of |observed - predicted| (Austin & Steyerberg
  2019, Stat Med 38:4051).
* :func:`riley_sample_size`: minimum sample size of Riley et al. (BMJ 2020;368:m441),
  criteria (i)-(iii), for a survival or a binary outcome, as R pmsampsize >= 1.1.
* :func:`subgroup_performance`, :func:`temporal_split`: performance by subgroup (small groups
  suppressed) and the split for temporal validation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from pmed import calibration as cal
from pmed import metrics, prediction, privacy
from pmed import survival as sv
from pmed.imputation import mice
from pmed.parallel import run_tasks

__all__ = [
    "RepeatedCV",
    "repeated_cv",
    "fold_calibration",
    "rcs_basis",
    "rcs_knots",
    "cox_breslow",
    "smoothed_calibration",
    "calibration_errors",
    "performance",
    "bootstrap_performance",
    "max_cox_snell_r2",
    "riley_sample_size",
    "subgroup_performance",
    "temporal_split",
    "age_bands",
    "ci_table_wide",
    "describe_difference",
    "smoothed_calibration_plot",
]

CORE_METRICS = ("harrell_c", "uno_c", "brier", "ipa", "calibration_slope", "calibration_intercept", "oe_ratio",
                "ici", "e50", "e90")
"""Metrics of :func:`performance` for every model (``ibs`` in addition where curves are given)."""

DIFF_METRICS = ("harrell_c", "uno_c", "brier", "ipa", "ici")
"""Metrics whose paired model differences :func:`bootstrap_performance` reports."""


@dataclass
class RepeatedCV:
    """Out-of-fold predictions of :func:`repeated_cv` for n people and R repeats.

    Attributes
    ----------
    risk : dict of str to array, shape (R, n)
        Predicted probability of death by the horizon per model key.
    cox_survival : array, shape (R, n, k)
        Penalised-Cox S(t | x) at the k ``times`` (last = horizon).
    importances : array, shape (R * n_folds, n_features)
        Held-out permutation importance of gradient boosting, one row per fold.
    fold : array of int, shape (R, n)
        Test fold (0 .. n_folds - 1) of each person in each repeat.
    models : list of R lists of n_folds FittedModels, or None
        The fold models (``keep_models``), else None.
    """

    risk: dict[str, np.ndarray]
    cox_survival: np.ndarray
    importances: np.ndarray
    fold: np.ndarray
    models: list | None = None

    @property
    def n_repeats(self) -> int:
        return self.cox_survival.shape[0]

    def repeat(self, r: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Risks ``{model: (n,)}`` and survival curves ``{"cox": (n, k)}`` of repeat ``r``."""
        return {k: v[r] for k, v in self.risk.items()}, {"cox": self.cox_survival[r]}


def repeated_cv(
    cohort: pd.DataFrame,
    time_col: str,
    event_col: str,
    y,
    weights,
    times: Sequence[float],
    settings: prediction.ModelSettings,
    n_folds: int,
    n_repeats: int,
    seeds: Mapping[str, int],
    mice_max_iter: int,
    n_jobs: int = 1,
    keep_models: bool = False,
) -> RepeatedCV:
    """Repeated k-fold cross-validated risk of death by the horizon from the three models.

    Repeat r imputes the missing ``settings.features`` of ``cohort`` once by PMM
    (:func:`pmed.imputation.mice`, seed ``seeds["impute"] + r``, predictors only: no outcome,
    so no test outcome reaches a training fold), adds the interaction columns and runs
    :func:`pmed.prediction.cross_validated_predictions` with fold seed ``seeds["cv"] + r`` and
    boosting seed ``seeds["gb"] + r``. ``y``/``weights``: the horizon outcome and its IPCW
    weights (:func:`pmed.metrics.horizon_outcome`). Cost: R x k fits of each model.
    ``keep_models``: also keep the R x k fitted fold models (memory: R x k x 3 models).
    """
    if n_repeats < 1:
        raise ValueError(f"repeated_cv: outcomes.cv_repeats must be >= 1, got {n_repeats}")
    runs = []
    for r in range(n_repeats):
        data = mice(cohort, list(settings.features), m=1, seed=seeds["impute"] + r, max_iter=mice_max_iter)[0]
        data = sv.add_interactions(data, settings.interactions)
        runs.append(prediction.cross_validated_predictions(
            data, time_col, event_col, y, weights, times, settings, n_folds=n_folds,
            seed_cv=seeds["cv"] + r, seed_gb=seeds["gb"] + r, n_jobs=n_jobs, keep_models=keep_models))
    return RepeatedCV(
        risk={k: np.stack([cv.risk[k] for cv in runs]) for k in prediction.MODELS},
        cox_survival=np.stack([cv.cox_survival for cv in runs]),
        importances=np.concatenate([cv.importances for cv in runs]),
        fold=np.stack([cv.fold for cv in runs]),
        models=[cv.models for cv in runs] if keep_models else None,
    )


def fold_calibration(y, risk, weights, fold) -> dict[str, float]:
    """Calibration slope and intercept of cross-validated risks, per test fold then averaged.

    Each test fold's risks come from ONE fitted model; its slope and calibration-in-the-large
    (:func:`pmed.calibration.calibration_slope_intercept`, IPCW ``weights``) estimate that
    model's calibration in new people. The result is the unweighted mean over the folds, an
    estimate of the mean calibration of the fold models (each fitted on (k - 1)/k of the
    people). Pooling the out-of-fold risks of k differently fitted models into one
    recalibration instead mixes their intercepts and scales, which attenuates the pooled
    slope (the simulation study: by about 0.03-0.05 with 5 folds of about 1,150 people).
    A fold without a finite estimate (e.g. all its outcomes equal) is left out.

    Parameters
    ----------
    y, risk, weights : array, shape (n,)
        Outcome by the horizon (NaN where the weight is 0), predicted risk, IPCW weights.
    fold : array of int, shape (n,)
        Test fold of each person.

    Returns
    -------
    dict: ``slope``, ``intercept`` (NaN if no fold has an estimate).
    """
    y, risk, w, fold = (np.asarray(a, dtype=float) for a in (y, risk, weights, fold))
    if not y.shape == risk.shape == w.shape == fold.shape:
        raise ValueError(f"fold_calibration: y {y.shape}, risk {risk.shape}, weights {w.shape}, "
                         f"fold {fold.shape} differ in shape")
    per = []
    for k in np.unique(fold):
        rows = (fold == k) & (w > 0)
        if np.unique(y[rows]).size < 2:
            continue
        try:
            per.append(cal.calibration_slope_intercept(y[rows], risk[rows], w[rows]))
        except (ValueError, np.linalg.LinAlgError):
            continue
    vals = {m: np.array([p[m] for p in per], dtype=float) for m in ("slope", "intercept")}
    return {m: float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan") for m, v in vals.items()}


# --- smoothed calibration ---------------------------------------------------------------------

_KNOT_QUANTILES = {3: (0.10, 0.50, 0.90), 4: (0.05, 0.35, 0.65, 0.95), 5: (0.05, 0.275, 0.50, 0.725, 0.95)}


def rcs_knots(x, n_knots: int) -> np.ndarray:
    """Knots of a restricted cubic spline at Harrell's default quantiles of ``x`` (n >= 100).

    3 knots: 10/50/90th percentiles; 4: 5/35/65/95; 5: 5/27.5/50/72.5/95 (Hmisc
    ``rcspline.eval``). Duplicate knots (heavily tied ``x``) are dropped.
    """
    if n_knots not in _KNOT_QUANTILES:
        raise ValueError(f"rcs_knots: n_knots must be 3, 4 or 5, got {n_knots}")
    return np.unique(np.quantile(np.asarray(x, dtype=float), _KNOT_QUANTILES[n_knots]))


def rcs_basis(x, knots) -> np.ndarray:
    """Restricted cubic spline basis, shape (n, len(knots) - 1): x, then the nonlinear terms.

    Harrell's parametrisation (Hmisc ``rcspline.eval`` with ``norm = 2``, ``inclx = TRUE``):
    term j = [(x - t_j)+^3 - (x - t_{k-1})+^3 (t_k - t_j)/(t_k - t_{k-1})
    + (x - t_k)+^3 (t_{k-1} - t_j)/(t_k - t_{k-1})] / (t_k - t_1)^2, linear beyond the
    outer knots.
    """
    x = np.asarray(x, dtype=float)
    t = np.asarray(knots, dtype=float)
    k = t.size
    cols = [x]
    if k >= 3:
        pos = lambda u: np.maximum(u, 0.0) ** 3  # noqa: E731
        scale = (t[-1] - t[0]) ** 2
        for j in range(k - 2):
            cols.append((pos(x - t[j]) - pos(x - t[-2]) * (t[-1] - t[j]) / (t[-1] - t[-2])
                         + pos(x - t[-1]) * (t[-2] - t[j]) / (t[-1] - t[-2])) / scale)
    return np.column_stack(cols)


def cox_breslow(time, event, X, max_iter: int = 50, tol: float = 1e-9) -> tuple[np.ndarray, Callable]:
    """Unpenalised Cox model with Breslow ties by Newton's method; O(n log n) per model.

    Parameters
    ----------
    time, event : array, shape (n,)
    X : array, shape (n, p)
        Covariates (a few columns, e.g. a spline basis).

    Returns
    -------
    beta : array, shape (p,)
    survival : function ``(X_new (m, p), t) -> S(t | x)`` shape (m,), with the Breslow
        baseline cumulative hazard (R ``survival::survfit`` of a ``ties = "breslow"`` fit).
    """
    t, e = sv.check_survival_data(time, event, "cox_breslow")
    X = np.asarray(X, dtype=float).reshape(t.size, -1)
    centre = X.mean(axis=0)
    Z = X - centre
    order = np.argsort(t, kind="stable")
    t_s, e_s, Z_s = t[order], e[order] == 1, Z[order]
    first = np.searchsorted(t_s, t_s, side="left")  # risk set of i: sorted positions >= first[i]

    def sums(beta):
        w = np.exp(Z_s @ beta)
        s0 = np.cumsum(w[::-1])[::-1][first]
        s1 = np.cumsum((Z_s * w[:, None])[::-1], axis=0)[::-1][first]
        zz = Z_s[:, :, None] * Z_s[:, None, :] * w[:, None, None]
        s2 = np.cumsum(zz[::-1], axis=0)[::-1][first]
        return w, s0, s1, s2

    def loglik(beta):
        eta = Z_s @ beta
        s0 = np.cumsum(np.exp(eta)[::-1])[::-1][first]
        return float(np.sum((eta - np.log(s0))[e_s]))

    beta = np.zeros(Z.shape[1])
    ll = loglik(beta)
    for _ in range(max_iter):
        _, s0, s1, s2 = sums(beta)
        m1 = s1[e_s] / s0[e_s, None]
        grad = np.sum(Z_s[e_s] - m1, axis=0)
        info = np.sum(s2[e_s] / s0[e_s, None, None] - m1[:, :, None] * m1[:, None, :], axis=0)
        step = np.linalg.solve(info, grad)
        for _ in range(30):
            new_ll = loglik(beta + step)
            if new_ll >= ll - 1e-12 * abs(ll):
                break
            step = step / 2
        beta, ll = beta + step, new_ll
        if np.max(np.abs(step)) < tol:
            break
    s0 = np.cumsum(np.exp(Z_s @ beta)[::-1])[::-1][first]
    ev_t, ev_h = t_s[e_s], 1.0 / s0[e_s]

    def survival(X_new, at: float) -> np.ndarray:
        h0 = float(np.sum(ev_h[ev_t <= at]))
        eta = (np.asarray(X_new, dtype=float).reshape(-1, Z.shape[1]) - centre) @ beta
        return np.exp(-h0 * np.exp(eta))

    return beta, survival


def _cloglog(p):
    p = np.clip(np.asarray(p, dtype=float), 1e-10, 1 - 1e-10)
    return np.log(-np.log(1 - p))


def smoothed_calibration(time, event, risk, horizon: float, n_knots: int = 3, grid=None) -> dict:
    """Smoothed observed risk at the horizon vs predicted risk (Austin, Harrell & van Klaveren 2020).

    A Cox model (Breslow) of (``time``, ``event``) on a restricted cubic spline
    (:func:`rcs_basis`, ``n_knots`` knots) of cloglog(``risk``) gives each person's
    "observed" risk 1 - S(horizon | risk); censoring is handled by the Cox model.

    Returns
    -------
    dict with ``observed`` (n,), the smoothed observed risk of each person, ``ici``, ``e50``,
    ``e90``, ``emax`` (:func:`calibration_errors`) and, if ``grid`` (predicted risks) is
    given, ``curve``: DataFrame ``predicted``, ``observed`` on that grid.
    """
    risk = np.asarray(risk, dtype=float)
    if np.any(~np.isfinite(risk)) or np.any((risk < 0) | (risk > 1)):
        raise ValueError("smoothed_calibration: predicted risks must lie in [0, 1]")
    x = _cloglog(risk)
    knots = rcs_knots(x, n_knots)
    _, surv = cox_breslow(time, event, rcs_basis(x, knots))
    observed = 1 - surv(rcs_basis(x, knots), horizon)
    out = {"observed": observed, **calibration_errors(observed, risk)}
    if grid is not None:
        g = np.asarray(grid, dtype=float)
        out["curve"] = pd.DataFrame({"predicted": g, "observed": 1 - surv(rcs_basis(_cloglog(g), knots), horizon)})
    return out


def calibration_errors(observed, predicted) -> dict[str, float]:
    """ICI (mean), E50 (median), E90 (90th percentile) and Emax of |observed - predicted|."""
    d = np.abs(np.asarray(observed, dtype=float) - np.asarray(predicted, dtype=float))
    return {"ici": float(d.mean()), "e50": float(np.median(d)), "e90": float(np.quantile(d, 0.9)),
            "emax": float(d.max())}


# --- performance and its bootstrap ------------------------------------------------------------

def performance(time, event, risks: Mapping[str, np.ndarray], horizon: float,
                survival: Mapping[str, np.ndarray] | None = None, times: Sequence[float] | None = None,
                pairs: Sequence[tuple[str, str]] = (), n_knots: int = 3,
                threshold: float | None = None, fold=None) -> dict[str, float]:
    """Core TRIPOD+AI metrics of several models' risks of death by ``horizon`` for the same people.

    Per model (:data:`CORE_METRICS`; ``ibs`` for models in ``survival``): Harrell's and Uno's
    C, Brier score at the horizon, index of prediction accuracy ``ipa`` = 1 - Brier / Brier of
    the null model that predicts the overall (Kaplan-Meier) risk of these people to everyone
    (Kattan & Gerds 2018; > 0 = better than no predictors), calibration slope,
    calibration-in-the-large (logistic intercept with the logit of the risk as offset;
    IPCW-weighted), observed/expected ratio, ICI/E50/E90 (:func:`smoothed_calibration`) and,
    with a ``threshold``, ``net_benefit``, ``sensitivity`` and ``ppv`` of risk >= threshold.
    For each ``(a, b)`` in ``pairs`` the differences ``a - b`` of :data:`DIFF_METRICS`.
    With ``fold`` (shape (n,), the test fold of out-of-fold risks) the calibration slope and
    intercept are the means over the folds (:func:`fold_calibration`).

    Returns a flat dict ``"<model>.<metric>"`` and ``"<a>-<b>.<metric>"``.
    """
    t, e = sv.check_survival_data(time, event, "performance")
    end = metrics.horizon_outcome(t, e, horizon)
    y, w = end["y"].to_numpy(), end["ipcw"].to_numpy()
    cens = metrics._censoring(metrics._surv(t, e, "performance"))
    overall = float(np.nansum(y * w) / t.size)  # 1 - KM(horizon)
    brier_null = float(metrics._brier_fitted(cens, t, e, np.full((t.size, 1), 1 - overall), [horizon])[0])
    survival = survival or {}
    out = {}
    for name, risk in risks.items():
        risk = np.asarray(risk, dtype=float)
        counts = metrics._concordance_counts(t, e, risk)
        slope = cal.calibration_slope_intercept(y, risk, w) if fold is None else fold_calibration(y, risk, w, fold)
        smooth = smoothed_calibration(t, e, risk, horizon, n_knots)
        brier = float(metrics._brier_fitted(cens, t, e, 1 - risk[:, None], [horizon])[0])
        m = {
            "harrell_c": metrics._harrell_from_counts(*counts),
            "uno_c": metrics._uno_from_counts(t, e, horizon, cens, *counts),
            "brier": brier,
            "ipa": 1 - brier / brier_null,
            "calibration_slope": slope["slope"],
            "calibration_intercept": slope["intercept"],
            "oe_ratio": cal.observed_expected(y, risk, w),
            "ici": smooth["ici"], "e50": smooth["e50"], "e90": smooth["e90"],
        }
        if name in survival:
            m["ibs"] = metrics._ibs_fitted(cens, t, e, survival[name], times)
        if threshold is not None:
            m["net_benefit"] = cal.net_benefit(y, risk, threshold, w)
            m.update({k: v for k, v in metrics.sensitivity_ppv(y, risk >= threshold, w).items()
                      if k in ("sensitivity", "ppv")})
        out.update({f"{name}.{k}": v for k, v in m.items()})
    for a, b in pairs:
        out.update({f"{a}-{b}.{k}": out[f"{a}.{k}"] - out[f"{b}.{k}"] for k in DIFF_METRICS})
    return out


def _replicate_chunk(chunk, time, event, risks, survival, horizon, times, pairs, n_knots, threshold,
                     point_by_repeat, seed, m, fold=None):
    """Rescaled bootstrap replicates for the replicate numbers in ``chunk``."""
    n = time.size
    scale = np.sqrt(m / n)
    rows = []
    for b in chunk:
        r = b % len(point_by_repeat)
        idx = np.random.default_rng([seed, b]).integers(0, n, size=m)
        try:
            rep = performance(time[idx], event[idx], {k: v[r][idx] for k, v in risks.items()}, horizon,
                              {k: v[r][idx] for k, v in survival.items()}, times, pairs, n_knots, threshold,
                              None if fold is None else fold[r][idx])
        except (ValueError, np.linalg.LinAlgError):  # e.g. a resample without comparable pairs
            rows.append({})
            continue
        base = point_by_repeat[r]
        rows.append({k: base[k] + scale * (v - base[k]) for k, v in rep.items()})
    return rows


def bootstrap_performance(
    time,
    event,
    risks: Mapping[str, np.ndarray],
    horizon: float,
    n_boot: int,
    seed: int,
    survival: Mapping[str, np.ndarray] | None = None,
    times: Sequence[float] | None = None,
    pairs: Sequence[tuple[str, str]] = (),
    max_rows: int | None = None,
    n_knots: int = 3,
    threshold: float | None = None,
    n_jobs: int = 1,
    alpha: float = 0.05,
    fold=None,
) -> dict[str, dict]:
    """:func:`performance` of out-of-fold (or held-out) predictions with percentile bootstrap CIs.

    Parameters
    ----------
    time, event : array, shape (n,)
    risks : dict of str to array, shape (R, n) or (n,)
        Predicted risk by the horizon per model, one row per CV repeat (R = 1: one set of
        held-out predictions). ``survival``: ``{model: (R, n, k)}`` curves at ``times``.
    n_boot, seed : int
        Resamples (replicate b draws from ``numpy.random.default_rng([seed, b])`` and uses
        repeat b mod R, so the result does not depend on ``n_jobs``).
    pairs : sequence of (model, model)
        Paired differences reported from the same resamples.
    max_rows : int or None
        If n > ``max_rows``, each replicate resamples m = ``max_rows`` people (m-out-of-n
        bootstrap) and its deviation from the full-data value of its repeat is multiplied by
        sqrt(m / n) (valid for root-n-consistent statistics). None: m = n always.
    threshold : float or None
        High-risk threshold for net benefit, sensitivity and PPV (:func:`performance`).
    fold : array of int, shape (R, n), or None
        Test fold of each person per repeat (:attr:`RepeatedCV.fold`): the calibration slope and
        intercept are then per-fold means (:func:`fold_calibration`); resampled people keep
        their folds, so the interval holds the people's sampling variation with the fold models
        fixed (it targets the mean calibration of these fold models in new people).

    Returns
    -------
    ``{name: {"estimate", "ci_low", "ci_high", "n_boot"}}``: estimate = mean over repeats of
    the full-data value; interval = percentiles of the replicates (which vary over people and
    repeats); ``n_boot`` counts the valid replicates.
    """
    t, e = sv.check_survival_data(time, event, "bootstrap_performance")
    risks = {k: np.atleast_2d(np.asarray(v, dtype=float)) for k, v in risks.items()}
    survival = {k: np.asarray(v, dtype=float).reshape(-1, t.size, len(times)) for k, v in (survival or {}).items()}
    n_rep = {v.shape[0] for v in [*risks.values(), *survival.values()]}
    if len(n_rep) != 1 or any(v.shape[1] != t.size for v in risks.values()):
        raise ValueError(f"bootstrap_performance: every model needs (R, {t.size}) predictions with one R, "
                         f"got {[v.shape for v in risks.values()]}")
    if n_boot < 1:
        raise ValueError(f"bootstrap_performance: outcomes.n_bootstrap must be >= 1, got {n_boot}")
    R = n_rep.pop()
    if fold is not None:
        fold = np.atleast_2d(np.asarray(fold))
        if fold.shape != (R, t.size):
            raise ValueError(f"bootstrap_performance: fold has shape {fold.shape}, expected {(R, t.size)}")
    point_by_repeat = [performance(t, e, {k: v[r] for k, v in risks.items()}, horizon,
                                   {k: v[r] for k, v in survival.items()}, times, pairs, n_knots, threshold,
                                   None if fold is None else fold[r])
                       for r in range(R)]
    point = {k: float(np.mean([p[k] for p in point_by_repeat])) for k in point_by_repeat[0]}
    m = t.size if max_rows is None or t.size <= max_rows else int(max_rows)
    chunks = np.array_split(np.arange(n_boot), max(1, min(n_boot, 4 * n_jobs)))
    work = partial(_replicate_chunk, time=t, event=e, risks=risks, survival=survival, horizon=horizon,
                   times=times, pairs=pairs, n_knots=n_knots, threshold=threshold,
                   point_by_repeat=point_by_repeat, seed=seed, m=m, fold=fold)
    reps = pd.DataFrame([row for rows in run_tasks(work, chunks, n_jobs) for row in rows])
    return metrics.ci_table(point, reps, alpha)



# --- disclosure control of published counts and ratios ----------------------------------------

THRESHOLD_METRICS = ("sensitivity", "ppv", "net_benefit")
"""Metrics at the high-risk threshold that, with the group sizes shown beside them, give the
true/false positive counts back (e.g. PPV x high-risk persons = true positives)."""


def threshold_counts(y, flag) -> dict[str, int]:
    """Unweighted true/false positives and negatives of a 0/1 ``flag`` among people whose
    outcome by the horizon is known (``y`` 1 death, 0 alive past it, NaN censored before).

    Shapes (n,). Returns ``{"tp", "fp", "fn", "tn"}``.
    """
    y, f = np.asarray(y, dtype=float), np.asarray(flag, dtype=bool)
    if y.shape != f.shape:
        raise ValueError(f"threshold_counts: y has shape {y.shape}, flag {f.shape}; expected the same")
    known = ~np.isnan(y)
    return {"tp": int(np.sum(known & (y == 1) & f)), "fp": int(np.sum(known & (y == 0) & f)),
            "fn": int(np.sum(known & (y == 1) & ~f)), "tn": int(np.sum(known & (y == 0) & ~f))}


def release_threshold_metrics(cis: Mapping[str, dict], y, risks: Mapping[str, np.ndarray], threshold: float,
                              min_cell: int) -> tuple[dict[str, dict], list[str]]:
    """``cis`` without the threshold metrics of a model whose flag has a small count.

    Sensitivity (with the deaths shown), PPV (with the high-risk group size shown) and net
    benefit (with the group size and the persons shown) each give back the true positives, and
    1 - sensitivity / 1 - PPV the false negatives / positives. So for a model whose ``risk >=
    threshold`` has, in any repeat (``risks[model]`` shape (R, n) or (n,)), true positives, false
    positives or false negatives (:func:`threshold_counts`) in 1..min_cell-1, the entries
    ``<model>.<metric>`` of :data:`THRESHOLD_METRICS` become ``{"estimate": None, "ci_low": None,
    "ci_high": None, "n_boot", "suppressed": True}`` (shown as "suppressed" by
    :func:`ci_table_wide`; leave them out of metrics files).

    Returns (released cis, models whose threshold metrics were suppressed).
    """
    out, hidden = dict(cis), []
    for model, risk in risks.items():
        counts = [threshold_counts(y, r >= threshold) for r in np.atleast_2d(np.asarray(risk, dtype=float))]
        if any(privacy.is_small(c[k], min_cell) for c in counts for k in ("tp", "fp", "fn")):
            hidden.append(model)
            for m in THRESHOLD_METRICS:
                if f"{model}.{m}" in out:
                    out[f"{model}.{m}"] = {"estimate": None, "ci_low": None, "ci_high": None,
                                           "n_boot": out[f"{model}.{m}"].get("n_boot"), "suppressed": True}
    return out, hidden


def released_calibration_curve(y, p, weights, n_bins: int, min_cell: int) -> pd.DataFrame:
    """:func:`pmed.calibration.calibration_curve` with groups that reveal no small count.

    A group's observed risk times its size gives back its deaths, so groups are merged to at
    least ``min_cell`` people (``min_count``) and, if a group then has 1..min_cell-1 deaths or
    survivors (people with weight > 0, as the curve counts them), the curve is recomputed with one group fewer. Returns the curve (its ``n`` column
    included, for the caller to drop) or an empty frame when not even one group is safe.
    """
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    keep = np.ones(y.shape, bool) if weights is None else np.asarray(weights, dtype=float) > 0
    outcome = y[keep][np.argsort(p[keep], kind="stable")]  # groups are runs of sorted risk (weight > 0)
    for bins in range(n_bins, 0, -1):
        curve = cal.calibration_curve(y, p, weights, n_bins=bins, min_count=min_cell)
        cuts = np.cumsum(curve["n"].to_numpy())[:-1]
        small = any(privacy.is_small(np.sum(g == v), min_cell)
                    for g in np.split(outcome, cuts) for v in (0, 1))
        if not small:
            return curve
    return curve.iloc[0:0]


def release_endpoint_counts(time, event, horizon: float, min_cell: int) -> dict[str, str]:
    """Report text of the cohort's counts at the horizon, protected together.

    ``persons`` = ``deaths`` (by the horizon) + ``alive`` (past it) + ``censored`` (before it),
    and ``events`` (deaths over all follow-up) beside persons (persons - events = censored
    overall, not shown but derivable). A small count reads ``"<k"``; a count hidden so that a
    small one cannot be obtained by subtraction reads ``"suppressed"``. The alive count is hidden
    before the deaths (the overall risk and the per-group deaths reveal the deaths).
    """
    t, e = sv.check_survival_data(time, event, "release_endpoint_counts")
    n = t.size
    dead = int(np.sum((t <= horizon) & (e == 1)))
    alive = int(np.sum(t > horizon))
    censored = n - dead - alive
    events = int(e.sum())
    horizon_text = privacy.release_counts([n, dead, alive, censored], [[0, 1, 2, 3]], min_cell,
                                          cost=[n, n + dead, alive, censored])
    events_text = privacy.release_counts([n, events, n - events], [[0, 1, 2]], min_cell,
                                         cost=[n, events, np.inf])
    return {"persons": horizon_text[0], "deaths": horizon_text[1], "alive": horizon_text[2],
            "censored": horizon_text[3], "events": events_text[1]}

# --- minimum sample size ----------------------------------------------------------------------

def max_cox_snell_r2(outcome: str, prevalence: float | None = None, rate: float | None = None,
                     mean_followup: float | None = None) -> float:
    """Largest possible Cox-Snell R2, 1 - exp(2 lnL_null / n), of a binary or survival outcome.

    Binary: lnL_null / n = phi ln phi + (1 - phi) ln(1 - phi). Survival (exponential null
    model, as pmsampsize): E ln(E / n) - E with E the events of a notional 10,000 people,
    rate x mean follow-up x 10,000, rounded up.
    """
    if outcome == "binary":
        if prevalence is None or not 0 < prevalence < 1:
            raise ValueError(f"riley_sample_size: binary outcome needs 0 < prevalence < 1, got {prevalence}")
        lnl_null = prevalence * np.log(prevalence) + (1 - prevalence) * np.log(1 - prevalence)  # per person
    elif outcome == "survival":
        if rate is None or mean_followup is None or min(rate, mean_followup) <= 0:
            raise ValueError("riley_sample_size: survival outcome needs positive rate and mean_followup")
        e0 = np.ceil(rate * mean_followup * 10_000) / 10_000  # per person
        lnl_null = e0 * np.log(e0) - e0
    else:
        raise ValueError(f"riley_sample_size: outcome must be 'survival' or 'binary', got {outcome!r}")
    return float(1 - np.exp(2 * lnl_null))


def riley_sample_size(
    outcome: str,
    parameters: int,
    r2_cs: float,
    shrinkage: float = 0.9,
    delta: float = 0.05,
    margin: float = 0.05,
    prevalence: float | None = None,
    rate: float | None = None,
    timepoint: float | None = None,
    mean_followup: float | None = None,
) -> dict:
    """Minimum sample size for developing a prediction model (Riley et al., BMJ 2020;368:m441).

    Criteria: (i) expected uniform shrinkage >= ``shrinkage``; (ii) optimism in Nagelkerke's
    R2 <= ``delta``; (iii) overall risk estimated within +- ``margin`` (binary: the outcome
    proportion, n3 = (1.96 / margin)^2 phi (1 - phi); survival: checked at the final n, the
    95% CI of the risk by ``timepoint`` from the exponential rate, as pmsampsize). Formulas of
    R pmsampsize >= 1.1 (no intermediate rounding).

    Parameters
    ----------
    outcome : "survival" or "binary"
    parameters : int
        Candidate predictor parameters (model degrees of freedom).
    r2_cs : float
        Anticipated Cox-Snell R2.
    prevalence : float
        Binary: outcome proportion.
    rate, timepoint, mean_followup : float
        Survival: events per person-time, the prediction horizon and mean follow-up (same time unit).

    Returns
    -------
    dict: ``n_i``, ``n_ii``, ``n_iii``, ``n`` (the maximum), ``shrinkage_ii``, ``max_r2_cs``,
    ``events`` (expected at ``n``), ``epp`` (events per parameter) and, for survival,
    ``risk``, ``risk_ci_low``, ``risk_ci_high``, ``margin_met``.
    """
    if parameters < 1:
        raise ValueError(f"riley_sample_size: parameters must be >= 1, got {parameters}")
    max_r2 = max_cox_snell_r2(outcome, prevalence, rate, mean_followup)
    events_per_person = prevalence if outcome == "binary" else rate * mean_followup
    if outcome == "survival" and (timepoint is None or timepoint <= 0):
        raise ValueError(f"riley_sample_size: survival outcome needs a positive timepoint, got {timepoint}")
    if not 0 < r2_cs < min(shrinkage, max_r2):
        raise ValueError(f"riley_sample_size: need 0 < R2_CS < min(shrinkage, max R2_CS = {max_r2:.3f}), got {r2_cs}")

    def n_for(s):
        return int(np.ceil(parameters / ((s - 1) * np.log(1 - r2_cs / s))))

    s_ii = r2_cs / (r2_cs + delta * max_r2)
    n_i, n_ii = n_for(shrinkage), n_for(s_ii)
    out = {"n_i": n_i, "n_ii": n_ii, "shrinkage_ii": float(s_ii), "max_r2_cs": float(max_r2),
           "r2_cs": float(r2_cs), "parameters": int(parameters)}
    if outcome == "binary":
        n_iii = int(np.ceil((1.96 / margin) ** 2 * prevalence * (1 - prevalence)))
        n = max(n_i, n_ii, n_iii)
    else:
        n = n_iii = max(n_i, n_ii)
        person_time = round(mean_followup * n, 1)
        half = 1.96 * np.sqrt(rate / person_time)
        risk = lambda lam: 1 - np.exp(-lam * timepoint)  # noqa: E731
        out.update({"risk": float(risk(rate)), "risk_ci_low": float(risk(rate - half)),
                    "risk_ci_high": float(risk(rate + half)),
                    "margin_met": bool(risk(rate + half) - risk(rate) <= margin)})
    out.update({"n_iii": n_iii, "n": n, "events": float(n * events_per_person),
                "epp": float(n * events_per_person / parameters)})
    return out


# --- subgroups and temporal validation --------------------------------------------------------

def age_bands(age, edges: Sequence[float]) -> np.ndarray:
    """Age-band label per person, shape (n,): ``"<e1"``, ``"e1-e2"``, ..., ``">=ek"`` (years)."""
    edges = list(edges)
    if sorted(edges) != edges or not edges:
        raise ValueError(f"age_bands: outcomes.subgroup_age_edges must be increasing, got {edges}")
    labels = [f"<{edges[0]:g}", *[f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:], strict=True)],
              f">={edges[-1]:g}"]
    return np.asarray(labels, dtype=object)[np.searchsorted(edges, np.asarray(age, dtype=float), side="right")]


def _subgroup_stats(rows, time, event, risk, horizon):
    t, e, p = time[rows], event[rows], risk[rows]
    end = metrics.horizon_outcome(t, e, horizon)
    y, w = end["y"].to_numpy(), end["ipcw"].to_numpy()
    return {"harrell_c": metrics.harrell_c(t, e, p),
            "brier": float(np.nansum(w * (y - p) ** 2) / t.size),  # IPCW Brier with horizon_outcome's weights
            "calibration_intercept": cal.calibration_slope_intercept(y, p, w)["intercept"],
            "oe_ratio": cal.observed_expected(y, p, w)}


def _subgroup_chunk(chunk, members, time, event, risk, horizon, point_by_repeat, seed, m):
    scale = np.sqrt(m / members.size)
    rows = []
    for b in chunk:
        r = b % risk.shape[0]
        idx = members[np.random.default_rng([seed, b]).integers(0, members.size, size=m)]
        try:
            rep = _subgroup_stats(idx, time, event, risk[r], horizon)
        except (ValueError, np.linalg.LinAlgError):
            rows.append({})
            continue
        base = point_by_repeat[r]
        rows.append({k: base[k] + scale * (v - base[k]) for k, v in rep.items()})
    return rows


def subgroup_performance(time, event, risk, groups: Mapping[str, Sequence], horizon: float, n_boot: int,
                         seed: int, min_cell: int, max_rows: int | None = None, n_jobs: int = 1) -> pd.DataFrame:
    """Performance of one model within subgroups, with bootstrap CIs; small groups suppressed.

    Parameters
    ----------
    risk : array, shape (R, n) or (n,)
        Out-of-fold risk by the horizon (replicate b uses repeat b mod R).
    groups : dict of str to array, shape (n,)
        Grouping variables (e.g. ``{"sex": ..., "age band": ..., "arm": ...}``), labels per person.
    min_cell : int
        A group whose size, deaths by the horizon or people known alive at it is in
        1..min_cell-1 is suppressed (no metrics). Sizes and deaths are released with
        complementary suppression (:func:`pmed.privacy.release_counts`) within each variable,
        whose groups add up to the published totals, and within each group (size - deaths =
        people not dead by the horizon, derivable, protected too).
    max_rows : int or None
        m-out-of-n bootstrap above this many people in a group, as :func:`bootstrap_performance`.

    Returns
    -------
    DataFrame: ``variable``, ``group``, ``n``, ``deaths`` (by the horizon; report text),
    ``suppressed`` and, per metric of Harrell's C, Brier (IPCW weights of
    :func:`pmed.metrics.horizon_outcome`, censoring KM of the subgroup), calibration-in-the-large
    and O/E, ``<metric>``, ``<metric>_ci_low``, ``<metric>_ci_high`` (NaN when suppressed).
    """
    t, e = sv.check_survival_data(time, event, "subgroup_performance")
    risk = np.atleast_2d(np.asarray(risk, dtype=float))
    dead = (t <= horizon) & (e == 1)
    alive = t > horizon
    names = ("harrell_c", "brier", "calibration_intercept", "oe_ratio")
    out = []
    for variable, labels in groups.items():
        labels = np.asarray(labels, dtype=object)
        if labels.shape != t.shape:
            raise ValueError(f"subgroup_performance: group {variable!r} has shape {labels.shape}, expected {t.shape}")
        levels = sorted(pd.unique(labels[pd.notna(labels)]), key=str)
        members = [np.flatnonzero(labels == g) for g in levels]
        k = len(levels)
        sizes = [t.size, *(mem.size for mem in members)]
        deaths = [int(dead.sum()), *(int(dead[mem].sum()) for mem in members)]
        others = [s - d for s, d in zip(sizes, deaths, strict=True)]  # not dead by the horizon: derivable
        size_i, death_i, other_i = (list(range(j * (k + 1), (j + 1) * (k + 1))) for j in range(3))
        text = privacy.release_counts([*sizes, *deaths, *others],
                                      [size_i, death_i, other_i,
                                       *([size_i[j], death_i[j], other_i[j]] for j in range(k + 1))],
                                      min_cell, cost=[*sizes, *deaths, *[np.inf] * (k + 1)])
        for j, (g, mem) in enumerate(zip(levels, members, strict=True)):
            counts = [mem.size, int(dead[mem].sum()), int(alive[mem].sum())]
            row = {"variable": variable, "group": str(g), "n": text[1 + j], "deaths": text[k + 2 + j],
                   "suppressed": any(privacy.is_small(c, min_cell) or c == 0 for c in counts),
                   **{f"{m}{s}": np.nan for m in names for s in ("", "_ci_low", "_ci_high")}}
            if not row["suppressed"]:
                by_repeat = [_subgroup_stats(mem, t, e, r, horizon) for r in risk]
                point = {m: float(np.mean([p[m] for p in by_repeat])) for m in names}
                size = mem.size if max_rows is None or mem.size <= max_rows else int(max_rows)
                chunks = np.array_split(np.arange(n_boot), max(1, min(n_boot, 4 * n_jobs)))
                work = partial(_subgroup_chunk, members=mem, time=t, event=e, risk=risk, horizon=horizon,
                               point_by_repeat=by_repeat, seed=seed + 7919 * (len(out) + 1), m=size)
                reps = pd.DataFrame([x for rows in run_tasks(work, chunks, n_jobs) for x in rows])
                for m, v in metrics.ci_table(point, reps).items():
                    row.update({m: v["estimate"], f"{m}_ci_low": v["ci_low"], f"{m}_ci_high": v["ci_high"]})
            out.append(row)
    return pd.DataFrame(out)


def temporal_split(t0_year, train_until: int, min_cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (train, test): t0 year <= ``train_until`` vs later (temporal validation).

    Raises a ValueError naming ``outcomes.temporal_train_until_year`` if either part has fewer
    than ``min_cell`` people.
    """
    year = np.asarray(t0_year, dtype=float)
    if np.isnan(year).any():
        raise ValueError("temporal_split: cohort column t0_year has missing values")
    train, test = np.flatnonzero(year <= train_until), np.flatnonzero(year > train_until)
    if min(train.size, test.size) < max(min_cell, 1):
        raise ValueError(f"temporal_split: outcomes.temporal_train_until_year = {train_until} leaves "
                         f"{train.size} development and {test.size} validation people (t0 years "
                         f"{int(year.min())}-{int(year.max())}); need >= {max(min_cell, 1)} in each")
    return train, test


# --- tables, sentences and the smoothed calibration figure -----------------------------------

METRIC_LABELS = {
    "harrell_c": "Harrell's C", "uno_c": "Uno's C (to horizon)", "brier": "Brier score at horizon",
    "ipa": "IPA (1 - Brier / null Brier)", "ibs": "Integrated Brier score", "calibration_slope": "Calibration slope",
    "calibration_intercept": "Calibration-in-the-large", "oe_ratio": "Observed / expected",
    "ici": "ICI", "e50": "E50", "e90": "E90", "net_benefit": "Net benefit at threshold",
    "sensitivity": "Sensitivity at threshold", "ppv": "PPV at threshold",
}
"""Row labels of :func:`ci_table_wide` (metric key -> label)."""

_HIGHER_IS_BETTER = {"harrell_c": True, "uno_c": True, "ipa": True, "brier": False, "ici": False}


def _fmt(v: Mapping, digits: int) -> str:
    if v.get("suppressed"):
        return "suppressed"
    return f"{v['estimate']:.{digits}f} ({v['ci_low']:.{digits}f} to {v['ci_high']:.{digits}f})"


def ci_table_wide(cis: Mapping[str, dict], labels: Mapping[str, str], digits: int = 3) -> pd.DataFrame:
    """Table "estimate (low to high)": one row per metric (:data:`METRIC_LABELS` order), one
    column per key of ``labels`` present in ``cis`` (a model, or a pair ``"a-b"``)."""
    cols = {}
    for key, label in labels.items():
        cols[label] = {METRIC_LABELS[m]: _fmt(cis[f"{key}.{m}"], digits) for m in METRIC_LABELS if f"{key}.{m}" in cis}
    return pd.DataFrame(cols).reindex([v for v in METRIC_LABELS.values() if any(v in c for c in cols.values())])


def describe_difference(label: str, metric: str, ci: Mapping, digits: int = 3) -> str:
    """One sentence comparing two models by the paired bootstrap CI of their difference.

    ``label`` names the difference ("A - B"), ``metric`` a key of :data:`DIFF_METRICS`.
    The sentence says which model is better only if the 95% CI excludes 0.
    """
    if metric not in _HIGHER_IS_BETTER:
        raise ValueError(f"describe_difference: metric must be one of {sorted(_HIGHER_IS_BETTER)}, got {metric!r}")
    first, second = (s.strip() for s in label.split(" - ", 1))
    text = f"{label}, {METRIC_LABELS[metric]}: {_fmt(ci, digits)}"
    if ci["ci_low"] > 0 or ci["ci_high"] < 0:
        better = first if (ci["ci_low"] > 0) == _HIGHER_IS_BETTER[metric] else second
        return f"{text}; the 95% CI excludes 0: {better} is better."
    return f"{text}; the 95% CI includes 0: no difference shown."


def smoothed_calibration_plot(curves: Mapping[str, pd.DataFrame], errors: Mapping[str, dict],
                              horizon_label: str, title: str = ""):
    """Smoothed calibration curves (:func:`smoothed_calibration` ``curve``) with ICI in the legend.

    A local figure of this module (the project's shared figures live in :mod:`pmed.plots`).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="Ideal")
    for label, curve in curves.items():
        ax.plot(curve["predicted"], curve["observed"], lw=1.8, label=f"{label} (ICI {errors[label]['ici']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"Predicted risk of death by {horizon_label}")
    ax.set_ylabel(f"Observed risk by {horizon_label} (Cox spline smoother)")
    ax.legend(frameon=False, loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
