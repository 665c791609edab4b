"""Competing risks (pmed.competing) against R output, hand-computed cases and simulations.

R reference: tests/r/competing_reference.R wrote tests/data/r_reference/competing/ (see its
README.md for versions and tolerances).
"""

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from lifelines import CoxPHFitter, KaplanMeierFitter  # noqa: E402
from lifelines.exceptions import StatisticalWarning  # noqa: E402

from pmed import competing as cr  # noqa: E402
from pmed import privacy  # noqa: E402

REF = Path(__file__).parent / "data" / "r_reference" / "competing"
DATASETS = {"mgus2": ("agegrp", ["age", "male", "mspike"]), "sim": ("arm", ["arm_b", "arm_c", "x"])}


def _data(tag):
    return pd.read_csv(REF / f"{tag}_data.csv")


# --- R parity --------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", DATASETS)
def test_cif_and_variance_match_cmprsk_cuminc(tag):
    data, (group, _) = _data(tag), DATASETS[tag]
    ref = pd.read_csv(REF / f"cuminc_{tag}.csv")
    for (label, cause), rows in ref.groupby(["group", "cause"]):
        sub = data[data[group].astype(str) == str(label)]
        at = cr.cif_at(cr.cumulative_incidence(sub["time"], sub["status"], cause=int(cause)), rows["time"])
        np.testing.assert_array_equal(at["cif"].isna().to_numpy(), rows["est"].isna().to_numpy())
        np.testing.assert_allclose(at["cif"], rows["est"], atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(at["variance"], rows["var"], atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("tag", DATASETS)
def test_gray_test_matches_cmprsk(tag):
    data, (group, _) = _data(tag), DATASETS[tag]
    for _, row in pd.read_csv(REF / f"gray_{tag}.csv").iterrows():
        res = cr.gray_test(data["time"], data["status"], data[group], cause=int(row["cause"]),
                           strata=data["stratum"] if row["stratified"] else None)
        assert res["df"] == row["df"]
        assert res["statistic"] == pytest.approx(row["stat"], rel=1e-9)
        assert res["p_value"] == pytest.approx(row["pv"], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("tag", DATASETS)
def test_cause_specific_cox_matches_coxph(tag):
    data, (_, covs) = _data(tag), DATASETS[tag]
    ref = pd.read_csv(REF / f"cause_specific_{tag}.csv")
    for cause in (1, 2):
        fit = cr.fit_cause_specific(data, "time", "status", covs, cause=cause)
        r = ref[ref["cause"] == cause].set_index("term")
        np.testing.assert_allclose(fit.params_[covs], r.loc[covs, "coef"], atol=1e-6)
        np.testing.assert_allclose(fit.standard_errors_[covs], r.loc[covs, "se"], rtol=1e-6)


def test_fine_gray_equals_lifelines_on_r_finegray_data():
    """R: fg <- finegray(Surv(time, ev) ~ ., data = sim, etype = "event") (tests/r/competing_reference.R);
    lifelines' weighted Efron Cox on that expanded data set (integer days: ties within and across
    causes, censoring at event times) gives the coefficients of the unexpanded fit."""
    data, (_, covs) = _data("sim"), DATASETS["sim"]
    fg = pd.read_csv(REF / "finegray_data_sim.csv").merge(data[["id", *covs]], on="id")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StatisticalWarning)  # non-integer weights
        cph = CoxPHFitter().fit(fg[["fgstart", "fgstop", "fgstatus", "fgwt", *covs]], "fgstop", "fgstatus",
                                entry_col="fgstart", weights_col="fgwt", fit_options={"precision": 1e-12})
    table = cr.fit_fine_gray(data, "time", "status", covs, se="naive").set_index("term").loc[covs]
    np.testing.assert_allclose(table["log_hr"], cph.params_[covs], atol=1e-9)
    np.testing.assert_allclose(table["se"], cph.standard_errors_[covs], rtol=1e-7)


def test_fine_gray_score_is_zero_and_residuals_sum_to_it():
    """Per-person score residuals sum to the score, which is 0 at the fitted coefficients."""
    data, (_, covs) = _data("sim"), DATASETS["sim"]
    model = cr._FineGrayRisk(data["time"].to_numpy(float), data["status"].to_numpy(), data[covs].to_numpy(float), 1)
    beta = cr.fit_fine_gray(data, "time", "status", covs).set_index("term").loc[covs, "log_hr"].to_numpy()
    np.testing.assert_allclose(model.efron(beta)[1], 0, atol=1e-10)
    rng = np.random.default_rng(3)
    for b in [beta, beta + rng.normal(0, 0.3, beta.size)]:
        np.testing.assert_allclose(model.score_residuals(b).sum(axis=0), model.efron(b)[1], atol=1e-10)


@pytest.mark.parametrize("tag", DATASETS)
@pytest.mark.parametrize(("se", "column"), [("cluster", "se_cluster_id"), ("naive", "se_naive")])
def test_fine_gray_matches_finegray_coxph(tag, se, column):
    data, (_, covs) = _data(tag), DATASETS[tag]
    ref = pd.read_csv(REF / f"finegray_coxph_{tag}.csv")
    ref = ref[ref["ties"] == "efron"].set_index("term").loc[covs]
    table = cr.fit_fine_gray(data, "time", "status", covs, se=se).set_index("term").loc[covs]
    np.testing.assert_allclose(table["log_hr"], ref["coef"], atol=1e-6)
    np.testing.assert_allclose(table["se"], ref[column], rtol=1e-6)
    np.testing.assert_allclose(table["se_naive"], ref["se_naive"], rtol=1e-6)


@pytest.mark.parametrize("tag", DATASETS)
def test_fine_gray_close_to_cmprsk_crr(tag):
    """crr weights censoring and ties differently: coefficients within 2% of an SE, SEs within 1%."""
    data, (_, covs) = _data(tag), DATASETS[tag]
    ref = pd.read_csv(REF / f"crr_{tag}.csv").set_index("term").loc[covs]
    table = cr.fit_fine_gray(data, "time", "status", covs).set_index("term").loc[covs]
    assert np.all(np.abs(table["log_hr"] - ref["coef"]) < 0.02 * ref["se"])
    np.testing.assert_allclose(table["se"], ref["se"], rtol=0.01)


# --- hand-computed and structural checks -------------------------------------------------------


def test_cif_hand_computed():
    cur = cr.cumulative_incidence([1, 2, 3, 4, 5], [1, 2, 0, 1, 0])
    at = cr.cif_at(cur, [0, 1, 2.5, 4, 5, 6])
    np.testing.assert_allclose(at["cif"][:5], [0, 0.2, 0.2, 0.5, 0.5])
    # Var F(4) = 0.04 (1 - 0.3/0.8)^2 + 0.04 (0.3/0.6)^2 + 0.09 * 1 (see the docstring formula)
    np.testing.assert_allclose(at["variance"][:5], [0, 0.04, 0.04, 0.115625, 0.115625])
    assert np.isnan(at["cif"][5])
    assert at["n_at_risk"].tolist() == [5, 5, 3, 2, 1, 0]
    assert (at["ci_low"][1:5] < at["cif"][1:5]).all() and (at["ci_high"][1:5] > at["cif"][1:5]).all()


def test_cif_without_competing_events_is_one_minus_kaplan_meier():
    rng = np.random.default_rng(1)
    t = np.ceil(rng.exponential(100, 300))
    e = (rng.uniform(size=300) < 0.7).astype(int)
    cur = cr.cumulative_incidence(t, e)
    km = KaplanMeierFitter().fit(t, e).survival_function_at_times(cur["time"]).to_numpy()
    np.testing.assert_allclose(cur["cif"], 1 - km, atol=1e-12)


# --- calibration over many simulated data sets -------------------------------------------------


def _competing_sample(rng, n, rate1, rate2, cens_max):
    t1, t2 = rng.exponential(1 / rate1, n), rng.exponential(1 / rate2, n)
    c = rng.uniform(0, cens_max, n)
    t = np.minimum(np.minimum(t1, t2), c)
    status = np.where(t == c, 0, np.where(t1 < t2, 1, 2))
    return t, status


def test_cif_confidence_interval_covers_truth():
    rng = np.random.default_rng(20261129)
    rate1, rate2, t0 = 0.002, 0.003, 300.0
    truth = rate1 / (rate1 + rate2) * (1 - np.exp(-(rate1 + rate2) * t0))
    est, covered = [], []
    for _ in range(1000):
        t, s = _competing_sample(rng, 200, rate1, rate2, 1000)
        at = cr.cif_at(cr.cumulative_incidence(t, s), [t0]).iloc[0]
        est.append(at["cif"])
        covered.append(at["ci_low"] <= truth <= at["ci_high"])
    est = np.array(est)
    assert abs(est.mean() - truth) < 4 * est.std() / np.sqrt(est.size)
    assert 0.93 <= np.mean(covered) <= 0.97


def test_gray_test_size_and_power():
    rng = np.random.default_rng(20261130)
    p_null, p_alt = [], []
    for _ in range(400):
        g = rng.integers(0, 3, 240)
        t, s = _competing_sample(rng, 240, 0.002, 0.003, 1000)
        p_null.append(cr.gray_test(t, s, g)["p_value"])
        rate1 = 0.002 * np.exp(0.7 * (g == 2))
        t1, t2 = rng.exponential(1 / rate1), rng.exponential(1 / 0.003, 240)
        c = rng.uniform(0, 1000, 240)
        t = np.minimum(np.minimum(t1, t2), c)
        s = np.where(t == c, 0, np.where(t1 < t2, 1, 2))
        p_alt.append(cr.gray_test(t, s, g)["p_value"])
    assert 0.025 <= np.mean(np.array(p_null) < 0.05) <= 0.08
    assert np.mean(np.array(p_alt) < 0.05) > 0.6


def _fine_gray_sample(rng, n, beta, p=0.3):
    """Fine & Gray (1999) design: F1(t | x) = 1 - (1 - p (1 - exp(-t)))^exp(x beta)."""
    x = np.column_stack([rng.integers(0, 2, n), rng.normal(size=n)])
    lp = x @ beta
    u = rng.uniform(size=n)
    f1_inf = 1 - (1 - p) ** np.exp(lp)
    cause1 = u < f1_inf
    t = np.empty(n)
    t[cause1] = -np.log(1 - (1 - (1 - u[cause1]) ** np.exp(-lp[cause1])) / p)
    t[~cause1] = rng.exponential(1 / np.exp(0.5 * x[~cause1, 0]))
    c = rng.uniform(0, 2.5, n)
    status = np.where(c < t, 0, np.where(cause1, 1, 2))
    return pd.DataFrame({"time": np.minimum(t, c), "status": status, "a": x[:, 0], "b": x[:, 1]})


def test_fine_gray_recovers_subdistribution_hazard_ratios():
    rng = np.random.default_rng(20261131)
    beta = np.array([0.6, -0.4])
    est, se = [], []
    for _ in range(40):
        table = cr.fit_fine_gray(_fine_gray_sample(rng, 300, beta), "time", "status", ["a", "b"])
        est.append(table["log_hr"].to_numpy())
        se.append(table["se"].to_numpy())
    est, se = np.array(est), np.array(se)
    sd = est.std(axis=0, ddof=1)
    assert np.all(np.abs(est.mean(axis=0) - beta) < 3 * sd / np.sqrt(len(est)))
    assert np.all((se.mean(axis=0) / sd > 0.7) & (se.mean(axis=0) / sd < 1.4))
    covered = np.abs(est - beta) <= 1.96 * se
    assert covered.mean() >= 0.85


# --- bad input and privacy ------------------------------------------------------------------------


def test_bad_input_errors():
    with pytest.raises(ValueError, match="status must be 0"):
        cr.cumulative_incidence([1, 2], [1, 3])
    with pytest.raises(ValueError, match="time must be finite"):
        cr.cumulative_incidence([1, -2], [1, 0])
    with pytest.raises(ValueError, match="cause must be 1 or 2"):
        cr.cumulative_incidence([1, 2], [1, 0], cause=3)
    with pytest.raises(ValueError, match="at least 2 groups"):
        cr.gray_test([1, 2], [1, 0], ["a", "a"])
    df = pd.DataFrame({"t": [1.0, 2.0], "s": [1, 0]})
    with pytest.raises(KeyError, match="pneumonitis_status"):
        cr.fit_fine_gray(df, "t", "pneumonitis_status", ["x"])
    with pytest.raises(ValueError, match="se must be"):
        cr.fit_fine_gray(df, "t", "s", [], se="jackknife")


def test_small_counts_are_not_shown():
    rng = np.random.default_rng(5)
    t, s = _competing_sample(rng, 120, 0.002, 0.003, 1000)
    group = np.where(np.arange(120) < 6, "tiny", np.where(np.arange(120) < 60, "a", "b"))
    curves = cr.cif_by_group(t, s, group)
    for cur in curves.values():
        kept = privacy.release_km(cur, 11)
        assert (kept["n_at_risk"] >= 11).all()
    assert privacy.release_km(curves["tiny"], 11).empty
    table = cr.cif_table(curves, [0, 200, 400, 5000], min_cell=11)
    tiny = table[table["group"] == "tiny"]
    assert tiny["cif"].isna().all() and set(tiny["n_at_risk"]) <= {"<11", "0"}
    assert all(v == "0" or v.startswith("<") or int(v) >= 11 for v in table["n_at_risk"])
    fig = cr.cif_plot(curves, min_cell=11, times=[0, 200, 400])
    ax, tab = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
    shown = [txt.get_text() for txt in tab.texts]
    assert all(v.startswith("<") or int(v) == 0 or int(v) >= 11 for v in shown)
    assert any("tiny" in txt.get_text() for txt in ax.texts)
    plt.close(fig)


def test_cif_metrics_nested_and_suppressed():
    curves = cr.cif_by_group([1, 2, 3, 4, 5] * 3, [1, 2, 0, 1, 0] * 3, ["a"] * 15)
    out = cr.cif_metrics(curves, [0, 2, 4], min_cell=11)
    assert set(out) == {"a"} and set(out["a"]) == {"0", "2", "4"}
    assert out["a"]["0"]["estimate"] == 0.0
    assert np.isnan(out["a"]["4"]["estimate"])  # 3 persons at risk at day 4 < 11


def test_status_table_hides_small_counts_and_their_complements():
    status = np.array([1] * 7 + [2] * 300 + [0] * 9 + [1] * 30 + [2] * 400 + [0] * 60)
    group = np.array(["chemo"] * 316 + ["io"] * 490)
    table = cr.status_table(status, group, min_cell=11)
    assert list(table.index) == ["chemo", "io", "total"]
    assert table.loc["chemo", "events"] == "<11" and table.loc["chemo", "censored"] == "<11"
    # with the row and column relations no hidden cell can be recovered: each row and column
    # that holds a hidden cell holds at least two unknown cells
    hidden = table.apply(lambda col: ~col.str.fullmatch(r"\d+"))
    for line in [*(hidden.loc[r] for r in table.index), *(hidden[c] for c in table.columns)]:
        assert line.sum() != 1
    assert table.loc["total", "persons"] == "806"


def test_cif_ci_without_events_is_the_exact_one_sided_bound():
    # no event of cause 1; censored at 2 and 4 (m: persons not censored by t)
    t, s = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([2, 0, 2, 0, 0])
    cur = cr.cumulative_incidence(t, s).set_index("time")
    m = pd.Series([5, 4, 4, 3, 2], index=[1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(cur.loc[m.index, "ci_high"], 1 - 0.025 ** (1 / m), rtol=1e-12)
    assert cur.loc[0.0, "ci_high"] == 0  # the added row at 0, before any follow-up
    assert (cur["cif"] == 0).all() and (cur["ci_low"] == 0).all()
    # after the first event the log(-log) interval again; before it the bound
    cur = cr.cumulative_incidence([1.0, 2.0, 3.0, 4.0], [0, 1, 0, 0]).set_index("time")
    assert cur.loc[1.0, "ci_high"] == pytest.approx(1 - 0.025 ** (1 / 3))
    assert 0 < cur.loc[2.0, "ci_low"] < cur.loc[2.0, "cif"] < cur.loc[2.0, "ci_high"] < 1


@pytest.mark.parametrize("n, rate1, rate2, cens_max", [(40, 0.1, 0.05, 1e9), (20, 0.3, 0.5, 1.25)])
def test_cif_bound_without_events_misses_at_most_alpha_half(n, rate1, rate2, cens_max):
    """P(no event by t and true F(t) above the upper bound) <= 0.025, over many small samples
    (no seed). Case 1 has no censoring and F(1) just above the bound for 0 of 40 (missed with
    probability (1 - F)^40 = 0.020); case 2 censors heavily, where a bound from all n persons
    would miss in ~5.5% of samples and the [0, 0] interval in every sample without an event."""
    rng, draws, t0 = np.random.default_rng(), 3000, 1.0
    truth = rate1 / (rate1 + rate2) * (1 - np.exp(-(rate1 + rate2) * t0))
    missed, zero = np.zeros(draws, bool), np.zeros(draws, bool)
    for i in range(draws):
        t, s = _competing_sample(rng, n, rate1, rate2, cens_max)
        at = cr.cif_at(cr.cumulative_incidence(t, s), [t0]).iloc[0]
        zero[i] = at["cif"] == 0
        missed[i] = zero[i] and not (at["ci_low"] <= truth <= at["ci_high"])
    limit = 0.025 + 3 * np.sqrt(0.025 * 0.975 / draws)
    assert missed.mean() <= limit
    if cens_max < 10:  # the test can fail: without the bound every sample without an event misses
        assert zero.mean() > limit and truth > 1 - 0.025 ** (1 / n)


def _sparse_arm_data(rng, n=300):
    """Three arms (reference "a": no event of cause 1), a covariate x; death competes."""
    arm = rng.choice(["a", "b", "c"], n)
    x = rng.normal(size=n)
    t1 = rng.exponential(np.where(arm == "a", np.inf, 2.0) * np.exp(-0.3 * x))
    t2, c = rng.exponential(3.0, n), rng.uniform(0, 4, n)
    t = np.minimum(np.minimum(t1, t2), c)
    status = np.where(t == c, 0, np.where(t1 < t2, 1, 2))
    return pd.DataFrame({"time": t, "status": status, "arm_b": (arm == "b").astype(int),
                         "arm_c": (arm == "c").astype(int), "x": x, "z": (rng.random(n) < 0.5).astype(int)})


def test_fit_competing_models_leaves_out_arms_without_reference_events():
    df = _sparse_arm_data(np.random.default_rng())
    res = cr.fit_competing_models(df, "time", "status", ["arm_b", "arm_c", "x", "z"], one_hot=[["arm_b", "arm_c"]])
    assert res["not_estimable"] == ["arm_b", "arm_c"] and res["terms"] == ["x", "z"]
    assert res["failed"] == {} and res["n_persons"] == len(df)
    for key in ("cs", "fg"):
        tab = res[key].set_index("term")
        assert list(tab.index) == ["x", "z"] and np.isfinite(tab["se"]).all() and (tab["se"] < 1).all()
    # a 0/1 term with no event at one level is left out too, the others fitted
    df["w"] = ((df["status"] == 1) | (np.arange(len(df)) % 2 == 0)).astype(int)  # every event at w = 1
    res = cr.fit_competing_models(df.assign(status=df["status"].where(df["arm_b"] + df["arm_c"] > 0, 0)),
                                  "time", "status", ["x", "w"])
    assert res["not_estimable"] == ["w"] and res["terms"] == ["x"] and res["cs"] is not None


def test_fit_competing_models_reports_too_few_events_without_counts():
    df = _sparse_arm_data(np.random.default_rng()).head(40)
    df["status"] = np.where(np.arange(40) < 3, 1, df["status"].replace(1, 0))  # 3 events
    res = cr.fit_competing_models(df, "time", "status", ["x"])
    assert res["cs"] is None and res["fg"] is None and res["terms"] == ["x"]
    assert res["failed"]["cs"].startswith("not estimable: fewer than 5 events") and "3" not in res["failed"]["cs"]


def test_fine_gray_failure_is_not_converged_error():
    df = _sparse_arm_data(np.random.default_rng())
    model = cr._FineGrayRisk(df["time"].to_numpy(), df["status"].to_numpy(), df[["x", "z"]].to_numpy(float), 1)
    with pytest.raises(cr.NotConvergedError, match="did not converge in 1 iterations"):
        cr._newton(model, 2, max_iter=1)
