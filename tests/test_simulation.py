"""The simulation study's machinery (pmed.simulation): performance formulas on tiny tables with
hand-computed answers, seeds, scenario parsing, and a 2-replicate run whose report must equal a
hand computation from its own replicate table. No coverage figure of any draw is asserted."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from pmed import config
from pmed.radiomics_model import RADIOMIC_NAME
from pmed.simulation import design, estimands, performance, study
from pmed.simulation.report import read_run, write_outputs


def _table(est, true, se, lo, hi, reject, kind="wald") -> pd.DataFrame:
    n = len(est)
    return pd.DataFrame({"scenario": "s", "replicate": range(n), "group": "g", "estimand": "e", "estimate": est,
                         "se": se, "ci_low": lo, "ci_high": hi, "true": true, "reject": reject,
                         "null_true": False, "ci_kind": kind})


def test_measures_equal_hand_computation():
    """R = 4, truth 2: errors -1, 0, 1, 4; SEs 1, 1, 2, 2; CIs covering 2 in 2 of 4."""
    t = _table([1.0, 2.0, 3.0, 6.0], 2.0, [1.0, 1.0, 2.0, 2.0], [0.0, 1.5, 2.5, 5.0], [3.0, 2.5, 3.5, 7.0],
               [False, True, True, True])
    m = performance.measures(t)
    assert m["n_rep"] == 4
    assert m["bias"] == pytest.approx(1.0)
    assert m["emp_se"] == pytest.approx(np.sqrt(14 / 3))               # SD of the errors
    assert m["bias_mcse"] == pytest.approx(np.sqrt(14 / 3) / 2)        # / sqrt(R)
    assert m["emp_se_mcse"] == pytest.approx(np.sqrt(14 / 3) / np.sqrt(6))  # / sqrt(2 (R - 1))
    assert m["model_se"] == pytest.approx(np.sqrt(2.5))                # sqrt(mean(1, 1, 4, 4))
    assert m["model_se_mcse"] == pytest.approx(np.sqrt(3 / 40))        # Var(s^2) = 3; / (4 R 2.5)
    assert m["rel_error_se_pct"] == pytest.approx(100 * (np.sqrt(2.5) / np.sqrt(14 / 3) - 1))
    ratio = np.sqrt(2.5) / np.sqrt(14 / 3)
    assert m["rel_error_se_mcse"] == pytest.approx(100 * ratio * np.sqrt(3 / (4 * 4 * 2.5**2) + 1 / 6))
    assert m["coverage"] == 0.5 and m["coverage_mcse"] == pytest.approx(0.25)
    assert m["coverage_flag"]                                          # 0.5 outside 0.95 +- 0.218
    assert m["reject_rate"] == 0.75 and m["reject_mcse"] == pytest.approx(np.sqrt(0.75 * 0.25 / 4))


def test_measures_with_replicate_specific_truth_and_tests():
    """Data-adaptive truth: errors +-0.5 around varying truths -> bias 0, EmpSE = SD(errors);
    tests: rejection rate only."""
    true = np.array([1.0, 2.0, 3.0, 4.0])
    est = true + np.array([0.5, -0.5, 0.5, -0.5])
    m = performance.measures(_table(est, true, 0.5, est - 1, est + 1, False))
    assert m["truth_varies"] and m["bias"] == pytest.approx(0.0)
    assert m["emp_se"] == pytest.approx(np.sqrt(1 / 3))
    assert m["coverage"] == 1.0 and not m["coverage_flag"]  # 1.0 inside 0.95 +- 0.218 (R = 4)
    tests = performance.measures(_table([0.01, 0.2, 0.03, 0.5], np.nan, np.nan, np.nan, np.nan,
                                        [True, False, True, False], kind="test"))
    assert np.isnan(tests["coverage"]) and np.isnan(tests["bias"]) and tests["reject_rate"] == 0.5


def test_coverage_band():
    lo, hi = performance.coverage_band(100)
    assert (lo, hi) == pytest.approx((0.95 - 2 * np.sqrt(0.0475 / 100), 0.95 + 2 * np.sqrt(0.0475 / 100)))


def test_replicate_seeds_are_spawned_and_do_not_depend_on_r():
    spawned = np.random.SeedSequence(5).spawn(7)
    seeds = [design.replicate_seed(5, r) for r in range(7)]
    assert seeds == [int(s.generate_state(1, dtype=np.uint32)[0]) >> 1 for s in spawned]
    assert len(set(seeds)) == 7 and max(seeds) < 2**31
    assert design.replicate_seed(6, 0) != seeds[0]


def test_scenarios_are_validated():
    assert design.parse_scenarios({"a": {"heterogeneity": False, "image_signal": True, "estimands": ["iptw"]}}) == [
        design.Scenario("a", False, True, ("iptw",))]
    with pytest.raises(ValueError, match=r"scenarios\.a\.estimands"):
        design.parse_scenarios({"a": {"heterogeneity": True, "image_signal": True, "estimands": ["nope"]}})
    with pytest.raises(ValueError, match=r"scenarios\.a\.image_signal"):
        design.parse_scenarios({"a": {"heterogeneity": True, "estimands": ["iptw"]}})


def test_pseudo_radiomics_named_seeded_and_tied_to_the_traits():
    rng = np.random.default_rng(0)
    lat = pd.DataFrame({"log_tumour_volume_ml": rng.normal(2.5, 0.9, 300), "heterogeneity": rng.beta(2, 3, 300),
                        "irregularity": rng.beta(2, 2, 300)})
    a = estimands.pseudo_radiomics(lat, np.random.default_rng(1))
    pd.testing.assert_frame_equal(a, estimands.pseudo_radiomics(lat, np.random.default_rng(1)))
    assert all(RADIOMIC_NAME.match(c) for c in a.columns)
    assert np.corrcoef(np.log(a["original_shape_MeshVolume"]), lat["log_tumour_volume_ml"])[0, 1] > 0.95
    assert abs(np.corrcoef(a["original_glrlm_Noise0"], lat["heterogeneity"])[0, 1]) < 0.2


def _small_params() -> dict:
    """params.yaml with the stage settings cut so that two replicates run in well under 2 min."""
    p = copy.deepcopy(config.load_params())
    p["survival"].update(n_imputations=2, mice_max_iter=2)
    p["treatment"].update(n_imputations=2, mice_max_iter=2, n_bootstrap=10)
    p["treatment"]["recommend"].update(n_repeats=1, n_folds=3, n_bootstrap=50)
    p["outcomes"].update(cv_folds=3, cv_repeats=2, gb_n_estimators=20, permutation_repeats=1)
    p["imaging_analysis"].update(n_alphas=10, inner_folds=3, n_repeats=1, clinical_terms=[
        "age_years", "sex_female", "ecog", "stage_iv", "albumin_g_dl", "ldh_u_l", "pdl1_pct", "arm_io", "arm_chemo_io"])
    p["simulation"].update(replicates=2, n_persons=1000, n_imaged=200, truth_n_persons=20000, workers=1,
                           calibration_n_bootstrap=10, iptw_n_bootstrap=10, imaging_n_permutations=4, scenarios={
        "small": {"heterogeneity": True, "image_signal": True,
                  "estimands": ["cox_mi", "iptw", "matched", "policy", "calibration", "subgroups", "temporal"]},
        "small_null_image": {"heterogeneity": True, "image_signal": False, "estimands": ["imaging"]}})
    return p


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    settings = study.Settings.from_params(_small_params())
    result = study.run(settings)
    out = tmp_path_factory.mktemp("sim")
    paths = write_outputs(result, out, {"replicates": 2})
    return settings, result, paths


def test_study_report_equals_hand_computation_from_replicate_table(small_run):
    settings, result, paths = small_run
    assert result["failures"].empty, result["failures"].to_dict("records")
    table = pd.read_csv(paths["replicates"])
    assert sorted(table["replicate"].unique()) == [0, 1]
    perf = pd.read_csv(paths["performance"])
    metrics = json.loads(paths["metrics"].read_text())
    page = paths["report"].read_text()
    for est in ("log-HR arm_io", "S(365) difference io", "calibration slope cox", "value of issued recommendations"):
        rows = table[table["estimand"] == est]
        cover = float(((rows["ci_low"] <= rows["true"]) & (rows["true"] <= rows["ci_high"])).mean())
        bias = float((rows["estimate"] - rows["true"]).mean())
        got = perf.set_index("estimand").loc[est]
        assert got["coverage"] == pytest.approx(cover) and got["bias"] == pytest.approx(bias)
        m = next(r for r in metrics["performance"] if r["estimand"] == est)
        # metrics.json holds 6 significant digits (pmed.report.json_ready)
        assert m["coverage"] == pytest.approx(cover, rel=1e-5) and m["bias"] == pytest.approx(bias, rel=1e-5)
        assert f"{bias:.4g}" in page
    assert metrics["design"] == {"replicates": 2}
    group_cpu = metrics["runtime"]["group_cpu_s"]  # every group run is timed, within the tasks' CPU time
    assert set(group_cpu) == {g for sc in settings.scenarios for g in settings.groups(sc)}
    assert 0 < sum(group_cpu.values()) <= metrics["runtime"]["task_cpu_s"] + 1
    again, text = read_run(paths["replicates"].parent)  # --from-run: the same summary from the files
    assert text == {"replicates": 2}
    pd.testing.assert_frame_equal(again["summary"], perf, check_dtype=False, rtol=1e-9)


def test_imaging_rows_follow_their_decision_rules(small_run):
    """Feature-level imaging under no signal: delta C 'reject' = CI above 0, LR tests by their p rules,
    null marked true; both replicates present."""
    table = small_run[1]["table"]
    img = table[table["group"] == "imaging"]
    per_model = img["estimand"].str.startswith(("Harrell C", "td-AUC"))  # estimates without a test
    assert sorted(img["replicate"].unique()) == [0, 1] and img[~per_model]["null_true"].all()
    assert per_model.sum() == 12 and not img[per_model]["null_true"].any()  # 3 models x C, td-AUC x 2
    dc = img[img["estimand"].str.startswith("delta C")]
    perm = img[img["estimand"].str.startswith("permutation LR")]
    naive = img[img["estimand"].str.startswith("naive")]
    assert len(dc) == 2 and len(perm) == 2 and len(naive) == 2
    assert (dc["reject"] == (dc["ci_low"] > 0)).all() and (naive["reject"] == (naive["estimate"] < 0.05)).all()
    # truth: the fold models' delta C in new people; no image signal -> about 0 (noise features only)
    assert np.isfinite(dc["true"]).all() and (dc["true"].abs() < 0.03).all()
    assert (perm["reject"] == (perm["estimate"] <= 0.05)).all() and (perm["estimate"] >= 1 / 5).all()  # 4 permutations


def test_outcomes_rows_have_truths_and_imaging_per_model_rows(small_run):
    """ICI/E50/E90, subgroup and temporal rows for both replicates with finite truths; ICI truths
    in [0, 1) and E50 <= E90; subgroup labels from the stage's groups; under no image signal the
    imaging-only model's true C and td-AUC are about 0.5 and C(combined) - C(clinical) equals the
    delta-C truth."""
    table = small_run[1]["table"]
    for group in ("subgroups", "temporal"):
        rows = table[table["group"] == group]
        assert sorted(rows["replicate"].unique()) == [0, 1] and np.isfinite(rows["true"]).all()
    cal = table[table["group"] == "calibration"].set_index(["replicate", "estimand"])["true"]
    for r in (0, 1):
        for m in ("cox", "logistic", "gbm"):
            assert 0 <= cal[(r, f"ICI (365 days) {m}")] < 1
            assert cal[(r, f"E50 (365 days) {m}")] <= cal[(r, f"E90 (365 days) {m}")]
    sub = table[table["group"] == "subgroups"]["estimand"]
    assert sub.str.contains("sex female").any() and sub.str.contains("arm chemo").any()
    temporal = table[table["group"] == "temporal"]["estimand"]
    assert {"Harrell C cox (t0 year > 2020)", "ICI (365 days) gbm (t0 year > 2020)",
            "Harrell C gbm - cox (t0 year > 2020)"} <= set(temporal)
    img = table[table["group"] == "imaging"].set_index(["replicate", "estimand"])["true"]
    for r in (0, 1):
        assert img[(r, "Harrell C imaging")] == pytest.approx(0.5, abs=0.03)
        assert img[(r, "td-AUC (365 days) imaging")] == pytest.approx(0.5, abs=0.03)
        delta = img[(r, "Harrell C combined")] - img[(r, "Harrell C clinical")]
        assert delta == pytest.approx(img[(r, "delta C combined vs clinical (CI above 0)")], abs=1e-12)


def test_replicate_does_not_depend_on_workers_or_r(small_run):
    """Replicate 1 run alone equals replicate 1 of the 2-replicate run (worker processes: pmed.parallel,
    whose results do not depend on n_jobs, tests/test_parallel.py)."""
    settings, result, _ = small_run
    pops = study.population_truths(settings)
    sc = settings.scenarios[0]  # (the imaging scenario needs no population truth)
    alone = pd.DataFrame(study.run_replicate((sc, 1, settings, settings.groups(sc), pops[sc.name]))["rows"])
    t = result["table"]
    ran = t[(t["replicate"] == 1) & (t["scenario"] == sc.name)].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone[ran.columns], ran, check_dtype=False)


def test_bad_settings_name_the_key():
    p = _small_params()
    p["simulation"]["replicates"] = 0
    with pytest.raises(ValueError, match="simulation.replicates"):
        study.Settings.from_params(p)
    with pytest.raises(ValueError, match="estimands"):
        study.Settings.from_params(_small_params(), estimands=("cox_mi", "bogus"))


def test_params_schema_knows_the_simulation_section():
    from pmed import params_schema

    assert params_schema.SIM_ESTIMANDS == design.ESTIMANDS
    p = copy.deepcopy(config.load_params())
    p["simulation"]["replicates"] = 0
    p["simulation"]["scenarios"]["default"]["estimands"] = ["bogus"]
    problems = "\n".join(params_schema.check(p))
    assert "simulation.replicates" in problems and "simulation.scenarios.default.estimands" in problems


def test_measures_with_zero_width_intervals():
    """Every CI of width 0 (model SE 0): no division by zero, MC SE of the model SE undefined."""
    m = performance.measures(_table([0.0, 0.0, -0.1], [0.0, 0.0, -0.05], 0.0, [0.0, 0.0, -0.1], [0.0, 0.0, -0.1],
                                    False))
    assert m["model_se"] == 0 and np.isnan(m["model_se_mcse"]) and np.isnan(m["rel_error_se_pct"])
    assert m["coverage"] == pytest.approx(2 / 3)


def _latent(n: int, seed: int, image_signal: bool = True) -> pd.DataFrame:
    from pmed.demo import model
    rates = config.load_params()["demo"]["rates"]
    lat = model.simulate_latent(n, 1, np.random.default_rng(seed), rates, image_signal=image_signal)
    return lat[lat["reason"] == "eligible"].reset_index(drop=True)


def test_marginal_hr_of_identical_persons_is_their_conditional_hr():
    """In a population of copies of one person the hazards are proportional, so the marginal
    log-HR equals that person's conditional one (40,000 uncensored times: SE about 0.01)."""
    from pmed.demo import model
    from pmed.simulation import truth
    one = _latent(50, 3).iloc[[0]]
    want = float(model.arm_log_hr(one, "io", model.hazard_log_hr(True))[0])
    got = truth.marginal_log_hr_of(one, "io", True, np.random.default_rng(4), copies=20_000)
    assert got == pytest.approx(want, abs=0.05)


def test_least_false_log_hr_equals_generator_without_omitted_traits_and_shrinks_with_them():
    """Without image signal the EHR Cox model is the generator's model: its large-sample fit is
    the generator's log-HR (each within 4 SE); with the tumour traits omitted the strong terms
    shrink towards 0 (about 10% at 77,000 persons; mean ratio < 0.96 asserted)."""
    from pmed import survival as sv
    from pmed.simulation import truth
    s = config.load_params()["survival"]
    terms = [*s["covariates"], *s["interactions"]]  # the stage's model (with its arm interactions)
    cond = truth.conditional_log_hr(terms, True)
    no_sig = _latent(40_000, 5, image_signal=False)
    got = truth.least_false_log_hr(no_sig, terms)
    se = sv.fit_cox(sv.add_interactions(no_sig, s["interactions"]), "time_days", "event", terms).standard_errors_
    for t in terms:
        assert got[t] == pytest.approx(cond[t], abs=4 * se[t])
    sig = truth.least_false_log_hr(_latent(40_000, 5, image_signal=True), terms)
    strong = ["age_years", "ecog", "stage_iv", "albumin_g_dl"]
    assert np.mean([sig[t] / cond[t] for t in strong]) < 0.96


def test_population_discrimination_by_hand():
    """Uno's target: concordance of death times among pairs whose earlier death is by the horizon
    (risk ordered by death time -> 1; reversed -> 0); Brier from the true risk, by hand."""
    people = pd.DataFrame({"t_death_days": [100.0, 200.0, 500.0, 900.0], "time_days": [100.0, 200.0, 400.0, 400.0],
                           "event": [1, 1, 0, 0], "true_risk": [0.9, 0.6, 0.2, 0.1]})
    risk = np.array([0.8, 0.5, 0.3, 0.2])
    got = estimands.population_discrimination(people, risk, 365.0)
    assert got["uno_c"] == 1.0 and got["harrell_c"] == 1.0
    assert estimands.population_discrimination(people, risk[::-1], 365.0)["uno_c"] == 0.0
    brier = np.mean([0.9 * 0.2**2 + 0.1 * 0.8**2, 0.6 * 0.5**2 + 0.4 * 0.5**2, 0.2 * 0.7**2 + 0.8 * 0.3**2,
                     0.1 * 0.8**2 + 0.9 * 0.2**2])
    assert got["brier"] == pytest.approx(brier)


def test_complete_case_apparent_c_and_paired_difference_rows(small_run):
    """cox_mi: a complete-case row per estimable term with the MI row's truth (MCAR) when every
    term is estimable, else the smaller model's least-false truths; the
    apparent-C row with a truth in (0.5, 1); calibration: per pair and DIFF metric the estimate
    and truth are the differences of the two models' rows, 'reject' = CI excludes 0; the further
    CI-table rows (IPA, O/E, threshold metrics) have finite truths in their ranges."""
    table = small_run[1]["table"]
    for r in (0, 1):
        rows = table[(table["replicate"] == r) & (table["scenario"] == "small")].set_index("estimand")
        cc = [e for e in rows.index if e.endswith(" (complete cases)")]
        mi = [e for e in rows.index if e.startswith("log-HR ") and e + " (complete cases)" in cc]
        assert len(cc) == len(mi) >= 20
        same = [rows.loc[e, "true"] == rows.loc[e + " (complete cases)", "true"] for e in mi]
        n_terms = sum(rows["group"].eq("cox_mi") & rows.index.str.startswith("log-HR ")
                      & ~rows.index.str.endswith(")"))
        assert all(same) if len(cc) == n_terms else not all(same)  # a term left out: a smaller model's truth
        c = rows.loc["apparent Harrell C (MI Cox)"]
        assert 0.5 < c["true"] < 1 and c["ci_low"] <= c["estimate"] <= c["ci_high"]
        for a, b in estimands.PAIRS:
            for label in estimands.DIFF_LABELS.values():
                d = rows.loc[f"{label} {a} - {b}"]
                assert d["true"] == pytest.approx(rows.loc[f"{label} {a}", "true"] - rows.loc[f"{label} {b}", "true"])
                assert d["estimate"] == pytest.approx(rows.loc[f"{label} {a}", "estimate"]
                                                      - rows.loc[f"{label} {b}", "estimate"], abs=1e-12)
                assert d["reject"] == (d["ci_low"] > 0 or d["ci_high"] < 0)
        for m in ("cox", "logistic", "gbm"):
            assert 0 < rows.loc[f"IPA (365 days) {m}", "true"] < 1 and 0.5 < rows.loc[f"O/E {m}", "true"] < 2
            if f"sensitivity at threshold {m}" in rows.index:  # else the stage hides it (small counts)
                assert 0 <= rows.loc[f"sensitivity at threshold {m}", "true"] <= 1
                if f"PPV at threshold {m}" in rows.index:  # else no one flagged
                    assert np.isfinite(rows.loc[f"PPV at threshold {m}", ["estimate", "true"]].astype(float)).all()


def test_integrated_brier_and_logistic_odds_ratio_rows(small_run):
    """calibration: per replicate the Cox integrated Brier score row (truth: the fold models'
    uncensored IBS, in (0, 0.25) and within 0.05 of the estimate) and one log-OR row per term of
    the logistic model, whose truth is the scenario's least-false log-OR (the same in both
    replicates, equal to the population truth), Wald SE = CI width / 3.92, 'reject' = CI
    excludes 0."""
    settings, result, _ = small_run
    table = result["table"]
    terms = [*settings.params["outcomes"]["covariates"], *settings.params["outcomes"]["interactions"]]
    truth = result["truths"]["small"]["logistic_log_or"]
    assert list(truth) == terms
    for r in (0, 1):
        rows = table[(table["replicate"] == r) & (table["group"] == "calibration")].set_index("estimand")
        ibs = rows.loc["integrated Brier score cox"]
        assert 0 < ibs["true"] < 0.25 and abs(ibs["estimate"] - ibs["true"]) < 0.05
        assert ibs["ci_low"] <= ibs["estimate"] <= ibs["ci_high"]
        ors = rows[rows.index.str.startswith("log-OR ")]
        assert list(ors.index) == [f"log-OR {t} (logistic)" for t in terms]
        assert np.allclose(ors["true"], [truth[t] for t in terms])
        assert np.allclose(ors["se"], (ors["ci_high"] - ors["ci_low"]) / (2 * 1.959963984540054))
        assert (ors["reject"] == ((ors["ci_low"] > 0) | (ors["ci_high"] < 0))).all()
