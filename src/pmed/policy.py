"""Per-patient treatment recommendations over k arms, learned and judged on separate data.

Estimand per person and arm: ``S_a(h | x) = P(T_a > h | X = x)``, survival at the horizon
``h`` (days) under arm ``a``; a policy ``pi(x)`` has value ``V(pi) = E[S_pi(X)(h | X)]``.
Arms are coded 0..k-1, the reference arm 0 (:func:`pmed.multiarm.arm_codes`).

1. **Doubly robust scores** (:func:`crossfit_scores`):
   ``Gamma_a = m_a(x) + 1{A = a} (Y* - m_a(x)) / e_a(x)``, with the multinomial propensity
   ``e_a``, the outcome model ``m_a(x) = S_a(h | x)`` (a Cox model per arm) and ``Y*`` a
   censoring-unbiased transform of ``Y = 1{T > h}``, all nuisances fitted on other folds:

   - ``censoring="aipcw"`` (default): augmented IPCW (Tsiatis 2006, ch. 10; as in causal
     survival forests, Cui et al. 2023, JRSSB 85:179) with a Cox model for censoring on the
     covariates and arm, ``Y* = 1{T~ > h} / G(h | x, a) + int_0^h Q(u) / G(u- | x, a) dM_C(u)``,
     ``Q(u) = S(h | x, a) / S(u | x, a)``;
   - ``censoring="km_ipcw"``: the previous scheme, IPCW with an arm-wise Kaplan-Meier of
     censoring (censoring assumed independent of the covariates within an arm).

2. **Held-out design** (:func:`run_repeats`): each repeat splits the persons into two halves;
   the scores of a half use nuisance models fitted inside that half only (cross-fitted), the
   CATE proxy and the policy tree are learned on one half and applied to the other, and the
   roles swap. So no patient is scored or recommended by a model that saw them.

3. **Heterogeneity test** (:func:`heterogeneity_test`): per contrast ``a vs reference``, the
   best linear predictor test of Chernozhukov, Demirer, Duflo & Fernandez-Val (2018, NBER
   w24678): on the held-out half, OLS of ``psi_a = Gamma_a - Gamma_0`` on ``[1, S_a - mean
   S_a]`` where ``S_a``, the proxy CATE, is learned on the other half (OLS of its plug-in contrast ``m_a - m_0`` on the modifiers); H0: slope = 0 vs > 0
   (HC3 SE). The 2R split p-values are combined as ``min(1, 2 median)`` (their rule), and
   Holm-adjusted across the k - 1 contrasts. Personalise only if one rejects at alpha.

4. **Policy** (:func:`fit_policy_tree`): an exhaustive depth-2 policy tree maximising the
   sum of ``Gamma_pi(x)`` (Athey & Wager 2021, Econometrica 89:133) over quantile cut
   points of the effect modifiers. A person whose path needs a missing modifier gets
   "no recommendation: <modifier> missing" (never an imputed value).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from pmed.causal import weighted_km
from pmed.survival import require_events

CENSORING_METHODS = ("aipcw", "km_ipcw")
AVERAGE = "recommend by average effect"
MISSING = "no recommendation: {} missing"


# --------------------------------------------------------------------------- nuisances
def _standardise(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = X_train.mean(0), X_train.std(0)
    sd[sd == 0] = 1.0
    return (X_train - mu) / sd, (X_test - mu) / sd


class RidgeCox:
    """Cox model, Breslow ties, ridge penalty ``alpha / 2 ||beta||^2``, fitted by Newton.

    The same objective as scikit-survival's ``CoxPHSurvivalAnalysis(alpha, ties="breslow")``
    (checked in tests), vectorised with reverse cumulative sums (that implementation loops
    over event times in Python and was ~10x slower here). ``base(t)`` is the Breslow
    baseline cumulative hazard (right-continuous step) at any times; ``risk(X) = exp(X beta)``.
    """

    def __init__(self, X: np.ndarray, time: np.ndarray, event: np.ndarray, alpha: float,
                 max_iter: int = 50, tol: float = 1e-9):
        X = np.asarray(X, dtype=float)
        order = np.argsort(time, kind="stable")
        X, time, event = X[order], np.asarray(time, float)[order], np.asarray(event, float)[order]
        uniq, first = np.unique(time, return_index=True)
        grp = np.searchsorted(uniq, time)
        d = np.bincount(grp, weights=event, minlength=uniq.size)
        xe = np.add.reduceat(X * event[:, None], first) if X.shape[1] else np.zeros((uniq.size, 0))
        p = X.shape[1]
        beta = np.zeros(p)

        def parts(b):
            r = np.exp(np.clip(X @ b, -30, 30))
            s0 = np.cumsum(r[::-1])[::-1][first]
            s1 = np.cumsum((X * r[:, None])[::-1], 0)[::-1][first]
            loglik = float(np.sum(event * (X @ b)) - np.sum(d * np.log(s0)) - 0.5 * alpha * b @ b)
            return r, s0, s1, loglik

        r, s0, s1, ll = parts(beta)
        for _ in range(max_iter):
            xbar = s1 / s0[:, None]
            grad = (xe - d[:, None] * xbar).sum(0) - alpha * beta
            # information = sum_t d_t [S2_t / S0_t - xbar_t xbar_t'] with S2_t = sum_{T_i >= t} r_i x_i x_i';
            # the first part is X' diag(r_i c_i) X, c_i = sum_{t <= T_i} d_t / S0_t (no n x p x p array)
            c = np.cumsum(d / s0)[grp]
            info = X.T @ (X * (r * c)[:, None]) - (xbar * d[:, None]).T @ xbar
            step = np.linalg.solve(info + alpha * np.eye(p), grad)
            for _half in range(30):
                new = beta + step
                r_n, s0_n, s1_n, ll_n = parts(new)
                if ll_n >= ll - 1e-12:
                    break
                step = step / 2
            converged = abs(ll_n - ll) < tol * (abs(ll) + 1)
            beta, r, s0, s1, ll = new, r_n, s0_n, s1_n, ll_n
            if converged:
                break
        self.coef_ = beta
        keep = d > 0
        self.t, self.h = uniq[keep], np.cumsum(d[keep] / s0[keep])

    def base(self, times: np.ndarray) -> np.ndarray:
        """Baseline cumulative hazard H0(t) (right-continuous step), any shape."""
        pos = np.searchsorted(self.t, times, side="right") - 1
        return np.where(pos >= 0, self.h[np.clip(pos, 0, None)], 0.0)

    def risk(self, X: np.ndarray) -> np.ndarray:
        return np.exp(np.clip(np.asarray(X, dtype=float) @ self.coef_, -30, 30))


def horizon_status(time, event, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """``(y, known)``: y = 1{T > h} (alive beyond the horizon), known = died by h or followed past h."""
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=int)
    alive = time > horizon
    return alive.astype(float), alive | ((event == 1) & (time <= horizon))


def _censoring_transform_aipcw(
    X_tr, arm_tr, time_tr, event_tr, X_te, arm_te, time_te, event_te, surv_models, horizon,
    k, alpha, g_min,
) -> np.ndarray:
    """AIPCW transform ``Y*`` (n_test,) of ``1{T > h}`` with a Cox censoring model."""
    D_tr = np.column_stack([X_tr, np.eye(k)[arm_tr][:, 1:]])
    D_te = np.column_stack([X_te, np.eye(k)[arm_te][:, 1:]])
    # censoring model on follow-up truncated at the horizon: only G on [0, h] is needed, and
    # late administrative censoring (driven by calendar time) would otherwise dominate a
    # proportional-hazards fit and extrapolate absurd early censoring hazards
    cens = RidgeCox(D_tr, np.minimum(time_tr, horizon), (event_tr == 0) & (time_tr <= horizon), alpha)
    grid = cens.t[cens.t <= horizon]
    r_c = cens.risk(D_te)[:, None]
    H_c = cens.base(grid)[None, :] * r_c                       # (n, m) censoring cum. hazard
    H_c_left = np.c_[np.zeros(len(D_te)), H_c[:, :-1]]
    # dLambda_C(u) / G(u-) written as the increment of 1/G (equal in continuous time), with G
    # floored at g_min: the compensator stays bounded by Q / g_min even where the fitted
    # censoring hazard explodes
    inv_g = 1.0 / np.maximum(np.exp(-H_c), g_min)
    d_inv_g = inv_g - 1.0 / np.maximum(np.exp(-H_c_left), g_min)
    S_grid = np.empty_like(H_c)
    S_h = np.empty(len(D_te))
    S_own = np.empty(len(D_te))
    for a, model in enumerate(surv_models):
        sel = arm_te == a
        r = model.risk(X_te[sel])
        S_grid[sel] = np.exp(-model.base(grid)[None, :] * r[:, None])
        S_h[sel] = np.exp(-model.base(np.array([horizon]))[0] * r)
        S_own[sel] = np.exp(-model.base(np.minimum(time_te[sel], horizon)) * r)
    Q = np.minimum(S_h[:, None] / np.maximum(S_grid, 1e-12), 1.0)
    at_risk = grid[None, :] <= time_te[:, None]
    compensator = np.sum(at_risk * Q * d_inv_g, axis=1)
    t_own = np.minimum(time_te, horizon)
    g_own_left = np.maximum(np.exp(-cens.base(t_own - 1e-9) * r_c[:, 0]), g_min)
    censored_before = (event_te == 0) & (time_te <= horizon)
    q_own = np.minimum(S_h / np.maximum(S_own, 1e-12), 1.0)
    jump = np.where(censored_before, q_own / g_own_left, 0.0)
    g_h = np.maximum(np.exp(-cens.base(np.array([horizon]))[0] * r_c[:, 0]), g_min)
    return (time_te > horizon) / g_h + jump - compensator


def _km_ipcw_weights(arm_tr, time_tr, event_tr, arm_te, time_te, event_te, horizon, k, g_min):
    """IPCW weights (n_test,): 1/G(T-) for deaths by h, 1/G(h) beyond h, 0 if censored by h."""
    y, known = horizon_status(time_te, event_te, horizon)
    w = np.zeros(len(time_te))
    for a in range(k):
        km = weighted_km(time_tr[arm_tr == a], 1 - event_tr[arm_tr == a])
        t, s = km["time"].to_numpy(), np.r_[1.0, km["survival"].to_numpy()]
        sel = arm_te == a
        g = np.where(y[sel] == 1, s[np.searchsorted(t, horizon, side="right")],
                     s[np.searchsorted(t, time_te[sel], side="left")])
        w[sel] = np.where(known[sel], 1.0 / np.maximum(g, g_min), 0.0)
    return w


def crossfit_scores(
    X: np.ndarray, arm: np.ndarray, time: np.ndarray, event: np.ndarray, horizon: float,
    folds: np.ndarray, censoring: str = "aipcw", ps_clip: float = 0.05, cox_alpha: float = 0.01,
    g_min: float = 0.05,
) -> dict:
    """Cross-fitted doubly robust scores ``Gamma`` (n, k) of survival at ``horizon``.

    For every fold, the nuisances are fitted on the other folds: multinomial propensity
    (L2, C = 1; clipped to ``[ps_clip, 1]``), a Cox model per arm for ``S_a(t | x)``
    (ridge ``cox_alpha``) and, for ``"aipcw"``, a Cox model of censoring on ``x`` and the
    arm indicators (``"km_ipcw"``: arm-wise Kaplan-Meier), fitted on follow-up truncated at
    the horizon (only ``G`` on [0, h] is used). ``G`` is floored at ``g_min``.

    Parameters
    ----------
    X : (n, p) complete numeric covariates; arm : (n,) codes 0..k-1; time : (n,) days;
    event : (n,) 0/1 death; folds : (n,) fold number of each person.

    Returns
    -------
    dict: ``gamma`` (n, k) DR scores, ``mu`` (n, k) outcome-model survival at h, ``ps`` (n, k).
    """
    if censoring not in CENSORING_METHODS:
        raise ValueError(f"censoring must be one of {CENSORING_METHODS}, got {censoring!r}")
    X = np.asarray(X, dtype=float)
    arm = np.asarray(arm, dtype=int)
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=int)
    k = int(arm.max()) + 1
    n = len(arm)
    mu, ps = np.empty((n, k)), np.empty((n, k))
    resid = np.empty(n)
    for f in np.unique(folds):  # the per-arm outcome models of each fold's training rows
        for a in range(k):
            require_events(f"the outcome Cox model of arm {a} (training rows of fold {f})",
                           event[(folds != f) & (arm == a)].sum())
    y, _ = horizon_status(time, event, horizon)
    # One BLAS/OpenMP thread: on the shared 2-core machine threaded BLAS made these small fits
    # several times slower (lbfgs of the propensity model took 3 of 10 s per repeat).
    with threadpool_limits(limits=1):
        _fill_folds(X, arm, time, event, y, horizon, folds, censoring, ps_clip, cox_alpha, g_min, k, mu, ps, resid)
    own = np.eye(k)[arm]
    gamma = mu + own * (resid / ps[np.arange(n), arm])[:, None]
    return {"gamma": gamma, "mu": mu, "ps": ps}


def _fill_folds(X, arm, time, event, y, horizon, folds, censoring, ps_clip, cox_alpha, g_min, k, mu, ps, resid):
    """Fill ``mu``, ``ps`` (n, k) and ``resid`` (n,) in place, fold by fold (nuisances out of fold)."""
    for f in np.unique(folds):
        te, tr = folds == f, folds != f
        Xtr, Xte = _standardise(X[tr], X[te])
        ps[te] = np.clip(_propensity(Xtr, arm[tr], Xte, k), ps_clip, 1.0)
        models = [RidgeCox(Xtr[arm[tr] == a], time[tr][arm[tr] == a], event[tr][arm[tr] == a], cox_alpha)
                  for a in range(k)]
        for a, model in enumerate(models):
            mu[te, a] = np.exp(-model.base(np.array([horizon]))[0] * model.risk(Xte))
        mu_own = mu[te][np.arange(te.sum()), arm[te]]
        if censoring == "aipcw":
            ystar = _censoring_transform_aipcw(
                Xtr, arm[tr], time[tr], event[tr], Xte, arm[te], time[te], event[te], models,
                horizon, k, cox_alpha, g_min)
            resid[te] = ystar - mu_own
        else:
            w = _km_ipcw_weights(arm[tr], time[tr], event[tr], arm[te], time[te], event[te],
                                 horizon, k, g_min)
            resid[te] = w * (y[te] - mu_own)


def _propensity(X_tr: np.ndarray, arm_tr: np.ndarray, X_te: np.ndarray, k: int) -> np.ndarray:
    """Multinomial logistic propensity (C = 1) fitted on train, predicted on test (n_test, k)."""
    model = LogisticRegression(C=1.0, max_iter=2000).fit(X_tr, arm_tr)
    out = np.full((len(X_te), k), 1e-6)
    out[:, model.classes_] = model.predict_proba(X_te)
    return out


# --------------------------------------------------------------------------- policy tree
def _cuts(x: np.ndarray, n_cuts: int) -> np.ndarray:
    """Candidate thresholds of one feature: mid-points between distinct quantile values."""
    q = np.unique(np.quantile(x, np.linspace(0, 1, n_cuts + 2)[1:-1], method="lower"))
    vals = np.unique(x)
    upper = vals[np.minimum(np.searchsorted(vals, q, side="right"), vals.size - 1)]
    return np.unique((q + upper)[upper > q] / 2)


def _best_split(Xb: list[np.ndarray], cuts: list[np.ndarray], G: np.ndarray, min_leaf: int):
    """Best single split of rows (features pre-binned): (value, j, cut, arm_left, arm_right)."""
    best = (G.sum(0).max(), None, None, int(np.argmax(G.sum(0))), None)
    k = G.shape[1]
    total = G.sum(0)
    for j, (codes, c) in enumerate(zip(Xb, cuts, strict=True)):
        if c.size == 0:
            continue
        nb = c.size + 1
        sums = np.stack([np.bincount(codes, G[:, a], minlength=nb) for a in range(k)], axis=1)
        counts = np.bincount(codes, minlength=nb)
        left, n_left = np.cumsum(sums, 0)[:-1], np.cumsum(counts)[:-1]
        ok = (n_left >= min_leaf) & (len(codes) - n_left >= min_leaf)
        if not ok.any():
            continue
        value = np.where(ok, left.max(1) + (total - left).max(1), -np.inf)
        b = int(np.argmax(value))
        if value[b] > best[0] + 1e-12:
            best = (value[b], j, c[b], int(np.argmax(left[b])), int(np.argmax(total - left[b])))
    return best


def _leaf_or_split(Xb, cuts, G, min_leaf) -> tuple[float, dict]:
    value, j, cut, a_left, a_right = _best_split(Xb, cuts, G, min_leaf)
    if j is None:
        return value, {"arm": a_left}
    return value, {"feature": j, "cut": float(cut), "left": {"arm": a_left}, "right": {"arm": a_right}}


def fit_policy_tree(
    X: pd.DataFrame, gamma: np.ndarray, min_leaf: int, n_cuts: int = 10, depth: int = 2
) -> dict:
    """Exhaustive depth-1 or depth-2 policy tree maximising ``sum_i Gamma[i, pi(x_i)]``.

    Splits are ``x_j < cut`` (left) vs ``>=`` (right) at mid-points of ``n_cuts`` quantiles of
    each column (a 0/1 column has the single cut 0.5); every leaf keeps >= ``min_leaf``
    persons. Ties keep the first column/cut. Rows with a missing value in ``X`` must be
    dropped by the caller.

    Returns a nested dict: leaf ``{"arm": code}``, node ``{"feature": name, "cut": float,
    "left": ..., "right": ...}``.
    """
    if depth not in (1, 2):
        raise ValueError(f"fit_policy_tree: depth must be 1 or 2, got {depth}")
    Xv = X.to_numpy(float)
    if np.isnan(Xv).any():
        raise ValueError("fit_policy_tree: X has missing values; drop incomplete rows first")
    G = np.asarray(gamma, dtype=float)
    cuts = [_cuts(Xv[:, j], n_cuts) for j in range(Xv.shape[1])]
    Xb = [np.searchsorted(c, Xv[:, j], side="right") for j, c in enumerate(cuts)]
    if depth == 1:
        tree = _leaf_or_split(Xb, cuts, G, min_leaf)[1]
    else:
        best_value, tree = _leaf_or_split(Xb, cuts, G, min_leaf)
        for j, c in enumerate(cuts):
            for cut in c:
                left = Xv[:, j] < cut
                if left.sum() < min_leaf or (~left).sum() < min_leaf:
                    continue
                vl, tl = _leaf_or_split([b[left] for b in Xb], cuts, G[left], min_leaf)
                vr, tr = _leaf_or_split([b[~left] for b in Xb], cuts, G[~left], min_leaf)
                if vl + vr > best_value + 1e-12:
                    best_value, tree = vl + vr, {"feature": j, "cut": float(cut), "left": tl, "right": tr}
    return _name_features(tree, list(X.columns))


def _name_features(node: dict, names: list[str]) -> dict:
    if "arm" in node:
        return node
    return {"feature": names[node["feature"]], "cut": node["cut"],
            "left": _name_features(node["left"], names), "right": _name_features(node["right"], names)}


def apply_tree(tree: dict, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Arm code (n,) and rule text (n,) of each person; code -1 when the path needs a missing value.

    The rule of a person with a missing modifier on the path is
    ``"no recommendation: <modifier> missing"``; otherwise the conditions on the path, e.g.
    ``"pdl1_pct >= 49.5 and driver_positive < 0.5"`` (empty for a single-leaf tree).
    """
    arm = np.empty(len(X), dtype=int)
    rule = np.empty(len(X), dtype=object)
    for i, row in enumerate(X.itertuples(index=False)):
        values = dict(zip(X.columns, row, strict=True))
        node, conds = tree, []
        while "arm" not in node:
            v = values[node["feature"]]
            if v is None or pd.isna(v):
                arm[i], rule[i] = -1, MISSING.format(node["feature"])
                break
            go_left = float(v) < node["cut"]
            conds.append(f"{node['feature']} {'<' if go_left else '>='} {node['cut']:g}")
            node = node["left"] if go_left else node["right"]
        else:
            arm[i], rule[i] = node["arm"], " and ".join(conds)
    return arm, rule


# --------------------------------------------------------------------------- held-out test
def blp_test(psi: np.ndarray, proxy: np.ndarray) -> dict:
    """Best-linear-predictor heterogeneity test on held-out data (one split, one contrast).

    OLS ``psi = b1 + b2 (S - mean S) + e`` with HC3 SE; one-sided p-value of H0: b2 = 0 vs
    b2 > 0 (b2 = 1 for a perfect proxy, 0 when the effect does not vary with it). A constant
    proxy gives p = 1.

    Returns ``{"ate": b1, "slope": b2, "se": se(b2), "p": p}``.
    """
    psi = np.asarray(psi, dtype=float)
    s = np.asarray(proxy, dtype=float)
    s = s - s.mean()
    if np.allclose(s, 0):
        return {"ate": float(psi.mean()), "slope": 0.0, "se": np.inf, "p": 1.0}
    res = sm.OLS(psi, np.column_stack([np.ones_like(s), s])).fit(cov_type="HC3")
    b, se = float(res.params[1]), float(res.bse[1])
    return {"ate": float(res.params[0]), "slope": b, "se": se, "p": float(norm.sf(b / se))}


def combine_pvalues(p_splits: np.ndarray) -> float:
    """Median of split p-values, doubled and capped at 1 (Chernozhukov et al.'s split rule)."""
    return float(min(1.0, 2 * np.median(np.asarray(p_splits, dtype=float))))


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (same order as ``p``)."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    adj = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adj, 1.0)
    return out


def linear_cate(M_tr: np.ndarray, target_tr: np.ndarray, M_te: np.ndarray) -> np.ndarray:
    """Linear proxy CATE: OLS of the training half's plug-in contrast ``m_a - m_0`` on the
    modifiers, predicted on the test half (less noisy than regressing the DR contrast)."""
    Z_tr = np.column_stack([np.ones(len(M_tr)), M_tr])
    beta = np.linalg.lstsq(Z_tr, target_tr, rcond=None)[0]
    return np.column_stack([np.ones(len(M_te)), M_te]) @ beta


# --------------------------------------------------------------------------- repeats
def run_repeats(
    X: np.ndarray, modifiers: pd.DataFrame, arm: np.ndarray, time, event, horizon: float,
    n_repeats: int, n_folds: int, seed: int, min_leaf: int, n_cuts: int = 10,
    censoring: str = "aipcw", **score_kw,
) -> dict:
    """R repeats of the two-half held-out design (see the module docstring).

    Parameters
    ----------
    X : (n, p) complete numeric covariates of the nuisance models.
    modifiers : (n, q) effect modifiers of the policy and proxy CATE (missing values allowed;
        incomplete rows are left out of learning and of the test, never imputed).
    arm : (n,) codes 0..k-1 (0 = reference); time, event : (n,) days, 0/1 death.
    n_repeats : R; n_folds : inner cross-fitting folds within a half; seed : repeat r uses
        ``seed + r`` for its split; min_leaf : smallest leaf of the policy tree (persons).
    score_kw : passed to :func:`crossfit_scores`.

    Returns
    -------
    dict: ``gamma`` (R, n, k) held-out DR scores; ``mu`` (R, n, k) outcome-model survival;
    ``action`` (R, n) held-out policy arm (-1 =
    modifier missing); ``rule`` (R, n) path text; ``fallback`` (R, n) best single arm of the
    training half (the arm used to value persons without a recommendation);
    ``p_splits`` (R * 2, k - 1) BLP p-values; ``blp`` list of per-split per-contrast dicts;
    ``trees`` list of (R * 2) trees.
    """
    X = np.asarray(X, dtype=float)
    arm = np.asarray(arm, dtype=int)
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=int)
    n, k = len(arm), int(arm.max()) + 1
    for a in range(k):  # the per-arm outcome models (checked per fold by crossfit_scores)
        require_events(f"the outcome Cox model of arm {a}", event[arm == a].sum())
    M = modifiers.to_numpy(float)
    complete = ~np.isnan(M).any(axis=1)
    gamma = np.empty((n_repeats, n, k))
    mu = np.empty((n_repeats, n, k))
    action = np.empty((n_repeats, n), dtype=int)
    rule = np.empty((n_repeats, n), dtype=object)
    fallback = np.empty((n_repeats, n), dtype=int)
    p_splits, blp, trees = [], [], []
    for r in range(n_repeats):
        rng_seed = seed + r
        half = np.empty(n, dtype=int)
        outer = StratifiedKFold(n_splits=2, shuffle=True, random_state=rng_seed)
        for h, (_, idx) in enumerate(outer.split(X, arm * 2 + event)):
            half[idx] = h
        for h in (0, 1):
            sel = half == h
            inner = np.empty(sel.sum(), dtype=int)
            splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=rng_seed + 7919)
            for f, (_, idx) in enumerate(splitter.split(X[sel], arm[sel] * 2 + event[sel])):
                inner[idx] = f
            scores = crossfit_scores(X[sel], arm[sel], time[sel], event[sel], horizon, inner,
                                     censoring=censoring, **score_kw)
            gamma[r, sel], mu[r, sel] = scores["gamma"], scores["mu"]
        for h in (0, 1):
            tr = (half == h) & complete
            te = half != h
            tree = fit_policy_tree(modifiers[tr], gamma[r, tr], min_leaf, n_cuts)
            trees.append(tree)
            action[r, te], rule[r, te] = apply_tree(tree, modifiers[te])
            fallback[r, te] = int(np.argmax(gamma[r, half == h].mean(0)))
            te_c = te & complete
            ps_row, blp_row = [], []
            for a in range(1, k):
                plug_tr = mu[r, tr, a] - mu[r, tr, 0]
                psi_te = gamma[r, te_c, a] - gamma[r, te_c, 0]
                res = blp_test(psi_te, linear_cate(M[tr], plug_tr, M[te_c]))
                ps_row.append(res["p"])
                blp_row.append(res)
            p_splits.append(ps_row)
            blp.append(blp_row)
    return {"gamma": gamma, "mu": mu, "action": action, "rule": rule, "fallback": fallback,
            "p_splits": np.array(p_splits), "blp": blp, "trees": trees}


def heterogeneity_test(p_splits: np.ndarray, labels: Sequence[str], alpha: float) -> pd.DataFrame:
    """Per-contrast combined and Holm-adjusted p-values; ``reject`` at ``alpha``.

    Parameters
    ----------
    p_splits : (n_splits, k - 1) BLP p-values (:func:`run_repeats`); labels : arm labels by
        code (reference first).

    Returns DataFrame ``contrast``, ``p_median`` (median split p), ``p_combined``
    (:func:`combine_pvalues`), ``p_holm``, ``reject``.
    """
    p_splits = np.atleast_2d(np.asarray(p_splits, dtype=float))
    comb = [combine_pvalues(p_splits[:, j]) for j in range(p_splits.shape[1])]
    adj = holm(comb)
    return pd.DataFrame({
        "contrast": [f"{labels[a]} vs {labels[0]}" for a in range(1, len(labels))],
        "p_median": np.median(p_splits, axis=0),
        "p_combined": comb,
        "p_holm": adj,
        "reject": adj < alpha,
    })


def policy_value(
    gamma: np.ndarray, action: np.ndarray, fallback: np.ndarray, labels: Sequence[str],
    n_boot: int, seed: int,
) -> pd.DataFrame:
    """Held-out DR value of the policy, of treating all with each arm, and the gain.

    Per person the values are averaged over the R repeats (each repeat's policy never saw
    the person); persons without a recommendation are valued at ``fallback``. The gain is
    ``V(policy) - max_a V(all a)``, the best arm chosen inside each bootstrap replicate
    (persons resampled, scores and actions fixed; percentile 95% CI).

    Parameters
    ----------
    gamma : (R, n, k); action, fallback : (R, n) arm codes (action -1 = none).

    Returns DataFrame ``policy`` ("policy", "all <label>" per arm, "gain vs best single
    arm"), ``estimate``, ``ci_low``, ``ci_high`` (survival probability at the horizon).
    """
    gamma = np.asarray(gamma, dtype=float)
    act = np.where(np.asarray(action) < 0, fallback, action)
    v_pol = np.take_along_axis(gamma, act[..., None], axis=2)[..., 0].mean(0)     # (n,)
    v_arm = gamma.mean(0)                                                        # (n, k)
    V = np.column_stack([v_pol, v_arm])

    def stats(m: np.ndarray) -> np.ndarray:
        mean = m.mean(0)
        return np.r_[mean, mean[0] - mean[1:].max()]

    point = stats(V)
    rng = np.random.default_rng(seed)
    reps = np.array([stats(V[rng.integers(0, len(V), len(V))]) for _ in range(n_boot)])
    lo, hi = np.quantile(reps, [0.025, 0.975], axis=0)
    names = ["policy", *[f"all {lab}" for lab in labels], "gain vs best single arm"]
    return pd.DataFrame({"policy": names, "estimate": point, "ci_low": lo, "ci_high": hi})


def issued_actions(recommendation, labels: Sequence[str], n_repeats: int) -> np.ndarray:
    """(R, n) arm codes of the issued recommendations (-1 = none), for :func:`policy_value`.

    The modal recommendation of a person aggregates only trees that never saw that person
    (in every repeat the tree applied to a person was learned on the other half), so its
    DR value on the person's held-out scores is a held-out estimate as well.
    """
    rec = pd.Series(recommendation, dtype="string")
    code = rec.map({a: i for i, a in enumerate(labels)}).fillna(-1).to_numpy(int)
    return np.tile(code, (n_repeats, 1))


def stability(labels_by_repeat: np.ndarray) -> dict:
    """Modal recommendation per person, its agreement, and the pairwise flip rate.

    Parameters
    ----------
    labels_by_repeat : (R, n) recommendation labels (strings) per repeat.

    Returns
    -------
    dict: ``mode`` (n,) most frequent label (ties: first in sorted order), ``agreement``
    (n,) share of repeats giving the mode, ``flip_rate`` mean over pairs of repeats of the
    share of persons whose label differs (NaN when R = 1), ``unanimous`` share of persons
    with agreement 1.
    """
    lab = np.asarray(labels_by_repeat, dtype=object)
    R, n = lab.shape
    mode = np.empty(n, dtype=object)
    agreement = np.empty(n)
    for i in range(n):
        values, counts = np.unique(lab[:, i].astype(str), return_counts=True)
        mode[i] = values[np.argmax(counts)]
        agreement[i] = counts.max() / R
    flips = [np.mean(lab[r] != lab[s]) for r in range(R) for s in range(r + 1, R)]
    return {"mode": mode, "agreement": agreement,
            "flip_rate": float(np.mean(flips)) if flips else float("nan"),
            "unanimous": float(np.mean(agreement == 1))}


def repeat_labels(action: np.ndarray, rule: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """(R, n) recommendation label per repeat: the arm label, or the missing-modifier text."""
    action = np.asarray(action)
    arm_lab = np.asarray(list(labels), dtype=object)[np.clip(action, 0, None)]
    return np.where(action >= 0, arm_lab, np.asarray(rule, dtype=object))


def recommendation_table(
    person_id, result: dict, labels: Sequence[str], personalise: bool, test_p: float,
    average_arm: str | None = None,
) -> pd.DataFrame:
    """Per-patient recommendation, its reason and its agreement over the R repeats.

    When ``personalise`` is False (no evidence of heterogeneity) every person gets
    ``average_arm`` (the arm preferred by the average effects, e.g. the IPTW analysis;
    default: the best DR average over repeats), reason "recommend by average effect (no
    evidence of heterogeneity, p = <test_p>)", and agreement = the share of repeats whose
    best DR average is that arm. Otherwise the modal held-out policy
    arm over the repeats, reason "policy tree: <path>" (the path in the first repeat giving
    that arm), or recommendation missing with reason "no recommendation: <modifier> missing".

    Returns DataFrame ``person_id`` (int64), ``recommendation`` (string, NA when none),
    ``reason`` (string), ``agreement`` (share of repeats, 0-1).
    """
    pid = np.asarray(person_id, dtype="int64")
    gamma = result["gamma"]
    if not personalise:
        best_r = gamma.mean(1).argmax(1)               # (R,)
        best = int(gamma.mean((0, 1)).argmax()) if average_arm is None else list(labels).index(average_arm)
        rec = np.full(len(pid), labels[best], dtype=object)
        reason = np.full(len(pid), f"{AVERAGE} (no evidence of heterogeneity, p = {test_p:.3g})",
                         dtype=object)
        agree = np.full(len(pid), float(np.mean(best_r == best)))
    else:
        lab = repeat_labels(result["action"], result["rule"], labels)
        st = stability(lab)
        rec = np.where(np.isin(st["mode"], list(labels)), st["mode"], None)
        reason = np.empty(len(pid), dtype=object)
        for i in range(len(pid)):
            if rec[i] is None:
                reason[i] = st["mode"][i]
            else:
                r = int(np.flatnonzero(lab[:, i] == rec[i])[0])
                reason[i] = f"policy tree: {result['rule'][r, i] or 'single leaf'}"
        agree = st["agreement"]
    return pd.DataFrame({
        "person_id": pid,
        "recommendation": pd.array(rec, dtype="string"),
        "reason": pd.array(reason, dtype="string"),
        "agreement": agree.astype(float),
    })


def describe_tree(tree: dict, labels: Sequence[str], indent: str = "") -> str:
    """Readable multi-line text of a policy tree with arm labels."""
    if "arm" in tree:
        return f"{indent}-> {labels[tree['arm']]}\n"
    f, c = tree["feature"], tree["cut"]
    return (f"{indent}if {f} < {c:g}:\n" + describe_tree(tree["left"], labels, indent + "    ")
            + f"{indent}else ({f} >= {c:g}):\n" + describe_tree(tree["right"], labels, indent + "    "))
