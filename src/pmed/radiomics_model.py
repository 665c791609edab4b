"""Prognostic value of baseline radiomics: leakage-free modelling and added-value statistics.

The analysis takes plain DataFrames / arrays so it runs on any cohort x feature table:

* :class:`RadiomicsPreprocessor` -- scikit-learn transformer (fit on training rows only):
  drops unstable (ICC-flagged) and near-constant features, keeps one representative per
  cluster of highly correlated features, imputes training medians and standardises.
* :func:`univariable_cox` -- one Cox model per feature, Benjamini-Hochberg q-values
  (:func:`bh_adjust`).
* :class:`CoxModel` -- clinical (unpenalised Cox), imaging (elastic-net Cox) or
  clinical + imaging (elastic-net Cox with unpenalised clinical terms); the penalty is chosen
  by inner K-fold cross-validated partial likelihood (Verweij & van Houwelingen 1993).
* :func:`cross_validated_predictions` -- repeated stratified K-fold (:func:`cv_splits`):
  every model is refitted (preprocessing included) on each training fold, predictions are
  out-of-fold.
* :func:`cv_comparison` -- Harrell's C and td-AUC within each test fold (one fitted model
  per fold, never pooled across folds), their means with corrected resampled-t intervals
  (:func:`cv_interval`) and the paired per-fold delta C versus the clinical model.
* :func:`permutation_lr_test` -- likelihood-ratio statistic (:func:`cox_lr_statistic`) of
  the pre-validated image score (:func:`prevalidated_score`) added to the clinical Cox
  model, p-value from permuting the image features and redoing the whole pre-validation.
* :func:`added_value` -- the comparison and the permutation test in one call.
* :func:`landmark_dataset` -- delta-radiomics response vs survival from a landmark.
* Inputs: :func:`radiomic_columns`, :func:`join_baseline_features`,
  :func:`unstable_features`, :func:`scan_days_from_t0`; the stage's three models:
  :func:`model_templates`.

Times are in days throughout; ``horizon`` is a time in days.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
import pandas as pd
from scipy import stats
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.model_selection import StratifiedKFold
from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis
from sksurv.util import Surv

from pmed import metrics
from pmed.parallel import run_tasks
from pmed.survival import check_survival_data, fit_cox, require_events

KEY_COLUMNS = ("person_id", "image_occurrence_id", "timepoint")
MIN_TERM_PERSONS = 10
"""A clinical term enters a fit only if at least this many of its training persons differ
from the term's most common value: a rare indicator (e.g. an arm x biomarker product held by
a handful of persons) has no finite unpenalised estimate when those few persons separate by
outcome (monotone likelihood), and the Newton steps diverge."""


# --------------------------------------------------------------------------- data joins


RADIOMIC_NAME = re.compile(r"^[A-Za-z0-9.\-]+_(shape|shape2D|firstorder|glcm|glrlm|glszm|gldm|ngtdm)_\w+$")


def radiomic_columns(features: pd.DataFrame) -> list[str]:
    """Feature columns of an image-feature table: pyradiomics names ``<image>_<class>_<name>``.

    E.g. ``original_shape_MeshVolume``; diagnostics and key columns are not features.
    """
    cols = [c for c in features.columns if RADIOMIC_NAME.match(str(c))]
    if not cols:
        raise ValueError("image_features: no pyradiomics feature columns (e.g. original_shape_MeshVolume)")
    bad = [c for c in cols if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise ValueError(f"image_features: non-numeric feature columns {bad[:5]}")
    return cols


def join_baseline_features(cohort: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """Cohort rows with their baseline-scan features (inner join on person_id).

    Parameters
    ----------
    cohort : DataFrame, one row per person (cohort.parquet contract).
    features : DataFrame keyed by person_id, image_occurrence_id, timepoint
        ("baseline" | "followup"), one column per radiomics feature.

    Returns
    -------
    DataFrame, one row per person with a baseline scan: cohort columns + the radiomics
    feature columns (:func:`radiomic_columns`).
    A person with several baseline scans keeps the lowest image_occurrence_id.
    """
    missing = [c for c in KEY_COLUMNS if c not in features.columns]
    if missing:
        raise KeyError(f"image_features: missing key columns {missing}")
    if "person_id" not in cohort.columns:
        raise KeyError("cohort: missing column 'person_id'")
    base = features[features["timepoint"] == "baseline"]
    base = base.sort_values(["person_id", "image_occurrence_id"]).drop_duplicates("person_id")
    base = base[["person_id", *radiomic_columns(features)]]
    overlap = [c for c in base.columns if c in cohort.columns and c != "person_id"]
    if overlap:
        raise ValueError(f"image_features and cohort share columns {overlap}")
    return cohort.merge(base, on="person_id", how="inner", validate="one_to_one")


def unstable_features(stability: pd.DataFrame) -> list[str]:
    """Names of the features the imaging stage flagged unstable (``stable`` false).

    ``stability`` is feature_stability.csv: columns feature, icc, stable (bool or 0/1).
    """
    missing = [c for c in ("feature", "stable") if c not in stability.columns]
    if missing:
        raise KeyError(f"feature_stability: missing columns {missing}")
    flags = stability["stable"].astype(str).str.lower().map({"true": True, "1": True, "false": False, "0": False})
    if flags.isna().any():
        raise ValueError("feature_stability: column 'stable' must hold true/false or 1/0")
    return stability.loc[~flags.astype(bool), "feature"].tolist()


def scan_days_from_t0(
    features: pd.DataFrame, image_occurrence: pd.DataFrame, cohort: pd.DataFrame, timepoint: str
) -> pd.DataFrame:
    """Days from start of treatment (t0) to each person's first scan of ``timepoint``.

    Parameters
    ----------
    features : image-feature table (person_id, image_occurrence_id, timepoint, ...).
    image_occurrence : OMOP image_occurrence (image_occurrence_id, image_occurrence_date).
    cohort : cohort with person_id, t0_date.

    Returns
    -------
    DataFrame: person_id, scan_day (int days, may be negative for scans before t0).
    """
    for name, table, cols in (
        ("image_occurrence", image_occurrence, ["image_occurrence_id", "image_occurrence_date"]),
        ("cohort", cohort, ["person_id", "t0_date"]),
    ):
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise KeyError(f"{name}: missing columns {missing}")
    scans = features.loc[features["timepoint"] == timepoint, ["person_id", "image_occurrence_id"]]
    scans = scans.merge(image_occurrence[["image_occurrence_id", "image_occurrence_date"]], on="image_occurrence_id")
    scans = scans.merge(cohort[["person_id", "t0_date"]], on="person_id")
    day = pd.to_datetime(scans["image_occurrence_date"]) - pd.to_datetime(scans["t0_date"])
    scans = scans.assign(scan_day=day.dt.days.astype(int))
    return scans.groupby("person_id", as_index=False)["scan_day"].min()


# --------------------------------------------------------------------------- preprocessing


class RadiomicsPreprocessor(TransformerMixin, BaseEstimator):
    """Feature filter + standardiser fitted on training rows only.

    Steps, in order: drop ``unstable`` features (e.g. ICC below threshold); impute each
    feature's training median; drop near-constant features (training SD <= ``min_sd`` or the
    most frequent value in more than ``max_mode_fraction`` of rows); cluster features by
    complete linkage on 1 - |r| (``corr_method`` correlation), so that within a cluster
    every pair has |r| >= ``corr_threshold``, and keep the member with the highest mean |r|
    to the rest of its cluster; standardise to training mean 0, SD 1.

    Parameters
    ----------
    unstable : sequence of str
        Feature names to drop before anything else.
    corr_threshold : float in (0, 1]
        |r| above which two features are redundant.
    corr_method : {"spearman", "pearson"}
    max_mode_fraction : float in (0, 1]
    min_sd : float

    Attributes
    ----------
    feature_names_in_ : ndarray of str, the input columns.
    selected_features_ : list of str, kept features (output column order).
    clusters_ : dict, kept feature -> list of the features it represents (itself included).
    medians_, means_, scales_ : ndarray, training statistics of the kept features.
    """

    def __init__(
        self,
        unstable: Sequence[str] = (),
        corr_threshold: float = 0.9,
        corr_method: str = "spearman",
        max_mode_fraction: float = 0.95,
        min_sd: float = 1e-8,
    ):
        self.unstable = unstable
        self.corr_threshold = corr_threshold
        self.corr_method = corr_method
        self.max_mode_fraction = max_mode_fraction
        self.min_sd = min_sd

    def fit(self, X: pd.DataFrame, y=None):
        """Learn which features to keep and their training statistics from ``X`` (n, p)."""
        if not isinstance(X, pd.DataFrame):
            raise TypeError("RadiomicsPreprocessor.fit expects a DataFrame with feature names")
        if self.corr_method not in ("spearman", "pearson"):
            raise ValueError(f"corr_method must be 'spearman' or 'pearson', got {self.corr_method!r}")
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        unstable = set(self.unstable)
        names = [c for c in X.columns if c not in unstable]
        values = X[names].to_numpy(dtype=float)
        with warnings.catch_warnings():  # all-NaN feature: NaN median, dropped below
            warnings.simplefilter("ignore", RuntimeWarning)
            medians = np.nanmedian(values, axis=0) if len(names) else np.empty(0)
        all_nan = np.isnan(medians)
        values = np.where(np.isnan(values), medians, values)
        sd = values.std(axis=0)
        mode_frac = np.array([_mode_fraction(values[:, j]) for j in range(values.shape[1])])
        varying = ~all_nan & (sd > self.min_sd) & (mode_frac <= self.max_mode_fraction)
        names = [n for n, k in zip(names, varying, strict=True) if k]
        values = values[:, varying]
        medians = medians[varying]
        keep, clusters = _correlation_representatives(
            values, names, self.corr_threshold, self.corr_method
        )
        self.selected_features_ = [names[j] for j in keep]
        self.clusters_ = {names[j]: [names[m] for m in clusters[j]] for j in keep}
        self.medians_ = medians[keep]
        self.means_ = values[:, keep].mean(axis=0)
        self.scales_ = values[:, keep].std(axis=0)
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """Standardised kept features of ``X``: ndarray (n, len(selected_features_))."""
        missing = [c for c in self.selected_features_ if c not in X.columns]
        if missing:
            raise KeyError(f"RadiomicsPreprocessor.transform: missing features {missing[:5]}")
        values = X[self.selected_features_].to_numpy(dtype=float)
        values = np.where(np.isnan(values), self.medians_, values)
        return (values - self.means_) / self.scales_

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names of the output columns."""
        return np.asarray(self.selected_features_, dtype=object)


def _mode_fraction(x: np.ndarray) -> float:
    """Share of entries equal to the most frequent value of ``x``."""
    _, counts = np.unique(x, return_counts=True)
    return counts.max() / len(x) if len(x) else 1.0


def estimable_terms(X: np.ndarray) -> np.ndarray:
    """(p,) bool: columns of the complete (n, p) matrix with at least :data:`MIN_TERM_PERSONS`
    rows differing from the column's most common value."""
    X = np.asarray(X, dtype=float)
    return np.array([len(col) * (1 - _mode_fraction(col)) >= MIN_TERM_PERSONS for col in X.T], dtype=bool)


def _correlation_representatives(
    values: np.ndarray, names: list[str], threshold: float, method: str
) -> tuple[list[int], dict[int, list[int]]]:
    """One representative per cluster of correlated columns, and each one's members.

    Complete-linkage clustering on 1 - |r| cut at 1 - ``threshold``: within a cluster every
    pair has |r| >= threshold (no chaining of loosely related features through
    intermediaries). The representative has the highest mean |r| to the other members.
    """
    p = values.shape[1]
    if p == 0:
        return [], {}
    if p == 1:
        return [0], {0: [0]}
    data = stats.rankdata(values, axis=0) if method == "spearman" else values
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.abs(np.corrcoef(data, rowvar=False))
    r = np.nan_to_num(r, nan=0.0)
    np.fill_diagonal(r, 1.0)
    distance = squareform(np.clip(1.0 - r, 0.0, None), checks=False)
    labels = fcluster(linkage(distance, method="complete"), t=1.0 - threshold, criterion="distance")
    keep, clusters = [], {}
    for lab in np.unique(labels):
        members = np.flatnonzero(labels == lab)
        if len(members) == 1:
            best = members[0]
        else:
            sub = r[np.ix_(members, members)]
            centrality = (sub.sum(axis=1) - 1.0) / (len(members) - 1)
            best = members[int(np.argmax(centrality))]  # first wins ties (column order)
        keep.append(int(best))
        clusters[int(best)] = [int(m) for m in members]
    keep.sort()
    return keep, clusters


# --------------------------------------------------------------------------- Cox helpers


def _check_survival(time, event, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validated (time float, event bool) arrays, shape (n,)."""
    t, e = check_survival_data(time, event, "radiomics_model")
    if n is not None and len(t) != n:
        raise ValueError(f"radiomics_model: time/event have {len(t)} rows, the data have {n}")
    return t, e.astype(bool)


def cox_partial_loglik(eta: np.ndarray, time, event) -> np.ndarray:
    """Cox log partial likelihood, Breslow ties, of linear predictor(s) ``eta``.

    Parameters
    ----------
    eta : ndarray (n,) or (n, k)
        Linear predictors (k candidate models in columns).
    time, event : array (n,)

    Returns
    -------
    float or ndarray (k,)
    """
    time, event = _check_survival(time, event)
    eta = np.asarray(eta, dtype=float)
    squeeze = eta.ndim == 1
    eta = eta.reshape(len(time), -1)
    order = np.argsort(-time, kind="stable")
    t_sorted = time[order]
    e_sorted = eta[order]
    shift = e_sorted.max(axis=0)
    cum = np.cumsum(np.exp(e_sorted - shift), axis=0)
    # risk set of time t = everyone with time >= t: the last sorted position with that time
    last = len(time) - 1 - np.searchsorted(t_sorted[::-1], t_sorted, side="left")
    log_risk = np.log(cum[last]) + shift
    ev = event[order]
    ll = (e_sorted[ev] - log_risk[ev]).sum(axis=0)
    return float(ll[0]) if squeeze else ll


def breslow_survival_at(eta_train: np.ndarray, time, event, horizon: float) -> float:
    """Breslow baseline survival S0(horizon) for a Cox model with training predictor ``eta_train``.

    S(horizon | x) = S0(horizon) ** exp(eta(x)) on the same scale as ``eta_train``.
    """
    time, event = _check_survival(time, event)
    eta = np.asarray(eta_train, dtype=float)
    w = np.exp(eta - eta.max())
    event_times, deaths = np.unique(time[event & (time <= horizon)], return_counts=True)
    if len(event_times) == 0:
        return 1.0
    order = np.argsort(time)
    t_sorted = time[order]
    at_risk = np.cumsum(w[order][::-1])[::-1]  # sum of w over time >= t_sorted[i]
    first = np.searchsorted(t_sorted, event_times, side="left")
    cumhaz = np.sum(deaths / at_risk[first]) * np.exp(-eta.max())
    return float(np.exp(-cumhaz))


def bh_adjust(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same order as ``pvalues``.

    NaN p-values stay NaN and do not count in the number of tests.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = ok.sum()
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv)
    ranked = pv[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    adj = np.empty(m)
    adj[order] = np.minimum(q, 1.0)
    out[ok] = adj
    return out


def univariable_cox(features: pd.DataFrame, time, event) -> pd.DataFrame:
    """One Cox model (lifelines, Efron ties) per standardised feature, with BH q-values.

    Parameters
    ----------
    features : DataFrame (n, p); NaN rows are dropped per feature.
    time, event : array (n,)

    Returns
    -------
    DataFrame, one row per feature: feature, n, log_hr (per SD), hr, hr_ci_low, hr_ci_high,
    p (Wald), q (BH over all features), sorted by p.
    """
    time, event = _check_survival(time, event, len(features))
    rows = []
    for name in features.columns:
        x = features[name].to_numpy(dtype=float)
        ok = ~np.isnan(x)
        sd = x[ok].std()
        if ok.sum() < 3 or sd == 0:
            rows.append({"feature": name, "n": int(ok.sum()), "log_hr": np.nan, "se": np.nan, "p": np.nan})
            continue
        data = pd.DataFrame({"x": (x[ok] - x[ok].mean()) / sd, "T": time[ok], "E": event[ok]})
        s = fit_cox(data, "T", "E", ["x"]).summary.loc["x"]
        rows.append({"feature": name, "n": int(ok.sum()), "log_hr": s["coef"], "se": s["se(coef)"], "p": s["p"]})
    out = pd.DataFrame(rows)
    z = stats.norm.ppf(0.975)
    out["hr"] = np.exp(out["log_hr"])
    out["hr_ci_low"] = np.exp(out["log_hr"] - z * out["se"])
    out["hr_ci_high"] = np.exp(out["log_hr"] + z * out["se"])
    out["q"] = bh_adjust(out["p"])
    cols = ["feature", "n", "log_hr", "hr", "hr_ci_low", "hr_ci_high", "p", "q"]
    return out[cols].sort_values("p", kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- models


class CoxModel(BaseEstimator):
    """Cox model on clinical terms and/or radiomic features, preprocessing included.

    * radiomic empty: unpenalised Cox on the clinical terms (sksurv, Breslow ties).
    * otherwise: elastic-net Cox (sksurv Coxnet) on clinical terms (unpenalised,
      penalty factor 0) + preprocessed radiomic features (penalised); the penalty alpha
      is chosen on the inner-K-fold cross-validated partial likelihood of Verweij & van
      Houwelingen (1993), the criterion of glmnet's ``cv.glmnet(family="cox")``. When no
      radiomic feature enters at that penalty, the clinical terms are refitted without
      penalty, so the model equals the clinical-only model exactly.

    Clinical terms are median-imputed and standardised with training statistics; a term
    constant or entirely missing in the training rows is left out (``clinical_used_``).

    Parameters
    ----------
    clinical : sequence of str, columns of the design frame (see :func:`clinical_design`).
    radiomic : sequence of str, radiomic feature columns.
    preprocessor : dict, keyword arguments of :class:`RadiomicsPreprocessor`.
    l1_ratio : float in (0, 1], 1 = LASSO.
    n_alphas : int, length of the penalty path.
    alpha_min_ratio : float, smallest / largest alpha of the path.
    inner_folds : int, folds of the inner cross-validation.
    alpha_rule : {"min", "1se"}, penalty minimising the CV deviance, or the largest one
        within one standard error of that minimum (sparser; glmnet's ``lambda.1se``).
    seed : int, seed of the inner fold split.

    Attributes
    ----------
    clinical_used_ : list of str, clinical terms in the model.
    features_ : list of str, model columns (clinical then kept radiomic).
    coef_ : ndarray, log hazard ratio per training SD of each column of ``features_``.
    alpha_ : float or None, chosen penalty.
    preprocessor_ : fitted RadiomicsPreprocessor or None.
    """

    def __init__(
        self,
        clinical: Sequence[str] = (),
        radiomic: Sequence[str] = (),
        preprocessor: Mapping | None = None,
        l1_ratio: float = 0.5,
        n_alphas: int = 30,
        alpha_min_ratio: float = 0.01,
        inner_folds: int = 5,
        alpha_rule: str = "min",
        seed: int = 0,
    ):
        self.clinical = clinical
        self.radiomic = radiomic
        self.preprocessor = preprocessor
        self.l1_ratio = l1_ratio
        self.n_alphas = n_alphas
        self.alpha_min_ratio = alpha_min_ratio
        self.inner_folds = inner_folds
        self.alpha_rule = alpha_rule
        self.seed = seed

    # -- design
    def _fit_design(self, df: pd.DataFrame) -> np.ndarray:
        missing = [c for c in list(self.clinical) + list(self.radiomic) if c not in df.columns]
        if missing:
            raise KeyError(f"CoxModel: columns {missing[:5]} not in the data")
        clin = df[list(self.clinical)].to_numpy(dtype=float)
        with warnings.catch_warnings():  # an all-NaN column has a NaN median: dropped below
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(clin, axis=0) if clin.shape[1] else np.empty(0)
            clin = np.where(np.isnan(clin), median, clin)
            # a term (almost) constant or all missing in the training rows cannot be estimated
            used = ~np.isnan(median)
            used[used] = estimable_terms(clin[:, used])
        self.clinical_used_ = [c for c, u in zip(self.clinical, used, strict=True) if u]
        self.clin_median_ = median[used]
        self.clin_mean_ = clin[:, used].mean(axis=0)
        self.clin_scale_ = clin[:, used].std(axis=0)
        if len(self.radiomic):
            self.preprocessor_ = RadiomicsPreprocessor(**dict(self.preprocessor or {}))
            self.preprocessor_.fit(df[list(self.radiomic)])
            rad_names = self.preprocessor_.selected_features_
        else:
            self.preprocessor_ = None
            rad_names = []
        self.features_ = self.clinical_used_ + list(rad_names)
        return self._design(df)

    def _design(self, df: pd.DataFrame) -> np.ndarray:
        clin = df[self.clinical_used_].to_numpy(dtype=float)
        clin = (np.where(np.isnan(clin), self.clin_median_, clin) - self.clin_mean_) / self.clin_scale_
        if self.preprocessor_ is None:
            return clin
        return np.hstack([clin, self.preprocessor_.transform(df)])

    def fit(self, df: pd.DataFrame, time, event):
        """Fit on ``df`` (n rows) with survival ``time`` (days) and ``event`` (1 = death)."""
        if not len(self.clinical) and not len(self.radiomic):
            raise ValueError("CoxModel needs clinical terms or radiomic features")
        if self.alpha_rule not in ("min", "1se"):
            raise ValueError(f"alpha_rule must be 'min' or '1se', got {self.alpha_rule!r}")
        time, event = _check_survival(time, event, len(df))
        X = self._fit_design(df)
        y = Surv.from_arrays(event, time)
        n_clin = len(self.clinical_used_)
        if X.shape[1] == n_clin:  # no penalised columns: plain Cox
            self.alpha_ = None
            self.coef_ = CoxPHSurvivalAnalysis(ties="breslow").fit(X, y).coef_.copy()
        else:
            penalty = np.r_[np.zeros(n_clin), np.ones(X.shape[1] - n_clin)]
            path = self._coxnet(penalty).fit(X, y)
            alphas = path.alphas_
            mean, se = self._inner_cv_deviance(df, time, event, alphas)
            best = int(np.argmin(mean))
            if self.alpha_rule == "1se":  # largest alpha within one SE of the minimum
                best = int(np.flatnonzero(mean <= mean[best] + se[best])[0])
            self.alpha_ = float(alphas[best])
            self.coef_ = _coef_at(path, self.alpha_)
            if n_clin and not self.coef_[n_clin:].any():
                # no image feature enters: the model is exactly the clinical Cox model
                # (Coxnet's unpenalised terms only match it to its convergence tolerance)
                clin = CoxPHSurvivalAnalysis(ties="breslow").fit(X[:, :n_clin], y)
                self.coef_[:n_clin] = clin.coef_
        self.baseline_ = (self._design(df) @ self.coef_, time, event)
        return self

    def _coxnet(self, penalty: np.ndarray, alphas: np.ndarray | None = None) -> CoxnetSurvivalAnalysis:
        return CoxnetSurvivalAnalysis(
            l1_ratio=self.l1_ratio,
            n_alphas=self.n_alphas,
            alpha_min_ratio=self.alpha_min_ratio,
            alphas=alphas,
            penalty_factor=penalty,
        )

    def _inner_cv_deviance(self, df: pd.DataFrame, time, event, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cross-validated partial-likelihood deviance per alpha: (mean, standard error).

        Fold k contributes -2 [l(b_-k) - l_-k(b_-k)] / d_k (the Verweij-van Houwelingen
        term per event of the left-out fold); mean and SE are weighted by d_k, as glmnet's
        ``cv.glmnet(family="cox", grouped=TRUE)``. Shapes (n_alphas,).
        """
        folds = StratifiedKFold(self.inner_folds, shuffle=True, random_state=self.seed)
        dev, weight = [], []
        for train, test in folds.split(np.zeros(len(time)), event):
            inner = CoxModel(self.clinical, self.radiomic, self.preprocessor)
            X_train = inner._fit_design(df.iloc[train])
            n_clin = len(inner.clinical_used_)
            penalty = np.r_[np.zeros(n_clin), np.ones(X_train.shape[1] - n_clin)]
            if X_train.shape[1] == n_clin:
                raise ValueError("no radiomic feature survived preprocessing in an inner fold")
            with warnings.catch_warnings():  # the full data's path may start above this fold's largest alpha
                warnings.filterwarnings("ignore", message="all coefficients are zero", category=UserWarning)
                fit = self._coxnet(penalty, alphas).fit(X_train, Surv.from_arrays(event[train], time[train]))
            coefs = np.column_stack([_coef_at(fit, a) for a in alphas])
            eta_all = inner._design(df) @ coefs
            cvpl = cox_partial_loglik(eta_all, time, event) - cox_partial_loglik(
                eta_all[train], time[train], event[train]
            )
            d_k = max(int(event[test].sum()), 1)
            dev.append(-2.0 * cvpl / d_k)
            weight.append(d_k)
        dev, weight = np.asarray(dev), np.asarray(weight, dtype=float)
        mean = np.average(dev, axis=0, weights=weight)
        var = np.average((dev - mean) ** 2, axis=0, weights=weight) / (len(weight) - 1)
        return mean, np.sqrt(var)

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Linear predictor (log relative hazard), ndarray (n,)."""
        return self._design(df) @ self.coef_

    def predict_risk(self, df: pd.DataFrame, horizon: float) -> np.ndarray:
        """Predicted probability of death by ``horizon`` days (Breslow baseline), ndarray (n,)."""
        s0 = breslow_survival_at(*self.baseline_, horizon)
        return 1.0 - s0 ** np.exp(self.predict(df))

    def coefficients(self) -> pd.DataFrame:
        """Non-zero coefficients: feature, log_hr_per_sd, hr_per_sd, n_represented."""
        clusters = self.preprocessor_.clusters_ if self.preprocessor_ is not None else {}
        rows = [
            {"feature": f, "log_hr_per_sd": c, "hr_per_sd": np.exp(c), "n_represented": len(clusters.get(f, [f]))}
            for f, c in zip(self.features_, self.coef_, strict=True)
            if c != 0
        ]
        return pd.DataFrame(rows, columns=["feature", "log_hr_per_sd", "hr_per_sd", "n_represented"])


def _coef_at(fit: CoxnetSurvivalAnalysis, alpha: float) -> np.ndarray:
    """Coefficients of a fitted Coxnet path at ``alpha``: linear interpolation between path
    points, the end points outside the path (as sksurv's own ``predict(alpha=...)``)."""
    alphas = fit.alphas_[::-1]  # ascending
    coefs = fit.coef_[:, ::-1]
    if len(alphas) == 1:
        return coefs[:, 0].copy()
    return np.array([np.interp(alpha, alphas, row) for row in coefs])


def model_templates(
    clinical: Sequence[str], radiomic: Sequence[str], unstable: Sequence[str], settings: Mapping
) -> dict[str, CoxModel]:
    """The three compared models (unfitted): clinical, imaging, combined.

    ``settings`` is the ``imaging_analysis`` section of params.yaml (corr_threshold,
    corr_method, max_mode_fraction, l1_ratio, n_alphas, alpha_min_ratio, inner_folds,
    alpha_rule).
    """
    pre = {
        "unstable": list(unstable),
        "corr_threshold": settings["corr_threshold"],
        "corr_method": settings["corr_method"],
        "max_mode_fraction": settings["max_mode_fraction"],
    }
    net = {k: settings[k] for k in ("l1_ratio", "n_alphas", "alpha_min_ratio", "inner_folds", "alpha_rule")}
    return {
        "clinical": CoxModel(clinical=list(clinical)),
        "imaging": CoxModel(radiomic=list(radiomic), preprocessor=pre, **net),
        "combined": CoxModel(clinical=list(clinical), radiomic=list(radiomic), preprocessor=pre, **net),
    }


# --------------------------------------------------------------------------- resampling


def cv_splits(event, n_folds: int, n_repeats: int, seed: int) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """Repeated stratified K-fold splits: (repeat, fold, train indices, test indices).

    Repeat r shuffles with ``seed + r``; folds are stratified on ``event`` (array (n,)).
    """
    event = np.asarray(event)
    if n_folds < 2 or n_repeats < 1:
        raise ValueError(f"cv_splits: need n_folds >= 2 and n_repeats >= 1, got {n_folds}, {n_repeats}")
    out = []
    for r in range(n_repeats):
        folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed + r)
        for k, (train, test) in enumerate(folds.split(np.zeros(len(event)), event)):
            out.append((r, k, train, test))
    return out


def _model_seed(seed: int, repeat: int, fold: int) -> int:
    """Seed of the inner folds of the model fitted in (repeat, fold)."""
    return seed + 1000 * (repeat + 1) + fold


def _fit_fold(df, time, event, templates: Mapping[str, CoxModel], split, seed: int, horizon: float | None):
    """Fit every template on one split's training rows: {name: (test rows' lp, risk, high flag,
    the fitted model)}."""
    r, k, train, test = split
    out = {}
    for name, template in templates.items():
        model = clone(template).set_params(seed=_model_seed(seed, r, k))
        try:
            model.fit(df.iloc[train], time[train], event[train])
        except ArithmeticError as err:  # sksurv's Newton steps diverge (few events, separation)
            raise ValueError(
                f"the {name} Cox model could not be fitted in CV repeat {r + 1}, fold {k + 1} "
                f"({len(train)} persons, {int(np.sum(np.asarray(event)[train]))} events): {err} "
                "Too few events per term or a covariate that separates the outcome; use fewer "
                "clinical terms (imaging_analysis.clinical_terms) or more persons.") from None
        lp = model.predict(df.iloc[test])
        risk = model.predict_risk(df.iloc[test], horizon) if horizon is not None else None
        out[name] = (lp, risk, lp > np.median(model.baseline_[0]), model)
    return out


def cross_validated_predictions(
    df: pd.DataFrame,
    time,
    event,
    models: Mapping[str, CoxModel],
    n_folds: int,
    n_repeats: int,
    seed: int,
    horizon: float,
    n_jobs: int = 1,
    keep_models: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """Out-of-fold predictions of every model on the same repeated stratified K-fold splits.

    Each model (a :class:`CoxModel` template, cloned per fold) is fitted on the training
    folds only, preprocessing and penalty choice included (:func:`cv_splits`). Folds run in
    ``n_jobs`` processes with one BLAS thread each (:func:`pmed.parallel.run_tasks`): the
    result does not depend on ``n_jobs``.

    Returns
    -------
    dict model name -> {"lp": (n_repeats, n) out-of-fold linear predictor,
    "risk": (n_repeats, n) predicted risk of death by ``horizon``,
    "high": (n_repeats, n) int8, 1 when the lp exceeds the training folds' median lp,
    "fold": (n_repeats, n) int, the test fold of each person in each repeat}; with
    ``keep_models`` also "models": the fitted models, one per split in :func:`cv_splits` order.
    """
    time, event = _check_survival(time, event, len(df))
    require_events("the imaging Cox models", event.sum(), max(len(m.clinical) for m in models.values()))
    n = len(df)
    splits = cv_splits(event, n_folds, n_repeats, seed)
    fitted = run_tasks(partial(_fit_fold, df, time, event, models, seed=seed, horizon=horizon), splits, n_jobs)
    out = {name: {k: np.full((n_repeats, n), np.nan) for k in ("lp", "risk", "high")} for name in models}
    fold = np.full((n_repeats, n), -1)
    for (r, k, _, test), res in zip(splits, fitted, strict=True):
        fold[r, test] = k
        for name, (lp, risk, high, _) in res.items():
            out[name]["lp"][r, test] = lp
            out[name]["risk"][r, test] = risk
            out[name]["high"][r, test] = high
    for name in out:
        out[name]["high"] = out[name]["high"].astype(np.int8)
        out[name]["fold"] = fold.copy()
        if keep_models:
            out[name]["models"] = [res[name][3] for res in fitted]
    return out


# --------------------------------------------------------------------------- performance


def fold_performance(time, event, preds: Mapping[str, Mapping[str, np.ndarray]], horizon: float) -> pd.DataFrame:
    """Harrell's C and the cumulative/dynamic AUC at ``horizon`` of each model in each test fold.

    Every value compares people scored by ONE fitted model (a test fold): pooling the
    out-of-fold predictions of differently penalised fold models into one C mixes their
    scales and is biased below 0.5 when there is no signal. The AUC's censoring weights
    come from the training folds. A fold where a metric is undefined (no comparable pair,
    no case or control at the horizon) gets NaN.

    Parameters
    ----------
    preds : output of :func:`cross_validated_predictions` ("lp" and "fold" per model).

    Returns
    -------
    DataFrame, one row per (repeat, fold, model): repeat, fold, model, n_test, n_events,
    c_index, td_auc.
    """
    time, event = _check_survival(time, event)
    rows = []
    for name, p in preds.items():
        for r in range(p["fold"].shape[0]):
            for k in np.unique(p["fold"][r]):
                test = p["fold"][r] == k
                rows.append({"repeat": r, "fold": int(k), "model": name, "n_test": int(test.sum()),
                             "n_events": int(event[test].sum()),
                             **_test_fold_metrics(time, event, p["lp"][r], test, horizon)})
    return pd.DataFrame(rows)


def _test_fold_metrics(time, event, lp, test: np.ndarray, horizon: float) -> dict[str, float]:
    """Harrell's C and td-AUC of the test rows (``test`` mask); NaN where undefined."""
    out = {}
    try:
        out["c_index"] = metrics.harrell_c(time[test], event[test], lp[test])
    except ValueError:  # no comparable pair
        out["c_index"] = float("nan")
    try:
        out["td_auc"] = float(metrics.td_auc(time[test], event[test], lp[test], [horizon],
                                             time[~test], event[~test])[0])
    except ValueError:  # horizon outside the test times, or no case / control
        out["td_auc"] = float("nan")
    return out


def cv_interval(
    values, n_folds: int, level: float = 0.95, bounds: tuple[float, float] = (-np.inf, np.inf)
) -> dict[str, float]:
    """Mean of per-fold values over repeated K-fold with the corrected resampled-t interval.

    The J = K x R fold values share training data, so their plain standard error is too
    small; the variance of the mean is taken as (1 / J + n_test / n_train) s^2 with
    n_test / n_train = 1 / (K - 1) (Nadeau & Bengio 2003, Mach Learn 52:239; Bouckaert &
    Frank 2004), s^2 the sample variance of the fold values, and t quantiles on J - 1 df.
    NaN values (undefined folds) are dropped; the interval is clipped to ``bounds`` (the
    range of the metric, e.g. (0, 1) for a C-index).

    Returns
    -------
    dict: estimate, ci_low, ci_high, se, n_folds (number of fold values used).
    """
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    j = len(v)
    if j < 2:
        est = float(v.mean()) if j else float("nan")
        return {"estimate": est, "ci_low": float("nan"), "ci_high": float("nan"), "se": float("nan"), "n_folds": j}
    se = float(np.sqrt((1.0 / j + 1.0 / (n_folds - 1)) * v.var(ddof=1)))
    half = float(stats.t.ppf(1 - (1 - level) / 2, j - 1)) * se
    est = float(v.mean())
    low, high = max(est - half, bounds[0]), min(est + half, bounds[1])
    return {"estimate": est, "ci_low": float(low), "ci_high": float(high), "se": se, "n_folds": j}


def cv_comparison(
    time, event, preds: Mapping[str, Mapping[str, np.ndarray]], horizon: float, reference: str,
    level: float = 0.95,
) -> dict:
    """Per-fold C and td-AUC of every model, and paired per-fold delta C versus ``reference``.

    Parameters
    ----------
    preds : output of :func:`cross_validated_predictions`.
    reference : name of the baseline model (the clinical one).

    Returns
    -------
    dict: "folds" (:func:`fold_performance` table), "c_index" / "td_auc": {model:
    :func:`cv_interval`}, "delta_c": {model: interval of C(model) - C(reference) computed
    in each fold on the same test people (paired)} for each non-reference model.
    """
    if reference not in preds:
        raise KeyError(f"reference model {reference!r} not among {list(preds)}")
    folds = fold_performance(time, event, preds, horizon)
    n_folds = int(folds["fold"].max()) + 1
    out: dict = {"folds": folds, "c_index": {}, "td_auc": {}, "delta_c": {}}
    wide = folds.pivot_table(index=["repeat", "fold"], columns="model", values="c_index", dropna=False)
    for name in preds:
        sel = folds[folds["model"] == name]
        out["c_index"][name] = cv_interval(sel["c_index"], n_folds, level, (0.0, 1.0))
        out["td_auc"][name] = cv_interval(sel["td_auc"], n_folds, level, (0.0, 1.0))
        if name != reference:
            out["delta_c"][name] = cv_interval(wide[name] - wide[reference], n_folds, level, (-1.0, 1.0))
    return out


# --------------------------------------------------------------------------- added value


def median_impute(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Copy of ``df[columns]`` with NaN replaced by each column's median."""
    sub = df[list(columns)].astype(float)
    return sub.fillna(sub.median())


def prevalidated_score(
    df: pd.DataFrame, time, event, template: CoxModel, n_folds: int, n_repeats: int, seed: int
) -> np.ndarray:
    """Pre-validated score (Tibshirani & Efron 2002): each person's out-of-fold linear
    predictor of ``template``, averaged over the repeats of :func:`cv_splits`, shape (n,).

    The same splits and model seeds as :func:`cross_validated_predictions` with this
    ``seed``, so it equals that function's ``lp.mean(axis=0)`` for the template.
    """
    time, event = _check_survival(time, event, len(df))
    score = np.zeros(len(df))
    for split in cv_splits(event, n_folds, n_repeats, seed):
        lp = _fit_fold(df, time, event, {"m": template}, split, seed, None)["m"][0]
        score[split[3]] += lp / n_repeats
    return score


def cox_lr_statistic(base: np.ndarray, added: np.ndarray, time, event) -> dict[str, float]:
    """Likelihood-ratio statistic of ``added`` columns in nested Cox models, Breslow ties.

    Made for many refits (permutations): scikit-survival's Newton fit, no summaries. Columns are
    standardised first (the LR is invariant to it); columns that are (almost) constant
    (:func:`estimable_terms`) are left out.

    Parameters
    ----------
    base : ndarray (n, p0), covariates of the reduced model (p0 may be 0: null model).
    added : ndarray (n, p1), covariates added in the full model.

    Returns
    -------
    dict: lr = 2 (ll_full - ll_base), ll_base, ll_full (log partial likelihoods).
    """
    time, event = _check_survival(time, event)
    n = len(time)
    base, added = np.asarray(base, float).reshape(n, -1), np.asarray(added, float).reshape(n, -1)

    def loglik(x: np.ndarray) -> float:
        x = x[:, estimable_terms(x)]
        if not x.shape[1]:
            return float(cox_partial_loglik(np.zeros(n), time, event))
        x = (x - x.mean(axis=0)) / x.std(axis=0)
        coef = CoxPHSurvivalAnalysis(ties="breslow").fit(x, Surv.from_arrays(event, time)).coef_
        return float(cox_partial_loglik(x @ coef, time, event))

    ll_base = loglik(base)
    ll_full = loglik(np.hstack([base, added]))
    return {"lr": 2.0 * (ll_full - ll_base), "ll_base": ll_base, "ll_full": ll_full}


def _permuted_lr(perm: np.ndarray, df, time, event, features: list[str], template, clinical, cv: dict) -> float:
    """LR statistic after moving the image-feature rows by ``perm`` and redoing the pre-validation."""
    shuffled = df.copy()
    shuffled[features] = df[features].to_numpy()[perm]
    score = prevalidated_score(shuffled, time, event, template, **cv)
    return cox_lr_statistic(clinical, score, time, event)["lr"]


def permutation_lr_test(
    df: pd.DataFrame,
    time,
    event,
    clinical: Sequence[str],
    template: CoxModel,
    n_folds: int,
    n_repeats: int,
    cv_seed: int,
    n_permutations: int,
    seed: int,
    n_jobs: int = 1,
    score: np.ndarray | None = None,
) -> dict:
    """Permutation likelihood-ratio test of a pre-validated image score added to clinical terms.

    The statistic is the LR chi-square (:func:`cox_lr_statistic`, Breslow ties) of the
    pre-validated score (:func:`prevalidated_score` of the imaging ``template``) added to an
    in-sample Cox model of the median-imputed ``clinical`` terms. Its chi-square(1) p-value is not valid: the pre-validated scores of
    different people share training data (Hoefling & Tibshirani 2008, Ann Appl Stat 2:643).
    Instead the image-feature rows (``template.radiomic``, jointly) are permuted relative to
    the clinical data and outcome, the WHOLE pre-validation is redone for each permutation
    (preprocessing, penalty choice and fit in every fold, same splits and seeds) and
    p = (1 + #{LR_b >= LR_obs}) / (1 + B).

    Null hypothesis: the image features are independent of the clinical terms and the
    outcome (exchangeable rows). It is stronger than "no added value given the clinical
    terms": with features related to clinical terms it can reject without added value.

    Parameters
    ----------
    clinical : clinical terms (columns of ``df``); constant ones are left out.
    template : imaging-only :class:`CoxModel` (unfitted).
    n_folds, n_repeats, cv_seed : the cross-validation of the pre-validated score.
    n_permutations : B >= 1.
    seed : seed of the permutations (drawn in turn, in the calling process).
    n_jobs : processes (one BLAS thread each); the result does not depend on it.
    score : the observed pre-validated score if already computed with the same
        ``cv_seed`` (e.g. from :func:`cross_validated_predictions`), else computed here.

    Returns
    -------
    dict: lr (observed statistic), df (1), p (permutation), p_chi2 (the invalid naive
    chi-square p, for comparison only), n_permutations, null_lr (ndarray (B,)).
    """
    time, event = _check_survival(time, event, len(df))
    if n_permutations < 1:
        raise ValueError(f"permutation_lr_test: n_permutations must be >= 1, got {n_permutations}")
    imputed = median_impute(df, clinical).to_numpy()
    cv = {"n_folds": n_folds, "n_repeats": n_repeats, "seed": cv_seed}
    if score is None:
        score = prevalidated_score(df, time, event, template, **cv)
    observed = cox_lr_statistic(imputed, score, time, event)["lr"]
    features = list(template.radiomic)
    rng = np.random.default_rng(seed)
    perms = (rng.permutation(len(df)) for _ in range(n_permutations))
    null = np.asarray(run_tasks(
        partial(_permuted_lr, df=df, time=time, event=event, features=features, template=template,
                clinical=imputed, cv=cv),
        perms, n_jobs))
    tol = 1e-8 * max(1.0, abs(observed))  # equal statistics (e.g. both 0) count as "as extreme"
    p = (1 + int(np.sum(null >= observed - tol))) / (1 + n_permutations)
    return {"lr": observed, "df": 1, "p": p, "p_chi2": float(stats.chi2.sf(observed, 1)),
            "n_permutations": n_permutations, "null_lr": null}


def added_value(
    df: pd.DataFrame,
    time,
    event,
    templates: Mapping[str, CoxModel],
    settings: Mapping,
    seed: int,
    n_jobs: int = 1,
    reference: str = "clinical",
    score_model: str = "imaging",
    keep_models: bool = False,
) -> dict:
    """Do images add to the clinical model? Cross-validated comparison + permutation LR test.

    Parameters
    ----------
    df, time, event : analysis data (one row per person), survival time (days), death.
    templates : unfitted models, e.g. :func:`model_templates` (clinical, imaging, combined).
    settings : n_folds, n_repeats, horizon_days, n_permutations, score_repeats (CV
        repeats of the pre-validated score in the LR test, observed and permuted alike: the
        test's cost grows with it), alpha (the CIs are 1 - alpha), e.g. the
        imaging_analysis section of params.yaml.
    reference, score_model : the clinical model and the imaging-only model whose
        pre-validated score the LR test adds.
    keep_models : keep the fold models in the predictions (:func:`cross_validated_predictions`).

    Returns
    -------
    dict: "predictions" (:func:`cross_validated_predictions`), "comparison"
    (:func:`cv_comparison`: per-fold C / td-AUC intervals and paired delta C per model),
    "lr_test" (:func:`permutation_lr_test`).
    """
    time, event = _check_survival(time, event, len(df))
    horizon = float(settings["horizon_days"])
    cv = {"n_folds": int(settings["n_folds"]), "n_repeats": int(settings["n_repeats"])}
    preds = cross_validated_predictions(df, time, event, templates, seed=seed, horizon=horizon,
                                        n_jobs=n_jobs, keep_models=keep_models, **cv)
    comparison = cv_comparison(time, event, preds, horizon, reference, level=1.0 - float(settings["alpha"]))
    score_repeats = int(settings["score_repeats"])
    # the first r repeats of the comparison's splits are the splits of an r-repeat CV
    score = preds[score_model]["lp"][:score_repeats].mean(axis=0) if score_repeats <= cv["n_repeats"] else None
    lr = permutation_lr_test(
        df, time, event, templates[reference].clinical, templates[score_model], n_folds=cv["n_folds"],
        n_repeats=score_repeats, cv_seed=seed, n_permutations=int(settings["n_permutations"]), seed=seed + 1,
        n_jobs=n_jobs, score=score,
    )
    return {"predictions": preds, "comparison": comparison, "lr_test": lr}

# --------------------------------------------------------------------------- landmark


def landmark_dataset(
    cohort: pd.DataFrame, response: pd.DataFrame, landmark_days: float, response_day_col: str
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Persons alive and under follow-up at the landmark whose response was known by then.

    Time is reset to the landmark (``time_days - landmark_days``), so no survival time
    before the response assessment is credited (no immortal time).

    Parameters
    ----------
    cohort : DataFrame with person_id, time_days, event.
    response : DataFrame with person_id and ``response_day_col`` (days from t0 to the
        follow-up scan) plus the response columns.
    landmark_days : float.

    Returns
    -------
    (DataFrame of the landmark population with lm_time_days, event and response columns,
    dict of counts: with_response, alive_at_landmark, assessed_by_landmark).
    """
    for col in ("person_id", "time_days", "event"):
        if col not in cohort.columns:
            raise KeyError(f"cohort: missing column {col!r}")
    for col in ("person_id", response_day_col):
        if col not in response.columns:
            raise KeyError(f"image_response: missing column {col!r}")
    data = cohort.merge(response, on="person_id", how="inner", validate="one_to_one")
    alive = data[data["time_days"] > landmark_days]
    assessed = alive[alive[response_day_col] <= landmark_days].copy()
    assessed["lm_time_days"] = assessed["time_days"] - landmark_days
    counts = {
        "with_response": len(data),
        "alive_at_landmark": len(alive),
        "assessed_by_landmark": len(assessed),
    }
    return assessed.reset_index(drop=True), counts
