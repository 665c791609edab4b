"""Added value of images: per-fold C with corrected intervals, pre-validation, permutation LR test.

Behaviour is checked over many simulated draws (level under the null, power, centring of
delta C), never on one chosen seed; hand-computed cases check the formulas.
"""

from __future__ import annotations

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest
from scipy import stats
from sklearn.base import BaseEstimator
from test_radiomics_model import CLINICAL, models, simulate

from pmed import metrics
from pmed import radiomics_model as rm

SEED = 20261129


class BestFeature(BaseEstimator):
    """A cheap, data-adaptive image score for tests over many draws: the training feature
    with the largest |univariable Cox score statistic| at beta = 0, standardised, signed.
    Like the elastic net it selects on the outcome, so a pre-validated score built from it
    shares training data across people (the reason the naive chi-square is invalid)."""

    def __init__(self, radiomic=(), seed=0):
        self.radiomic = radiomic
        self.seed = seed

    def fit(self, df, time, event):
        x = df[list(self.radiomic)].to_numpy(float)
        self.mu_, self.sd_ = x.mean(axis=0), x.std(axis=0)
        z = (x - self.mu_) / self.sd_
        order = np.argsort(-np.asarray(time), kind="stable")  # risk set of i: rows up to i
        zs, es = z[order], np.asarray(event)[order].astype(bool)
        count = np.arange(1, len(zs) + 1)[:, None]
        mean = np.cumsum(zs, axis=0) / count
        var = np.cumsum(zs**2, axis=0) / count - mean**2
        u, v = (zs - mean)[es].sum(axis=0), var[es].sum(axis=0)
        self.j_ = int(np.argmax(np.abs(u) / np.sqrt(v)))
        self.sign_ = float(np.sign(u[self.j_]))
        self.baseline_ = (self.predict(df), time, event)
        return self

    def predict(self, df):
        col = list(self.radiomic)[self.j_]
        return self.sign_ * (df[col].to_numpy(float) - self.mu_[self.j_]) / self.sd_[self.j_]


def feature_data(n: int, effect: float, rng: np.random.Generator, p: int = 5) -> pd.DataFrame:
    """Two clinical terms with effects, ``p`` image features; feature 0 has log-HR ``effect``
    per SD (0: images independent of everything, the permutation null)."""
    age, ecog = rng.normal(0, 1, n), rng.integers(0, 3, n).astype(float)
    img = rng.normal(0, 1, (n, p))
    t = rng.exponential(np.exp(-(0.4 * age + 0.4 * ecog + effect * img[:, 0])))
    c = rng.exponential(1.5, n)
    df = pd.DataFrame({"age": age, "ecog": ecog, "time": np.minimum(t, c), "event": (t <= c).astype(int)})
    for j in range(p):
        df[f"original_glcm_F{j}"] = img[:, j]
    return df


def perm_p(df: pd.DataFrame, n_permutations: int, seed: int, n_jobs: int = 1) -> dict:
    radiomic = [c for c in df.columns if c.startswith("original_")]
    return rm.permutation_lr_test(
        df, df["time"], df["event"], ["age", "ecog"], BestFeature(radiomic), n_folds=3, n_repeats=1,
        cv_seed=seed, n_permutations=n_permutations, seed=seed + 1, n_jobs=n_jobs)


# --------------------------------------------------------------------------- formulas


def test_cv_splits_partition_each_repeat_and_stratify():
    event = np.r_[np.ones(30), np.zeros(60)].astype(int)
    splits = rm.cv_splits(event, n_folds=3, n_repeats=2, seed=SEED)
    assert [(r, k) for r, k, _, _ in splits] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    for r in (0, 1):
        tests = [test for rr, _, _, test in splits if rr == r]
        npt.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(90))
        assert all(event[t].sum() == 10 for t in tests)  # stratified: 10 deaths per fold
    for _, _, train, test in splits:
        assert not set(train) & set(test) and len(train) + len(test) == 90
    assert not np.array_equal(splits[0][3], splits[3][3])  # repeats reshuffle
    with pytest.raises(ValueError, match="n_folds"):
        rm.cv_splits(event, 1, 1, SEED)


def test_cv_interval_by_hand():
    """Values 0.6, 0.7, 0.8, 0.5, 0.65 from 5-fold CV: mean 0.65, s^2 = 0.0125,
    corrected variance (1/5 + 1/4) s^2 = 0.005625, se 0.075, t(0.975, 4) = 2.776445."""
    res = rm.cv_interval([0.6, 0.7, 0.8, 0.5, 0.65], n_folds=5)
    npt.assert_allclose([res["estimate"], res["se"]], [0.65, 0.075])
    npt.assert_allclose([res["ci_low"], res["ci_high"]], [0.65 - 2.776445 * 0.075, 0.65 + 2.776445 * 0.075], atol=1e-6)
    assert res["n_folds"] == 5
    # 2 repeats of 3-fold: J = 6, factor 1/6 + 1/2
    v = np.array([0.1, 0.3, 0.2, 0.0, 0.25, 0.15])
    res = rm.cv_interval(np.r_[v, np.nan], n_folds=3, level=0.9)
    se = np.sqrt((1 / 6 + 1 / 2) * v.var(ddof=1))
    npt.assert_allclose(res["ci_high"] - res["estimate"], stats.t.ppf(0.95, 5) * se)
    assert res["n_folds"] == 6
    assert rm.cv_interval([0.9, 1.0, 0.95], 3, bounds=(0, 1))["ci_high"] == 1.0
    assert np.isnan(rm.cv_interval([0.7], 5)["ci_low"])


def test_fold_performance_scores_each_test_fold_with_its_own_model():
    df = simulate(150, image_signal=True, seed=SEED)
    time, event = df["time_days"].to_numpy(), df["event"].to_numpy()
    preds = rm.cross_validated_predictions(df, time, event, models(df), n_folds=3, n_repeats=2,
                                           seed=SEED, horizon=365.0)
    folds = rm.fold_performance(time, event, preds, 365.0)
    assert len(folds) == 3 * 2 * 3 and set(folds["model"]) == {"clinical", "imaging", "combined"}
    row = folds[(folds["model"] == "imaging") & (folds["repeat"] == 1) & (folds["fold"] == 2)].iloc[0]
    test = preds["imaging"]["fold"][1] == 2
    assert row["n_test"] == test.sum() and row["n_events"] == event[test].sum()
    npt.assert_allclose(row["c_index"], metrics.harrell_c(time[test], event[test], preds["imaging"]["lp"][1, test]))
    res = rm.cv_comparison(time, event, preds, 365.0, "clinical")
    wide = folds.pivot_table(index=["repeat", "fold"], columns="model", values="c_index")
    npt.assert_allclose(res["delta_c"]["combined"]["estimate"], (wide["combined"] - wide["clinical"]).mean())
    npt.assert_allclose(res["c_index"]["clinical"]["estimate"], wide["clinical"].mean())
    with pytest.raises(KeyError, match="reference"):
        rm.cv_comparison(time, event, preds, 365.0, "nope")


def test_prevalidated_score_is_the_repeat_averaged_out_of_fold_lp():
    df = simulate(120, image_signal=True, seed=SEED)
    time, event = df["time_days"], df["event"]
    template = models(df)["imaging"]
    preds = rm.cross_validated_predictions(df, time, event, {"imaging": template}, 3, 2, SEED, 365.0)
    score = rm.prevalidated_score(df, time, event, template, 3, 2, SEED)
    npt.assert_allclose(score, preds["imaging"]["lp"].mean(axis=0), rtol=1e-12)


def test_permutation_p_value_and_worker_independence():
    df = feature_data(90, 0.5, np.random.default_rng(SEED))
    one, two = perm_p(df, 9, SEED, n_jobs=1), perm_p(df, 9, SEED, n_jobs=2)
    npt.assert_array_equal(one["null_lr"], two["null_lr"])
    assert one["lr"] == two["lr"] and one["p"] == two["p"]
    assert one["p"] == (1 + np.sum(one["null_lr"] >= one["lr"])) / 10
    npt.assert_allclose(one["p_chi2"], stats.chi2.sf(one["lr"], 1))
    assert len(one["null_lr"]) == one["n_permutations"] == 9


def test_permutation_test_with_a_constant_score_is_one():
    """A template that never selects a feature: LR 0 observed and permuted, p = 1."""
    df = simulate(90, image_signal=False, seed=SEED)
    df[[c for c in df.columns if c.startswith("original_")]] = 1.0
    df["original_glcm_Noise00"] = np.arange(90.0)  # one varying, outcome-free feature
    template = rm.CoxModel(radiomic=["original_glcm_Noise00"], n_alphas=5, inner_folds=3)
    res = rm.permutation_lr_test(df, df["time_days"], df["event"], CLINICAL, template, 3, 1, SEED, 4, SEED)
    if res["lr"] == 0:  # the feature was never selected
        assert res["p"] == 1.0
    assert res["p"] == (1 + np.sum(res["null_lr"] >= res["lr"] - 1e-8)) / 5
    with pytest.raises(ValueError, match="n_permutations"):
        rm.permutation_lr_test(df, df["time_days"], df["event"], CLINICAL, template, 3, 1, SEED, 0, SEED)


# --------------------------------------------------------------------------- behaviour over draws


def test_permutation_test_holds_its_level_under_the_null():
    """200 draws with image features independent of clinical data and outcome, 9 permutations
    each (so P(p <= 0.1) = 0.1 exactly for a valid test; ties only make it smaller): the
    rejection rate at 0.1 is within 3.5 Monte-Carlo SE of 0.1 or below, and the p-values are
    not piled up at 1 (mean of the discrete uniform on 0.1 ... 1 is 0.55)."""
    rng = np.random.default_rng(SEED)
    draws = 200
    p = np.array([perm_p(feature_data(80, 0.0, rng), 9, SEED + d)["p"] for d in range(draws)])
    mc_se = np.sqrt(0.1 * 0.9 / draws)
    assert np.mean(p <= 0.1 + 1e-12) < 0.1 + 3.5 * mc_se, np.mean(p <= 0.1 + 1e-12)
    assert abs(p.mean() - 0.55) < 3.5 * 0.287 / np.sqrt(draws), p.mean()


def test_permutation_test_has_power_with_image_signal():
    """30 draws where feature 0 has log-HR 0.8 per SD: p = 0.1 (the smallest with 9
    permutations) in at least 80% of draws."""
    rng = np.random.default_rng(SEED + 1)
    p = np.array([perm_p(feature_data(80, 0.8, rng), 9, SEED + d)["p"] for d in range(30)])
    assert np.mean(p <= 0.1 + 1e-12) >= 0.8, p


def test_delta_c_centred_on_zero_without_image_signal():
    """12 draws of the no-signal simulation (n = 150, 3-fold CV, elastic-net models): per-fold
    delta C (combined - clinical) averages 0 over draws (within 3.5 SE of the draws' mean),
    the imaging model's per-fold C averages 0.5 (pooling out-of-fold predictors of the fold
    models instead is biased below 0.5), and the delta-C interval covers 0 in most draws."""
    deltas, c_img, covered = [], [], 0
    for d in range(12):
        df = simulate(150, image_signal=False, seed=SEED + 100 + d)
        res = run_small(df, SEED + d)
        dc = res["delta_c"]["combined"]
        deltas.append(dc["estimate"])
        c_img.append(res["c_index"]["imaging"]["estimate"])
        covered += dc["ci_low"] <= 0 <= dc["ci_high"]
    deltas, c_img = np.array(deltas), np.array(c_img)
    assert abs(deltas.mean()) <= max(3.5 * deltas.std(ddof=1) / np.sqrt(12), 1e-3), deltas
    assert abs(c_img.mean() - 0.5) <= 3.5 * c_img.std(ddof=1) / np.sqrt(12), c_img
    assert covered >= 10, covered


def run_small(df: pd.DataFrame, seed: int) -> dict:
    preds = rm.cross_validated_predictions(df, df["time_days"], df["event"], models(df), n_folds=3,
                                           n_repeats=1, seed=seed, horizon=365.0)
    return rm.cv_comparison(df["time_days"], df["event"], preds, 365.0, "clinical")


def test_added_value_api():
    """The one-call API (used by the simulation study) returns the pieces computed alone; the
    LR test's score (1 repeat) reuses the first repeat of the 2-repeat comparison."""
    df = simulate(150, image_signal=True, seed=SEED)
    time, event = df["time_days"], df["event"]
    settings = {"n_folds": 3, "n_repeats": 2, "horizon_days": 365, "n_permutations": 3, "score_repeats": 1,
                "alpha": 0.1}
    res = rm.added_value(df, time, event, models(df), settings, seed=SEED)
    assert set(res) == {"predictions", "comparison", "lr_test"}
    preds = rm.cross_validated_predictions(df, time, event, models(df), 3, 2, SEED, 365.0)
    alone = rm.cv_comparison(time, event, preds, 365.0, "clinical", level=0.9)
    assert res["comparison"]["delta_c"] == alone["delta_c"] and res["comparison"]["c_index"] == alone["c_index"]
    lr = res["lr_test"]
    assert lr["n_permutations"] == 3 and lr["p"] in (0.25, 0.5, 0.75, 1.0)
    score = rm.prevalidated_score(df, time, event, models(df)["imaging"], 3, 1, SEED)
    clinical = rm.median_impute(df, CLINICAL)
    npt.assert_allclose(lr["lr"], rm.cox_lr_statistic(clinical, score, time, event)["lr"])
