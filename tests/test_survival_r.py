"""pmed.survival against R survival 3.5-3 (R 4.2.2): reference CSVs in tests/data/r_reference/survival.

The CSVs are written by the dev-only script tests/r/survival_reference.R from the data sets
exported by tests/r/export_datasets.py (lifelines' lung, rossi and Stanford heart transplant
data), so R and these tests read the same rows. R is never needed to run the tests.
"""

from pathlib import Path

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest

from pmed import survival as sv

REF = Path(__file__).parent / "data" / "r_reference" / "survival"
TRANSFORMS = ["km", "rank", "identity", "log"]
ROSSI = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]


def _read(name: str, **kw) -> pd.DataFrame:
    return pd.read_csv(REF / f"{name}.csv", **kw)


@pytest.fixture(scope="module")
def lung():
    d = _read("data_lung")
    d["ecog3"] = d["ph.ecog"].map({0.0: "0", 1.0: "1", 2.0: "2+", 3.0: "2+"})  # NaN stays missing
    for k in (1, 2, 3):  # dummies of factor(ph.ecog); NaN where ph.ecog is missing
        d[f"ecog_{k}"] = (d["ph.ecog"] == k).astype(float).where(d["ph.ecog"].notna())
    return d


@pytest.fixture(scope="module")
def rossi():
    d = _read("data_rossi")
    d["prio3"] = pd.cut(d["prio"], [-1, 0, 2, np.inf], labels=["0", "1-2", "3+"]).astype(str)
    return d


@pytest.fixture(scope="module")
def heart():
    return _read("data_stanford")


# model name in the CSVs -> (data fixture, stop, event, covariates, start, strata, terms)
MODELS = {
    "lung": ("lung", "time", "status", ["age", "sex", "ph.ecog"], None, (), None),
    "lung_factor": ("lung", "time", "status", ["age", "sex", "ecog_1", "ecog_2", "ecog_3"], None, (),
                    {"age": ["age"], "sex": ["sex"], "factor(ph.ecog)": ["ecog_1", "ecog_2", "ecog_3"]}),
    "rossi": ("rossi", "week", "arrest", ROSSI, None, (), None),
    "rossi_strata": ("rossi", "week", "arrest", ["fin", "age", "prio"], None, ("wexp",), None),
    "heart": ("heart", "stop", "event", ["age", "year", "surgery", "transplant"], "start", (), None),
}


def _fit(request, model: str, ties: str):
    data_name, stop, event, cov, start, strata, terms = MODELS[model]
    data = request.getfixturevalue(data_name)
    return data, sv.fit_cox_counting(data, stop, event, cov, start_col=start, strata=strata, ties=ties), terms


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("model", ["lung", "rossi", "rossi_strata", "heart"])
def test_cox_fit_and_score_test_match_r(request, model, ties):
    """coxph(..., ties=): coefficients, SEs, log-likelihoods, Score (logrank) test; heart is the
    counting-process model coxph(Surv(start, stop, event) ~ age + year + surgery + transplant)."""
    ref = _read("coxph").query("model == @model and ties == @ties").set_index("term")
    _, fit, _ = _fit(request, model, ties)
    assert fit.n == ref["n"].iloc[0] and fit.n_events == ref["nevent"].iloc[0]
    npt.assert_allclose(fit.params_.loc[ref.index], ref["coef"], rtol=1e-7, atol=1e-9)
    npt.assert_allclose(fit.standard_errors_.loc[ref.index], ref["se"], rtol=1e-7)
    npt.assert_allclose([fit.log_likelihood_null_, fit.log_likelihood_], ref[["loglik_null", "loglik"]].iloc[0],
                        rtol=1e-10)
    score = sv.cox_score_test(fit)
    npt.assert_allclose(score["statistic"], ref["score"].iloc[0], rtol=1e-9)
    assert score["df"] == ref["score_df"].iloc[0]
    npt.assert_allclose(score["p_value"], ref["score_p"].iloc[0], rtol=1e-7)
    if model in ("lung", "rossi") and ties == "efron":  # the same test from a lifelines fit
        data_name, stop, event, cov, *_ = MODELS[model]
        data = request.getfixturevalue(data_name)
        lif = sv.cox_score_test(sv.fit_cox(data, stop, event, cov), data)
        npt.assert_allclose(lif["statistic"], ref["score"].iloc[0], rtol=1e-9)
    tab = sv.cox_table(fit).set_index("term")  # a CoxFit works where a lifelines model does
    npt.assert_allclose(tab.loc[ref.index, "se"], ref["se"], rtol=1e-7)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("model", list(MODELS))
def test_ph_test_matches_r_cox_zph(request, model, ties, transform):
    """cox.zph(fit, transform=) of survival 3.5-3: chi-square, df, p per term and GLOBAL."""
    ref = _read("cox_zph").query("model == @model and ties == @ties and transform == @transform")
    data, fit, terms = _fit(request, model, ties)
    ph = sv.ph_test(fit, data, transform, terms=terms, include_global=True)
    assert ph["term"].tolist() == ref["term"].tolist()
    assert ph["df"].tolist() == ref["df"].tolist()
    npt.assert_allclose(ph["statistic"], ref["chisq"], rtol=1e-6)
    npt.assert_allclose(ph["p_value"], ref["p"], atol=1e-7)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("model", ["lung", "rossi"])
def test_ph_test_of_a_lifelines_fit_matches_r(request, model, transform):
    """The pipeline's path: ph_test on lifelines' CoxPHFitter (Efron), p-values to 1e-5 of R
    (the brief asks 1e-3; lifelines' converged betas differ from R's by < 1e-5)."""
    data_name, stop, event, cov, *_ = MODELS[model]
    data = request.getfixturevalue(data_name)
    cph = sv.fit_cox(data, stop, event, cov)
    ref = _read("cox_zph").query("model == @model and ties == 'efron' and transform == @transform")
    ph = sv.ph_test(cph, data, transform, include_global=True)
    npt.assert_allclose(ph["p_value"], ref["p"], atol=1e-5)
    assert sv.ph_test(cph, data, transform)["term"].tolist() == cov  # default: no GLOBAL row


def test_ph_test_of_a_stratified_lifelines_fit_matches_r(rossi):
    cph = sv.fit_cox(rossi, "week", "arrest", ["fin", "age", "prio"], strata=["wexp"])
    ref = _read("cox_zph").query("model == 'rossi_strata' and ties == 'efron' and transform == 'km'")
    npt.assert_allclose(sv.ph_test(cph, rossi, include_global=True)["p_value"], ref["p"], atol=1e-5)


def test_schoenfeld_residuals_match_r(request):
    """scaled_schoenfeld = n_events * residuals(fit, "schoenfeld") @ vcov(fit) (Efron; strata)."""
    for model in ("lung", "rossi_strata"):
        data, fit, _ = _fit(request, model, "efron")
        ref = _read(f"schoenfeld_{model}")
        cols = list(fit.params_.index)
        expected = len(ref) * ref[cols].to_numpy() @ fit.variance_matrix_.to_numpy()
        got = sv.scaled_schoenfeld(fit, data)
        key = lambda t, v: np.lexsort((np.round(v, 6), t))  # noqa: E731 - ties in time across strata
        npt.assert_allclose(got[cols].to_numpy()[key(got["time"], got[cols[0]])],
                            expected[key(ref["time"].to_numpy(), expected[:, 0])], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("model", ["lung", "rossi_strata"])
def test_baseline_hazard_matches_r_basehaz(request, model, ties, centered):
    ref = _read("basehaz", keep_default_na=False).query("model == @model and ties == @ties and centered == @centered")
    data, fit, _ = _fit(request, model, ties)
    bh = sv.baseline_hazard(fit, data, centered=centered)
    assert ref["strata"].str.replace("wexp=", "").tolist() == bh["strata"].tolist()
    npt.assert_array_equal(bh["time"], ref["time"])
    npt.assert_allclose(bh["cumhaz"], ref["hazard"], rtol=1e-8)


def test_efron_and_breslow_baseline_hazards_differ_as_in_r(request):
    """Rossi has many tied weeks: the Efron jumps exceed Breslow's, as in R's two basehaz()."""
    ref = _read("basehaz", keep_default_na=False).query("model == 'rossi_strata' and centered")
    efron = sv.baseline_hazard(_fit(request, "rossi_strata", "efron")[1], request.getfixturevalue("rossi"))
    breslow = sv.baseline_hazard(_fit(request, "rossi_strata", "breslow")[1], request.getfixturevalue("rossi"))
    r_gap = ref.query("ties == 'efron'")["hazard"].to_numpy() - ref.query("ties == 'breslow'")["hazard"].to_numpy()
    npt.assert_allclose(efron["cumhaz"] - breslow["cumhaz"], r_gap, atol=1e-9)
    assert r_gap.max() > 1e-3


SURVDIFF = {  # case -> (data, time, event, group, strata)
    "lung_sex": ("lung", "time", "status", "sex", None),
    "lung_ecog3": ("lung", "time", "status", "ecog3", None),
    "lung_sex_strata_ecog3": ("lung", "time", "status", "sex", "ecog3"),
    "rossi_fin": ("rossi", "week", "arrest", "fin", None),
    "rossi_prio3": ("rossi", "week", "arrest", "prio3", None),
}


@pytest.mark.parametrize("case", list(SURVDIFF))
def test_logrank_matches_r_survdiff(request, case):
    data_name, t, e, g, s = SURVDIFF[case]
    d = request.getfixturevalue(data_name)
    ref = _read("survdiff", dtype={"group": str}).query("case == @case").set_index("group")
    res = sv.logrank(d[t], d[e], d[g], strata=None if s is None else d[s])
    groups = res["groups"]
    assert [str(i) for i in groups.index] == ref.index.tolist()
    assert groups["n"].tolist() == ref["n"].tolist() and groups["observed"].tolist() == ref["observed"].tolist()
    npt.assert_allclose(groups["expected"], ref["expected"], atol=1e-8)
    npt.assert_allclose(res["statistic"], ref["chisq"].iloc[0], atol=1e-8)
    assert res["df"] == ref["df"].iloc[0]
    npt.assert_allclose(res["p_value"], ref["p"].iloc[0], rtol=1e-8)


def test_logrank_equals_cox_score_test_without_ties():
    """Without tied event times the two-group log-rank chi-square is the Cox score test (an
    identity; with ties the log-rank's hypergeometric variance is smaller than Breslow's)."""
    for child in np.random.SeedSequence(19).spawn(5):
        rng = np.random.default_rng(child)
        x = rng.integers(0, 2, 300)
        t = rng.exponential(1 / np.exp(0.4 * x))
        c = rng.exponential(2.0, 300)
        df = pd.DataFrame({"t": np.minimum(t, c), "e": (t <= c).astype(int), "x": x})
        lr = sv.logrank(df["t"], df["e"], df["x"])
        for ties in ("breslow", "efron"):  # identical without ties
            fit = sv.fit_cox_counting(df, "t", "e", ["x"], ties=ties)
            npt.assert_allclose(lr["statistic"], fit.score_test["statistic"], rtol=1e-10)


KM = {"lung": ("time", "status", "sex"), "rossi": ("week", "arrest", "fin")}


@pytest.mark.parametrize("conf_type", ["log", "log-log", "plain"])
@pytest.mark.parametrize("case", list(KM))
def test_kaplan_meier_band_median_and_rmst_match_r(request, case, conf_type):
    t, e, g = KM[case]
    d = request.getfixturevalue(case)
    curve = _read("km_curve", dtype={"strata": str}).query("case == @case and conf_type == @conf_type")
    summ = _read("km_median_rmean", dtype={"strata": str}).query("case == @case and conf_type == @conf_type")
    for label, sub in d.groupby(g):
        ref = curve[curve["strata"] == str(label)].set_index("time")
        km = sv.kaplan_meier(sub[t], sub[e], conf_type=conf_type).set_index("time").loc[ref.index]
        npt.assert_allclose(km["survival"], ref["surv"], atol=1e-12)
        assert km["n_at_risk"].tolist() == ref["n_risk"].tolist()
        ok = ref["lower"].notna().to_numpy()  # R: NA where S = 1 (log-log) or S = 0
        npt.assert_allclose(km.loc[ok, "ci_low"], ref.loc[ok, "lower"], atol=1e-12)
        npt.assert_allclose(km.loc[ok, "ci_high"], ref.loc[ok, "upper"], atol=1e-12)
        med = sv.median_survival(sub[t], sub[e], conf_type=conf_type)
        for _, row in summ[summ["strata"] == str(label)].iterrows():
            want = row[["median", "lower", "upper"]].to_numpy(dtype=float)
            npt.assert_array_equal([med["estimate"], med["ci_low"], med["ci_high"]], np.where(np.isnan(want), np.inf, want))
            rm = sv.rmst(sub[t], sub[e], tau=row["tau"])
            npt.assert_allclose([rm["estimate"], rm["se"]], [row["rmean"], row["se_rmean"]], rtol=1e-10)


def test_rmst_difference_from_r_group_values(lung):
    """Difference (sex 2 - sex 1) at tau = 365: R's per-group rmean and se(rmean) combined."""
    ref = _read("km_median_rmean", dtype={"strata": str}).query("case == 'lung' and conf_type == 'log' and tau == 365")
    ref = ref.set_index("strata")
    res = sv.rmst_difference(lung["time"], lung["status"], lung["sex"], tau=365, reference=1)
    diff = ref.loc["2", "rmean"] - ref.loc["1", "rmean"]
    se = np.hypot(ref.loc["2", "se_rmean"], ref.loc["1", "se_rmean"])
    npt.assert_allclose([res["difference"], res["se"]], [diff, se], rtol=1e-10)
    npt.assert_allclose([res["ci_low"], res["ci_high"]], [diff - 1.959964 * se, diff + 1.959964 * se], rtol=1e-6)
    assert res["reference"] == "1" and list(res["groups"].index) == ["1", "2"]
