"""Heterogeneous treatment effects on survival at a horizon, and treatment recommendations.

Estimand: the conditional average treatment effect (CATE)
``tau(x) = P(T > h | A=1, X=x) - P(T > h | A=0, X=x)``, the difference in survival
probability at horizon ``h`` (days) between immunotherapy (A=1) and chemotherapy (A=0).

Method: a cross-fitted DR-learner (Kennedy 2023, Electron J Stat 17:3008) written with
scikit-learn, because econml is not installed and the learner is short enough to own:

1. Censoring before the horizon: the binary outcome ``Y = 1{T > h}`` is known for persons
   who died by ``h`` or were followed beyond ``h``; persons censored by ``h`` get weight 0
   and the others the inverse probability of censoring weight ``1 / G(T-)`` (deaths) or
   ``1 / G(h)`` (alive beyond ``h``), with
   ``G`` the Kaplan-Meier estimate of the censoring distribution within each arm (IPCW;
   assumes censoring independent of survival given the arm).
2. Nuisance models fitted out-of-fold (K folds): propensity ``e(x)`` (logistic regression),
   outcome models ``mu_a(x) = P(Y=1 | A=a, X=x)`` (IPCW-weighted logistic regression or
   gradient boosting, one per arm).
3. Doubly robust scores ``Gamma_a = mu_a + 1{A=a} W (Y - mu_a) / P(A=a | x)``; the
   pseudo-outcome ``psi = Gamma_1 - Gamma_0`` has conditional mean ``tau(x)``.
4. Final stage: OLS of ``psi`` on the effect modifiers, fitted on the other folds and
   predicted on the held-out fold, with HC3 robust standard errors for per-patient CIs.

Evaluation on the held-out predictions: Qini (cumulative DR gain) curve and coefficient,
calibration of predicted vs DR-estimated benefit by group, and the value of the
recommendation policy against treating everyone one way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.stats import norm
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from pmed.causal import Z95, bootstrap_ci, weighted_km

OUTCOME_LEARNERS = ("logistic", "gbm")
RECOMMENDATIONS = ("immunotherapy", "chemotherapy", "no clear preference")


def horizon_outcome(
    time: np.ndarray, event: np.ndarray, treated: np.ndarray, horizon: float
) -> pd.DataFrame:
    """Survival status at ``horizon`` with arm-specific IPCW weights.

    Parameters
    ----------
    time : (n,) days from t0; event : (n,) 0/1 death; treated : (n,) 0/1; horizon : days.

    Returns
    -------
    DataFrame (n rows): ``y`` (1 = alive beyond the horizon, 0 = died by it, 0 when unknown),
    ``known`` (bool), ``ipcw`` (when known: 1/G(T-) for deaths by the horizon, 1/G(h) for
    persons followed beyond it; else 0), as in Graf et al. (1999) Stat Med 18:2529.
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=int)
    treated = np.asarray(treated, dtype=int)
    died = (event == 1) & (time <= horizon)
    alive = time > horizon
    known = died | alive
    ipcw = np.zeros(time.size)
    for arm in (0, 1):
        sel = treated == arm
        cens_km = weighted_km(time[sel], 1 - event[sel])
        times = cens_km["time"].to_numpy()
        surv = np.r_[1.0, cens_km["survival"].to_numpy()]
        # deaths: G(T-), censoring strictly before T; alive: G(h), censoring up to h
        g_death = surv[np.searchsorted(times, time[sel], side="left")]
        g_alive = surv[np.searchsorted(times, horizon, side="right")]
        g = np.where(died[sel], g_death, g_alive)
        ipcw[sel] = np.where(known[sel], 1.0 / g, 0.0)
    return pd.DataFrame({"y": alive.astype(int), "known": known, "ipcw": ipcw})


def _outcome_model(learner: str, seed: int):
    if learner == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    if learner == "gbm":
        return HistGradientBoostingClassifier(
            max_iter=150, learning_rate=0.05, max_leaf_nodes=8, random_state=seed
        )
    raise ValueError(f"outcome_learner must be one of {OUTCOME_LEARNERS}, got {learner!r}")


def dr_scores(
    X: pd.DataFrame,
    treated: np.ndarray,
    outcome: pd.DataFrame,
    n_folds: int = 5,
    seed: int = 0,
    outcome_learner: str = "logistic",
    ps_clip: float = 0.01,
) -> pd.DataFrame:
    """Cross-fitted nuisance predictions and doubly robust scores.

    Parameters
    ----------
    X : (n, p) complete numeric covariates; treated : (n,) 0/1;
    outcome : :func:`horizon_outcome` frame; ps_clip : propensity clipped to
    ``[ps_clip, 1 - ps_clip]`` in the scores.

    Returns
    -------
    DataFrame (n rows): ``fold``, ``ps``, ``mu0``, ``mu1``, ``gamma0``, ``gamma1``,
    ``psi`` (= gamma1 - gamma0, the DR pseudo-outcome for tau(x)).
    """
    Xv = np.asarray(X, dtype=float)
    t = np.asarray(treated, dtype=int)
    y = outcome["y"].to_numpy(float)
    w = outcome["ipcw"].to_numpy(float)
    known = outcome["known"].to_numpy(bool)
    n = len(t)
    fold = np.empty(n, dtype=int)
    ps = np.empty(n)
    mu = np.empty((n, 2))
    strata = t * 2 + known
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    # One OpenMP thread for the small boosting models: on a busy 2-core machine the default
    # thread pool made them ~40x slower (24 s vs 0.6 s in tests/test_hte.py).
    with threadpool_limits(limits=1, user_api="openmp"):
        _fit_nuisances(splitter.split(Xv, strata), Xv, t, y, w, known, outcome_learner, seed,
                       fold, ps, mu)
    e = np.clip(ps, ps_clip, 1 - ps_clip)

    gamma1 = mu[:, 1] + t * w * (y - mu[:, 1]) / e
    gamma0 = mu[:, 0] + (1 - t) * w * (y - mu[:, 0]) / (1 - e)
    return pd.DataFrame(
        {
            "fold": fold,
            "ps": ps,
            "mu0": mu[:, 0],
            "mu1": mu[:, 1],
            "gamma0": gamma0,
            "gamma1": gamma1,
            "psi": gamma1 - gamma0,
        },
        index=X.index,
    )


def _fit_nuisances(splits, Xv, t, y, w, known, outcome_learner, seed, fold, ps, mu) -> None:
    """Fill ``fold``, ``ps`` (n,) and ``mu`` (n, 2) in place with out-of-fold predictions."""
    for k, (train, test) in enumerate(splits):
        fold[test] = k
        ps_model = make_pipeline(StandardScaler(), LogisticRegression(C=np.inf, max_iter=5000))
        ps_model.fit(Xv[train], t[train])
        ps[test] = ps_model.predict_proba(Xv[test])[:, 1]
        for arm in (0, 1):
            fit_rows = train[(t[train] == arm) & known[train]]
            model = _outcome_model(outcome_learner, seed + arm)
            model.fit(Xv[fit_rows], y[fit_rows], **{_weight_arg(model): w[fit_rows]})
            mu[test, arm] = model.predict_proba(Xv[test])[:, 1]


def _weight_arg(model) -> str:
    """Name of the sample-weight fit argument (pipelines route it to their last step)."""
    if hasattr(model, "steps"):
        return f"{model.steps[-1][0]}__sample_weight"
    return "sample_weight"


def cross_fit_cate(
    X_mod: pd.DataFrame, psi: np.ndarray, fold: np.ndarray, level: float = 0.95
) -> pd.DataFrame:
    """Held-out CATE predictions: OLS of ``psi`` on the effect modifiers, fold by fold.

    For each fold k the model is fitted on the other folds and predicts fold k; the CI of
    each prediction uses the HC3 robust covariance of that fit.

    Returns
    -------
    DataFrame (n rows): ``cate``, ``se``, ``ci_low``, ``ci_high`` (survival difference at the
    horizon, immunotherapy minus chemotherapy).
    """
    Z = sm.add_constant(np.asarray(X_mod, dtype=float), has_constant="add")
    psi = np.asarray(psi, dtype=float)
    est = np.empty(len(psi))
    se = np.empty(len(psi))
    for k in np.unique(fold):
        test = fold == k
        res = sm.OLS(psi[~test], Z[~test]).fit(cov_type="HC3")
        est[test] = Z[test] @ res.params
        se[test] = np.sqrt(np.einsum("ij,jk,ik->i", Z[test], res.cov_params(), Z[test]))
    z = norm.ppf(0.5 + level / 2)
    return pd.DataFrame(
        {"cate": est, "se": se, "ci_low": est - z * se, "ci_high": est + z * se},
        index=X_mod.index,
    )


def recommend(cate: np.ndarray, ci_low: np.ndarray, ci_high: np.ndarray, band: float) -> np.ndarray:
    """Per-patient recommendation from the predicted benefit of immunotherapy.

    "immunotherapy" when cate > band and ci_low > 0; "chemotherapy" when cate < -band and
    ci_high < 0; otherwise "no clear preference" (benefit within +-band or CI covering 0).
    """
    cate, lo, hi = (np.asarray(a, dtype=float) for a in (cate, ci_low, ci_high))
    out = np.full(cate.shape, RECOMMENDATIONS[2], dtype=object)
    out[(cate > band) & (lo > 0)] = RECOMMENDATIONS[0]
    out[(cate < -band) & (hi < 0)] = RECOMMENDATIONS[1]
    return out


def _cumulative_gain(score, psi, name: str) -> tuple[np.ndarray, float]:
    """``(cum, mean(psi))``: cum[k] = (1/n) sum of psi over the k highest scores, cum[0] = 0.

    Ties keep input order; ``cum`` has n + 1 entries.
    """
    score = np.asarray(score, dtype=float)
    psi = np.asarray(psi, dtype=float)
    if score.shape != psi.shape:
        raise ValueError(f"{name}: score {score.shape} and psi {psi.shape} differ in shape")
    order = np.argsort(-score, kind="stable")
    return np.r_[0.0, np.cumsum(psi[order])] / psi.size, float(psi.mean())


def qini_curve(score: np.ndarray, psi: np.ndarray, n_points: int = 101) -> pd.DataFrame:
    """Qini curve: cumulative DR gain when treating the top fraction ranked by ``score``.

    ``gain(q) = (1/n) sum_{i in top ceil(q n)} psi_i`` (persons sorted by decreasing score,
    ties kept in input order) and ``random(q) = q mean(psi)``. With randomised treatment,
    no censoring and outcome models set to 0, ``psi = A Y / e - (1 - A) Y / (1 - e)`` and
    the curve is Radcliffe's Qini curve (scaled by 1/n) in expectation.

    Returns DataFrame ``fraction``, ``gain``, ``random`` with ``n_points`` rows.
    """
    cum, mean_psi = _cumulative_gain(score, psi, "qini_curve")
    n = cum.size - 1
    fraction = np.linspace(0, 1, n_points)
    k = np.ceil(fraction * n - 1e-9).astype(int)
    return pd.DataFrame({"fraction": fraction, "gain": cum[k], "random": fraction * mean_psi})


def qini_coefficient(score: np.ndarray, psi: np.ndarray) -> float:
    """Area between the Qini curve and the random-targeting line, over all n cut-offs.

    ``Q = (1/n) sum_{k=1..n} [gain(k/n) - (k/n) mean(psi)]`` (units of ``psi``: survival
    probability). Positive when high scores pick persons with larger benefit.
    """
    cum, mean_psi = _cumulative_gain(score, psi, "qini_coefficient")
    n = cum.size - 1
    random = np.arange(1, n + 1) / n * mean_psi
    return float(np.mean(cum[1:] - random))


def benefit_calibration(
    cate: np.ndarray, psi: np.ndarray, n_groups: int = 4
) -> pd.DataFrame:
    """Predicted vs DR-estimated observed benefit by quantile group of predicted benefit.

    Returns DataFrame: ``group`` (1 = lowest predicted), ``n``, ``predicted`` (mean cate),
    ``observed`` (mean psi), ``ci_low``, ``ci_high`` (normal 95% CI of the mean psi).
    """
    cate = np.asarray(cate, dtype=float)
    psi = np.asarray(psi, dtype=float)
    groups = pd.qcut(pd.Series(cate).rank(method="first"), n_groups, labels=False) + 1
    rows = []
    for g in range(1, n_groups + 1):
        sel = (groups == g).to_numpy()
        m = psi[sel].mean()
        se = psi[sel].std(ddof=1) / np.sqrt(sel.sum())
        rows.append((g, int(sel.sum()), cate[sel].mean(), m, m - Z95 * se, m + Z95 * se))
    return pd.DataFrame(rows, columns=["group", "n", "predicted", "observed", "ci_low", "ci_high"])


def policy_values(
    policy: np.ndarray, gamma1: np.ndarray, gamma0: np.ndarray, n_boot: int, seed: int
) -> dict:
    """DR value (survival at horizon) of a treatment policy vs treating everyone one way.

    Parameters
    ----------
    policy : (n,) 1 = give immunotherapy, 0 = chemotherapy; gamma1, gamma0 : (n,) DR scores.

    Returns
    -------
    dict of {"estimate", "ci_low", "ci_high"} (percentile bootstrap over persons, scores
    held fixed) for ``policy``, ``all_immunotherapy``, ``all_chemotherapy``,
    ``gain_vs_best_single`` (policy minus the better of the two one-way policies, chosen
    within each replicate).
    """
    pi = np.asarray(policy, dtype=float)
    g1 = np.asarray(gamma1, dtype=float)
    g0 = np.asarray(gamma0, dtype=float)
    v_pol = pi * g1 + (1 - pi) * g0

    def stats(idx: np.ndarray) -> np.ndarray:
        a, b, c = v_pol[idx].mean(), g1[idx].mean(), g0[idx].mean()
        return np.array([a, b, c, a - max(b, c)])

    names = ["policy", "all_immunotherapy", "all_chemotherapy", "gain_vs_best_single"]
    point = stats(np.arange(pi.size))
    rng = np.random.default_rng(seed)
    reps = np.array([stats(rng.integers(0, pi.size, pi.size)) for _ in range(n_boot)])
    lo, hi = np.quantile(reps, [0.025, 0.975], axis=0)
    return {
        name: {"estimate": float(point[j]), "ci_low": float(lo[j]), "ci_high": float(hi[j])}
        for j, name in enumerate(names)
    }


def qini_with_ci(score: np.ndarray, psi: np.ndarray, n_boot: int, seed: int) -> dict:
    """Qini coefficient with a percentile bootstrap 95% CI (persons resampled)."""
    score = np.asarray(score, dtype=float)
    psi = np.asarray(psi, dtype=float)
    lo, hi, _ = bootstrap_ci(
        lambda idx: qini_coefficient(score[idx], psi[idx]), psi.size, n_boot, seed
    )
    return {"estimate": qini_coefficient(score, psi), "ci_low": lo, "ci_high": hi}


def true_better_immunotherapy(
    df: pd.DataFrame, truth: dict, modifiers: Sequence[str] = ("pdl1_pct",)
) -> np.ndarray:
    """Whether immunotherapy truly improves survival at any horizon, from the generating model.

    Under a proportional-hazards generating model with log-HR of treatment
    ``b_t + sum_m b_{t:m} x_m``, ``S_1(h|x) > S_0(h|x)`` exactly when that log-HR is < 0,
    whatever the baseline hazard and other covariates.

    Parameters
    ----------
    df : cohort rows holding the ``modifiers`` columns.
    truth : ``ground_truth.json``'s dict of true log-HRs, with keys ``"treated"`` and
        ``"treated:<modifier>"``.

    Returns
    -------
    bool array (n,).
    """
    if "treated" not in truth:
        raise KeyError(f"ground truth log-HRs lack 'treated' (keys: {sorted(truth)})")
    log_hr = np.full(len(df), float(truth["treated"]))
    for m in modifiers:
        key = f"treated:{m}"
        if key in truth:
            log_hr = log_hr + float(truth[key]) * df[m].to_numpy(float)
    return log_hr < 0


def recommendation_table(
    person_id: np.ndarray, cate: pd.DataFrame, band: float
) -> pd.DataFrame:
    """Per-patient predicted benefit and recommendation (:func:`recommend`).

    Parameters
    ----------
    person_id : (n,) person ids.
    cate : output of :func:`cross_fit_cate` (n rows; ``cate``, ``ci_low``, ``ci_high``:
        survival difference at the horizon, immunotherapy minus chemotherapy).
    band : no-preference band of :func:`recommend` (survival probability).

    Returns
    -------
    DataFrame (n rows): ``person_id`` (int64), ``predicted_benefit``, ``ci_low``,
    ``ci_high``, ``recommendation`` (one of :data:`RECOMMENDATIONS`).
    """
    missing = [c for c in ("cate", "ci_low", "ci_high") if c not in cate.columns]
    if missing:
        raise KeyError(f"recommendation_table: cate table lacks column(s) {missing}")
    person_id = np.asarray(person_id, dtype="int64")
    if len(person_id) != len(cate):
        raise ValueError(f"recommendation_table: {len(person_id)} person ids but {len(cate)} cate rows")
    rec = recommend(cate["cate"], cate["ci_low"], cate["ci_high"], band)
    return pd.DataFrame({
        "person_id": person_id,
        "predicted_benefit": cate["cate"].to_numpy(),
        "ci_low": cate["ci_low"].to_numpy(),
        "ci_high": cate["ci_high"].to_numpy(),
        "recommendation": pd.Series(rec, dtype="string").to_numpy(),
    })


def agreement_with_truth(
    policy: np.ndarray, recommendation: np.ndarray, true_better: np.ndarray
) -> dict:
    """Share of patients whose recommended treatment is the truly better one.

    Parameters
    ----------
    policy : (n,) point recommendation, 1 = immunotherapy, 0 = chemotherapy.
    recommendation : (n,) labels of :func:`recommend`.
    true_better : (n,) bool, immunotherapy truly better (:func:`true_better_immunotherapy`).

    Returns
    -------
    dict: ``policy`` (share of all patients where ``policy == 1`` matches ``true_better``),
    ``firm`` (the same share among patients with a firm recommendation, i.e. not "no clear
    preference"; NaN if there are none), ``n_firm`` (count of firm recommendations).
    """
    policy = np.asarray(policy)
    rec = np.asarray(recommendation, dtype=object)
    true_better = np.asarray(true_better, dtype=bool)
    if not policy.shape == rec.shape == true_better.shape:
        raise ValueError(
            f"agreement_with_truth: policy {policy.shape}, recommendation {rec.shape} and "
            f"true_better {true_better.shape} differ in shape"
        )
    firm = rec != RECOMMENDATIONS[2]
    firm_agree = np.mean((rec[firm] == RECOMMENDATIONS[0]) == true_better[firm]) if firm.any() else np.nan
    return {
        "policy": float(np.mean((policy == 1) == true_better)),
        "firm": float(firm_agree),
        "n_firm": int(firm.sum()),
    }
