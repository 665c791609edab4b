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
* :func:`cross_validated_predictions` -- repeated stratified K-fold: every model is refitted
  (preprocessing included) on each training fold, predictions are out-of-fold.
* :func:`compare_models` -- C-index, time-dependent AUC, paired delta C and continuous NRI
  with percentile bootstrap CIs on the out-of-fold predictions.
* :func:`likelihood_ratio_test` -- nested Cox models (lifelines, Efron ties).
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
from pmed.survival import check_survival_data, fit_cox, require_events

KEY_COLUMNS = ("person_id", "image_occurrence_id", "timepoint")


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


def km_survival_at(time, event, horizon: float) -> float:
    """Kaplan-Meier survival probability at ``horizon`` (NaN if no one is at risk at all)."""
    time, event = _check_survival(time, event)
    if len(time) == 0:
        return np.nan
    ev_times, deaths = np.unique(time[event & (time <= horizon)], return_counts=True)
    at_risk = len(time) - np.searchsorted(np.sort(time), ev_times, side="left")
    return float(np.prod(1.0 - deaths / at_risk))


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
            # a term constant (or all missing) in the training rows cannot be estimated
            used = ~np.isnan(median) & (np.nanstd(clin, axis=0) > 0)
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


def cross_validated_predictions(
    df: pd.DataFrame,
    time,
    event,
    models: Mapping[str, CoxModel],
    n_folds: int,
    n_repeats: int,
    seed: int,
    horizon: float,
) -> dict[str, dict[str, np.ndarray]]:
    """Out-of-fold predictions of every model on the same repeated stratified K-fold splits.

    Each model (a :class:`CoxModel` template, cloned per fold) is fitted on the training
    folds only, preprocessing and penalty choice included. Folds are stratified on event.

    Returns
    -------
    dict model name -> {"lp": (n_repeats, n) out-of-fold linear predictor,
    "risk": (n_repeats, n) predicted risk of death by ``horizon``,
    "high": (n_repeats, n) int8, 1 when the lp exceeds the training folds' median lp}.
    """
    time, event = _check_survival(time, event, len(df))
    require_events("the imaging Cox models", event.sum(), max(len(m.clinical) for m in models.values()))
    n = len(df)
    out = {name: {k: np.full((n_repeats, n), np.nan) for k in ("lp", "risk", "high")} for name in models}
    for r in range(n_repeats):
        folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed + r)
        for k, (train, test) in enumerate(folds.split(np.zeros(n), event)):
            for name, template in models.items():
                model = clone(template).set_params(seed=seed + 1000 * (r + 1) + k)
                model.fit(df.iloc[train], time[train], event[train])
                lp = model.predict(df.iloc[test])
                out[name]["lp"][r, test] = lp
                out[name]["risk"][r, test] = model.predict_risk(df.iloc[test], horizon)
                out[name]["high"][r, test] = lp > np.median(model.baseline_[0])
    for name in out:
        out[name]["high"] = out[name]["high"].astype(np.int8)
    return out


# --------------------------------------------------------------------------- metrics


def net_reclassification_index(risk_old, risk_new, time, event, horizon: float) -> dict[str, float]:
    """Continuous (category-free) NRI at ``horizon`` for censored data (Pencina et al. 2011).

    With "up" = risk_new > risk_old and "down" = risk_new < risk_old, KM estimates give
    P(up | event by horizon) = (1 - S_up) P(up) / (1 - S) and
    P(up | no event) = S_up P(up) / S (likewise "down"); then
    NRI_events = P(up|D) - P(down|D), NRI_nonevents = P(down|not D) - P(up|not D),
    NRI = NRI_events + NRI_nonevents (range -2 to 2).

    Returns
    -------
    dict with nri, nri_events, nri_nonevents.
    """
    time, event = _check_survival(time, event)
    old = np.asarray(risk_old, dtype=float)
    new = np.asarray(risk_new, dtype=float)
    up, down = new > old, new < old
    s_all = km_survival_at(time, event, horizon)
    p_up, p_down = up.mean(), down.mean()
    s_up = km_survival_at(time[up], event[up], horizon) if up.any() else 0.0
    s_down = km_survival_at(time[down], event[down], horizon) if down.any() else 0.0
    ev = ((1 - s_up) * p_up - (1 - s_down) * p_down) / (1 - s_all)
    nonev = (s_down * p_down - s_up * p_up) / s_all
    return {"nri": float(ev + nonev), "nri_events": float(ev), "nri_nonevents": float(nonev)}


def compare_models(
    time,
    event,
    lp: Mapping[str, np.ndarray],
    risk: Mapping[str, np.ndarray],
    horizon: float,
    reference: str,
    n_bootstrap: int,
    seed: int,
) -> dict:
    """C-index, td-AUC, delta C and NRI versus ``reference`` with paired bootstrap CIs.

    Parameters
    ----------
    time, event : array (n,)
    lp : dict name -> (n,) out-of-fold score (e.g. repeat-averaged linear predictor).
    risk : dict name -> (n,) out-of-fold predicted risk by ``horizon`` (for the NRI).
    reference : name of the baseline model (the clinical one).
    n_bootstrap : int, patient-level resamples, the same ones for all models (paired).

    Returns
    -------
    dict: {"c_index": {name: {estimate, ci_low, ci_high, n_boot}}, "td_auc": {...} (at
    ``horizon``), "delta_c": {name: {...}} and "nri": {name: {...}} for each non-reference
    model}. Harrell's C and the IPCW cumulative/dynamic AUC come from :mod:`pmed.metrics`;
    percentile intervals over the resamples (:func:`pmed.metrics.ci_table`). Predictions
    stay fixed: model-fitting variability is in the cross-validation, not in these intervals.
    """
    time, event = _check_survival(time, event)
    names = list(lp)
    if reference not in names:
        raise KeyError(f"reference model {reference!r} not among {names}")
    others = [m for m in names if m != reference]

    def statistic(idx: np.ndarray) -> dict[str, float]:
        t, e = time[idx], event[idx]
        res = {f"c_index/{m}": metrics.harrell_c(t, e, lp[m][idx]) for m in names}
        for m in names:
            res[f"td_auc/{m}"] = float(metrics.td_auc(t, e, lp[m][idx], [horizon])[0])
        for m in others:
            res[f"delta_c/{m}"] = res[f"c_index/{m}"] - res[f"c_index/{reference}"]
            res[f"nri/{m}"] = net_reclassification_index(risk[reference][idx], risk[m][idx], t, e, horizon)["nri"]
        return res

    point = statistic(np.arange(len(time)))
    replicates = metrics.bootstrap(statistic, len(time), n_bootstrap, seed)
    out: dict = {"c_index": {}, "td_auc": {}, "delta_c": {}, "nri": {}}
    for key, ci in metrics.ci_table(point, replicates).items():
        kind, model = key.split("/")
        out[kind][model] = ci
    return out


def likelihood_ratio_test(
    df: pd.DataFrame, duration_col: str, event_col: str, base: Sequence[str], added: Sequence[str]
) -> dict[str, float]:
    """Likelihood-ratio test of ``added`` covariates in nested Cox models (lifelines, Efron).

    Parameters
    ----------
    df : DataFrame without missing values in the used columns.
    base : covariates of the reduced model (may be empty: null model).
    added : covariates added in the full model. Constant ones cannot be estimated and add
        nothing (all constant: lr = 0, p = 1); df stays ``len(added)``.

    Returns
    -------
    dict: lr (2 x log-likelihood difference), df, p (chi-square), ll_base, ll_full.
    """
    cols = list(base) + list(added)
    missing = [c for c in cols + [duration_col, event_col] if c not in df.columns]
    if missing:
        raise KeyError(f"likelihood_ratio_test: columns {missing} not in data")
    if df[cols].isna().any().any():
        raise ValueError("likelihood_ratio_test: covariates contain NaN; impute or drop first")
    if not len(added):
        raise ValueError("likelihood_ratio_test: nothing added")
    dof = len(added)
    varying = [c for c in added if df[c].nunique() > 1]
    if not varying:  # e.g. a signature that selected no feature: it cannot add anything
        ll = float(fit_cox(df, duration_col, event_col, list(base)).log_likelihood_) if len(base) else np.nan
        return {"lr": 0.0, "df": dof, "p": 1.0, "ll_base": ll, "ll_full": ll}
    cols = list(base) + varying
    full = fit_cox(df, duration_col, event_col, cols)
    ll_full = float(full.log_likelihood_)
    if len(base):
        ll_base = float(fit_cox(df, duration_col, event_col, list(base)).log_likelihood_)
    else:
        ll_base = ll_full - full.log_likelihood_ratio_test().test_statistic / 2.0
    lr = 2.0 * (ll_full - ll_base)
    return {"lr": lr, "df": dof, "p": float(stats.chi2.sf(lr, dof)), "ll_base": ll_base, "ll_full": ll_full}


def median_impute(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Copy of ``df[columns]`` with NaN replaced by each column's median."""
    sub = df[list(columns)].astype(float)
    return sub.fillna(sub.median())


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
