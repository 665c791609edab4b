"""Cross-validated risk prediction of death by a horizon (stage 03_outcomes).

Three models predict the risk of death by ``horizon`` days after t0:

* ``"cox"``: penalised Cox model (:func:`pmed.survival.fit_cox`) on the full follow-up of
  everyone; risk = 1 - S(horizon | x).
* ``"logistic"``: logistic regression (statsmodels GLM) of the binary horizon outcome with
  inverse probability of censoring weights (IPCW, :func:`pmed.metrics.horizon_outcome`) as
  variance weights; people censored before the horizon (unknown status) are left out.
* ``"gbm"``: scikit-learn ``HistGradientBoostingClassifier`` (histogram-based gradient
  boosting: features binned into at most 255 quantile bins, so a split search costs O(bins)
  not O(n log n); about 20x faster than exact ``GradientBoostingClassifier`` at 770,000 rows)
  on the same rows with the IPCW weights as sample weights (main-effect features only: trees
  find interactions themselves); no early stopping, so the number of rounds is the params'.

:func:`cross_validated_predictions` returns out-of-fold predictions (each person's risk comes
from models fitted without that person's fold; folds fitted in parallel processes) and the
held-out permutation importance of the gradient boosting model (on at most
``permutation_max_rows`` held-out people per fold); :mod:`pmed.validation` evaluates them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import statsmodels.api as sm
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.inspection import permutation_importance
from sklearn.model_selection import KFold

from pmed import survival as sv
from pmed.parallel import run_tasks

__all__ = [
    "MODELS",
    "ModelSettings",
    "CVPredictions",
    "fold_splits",
    "fit_weighted_logistic",
    "predict_logistic",
    "odds_ratio_table",
    "fit_gbm",
    "FittedModels",
    "fit_models",
    "predict_models",
    "cross_validated_predictions",
    "metrics_by_model",
    "importance_table",
    "high_risk_groups",
]

MODELS = ("cox", "logistic", "gbm")
"""Keys of the three models, in the order they are fitted and reported."""


@dataclass(frozen=True)
class ModelSettings:
    """Predictors and hyper-parameters of the three models.

    Attributes
    ----------
    features : tuple of str
        Main-effect columns (all models; the only inputs of gradient boosting).
    interactions : tuple of str
        Product terms ``"a:b"`` added to the Cox and logistic models
        (:func:`pmed.survival.add_interactions`).
    cox_penalizer, cox_l1_ratio : float
        lifelines ``penalizer`` and elastic-net mix (0 = ridge, 1 = lasso) of the Cox model.
    gb_n_estimators, gb_max_depth : int
        Boosting rounds and depth of each tree.
    gb_learning_rate : float
        Shrinkage of gradient boosting.
    permutation_repeats : int
        Shuffles per feature for permutation importance (0 = importance not computed: NaN).
    permutation_max_rows : int or None
        Held-out people (with known status) per fold on which permutation importance is
        computed: a seeded random subset of at most this many (None = all). Its cost is
        features x repeats predictions of these rows.
    """

    features: tuple[str, ...]
    interactions: tuple[str, ...] = ()
    cox_penalizer: float = 0.0
    cox_l1_ratio: float = 0.0
    gb_n_estimators: int = 100
    gb_max_depth: int = 2
    gb_learning_rate: float = 0.05
    permutation_repeats: int = 3
    permutation_max_rows: int | None = None

    @property
    def terms(self) -> list[str]:
        """Columns of the Cox and logistic models: features then interactions."""
        return [*self.features, *self.interactions]

    @classmethod
    def from_params(cls, outcomes: Mapping) -> ModelSettings:
        """Settings from the ``outcomes`` section of params.yaml (``covariates`` etc.)."""
        return cls(
            features=tuple(outcomes["covariates"]),
            interactions=tuple(outcomes["interactions"]),
            cox_penalizer=float(outcomes["cox_penalizer"]),
            cox_l1_ratio=float(outcomes["cox_l1_ratio"]),
            gb_n_estimators=int(outcomes["gb_n_estimators"]),
            gb_max_depth=int(outcomes["gb_max_depth"]),
            gb_learning_rate=float(outcomes["gb_learning_rate"]),
            permutation_repeats=int(outcomes["permutation_repeats"]),
            permutation_max_rows=_optional_int(outcomes.get("permutation_max_rows")),
        )


def _optional_int(value) -> int | None:
    if value is None:
        return None
    if int(value) != value or value < 1:
        raise ValueError(f"outcomes.permutation_max_rows must be a positive integer or null, got {value!r}")
    return int(value)


@dataclass
class CVPredictions:
    """Out-of-fold predictions of :func:`cross_validated_predictions` for n people.

    Attributes
    ----------
    risk : dict of str to array, shape (n,)
        Predicted probability of death by the horizon per model key (:data:`MODELS`).
    cox_survival : array, shape (n, k)
        Penalised-Cox S(t | x) at the k ``times`` (last = horizon).
    importances : array, shape (n_folds, n_features)
        Mean decrease in held-out weighted AUROC of gradient boosting per shuffled feature.
    fold : array of int, shape (n,)
        Fold (0 .. n_folds - 1) in which each person was held out.
    models : list of FittedModels or None
        The fold models (fold i's at position i) when asked for (``keep_models``), else None.
    """

    risk: dict[str, np.ndarray]
    cox_survival: np.ndarray
    importances: np.ndarray
    fold: np.ndarray
    models: list | None = None


def fold_splits(n: int, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled k-fold (train, test) row positions of n rows (scikit-learn ``KFold``).

    Every row is in exactly one test fold; test folds differ in size by at most one.
    """
    if n_folds < 2 or n_folds > n:
        raise ValueError(f"fold_splits: need 2 <= n_folds <= n (n = {n}), got n_folds = {n_folds}")
    return list(KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros((n, 1))))


def _design(X: pd.DataFrame) -> pd.DataFrame:
    return sm.add_constant(X.astype(float), has_constant="add")


def fit_weighted_logistic(X: pd.DataFrame, y, weights, cov_type: str = "nonrobust"):
    """Logistic regression of ``y`` on ``X`` plus an intercept, with case weights.

    Parameters
    ----------
    X : DataFrame, shape (n, p)
        Predictors (no missing values); their names label the coefficients.
    y : array, shape (n,)
        Outcome 0/1 (no NaN: drop people with unknown status first).
    weights : array, shape (n,)
        Case weights (e.g. IPCW), passed as statsmodels ``var_weights``.
    cov_type : str
        statsmodels covariance type, e.g. ``"HC0"`` for robust (sandwich) standard errors.

    Returns
    -------
    statsmodels GLMResults with parameters ``const`` and the columns of ``X`` (log odds).
    """
    y = np.asarray(y, dtype=float)
    weights = np.asarray(weights, dtype=float)
    if np.isnan(y).any():
        raise ValueError("fit_weighted_logistic: y has NaN (unknown outcome); drop those rows")
    if y.shape != weights.shape or len(y) != len(X):
        raise ValueError(f"fit_weighted_logistic: X has {len(X)} rows, y {y.shape}, weights {weights.shape}")
    return sm.GLM(y, _design(X), family=sm.families.Binomial(), var_weights=weights).fit(cov_type=cov_type)


def predict_logistic(fit, X: pd.DataFrame) -> np.ndarray:
    """Predicted probabilities, shape (n,), of a :func:`fit_weighted_logistic` model."""
    return np.asarray(fit.predict(_design(X)), dtype=float)


def odds_ratio_table(fit, terms: Sequence[str]) -> pd.DataFrame:
    """Odds ratio per unit of each term with its Wald CI (of the fit's ``cov_type``) and p-value.

    Returns a DataFrame with columns ``term``, ``odds_ratio``, ``or_ci_low``, ``or_ci_high``,
    ``p_value``, one row per term in the order given.
    """
    terms = list(terms)
    ci = fit.conf_int()
    return pd.DataFrame({
        "term": terms,
        "odds_ratio": np.exp(fit.params[terms]),
        "or_ci_low": np.exp(ci.loc[terms, 0]),
        "or_ci_high": np.exp(ci.loc[terms, 1]),
        "p_value": fit.pvalues[terms],
    }).reset_index(drop=True)


def fit_gbm(X: pd.DataFrame, y, weights, settings: ModelSettings, seed: int) -> HistGradientBoostingClassifier:
    """Histogram gradient boosting classifier of ``y`` (0/1, shape (n,)) on ``X`` with case weights.

    ``gb_n_estimators`` rounds (no early stopping), trees of depth ``gb_max_depth``,
    shrinkage ``gb_learning_rate``; other settings scikit-learn's defaults (255 bins, at
    least 20 people per leaf, no L2 penalty).
    """
    gbm = HistGradientBoostingClassifier(
        max_iter=settings.gb_n_estimators, max_depth=settings.gb_max_depth,
        learning_rate=settings.gb_learning_rate, early_stopping=False, random_state=seed,
    )
    return gbm.fit(X, y, sample_weight=weights)


@dataclass
class FittedModels:
    """The three models fitted on one training set (:func:`fit_models`)."""

    cox: object
    logistic: object
    gbm: HistGradientBoostingClassifier
    settings: ModelSettings


def fit_models(frame: pd.DataFrame, time_col: str, event_col: str, y, weights, settings: ModelSettings,
               seed_gb: int) -> FittedModels:
    """Penalised Cox, IPCW logistic and gradient boosting fitted on all rows of ``frame``.

    ``frame`` holds ``time_col``, ``event_col`` and the ``settings.terms`` columns (no missing
    values); ``y`` (shape (n,), NaN = censored before the horizon) and its IPCW ``weights``
    are the binary models' outcome: rows with NaN ``y`` are left out of those two fits.
    """
    y = np.asarray(y, dtype=float)
    w = np.asarray(weights, dtype=float)
    known = ~np.isnan(y)
    X = frame[settings.terms].astype(float)
    cox = sv.fit_cox(frame, time_col, event_col, settings.terms,
                     penalizer=settings.cox_penalizer, l1_ratio=settings.cox_l1_ratio)
    logit = fit_weighted_logistic(X[known], y[known], w[known])
    gbm = fit_gbm(X[known][list(settings.features)], y[known], w[known], settings, seed_gb)
    return FittedModels(cox=cox, logistic=logit, gbm=gbm, settings=settings)


def predict_models(models: FittedModels, frame: pd.DataFrame, times: Sequence[float]) -> tuple[dict, np.ndarray]:
    """Risk of death by the horizon ``times[-1]`` per model key, each shape (n,), and the Cox
    survival S(t | x), shape (n, len(times)), for the rows of ``frame``."""
    X = frame[models.settings.terms].astype(float)
    surv = sv.predict_survival(models.cox, frame, times)
    risk = {"cox": 1 - surv[:, -1], "logistic": predict_logistic(models.logistic, X),
            "gbm": models.gbm.predict_proba(X[list(models.settings.features)])[:, 1]}
    return risk, surv


def _fit_fold(task, frame, X, y, w, known, times, settings, time_col, event_col, seed_gb, keep_models=False):
    """Models of one fold fitted on its training rows; predictions and importance of its test rows
    (and the models themselves with ``keep_models``, else None)."""
    i, train, test = task
    features = list(settings.features)
    models = fit_models(frame.iloc[train], time_col, event_col, y[train], w[train], settings, seed_gb)
    risk, cox_surv = predict_models(models, frame.iloc[test], times)
    held = test[known[test]]
    if settings.permutation_max_rows is not None and held.size > settings.permutation_max_rows:
        rng = np.random.default_rng([seed_gb, i])
        held = np.sort(rng.choice(held, settings.permutation_max_rows, replace=False))
    if settings.permutation_repeats > 0:
        perm = permutation_importance(models.gbm, X.iloc[held][features], y[held], sample_weight=w[held],
                                      scoring="roc_auc", n_repeats=settings.permutation_repeats,
                                      random_state=seed_gb).importances_mean
    else:
        perm = np.full(len(features), np.nan)
    return cox_surv, risk["logistic"], risk["gbm"], perm, models if keep_models else None


def cross_validated_predictions(
    data: pd.DataFrame,
    time_col: str,
    event_col: str,
    y,
    weights,
    times: Sequence[float],
    settings: ModelSettings,
    n_folds: int,
    seed_cv: int,
    seed_gb: int,
    n_jobs: int = 1,
    keep_models: bool = False,
) -> CVPredictions:
    """Out-of-fold risk of death by the horizon from the three models.

    For each fold of :func:`fold_splits` the models are fitted on the other folds only and
    predict the held-out rows; permutation importance of gradient boosting (weighted AUROC,
    ``settings.permutation_repeats`` shuffles, seed ``seed_gb``) is computed on the held-out
    rows with known status (a random subset of ``settings.permutation_max_rows`` of them,
    seeded by ``seed_gb`` and the fold, when there are more). Folds run in ``n_jobs``
    processes with one thread each; the result does not depend on ``n_jobs``.

    Parameters
    ----------
    data : DataFrame, shape (n, ...)
        One row per person, no missing predictors: ``time_col`` (days), ``event_col`` (0/1)
        and the ``settings.terms`` columns (interaction columns already added).
    y : array, shape (n,)
        Death by the horizon (1), alive at it (0), NaN if censored before it.
    weights : array, shape (n,)
        IPCW weights of ``y`` (0 where ``y`` is NaN); see :func:`pmed.metrics.horizon_outcome`.
    times : sequence of float, length k
        Days at which the Cox survival is predicted; the last one is the horizon.
    n_folds, seed_cv : int
        Number of folds and the seed of the fold assignment.
    seed_gb : int
        ``random_state`` of gradient boosting and of permutation importance.
    n_jobs : int
        Processes over which the folds are spread.
    keep_models : bool
        Also return the fitted fold models (``CVPredictions.models``; e.g. to evaluate them on
        other people, as the simulation study does).
    """
    terms = settings.terms
    sv.require_columns(data, [time_col, event_col, *terms], "cross_validated_predictions data")
    sv.require_events("the risk models (Cox, logistic, boosting)", data[event_col].sum(), len(terms))
    y = np.asarray(y, dtype=float)
    w = np.asarray(weights, dtype=float)
    n = len(data)
    if y.shape != (n,) or w.shape != (n,):
        raise ValueError(f"cross_validated_predictions: data has {n} rows, y {y.shape}, weights {w.shape}")
    known = ~np.isnan(y)
    X = data[terms].astype(float)
    if X.isna().any().any():
        raise ValueError("cross_validated_predictions: predictors have missing values (impute first)")
    frame = data[[time_col, event_col, *terms]]
    splits = fold_splits(n, n_folds, seed_cv)
    fit = partial(_fit_fold, frame=frame, X=X, y=y, w=w, known=known, times=times, settings=settings,
                  time_col=time_col, event_col=event_col, seed_gb=seed_gb, keep_models=keep_models)
    results = run_tasks(fit, [(i, train, test) for i, (train, test) in enumerate(splits)], n_jobs)
    risk = {k: np.full(n, np.nan) for k in MODELS}
    cox_surv = np.full((n, len(times)), np.nan)
    fold = np.full(n, -1)
    for i, ((_, test), (surv, logistic, gbm, _, _)) in enumerate(zip(splits, results, strict=True)):
        fold[test] = i
        cox_surv[test] = surv
        risk["cox"][test] = 1 - surv[:, -1]
        risk["logistic"][test] = logistic
        risk["gbm"][test] = gbm
    importances = np.array([r[3] for r in results])
    models = [r[4] for r in results] if keep_models else None
    return CVPredictions(risk=risk, cox_survival=cox_surv, importances=importances, fold=fold, models=models)


def metrics_by_model(cis: Mapping[str, dict]) -> dict[str, dict[str, dict]]:
    """Regroup ``{"<model>.<metric>": ci}`` into ``{model: {metric: ci}}`` (for metrics JSON)."""
    out: dict[str, dict[str, dict]] = {}
    for name, v in cis.items():
        model, metric = name.split(".", 1)
        out.setdefault(model, {})[metric] = v
    return out


def importance_table(importances, features: Sequence[str]) -> pd.DataFrame:
    """Mean and SD across folds of the permutation importance, one row per feature.

    ``importances`` has shape (n_folds, n_features) (:attr:`CVPredictions.importances`);
    returns columns ``feature``, ``importance`` (mean decrease in AUROC), ``sd`` (population
    SD across folds, ddof = 0).
    """
    imp = np.asarray(importances, dtype=float)
    if imp.ndim != 2 or imp.shape[1] != len(features):
        raise ValueError(f"importance_table: expected shape (n_folds, {len(features)}), got {imp.shape}")
    return pd.DataFrame({"feature": list(features), "importance": imp.mean(axis=0), "sd": imp.std(axis=0)})


def high_risk_groups(risk, threshold: float) -> np.ndarray:
    """Label per person, shape (n,): "high risk" if ``risk >= threshold``, else "not high risk"."""
    return np.where(np.asarray(risk, dtype=float) >= threshold, "high risk", "not high risk")
