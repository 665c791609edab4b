"""Tests of pmed.prediction: fold construction, out-of-fold isolation (by construction),
weighted logistic regression against its closed form, table assembly on hand inputs, and
determinism with fixed seeds. Data are simulated here (exponential survival with known
log hazard ratio 1.0 for ``x1``, none for ``noise``); no fixture files."""

import dataclasses

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest

from pmed import metrics
from pmed import prediction as pr

TIMES = [60.0, 120.0, 180.0]
HORIZON = 180.0
SETTINGS = pr.ModelSettings(features=("x1", "x2", "noise"), interactions=("x1:x2",), cox_penalizer=0.01,
                            gb_n_estimators=20, gb_max_depth=2, gb_learning_rate=0.1, permutation_repeats=2)


def _simulate(n=150, seed=11):
    """Exponential survival, hazard exp(x1) / 200 per day, uniform censoring on [0, 500] days."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.integers(0, 2, n).astype(float)
    noise = rng.normal(size=n)
    t_event = rng.exponential(200 * np.exp(-x1))
    t_cens = rng.uniform(0, 500, n)
    df = pd.DataFrame({"time_days": np.minimum(t_event, t_cens), "event": (t_event <= t_cens).astype(int),
                       "x1": x1, "x2": x2, "noise": noise})
    df["x1:x2"] = df["x1"] * df["x2"]
    out = metrics.horizon_outcome(df["time_days"], df["event"], HORIZON)
    return df, out["y"].to_numpy(), out["ipcw"].to_numpy()


def _cv(df, y, w, seed_cv=5, seed_gb=6, n_folds=3):
    return pr.cross_validated_predictions(df, "time_days", "event", y, w, TIMES, SETTINGS,
                                         n_folds=n_folds, seed_cv=seed_cv, seed_gb=seed_gb)


@pytest.fixture(scope="module")
def sim():
    df, y, w = _simulate()
    return df, y, w, _cv(df, y, w)


def test_fold_splits_partition_rows():
    splits = pr.fold_splits(10, 3, seed=1)
    tests = [test for _, test in splits]
    assert sorted(np.concatenate(tests).tolist()) == list(range(10))
    assert sorted(len(t) for t in tests) == [3, 3, 4]
    for train, test in splits:
        assert not set(train) & set(test)
        assert sorted([*train, *test]) == list(range(10))
    again = pr.fold_splits(10, 3, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again, strict=True))
    with pytest.raises(ValueError, match="n_folds"):
        pr.fold_splits(10, 1, seed=1)


def test_predictions_are_complete_and_fold_labels_match_splits(sim):
    df, y, w, cv = sim
    assert set(cv.risk) == set(pr.MODELS)
    for r in cv.risk.values():
        assert r.shape == (len(df),) and np.all((r >= 0) & (r <= 1))
    assert cv.cox_survival.shape == (len(df), len(TIMES))
    npt.assert_allclose(cv.risk["cox"], 1 - cv.cox_survival[:, -1])
    assert np.all(np.diff(cv.cox_survival, axis=1) <= 0)  # S(t) non-increasing in t
    assert cv.importances.shape == (3, len(SETTINGS.features))
    for i, (_, test) in enumerate(pr.fold_splits(len(df), 3, seed=5)):
        assert np.all(cv.fold[test] == i)


def test_out_of_fold_predictions_ignore_own_fold_outcomes(sim):
    """By construction: scrambling the outcomes of fold 0 changes no fold-0 prediction
    (its models never saw them) but does change the other folds' predictions."""
    df, y, w, cv = sim
    in0 = cv.fold == 0
    rng = np.random.default_rng(99)
    scrambled = df.copy()
    scrambled.loc[in0, "time_days"] = rng.uniform(1, 400, in0.sum())
    scrambled.loc[in0, "event"] = rng.integers(0, 2, in0.sum())
    y2, w2 = y.copy(), w.copy()
    y2[in0] = rng.integers(0, 2, in0.sum())
    w2[in0] = rng.uniform(0.5, 3, in0.sum())
    cv2 = _cv(scrambled, y2, w2)
    for k in pr.MODELS:
        npt.assert_array_equal(cv2.risk[k][in0], cv.risk[k][in0])
        assert not np.allclose(cv2.risk[k][~in0], cv.risk[k][~in0]), k


def test_kept_fold_models_reproduce_the_out_of_fold_predictions(sim):
    df, y, w, cv = sim
    assert cv.models is None
    kept = pr.cross_validated_predictions(df, "time_days", "event", y, w, TIMES, SETTINGS, n_folds=3, seed_cv=5,
                                          seed_gb=6, keep_models=True)
    assert len(kept.models) == 3
    for i, models in enumerate(kept.models):
        test = kept.fold == i
        risk, _ = pr.predict_models(models, df[test], TIMES)
        for k in pr.MODELS:
            npt.assert_allclose(risk[k], cv.risk[k][test], rtol=1e-10)


def test_logistic_fold_predictions_equal_a_fit_on_the_other_folds(sim):
    df, y, w, cv = sim
    train, test = pr.fold_splits(len(df), 3, seed=5)[1]
    fit_rows = train[~np.isnan(y[train])]
    fit = pr.fit_weighted_logistic(df.iloc[fit_rows][SETTINGS.terms], y[fit_rows], w[fit_rows])
    npt.assert_allclose(cv.risk["logistic"][test], pr.predict_logistic(fit, df.iloc[test][SETTINGS.terms]))


def test_cross_validation_is_deterministic_and_seeded(sim):
    df, y, w, cv = sim
    again = _cv(df, y, w)
    for k in pr.MODELS:
        npt.assert_array_equal(again.risk[k], cv.risk[k])
    npt.assert_array_equal(again.importances, cv.importances)
    other = _cv(df, y, w, seed_cv=6)
    assert not np.array_equal(other.fold, cv.fold)


def test_cross_validation_does_not_depend_on_worker_count(sim):
    df, y, w, cv = sim
    parallel = pr.cross_validated_predictions(df, "time_days", "event", y, w, TIMES, SETTINGS,
                                              n_folds=3, seed_cv=5, seed_gb=6, n_jobs=2)
    for k in pr.MODELS:
        npt.assert_array_equal(parallel.risk[k], cv.risk[k])
    npt.assert_array_equal(parallel.importances, cv.importances)
    npt.assert_array_equal(parallel.cox_survival, cv.cox_survival)


def test_permutation_importance_on_a_held_out_subset():
    """With permutation_max_rows below the held-out size, importance is computed on a seeded
    subset: predictions unchanged, importances differ from the full held-out set but are
    reproducible; the true predictor still ranks first."""
    df, y, w = _simulate(n=600, seed=12)
    full = _cv(df, y, w)
    small = dataclasses.replace(SETTINGS, permutation_max_rows=80)
    sub = pr.cross_validated_predictions(df, "time_days", "event", y, w, TIMES, small,
                                         n_folds=3, seed_cv=5, seed_gb=6)
    again = pr.cross_validated_predictions(df, "time_days", "event", y, w, TIMES, small,
                                           n_folds=3, seed_cv=5, seed_gb=6)
    for k in pr.MODELS:
        npt.assert_array_equal(sub.risk[k], full.risk[k])
    assert not np.array_equal(sub.importances, full.importances)
    npt.assert_array_equal(sub.importances, again.importances)
    assert np.argmax(sub.importances.mean(0)) == SETTINGS.features.index("x1")


def test_permutation_importance_finds_the_true_predictor(sim):
    """x1 carries a log-HR of 1 per unit; ``noise`` none."""
    imp = pr.importance_table(sim[3].importances, SETTINGS.features).set_index("feature")["importance"]
    assert imp["x1"] > 0.05 and imp["x1"] > 5 * abs(imp["noise"])


def test_cross_validation_rejects_bad_input(sim):
    df, y, w, _ = sim
    with pytest.raises(ValueError, match="missing values"):
        _cv(df.assign(x1=np.where(np.arange(len(df)) == 0, np.nan, df["x1"])), y, w)
    with pytest.raises(ValueError, match="rows"):
        _cv(df, y[:-1], w)
    with pytest.raises(KeyError, match="noise"):
        _cv(df.drop(columns="noise"), y, w)


def test_weighted_logistic_closed_form():
    """One binary predictor: the MLE reproduces the weighted event proportions per group,
    const = logit(p0) and the coefficient = logit(p1) - logit(p0).
    Group 0: y = 1, 0, 0 with weights 1, 1, 2 -> p0 = 1/4; group 1: y = 1, 1, 0 with
    weights 2, 1, 1 -> p1 = 3/4."""
    X = pd.DataFrame({"x": [0.0, 0, 0, 1, 1, 1]})
    y = np.array([1.0, 0, 0, 1, 1, 0])
    w = np.array([1.0, 1, 2, 2, 1, 1])
    fit = pr.fit_weighted_logistic(X, y, w)
    npt.assert_allclose(fit.params["const"], np.log(1 / 3), rtol=1e-8)
    npt.assert_allclose(fit.params["x"], np.log(3) - np.log(1 / 3), rtol=1e-8)
    npt.assert_allclose(pr.predict_logistic(fit, pd.DataFrame({"x": [0.0, 1.0]})), [0.25, 0.75], rtol=1e-8)
    odds = pr.odds_ratio_table(fit, ["x"])
    assert list(odds.columns) == ["term", "odds_ratio", "or_ci_low", "or_ci_high", "p_value"]
    npt.assert_allclose(odds["odds_ratio"], [9.0], rtol=1e-8)
    assert odds["or_ci_low"].iloc[0] < 9 < odds["or_ci_high"].iloc[0]
    with pytest.raises(ValueError, match="NaN"):
        pr.fit_weighted_logistic(X, np.r_[np.nan, y[1:]], w)


def test_weights_equal_replicated_rows():
    """Integer weights give the same point estimates as repeating the rows."""
    rng = np.random.default_rng(4)
    X = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40)})
    y = rng.integers(0, 2, 40).astype(float)
    k = rng.integers(1, 4, 40)
    weighted = pr.fit_weighted_logistic(X, y, k.astype(float))
    rep = np.repeat(np.arange(40), k)
    repeated = pr.fit_weighted_logistic(X.iloc[rep], y[rep], np.ones(rep.size))
    npt.assert_allclose(weighted.params, repeated.params, rtol=1e-7)


def _ci(est, lo, hi):
    return {"estimate": est, "ci_low": lo, "ci_high": hi, "n_boot": 10}


def test_metrics_by_model_on_hand_input():
    cis = {"cox.harrell_c": _ci(0.7, 0.65, 0.75), "cox.ibs": _ci(0.2, 0.18, 0.22),
           "gbm.harrell_c": _ci(0.6814, 0.6, 0.7)}
    assert pr.metrics_by_model(cis) == {"cox": {"harrell_c": cis["cox.harrell_c"], "ibs": cis["cox.ibs"]},
                                        "gbm": {"harrell_c": cis["gbm.harrell_c"]}}


def test_importance_table_hand_values():
    table = pr.importance_table([[0.1, 0.0], [0.3, 0.2]], ["a", "b"])
    npt.assert_allclose(table["importance"], [0.2, 0.1])
    npt.assert_allclose(table["sd"], [0.1, 0.1])  # population SD (ddof = 0)
    with pytest.raises(ValueError, match="shape"):
        pr.importance_table([[0.1, 0.0]], ["a"])


def test_high_risk_groups_threshold_is_inclusive():
    groups = pr.high_risk_groups([0.69, 0.7, 0.9], 0.7)
    assert groups.tolist() == ["not high risk", "high risk", "high risk"]


def test_settings_from_params():
    s = pr.ModelSettings.from_params({
        "covariates": ["a", "b"], "interactions": ["a:b"], "cox_penalizer": 0.1, "cox_l1_ratio": 0.5,
        "gb_n_estimators": 7, "gb_max_depth": 3, "gb_learning_rate": 0.2, "permutation_repeats": 4,
    })
    assert s.terms == ["a", "b", "a:b"] and s.gb_n_estimators == 7 and s.cox_l1_ratio == 0.5
    assert s.permutation_max_rows is None  # key absent: all held-out rows
    base = {"covariates": ["a"], "interactions": [], "cox_penalizer": 0.1, "cox_l1_ratio": 0.0,
            "gb_n_estimators": 7, "gb_max_depth": 3, "gb_learning_rate": 0.2, "permutation_repeats": 4}
    assert pr.ModelSettings.from_params({**base, "permutation_max_rows": 500}).permutation_max_rows == 500
    with pytest.raises(ValueError, match="permutation_max_rows"):
        pr.ModelSettings.from_params({**base, "permutation_max_rows": 0})
