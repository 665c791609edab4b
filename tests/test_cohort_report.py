"""Table 1, flow diagram, follow-up summary and ground-truth comparison of the cohort stage."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pmed import config
from pmed.cohort import contract, parse_definition
from pmed.cohort.flow import flow_diagram
from pmed.cohort.groundtruth import compare_attrition, compare_defects
from pmed.cohort.protocol import protocol_table
from pmed.cohort.summary import cohort_metrics, median_followup
from pmed.cohort.table1 import make_table1, smd_summary


def small_cohort() -> pd.DataFrame:
    """80 chemotherapy + 99 immunotherapy persons with hand-set binary/lab values.

    stage_iv: chemotherapy 30 of 80 = 0.375, immunotherapy 46 of 99 (+1 missing) = 0.4646;
    ckd: 5 immunotherapy persons (a small cell).
    """
    n_c, n_i = 80, 100
    columns = contract.columns(parse_definition(config.load_params()["cohort"]))
    df = pd.DataFrame({c: np.full(n_c + n_i, 1.0) for c in columns})
    df["treatment"] = ["chemotherapy"] * n_c + ["immunotherapy"] * n_i
    stage = [1] * 30 + [0] * 50 + [1] * 46 + [0] * 53 + [None]
    df["stage_iv"] = pd.array(stage, dtype="Int8")
    df["ckd"] = np.array([0] * n_c + [1] * 5 + [0] * 95, dtype="int8")
    for c in ("sex_female", "copd", "diabetes", "heart_failure"):
        df[c] = np.int8(0)
    df["smoking_current"] = pd.array([1] * 90 + [0] * 90, dtype="Int8")
    df["smoking_former"] = pd.array([0] * 90 + [1] * 45 + [0] * 45, dtype="Int8")
    df["ecog"] = np.tile([0.0, 1.0], 90)
    df["age_years"] = np.linspace(40, 80, n_c + n_i)
    df.loc[:9, "ldh_u_l"] = np.nan
    return df


def test_table1_smd_missing_and_suppression():
    table = make_table1(small_cohort(), min_cell=11)
    # binary SMD by hand: (0.4646 - 0.375) / sqrt((0.375*0.625 + 0.4646*0.5354) / 2) = 0.182
    smd = smd_summary(table)
    p1, p0 = 46 / 99, 30 / 80
    expected = (p1 - p0) / math.sqrt((p1 * (1 - p1) + p0 * (1 - p0)) / 2)
    assert smd["Stage IV (vs III), n (%)"] == pytest.approx(expected, abs=1e-3)
    assert table.loc[("Stage IV (vs III), n (%)", "no"), "Missing"] == "<11"  # 1 missing
    assert table.loc[("LDH, U/L, median [Q1,Q3]", ""), "Missing"] == "<11"   # 10 missing
    ckd_yes = table.loc[("Chronic kidney disease, n (%)", "yes")]
    assert ckd_yes["immunotherapy"] == "<11" and ckd_yes["Overall"] == "<11"
    assert ckd_yes["chemotherapy"] == "0 (0.0)"
    assert table.loc[("n", ""), "chemotherapy"] == "80"
    assert table.loc[("Smoking status, n (%)", "never"), "Overall"] == "45 (25.0)"


def test_table1_tiny_cohort_nothing_derivable():
    """The issue's case: 21 persons (io 10, chemo 11), CKD in one io patient. "CKD no 20 (95.2)"
    beside chemo "11 (100.0)" revealed it; now every count that would is hidden."""
    df = small_cohort().iloc[:21].copy()
    df["treatment"] = ["immunotherapy"] * 10 + ["chemotherapy"] * 11
    df["ckd"] = [1] + [0] * 20
    table = make_table1(df, min_cell=11)
    ckd = table.xs("Chronic kidney disease, n (%)", level=0)
    n = table.loc[("n", "")]
    shown = {(lvl, col): v for lvl in ckd.index for col in ("Overall", "immunotherapy", "chemotherapy")
             for v in [ckd.loc[lvl, col]] if v[:1].isdigit()}
    # any shown CKD cell with its column total shown would give the other level by subtraction
    for (lvl, col), v in shown.items():
        assert not n[col][:1].isdigit() or int(v.split()[0]) in (0, int(n[col])), (lvl, col, v, n[col])
    assert n["immunotherapy"] == "<11"
    levels = table[[i[1] != "" for i in table.index]]
    if not n["chemotherapy"][:1].isdigit():  # a hidden group size: no percentage reveals it
        assert not any("(" in v for v in levels["chemotherapy"])
    # continuous summaries of the group of 10 are not shown
    assert table.loc[("Age, years, mean (SD)", ""), "immunotherapy"] == ""


def test_flow_diagram_suppresses_small_counts():
    attrition = pd.DataFrame({"criterion": ["Dx", "Adult", "Treated"],
                              "remaining": [500, 495, 300], "excluded": [0, 5, 195]})
    fig = flow_diagram(attrition, {"immunotherapy": 293, "chemotherapy": 7}, min_cell=11,
                       reasons=["under 18", "untreated"])
    texts = " | ".join(t.get_text() for t in fig.axes[0].texts)
    assert "Excluded: under 18\nn = <11" in texts and "Excluded: untreated\nn = 195" in texts
    assert "n = 500" in texts and "n = 195" in texts and "n = 293" in texts
    assert texts.count("n = <11") == 2 and "n = 5\n" not in texts and "n = 7" not in texts
    with pytest.raises(KeyError, match="excluded"):
        flow_diagram(attrition.drop(columns="excluded"), {}, 11)
    with pytest.raises(ValueError, match="1 reasons for 2 steps"):
        flow_diagram(attrition, {}, 11, reasons=["x"])


def test_median_followup_reverse_km_by_hand():
    """Times 1..5, deaths at 1 and 3. Reverse KM treats censoring as the event: at t=2,
    4 at risk, 1 event -> 0.75; t=3 censored; t=4, 2 at risk -> 0.375 <= 0.5: median 4.
    R: survfit(Surv(c(1,2,3,4,5), c(0,1,0,1,1)) ~ 1) gives median 4."""
    out = median_followup(np.array([1, 2, 3, 4, 5.0]), np.array([1, 0, 1, 0, 0]))
    assert out["estimate"] == 4.0


def test_median_followup_not_reached_is_nan():
    # one censoring, at t=1 of 4 at risk: reverse KM 0.75, then only deaths -> never <= 0.5
    out = median_followup(np.array([1, 2, 3, 4.0]), np.array([0, 1, 1, 1]))
    assert math.isnan(out["estimate"])


def test_cohort_metrics_suppress_small_counts():
    df = small_cohort()
    df["event"] = np.int8(0)
    df.loc[:2, "event"] = 1
    df["time_days"] = np.arange(1, len(df) + 1, dtype=float)
    attrition = pd.DataFrame({"criterion": ["a", "b"], "remaining": [190, 180],
                              "excluded": [0, 10]})
    m = cohort_metrics(df, attrition, ["s1", "s2"], min_cell=11)
    # 190 -> 180 excludes 10: hidden, and 180 with it (else 190 - 180 reveals it); then one
    # arm's persons too (the arms add up to 180), and the deaths (3 < 11) with a complement
    assert m["attrition"]["s2"]["excluded"] == "<11"
    assert m["attrition"]["s2"]["remaining"] == "suppressed" and m["persons"] == "suppressed"
    assert m["events"] == "<11"
    shown = [m["groups"][g]["persons"] for g in m["groups"]]
    assert sum(v == "suppressed" for v in shown) >= 1


def test_release_cohort_counts_tiny_cohort_nothing_derivable():
    """21 persons (io 10, chemo 11) after 26 -> 25 -> 24 -> 21: no small count derivable."""
    from pmed.cohort.summary import release_cohort_counts

    df = pd.DataFrame({"treatment": ["io"] * 10 + ["chemo"] * 11,
                       "event": [1] * 9 + [0] + [1] * 11})
    attrition = pd.DataFrame({"criterion": ["all", "a", "b", "c"], "remaining": [26, 25, 24, 21],
                              "excluded": [0, 1, 1, 3]})
    flow, groups = release_cohort_counts(df, attrition, 11)
    shown = {}
    for i, r in flow.iterrows():
        shown[f"rem{i}"], shown[f"exc{i}"] = r["remaining"], r["excluded"]
    for a, g in groups.items():
        shown[f"n_{a}"], shown[f"d_{a}"] = g["persons"], g["events"]
    known = {k: v for k, v in shown.items() if isinstance(v, int)}
    assert all(v == 0 or v >= 11 for v in known.values())
    # the reader's linear system: flow steps, arms adding up, deaths + survivors = persons;
    # no small count (io persons 10, io deaths 9, io survivors 1, 5 excluded) is determined
    names = [*shown, "a_io", "a_chemo", "a_total"]
    eq = [("rem0", "rem1", "exc1")] if "exc1" in shown else []
    eq += [("d_total", "d_io", "d_chemo"), (f"rem{len(flow) - 1}", "n_io", "n_chemo"),
           ("n_io", "d_io", "a_io"), ("n_chemo", "d_chemo", "a_chemo"),
           ("a_total", "a_io", "a_chemo")]
    truth = {"rem0": 26, "exc1": 5, "rem1": 21, "n_io": 10, "n_chemo": 11, "d_io": 9,
             "d_chemo": 11, "d_total": 20, "a_io": 1, "a_chemo": 0, "a_total": 1}
    unknown = [n for n in names if n not in known and n in truth]
    rows, rhs = [], []
    for total, *parts_ in eq:
        coef = {total: 1.0, **{p_: -1.0 for p_ in parts_}}
        rows.append([coef.get(u, 0.0) for u in unknown])
        rhs.append(-sum(c * known[n] for n, c in coef.items() if n in known))
    a = np.array(rows)
    for target in ("n_io", "d_io", "a_io", "exc1"):
        if target in unknown:
            e = np.eye(len(unknown))[unknown.index(target)]
            determined = np.linalg.matrix_rank(np.vstack([a, e])) == np.linalg.matrix_rank(a)
            assert not determined, target


def test_compare_defects_and_attrition():
    quality = pd.DataFrame({"check": ["implausible", "implausible", "duplicate"],
                            "table": ["measurement"] * 3,
                            "column": ["ldh_u_l", "albumin_g_dl", ""], "count": [2, 3, 7]})
    truth = {"negative_lab_value": {"count": 5}, "duplicate_measurement": {"count": 7}}
    cmp = compare_defects(quality, truth).set_index("defect")
    assert cmp.loc["negative_lab_value", "found"] == 5 and cmp.loc["duplicate_measurement", "found"] == 7
    with pytest.raises(KeyError, match="'mystery'"):
        compare_defects(quality, {"mystery": {"count": 1}})
    attrition = pd.DataFrame({"criterion": ["dx", "obs"], "remaining": [90, 80],
                              "excluded": [0, 10]})
    gt = {"n_persons": 100, "attrition": {"excluded": {"no_nsclc": 10,
                                                        "short_prior_observation": 10}}}
    out = compare_attrition(attrition, ["qualifying_dx", "prior_obs"], gt)
    assert out["excluded"].tolist() == [10, 10] and out["expected"].tolist() == [10, 10]


def test_protocol_table_from_params():
    d = parse_definition(config.load_params()["cohort"])
    table = protocol_table(d)
    assert table["component"].tolist() == ["Eligibility criteria", "Treatment strategies",
                                           "Assignment procedure", "Time zero", "Outcomes",
                                           "Follow-up", "Causal contrast"]
    row = table.set_index("component")
    assert (row.loc["Time zero", "target trial specification"]
            == d.protocol["time_zero"]["specification"])
    strategies = row.loc["Treatment strategies", "emulation in this extract"]
    assert f"within {d.strategies.grace_days} days of t0" in strategies
    assert "chemo_io: all of chemotherapy, immunotherapy" in strategies
    assert strategies.endswith(d.protocol["treatment_strategies"]["emulation"])
    outcomes = row.loc["Outcomes", "emulation in this extract"]
    assert "death: death from any cause" in outcomes and "death competing (status 2)" in outcomes
    assert "arm_io, arm_chemo_io" in row.loc["Causal contrast", "emulation in this extract"]
