"""Tests of pmed.radiomics_model: hand-checked statistics and simulated-signal pipeline runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi
from statsmodels.stats.multitest import multipletests

from pmed import radiomics_model as rm

SEED = 20261127
CLINICAL = ["age_years", "ecog"]
TRUE_IMAGE = ["original_shape_MeshVolume", "original_firstorder_Entropy"]


def simulate(n: int, image_signal: bool, seed: int) -> pd.DataFrame:
    """Cohort x baseline radiomics with a known generating model.

    log hazard = 0.03 (age - 65) + 0.4 ecog [+ 0.6 z(log volume) + 0.5 heterogeneity].
    Features: volume (MeshVolume, a VoxelVolume copy and SurfaceArea, |r| > 0.9 with it),
    heterogeneity (firstorder Entropy), a constant feature, an outcome-related feature
    flagged unstable, and 15 pure-noise features. Exponential times, uniform censoring.
    """
    rng = np.random.default_rng(seed)
    age = rng.normal(65, 10, n)
    ecog = rng.integers(0, 3, n).astype(float)
    ecog[rng.random(n) < 0.1] = np.nan  # missing, imputed inside the folds
    log_vol = rng.normal(3.0, 1.0, n)
    hetero = 0.3 * (log_vol - 3.0) + rng.normal(0, 1, n)
    lp = 0.03 * (age - 65) + 0.4 * np.nan_to_num(ecog, nan=1.0)
    if image_signal:
        lp = lp + 0.6 * (log_vol - 3.0) + 0.5 * hetero
    t_event = rng.exponential(365 * np.exp(-lp))
    t_cens = rng.uniform(200, 1500, n)
    vol = np.exp(log_vol)
    df = pd.DataFrame({
        "age_years": age,
        "ecog": ecog,
        "time_days": np.minimum(t_event, t_cens),
        "event": (t_event <= t_cens).astype(np.int8),
        "original_shape_MeshVolume": vol,
        "original_shape_VoxelVolume": vol * rng.normal(1.0, 0.01, n),
        "original_shape_SurfaceArea": vol ** (2 / 3) * rng.normal(1.0, 0.03, n),
        "original_firstorder_Entropy": hetero + rng.normal(0, 0.2, n),
        "original_shape_Flatness": np.ones(n),
        "original_glrlm_Unstable": 0.6 * (log_vol - 3.0) + rng.normal(0, 0.5, n),
    })
    for j in range(15):
        df[f"original_glcm_Noise{j:02d}"] = rng.normal(0, 1, n)
    return df


def radiomics_of(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("original_")]


PREPROCESSOR = {"unstable": ["original_glrlm_Unstable"], "corr_threshold": 0.9}


def models(df: pd.DataFrame, alpha_rule: str = "min") -> dict[str, rm.CoxModel]:
    common = {"preprocessor": PREPROCESSOR, "l1_ratio": 0.5, "n_alphas": 20, "inner_folds": 3, "alpha_rule": alpha_rule}
    return {
        "clinical": rm.CoxModel(clinical=CLINICAL),
        "imaging": rm.CoxModel(radiomic=radiomics_of(df), **common),
        "combined": rm.CoxModel(clinical=CLINICAL, radiomic=radiomics_of(df), **common),
    }


def run_pipeline(df: pd.DataFrame, seed: int, alpha_rule: str = "min", n_folds: int = 5) -> dict:
    """Per-fold comparison of the three models (one repeat of stratified K-fold)."""
    horizon = 365.0
    preds = rm.cross_validated_predictions(
        df, df["time_days"], df["event"], models(df, alpha_rule), n_folds=n_folds, n_repeats=1, seed=seed,
        horizon=horizon,
    )
    return rm.cv_comparison(df["time_days"], df["event"], preds, horizon, "clinical")


# --------------------------------------------------------------------------- hand checks


def test_bh_adjust_matches_statsmodels():
    """statsmodels: multipletests(p, method="fdr_bh")[1]; NaN entries are ignored."""
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2, 0.04, 0.9])
    npt.assert_allclose(rm.bh_adjust(p), multipletests(p, method="fdr_bh")[1], rtol=1e-12)
    # by hand: sorted p 0.005,0.01,0.03,0.04,0.04,0.2,0.9 times 7/rank, then running min from the top
    npt.assert_allclose(rm.bh_adjust(p)[3], 0.035)
    with_nan = rm.bh_adjust(np.r_[np.nan, p])
    assert np.isnan(with_nan[0])
    npt.assert_allclose(with_nan[1:], rm.bh_adjust(p))


R_COXPH = Path(__file__).parent / "data" / "r_reference" / "survival"  # tests/r/survival_reference.R


@pytest.mark.parametrize("model", ["rossi", "lung"])
def test_cox_lr_statistic_matches_r_breslow(model):
    """R survival, coxph(..., ties = "breslow"): LR = 2 (loglik - loglik_null), committed in
    coxph.csv; rossi has heavily tied weeks, lung drops the row with ph.ecog missing."""
    ref = pd.read_csv(R_COXPH / "coxph.csv").query("model == @model and ties == 'breslow'")
    data = pd.read_csv(R_COXPH / f"data_{model}.csv")
    covs = ref["term"].tolist()
    duration, status = ("week", "arrest") if model == "rossi" else ("time", "status")
    data = data.dropna(subset=covs)
    event = data[status].to_numpy() == 1
    res = rm.cox_lr_statistic(np.empty((len(data), 0)), data[covs], data[duration], event)
    npt.assert_allclose(res["ll_full"], ref["loglik"].iloc[0], rtol=1e-9)
    npt.assert_allclose(res["ll_base"], ref["loglik_null"].iloc[0], rtol=1e-12)
    npt.assert_allclose(res["lr"], 2 * (ref["loglik"].iloc[0] - ref["loglik_null"].iloc[0]), rtol=1e-7)
    # nested: LR(full vs null) = LR(full vs base) + LR(base vs null)
    part1 = rm.cox_lr_statistic(data[covs[:2]], data[covs[2:]], data[duration], event)
    part2 = rm.cox_lr_statistic(np.empty((len(data), 0)), data[covs[:2]], data[duration], event)
    npt.assert_allclose(part1["lr"] + part2["lr"], res["lr"], rtol=1e-7)


def test_cox_lr_statistic_of_a_constant_score_is_zero():
    rossi = load_rossi()
    res = rm.cox_lr_statistic(rossi[["fin", "age"]], np.zeros(len(rossi)), rossi["week"], rossi["arrest"])
    assert res["lr"] == 0.0 and res["ll_full"] == res["ll_base"]


def test_partial_loglik_matches_lifelines_without_ties():
    """No tied times: Breslow = Efron, so lifelines' log_likelihood_ at its MLE is the reference."""
    rng = np.random.default_rng(SEED)
    n = 60
    x = rng.normal(size=(n, 2))
    time = rng.exponential(np.exp(-0.7 * x[:, 0]))
    event = rng.random(n) < 0.8
    data = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "T": time, "E": event.astype(int)})
    fit = CoxPHFitter().fit(data, "T", "E")
    eta = x @ fit.params_.to_numpy()
    npt.assert_allclose(rm.cox_partial_loglik(eta, time, event), fit.log_likelihood_, rtol=1e-8)
    both = rm.cox_partial_loglik(np.column_stack([eta, np.zeros(n)]), time, event)
    npt.assert_allclose(both[0], fit.log_likelihood_, rtol=1e-8)


def test_partial_loglik_breslow_ties_by_hand():
    """Times 1,1,2 all events, eta = (0, log 2, 0): Breslow risk sums 4, 4, 1.
    ll = (0 - log 4) + (log 2 - log 4) + (0 - log 1) = -3 log 2."""
    ll = rm.cox_partial_loglik(np.array([0.0, np.log(2), 0.0]), [1, 1, 2], [1, 1, 1])
    npt.assert_allclose(ll, -3 * np.log(2))


def test_breslow_survival_without_covariates_is_nelson_aalen():
    """eta = 0: S0(h) = exp(-sum d/n_at_risk). Deaths at 1 (4 at risk), 3 (2 at risk)."""
    s0 = rm.breslow_survival_at(np.zeros(4), [1, 2, 3, 4], [1, 0, 1, 0], horizon=3.5)
    npt.assert_allclose(s0, np.exp(-(1 / 4 + 1 / 2)))


# --------------------------------------------------------------------------- preprocessing


def test_preprocessor_drops_unstable_constant_and_redundant():
    df = simulate(300, image_signal=True, seed=SEED)
    pre = rm.RadiomicsPreprocessor(**PREPROCESSOR).fit(df[radiomics_of(df)])
    kept = pre.selected_features_
    assert "original_glrlm_Unstable" not in kept
    assert "original_shape_Flatness" not in kept
    volume = {"original_shape_MeshVolume", "original_shape_VoxelVolume", "original_shape_SurfaceArea"}
    assert len(volume & set(kept)) == 1  # one representative of the volume cluster
    rep = (volume & set(kept)).pop()
    assert set(pre.clusters_[rep]) == volume
    assert "original_firstorder_Entropy" in kept
    assert sum(c.startswith("original_glcm_Noise") for c in kept) == 15
    out = pre.transform(df)
    assert out.shape == (300, len(kept))
    npt.assert_allclose(out.mean(axis=0), 0, atol=1e-12)
    npt.assert_allclose(out.std(axis=0), 1)


def test_preprocessor_uses_training_statistics_only():
    df = simulate(200, image_signal=False, seed=SEED)
    cols = radiomics_of(df)
    train, test = df.iloc[:100], df.iloc[100:].copy()
    test.loc[test.index[0], "original_firstorder_Entropy"] = np.nan
    pre = rm.RadiomicsPreprocessor(**PREPROCESSOR).fit(train[cols])
    out = pd.DataFrame(pre.transform(test), columns=pre.selected_features_)
    j = "original_firstorder_Entropy"
    expected = (test[j].fillna(train[j].median()) - train[j].mean()) / train[j].std(ddof=0)
    npt.assert_allclose(out[j], expected)
    with pytest.raises(KeyError, match="missing features"):
        pre.transform(test.drop(columns=[j]))


# --------------------------------------------------------------------------- simulated pipelines


def test_univariable_cox_flags_true_features():
    df = simulate(300, image_signal=True, seed=SEED)
    res = rm.univariable_cox(df[radiomics_of(df)], df["time_days"], df["event"])
    significant = set(res.loc[res["q"] < 0.05, "feature"])
    assert set(TRUE_IMAGE) <= significant
    assert not any(f.startswith("original_glcm_Noise") for f in significant)
    assert res.loc[res["feature"] == "original_shape_Flatness", "q"].isna().all()  # constant
    tested = res.dropna(subset=["p"])
    npt.assert_allclose(tested["q"], multipletests(tested["p"], method="fdr_bh")[1])


def test_signature_selects_true_traits():
    df = simulate(400, image_signal=True, seed=SEED)
    model = models(df)["imaging"].set_params(seed=SEED).fit(df, df["time_days"], df["event"])
    coefs = model.coefficients().set_index("feature")["log_hr_per_sd"]
    volume_rep = [f for f in coefs.index if f.startswith("original_shape_")]
    assert len(volume_rep) == 1 and coefs[volume_rep[0]] > 0.2
    assert coefs["original_firstorder_Entropy"] > 0.2
    noise = coefs[[f for f in coefs.index if "Noise" in f]]
    assert noise.abs().max() < 0.1 if len(noise) else True


@pytest.mark.parametrize("alpha_rule", ["min", "1se"])
def test_added_value_detected_with_image_signal(alpha_rule):
    res = run_pipeline(simulate(400, image_signal=True, seed=SEED), SEED, alpha_rule)
    assert res["delta_c"]["combined"]["ci_low"] > 0
    assert res["c_index"]["combined"]["estimate"] > res["c_index"]["clinical"]["estimate"]
    assert res["c_index"]["imaging"]["ci_low"] > 0.5


def test_shuffled_outcome_gives_chance_concordance():
    """Leakage check over 6 draws: with outcomes permuted, every model's per-fold C averages
    0.5 over draws (within 3.5 SE of the draws' mean, and within 0.03)."""
    c = {name: [] for name in ("clinical", "imaging", "combined")}
    for d in range(6):
        df = simulate(300, image_signal=True, seed=SEED + 2 + d)
        perm = np.random.default_rng(SEED + d).permutation(len(df))
        df[["time_days", "event"]] = df[["time_days", "event"]].to_numpy()[perm]
        res = run_pipeline(df, SEED + d)
        for name in c:
            c[name].append(res["c_index"][name]["estimate"])
    for name, values in c.items():
        values = np.array(values)
        assert abs(values.mean() - 0.5) <= max(3.5 * values.std(ddof=1) / np.sqrt(len(values)), 1e-3), (name, values)
        assert abs(values.mean() - 0.5) < 0.03, (name, values)


def test_landmark_excludes_deaths_and_late_assessments():
    cohort = pd.DataFrame({"person_id": [1, 2, 3, 4], "time_days": [50.0, 200, 300, 400], "event": [1, 1, 0, 1]})
    response = pd.DataFrame({"person_id": [1, 2, 3, 4], "scan_day": [40, 80, 120, 90], "category": list("abcd")})
    data, counts = rm.landmark_dataset(cohort, response, landmark_days=100, response_day_col="scan_day")
    assert data["person_id"].tolist() == [2, 4]
    npt.assert_allclose(data["lm_time_days"], [100, 300])
    assert counts == {"with_response": 4, "alive_at_landmark": 3, "assessed_by_landmark": 2}


def test_unstable_features_reads_flags():
    stability = pd.DataFrame({"feature": ["a", "b", "c"], "icc": [0.95, 0.5, 0.8], "stable": [True, False, 1]})
    assert rm.unstable_features(stability) == ["b"]
    with pytest.raises(ValueError, match="stable"):
        rm.unstable_features(stability.assign(stable=["yes", "no", "no"]))


def test_scan_days_from_t0_first_followup_scan():
    features = pd.DataFrame({"person_id": [1, 1, 1, 2], "image_occurrence_id": [10, 11, 12, 20],
                             "timepoint": ["baseline", "followup", "followup", "baseline"]})
    occurrence = pd.DataFrame({"image_occurrence_id": [10, 11, 12, 20],
                               "image_occurrence_date": pd.to_datetime(["2020-01-01", "2020-04-01", "2020-03-01", "2020-01-05"])})
    cohort = pd.DataFrame({"person_id": [1, 2], "t0_date": pd.to_datetime(["2020-01-10", "2020-01-10"]).date})
    out = rm.scan_days_from_t0(features, occurrence, cohort, "followup")
    assert out.to_dict("list") == {"person_id": [1], "scan_day": [51]}  # 2020-03-01 - 2020-01-10


def test_cox_model_leaves_out_constant_terms_and_empty_features():
    df = simulate(200, image_signal=True, seed=SEED)
    df["never_varies"] = 1.0
    df["original_glcm_AllMissing"] = np.nan
    model = rm.CoxModel(clinical=CLINICAL + ["never_varies"], radiomic=radiomics_of(df),
                        preprocessor=PREPROCESSOR, n_alphas=10, inner_folds=3)
    model.fit(df, df["time_days"], df["event"])
    assert model.clinical_used_ == CLINICAL
    assert "original_glcm_AllMissing" not in model.features_
    assert np.isfinite(model.predict_risk(df, 365.0)).all()
    with pytest.raises(KeyError, match="not in the data"):
        rm.CoxModel(clinical=["nope"]).fit(df, df["time_days"], df["event"])


def test_estimable_terms_counts_persons_away_from_the_mode():
    x = np.zeros((40, 4))
    x[:9, 0] = 1.0  # 9 persons differ from the mode: too rare
    x[:10, 1] = 1.0  # 10: enough
    x[:, 2] = np.arange(40.0)  # continuous
    x[-10:, 3] = 1.0  # the mode may be any value: 30 ones
    x[:, 3] = 1 - x[:, 3]
    npt.assert_array_equal(rm.estimable_terms(x), [rm.MIN_TERM_PERSONS <= 9, True, True, True])


def test_a_rare_separating_indicator_is_left_out_not_a_solver_failure():
    """An indicator held by 3 persons who all die first has no finite estimate (monotone
    likelihood): the models leave it out and fit the rest, clinical-only and combined alike."""
    df = simulate(300, image_signal=True, seed=SEED)
    first = np.argsort(df["time_days"].to_numpy())[:3]
    df["event"] = df["event"].to_numpy().copy()
    df.loc[first, "event"] = 1
    df["rare"] = 0.0
    df.loc[first, "rare"] = 1.0
    for model in (rm.CoxModel(clinical=CLINICAL + ["rare"]),
                  rm.CoxModel(clinical=CLINICAL + ["rare"], radiomic=radiomics_of(df), preprocessor=PREPROCESSOR,
                              n_alphas=10, inner_folds=3)):
        model.fit(df, df["time_days"], df["event"])
        assert model.clinical_used_ == CLINICAL
        assert np.isfinite(model.predict(df)).all()
    lr = rm.cox_lr_statistic(df[CLINICAL + ["rare"]].fillna(1.0).to_numpy(), df["original_firstorder_Entropy"].to_numpy(),
                             df["time_days"], df["event"])
    assert np.isfinite(lr["lr"])


def test_one_se_rule_gives_a_sparser_signature():
    df = simulate(400, image_signal=True, seed=SEED)
    fitted = {
        rule: models(df)["imaging"].set_params(seed=SEED, alpha_rule=rule).fit(df, df["time_days"], df["event"])
        for rule in ("min", "1se")
    }
    assert fitted["1se"].alpha_ >= fitted["min"].alpha_
    selected = {rule: set(m.coefficients()["feature"]) for rule, m in fitted.items()}
    assert selected["1se"] <= selected["min"]
    assert "original_firstorder_Entropy" in selected["1se"]
    assert not any("Noise" in f for f in selected["1se"])
    with pytest.raises(ValueError, match="alpha_rule"):
        models(df)["imaging"].set_params(alpha_rule="best").fit(df, df["time_days"], df["event"])


def test_join_baseline_features_keeps_radiomics_of_baseline_scans():
    cohort = pd.DataFrame({"person_id": [1, 2, 3], "time_days": [10.0, 20, 30]})
    features = pd.DataFrame({
        "person_id": [1, 1, 2, 2], "image_occurrence_id": [11, 12, 22, 21],
        "timepoint": ["baseline", "followup", "baseline", "baseline"],
        "diagnostics_Versions_PyRadiomics": ["v"] * 4,
        "original_shape_MeshVolume": [1.0, 2.0, 3.0, 4.0],
        "wavelet-LLH_glcm_Contrast": [0.1, 0.2, 0.3, 0.4],
    })
    assert rm.radiomic_columns(features) == ["original_shape_MeshVolume", "wavelet-LLH_glcm_Contrast"]
    out = rm.join_baseline_features(cohort, features)
    assert out["person_id"].tolist() == [1, 2]
    assert out["original_shape_MeshVolume"].tolist() == [1.0, 4.0]  # person 2: lowest image_occurrence_id
    assert "diagnostics_Versions_PyRadiomics" not in out
    with pytest.raises(KeyError, match="timepoint"):
        rm.join_baseline_features(cohort, features.drop(columns="timepoint"))


def test_preprocessor_clusters_do_not_chain():
    """A ~ B and B ~ C above the threshold but A, C only r ~ 0.8: complete linkage keeps two
    representatives (single linkage would chain all three into one cluster)."""
    rng = np.random.default_rng(SEED)
    n = 500
    b = rng.normal(size=n)
    e = rng.normal(0, 0.3, n)
    a, c = b + e, b - e  # r(a, b) = r(b, c) ~ 1 / sqrt(1.09) = 0.96, r(a, c) ~ 0.91 / 1.09 = 0.83
    X = pd.DataFrame({"original_glcm_A": a, "original_glcm_B": b, "original_glcm_C": c})
    r = X.corr("spearman").abs()
    assert r.loc["original_glcm_A", "original_glcm_B"] > 0.9 and r.loc["original_glcm_B", "original_glcm_C"] > 0.9
    assert r.loc["original_glcm_A", "original_glcm_C"] < 0.9
    pre = rm.RadiomicsPreprocessor(corr_threshold=0.9).fit(X)
    assert len(pre.selected_features_) == 2
    assert sorted(len(m) for m in pre.clusters_.values()) == [1, 2]


def test_a_diverging_fold_fit_is_a_named_error(monkeypatch):
    """A Cox fit whose Newton steps diverge in a fold (sksurv's ArithmeticError) stops with the
    model, repeat, fold and sizes named, not the solver's message alone."""

    class Diverges:
        def set_params(self, **_):
            return self

        def fit(self, *_):
            raise ArithmeticError("Numerical error, because weights are too large.")

    monkeypatch.setattr(rm, "clone", lambda template: template)
    df = pd.DataFrame({"x": np.arange(10.0)})
    split = (0, 1, np.arange(8), np.arange(8, 10))
    with pytest.raises(ValueError, match=r"the clinical Cox model could not be fitted in CV "
                                         r"repeat 1, fold 2 \(8 persons, 4 events\)"):
        rm._fit_fold(df, np.arange(1.0, 11.0), np.array([1, 0] * 5), {"clinical": Diverges()},
                     split, 0, None)
