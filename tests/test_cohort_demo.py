"""The cohort stage on the demo's ci-size data (generated into tmp_path, EHR part only).

The generator's ground_truth.json knows who is eligible, how many persons fail each
criterion and every injected defect; the stage must find exactly these.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from pmed import config
from pmed.cohort import extract_cohort, parse_definition, queries
from pmed.cohort.groundtruth import compare_attrition, compare_defects

sys.path.insert(0, str(config.ROOT / "benchmarks"))
from bench_cohort import pandas_cohort  # noqa: E402

pytest.importorskip("pmed.demo.generate")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """ci size without the CT images (same EHR generator; 1 s instead of 15 s)."""
    from pmed.demo.generate import generate

    params = config.load_params()
    demo_params = copy.deepcopy(params["demo"])
    demo_params["sizes"]["ci"]["n_imaged"] = 0
    raw = tmp_path_factory.mktemp("demo_ci") / "raw"
    generate(raw, "ci", params["common"]["seed"], demo_params)
    truth = json.loads((raw / "truth" / "ground_truth.json").read_text())
    d = parse_definition(params["cohort"])
    return raw / "omop", d, truth, extract_cohort(raw / "omop", d, threads=1)


def test_cohort_is_the_generators_eligible_set(demo):
    _, _, truth, res = demo
    assert res.cohort["person_id"].tolist() == truth["eligible_person_ids"]


def test_defect_counts_equal_injected(demo):
    _, _, truth, res = demo
    cmp = compare_defects(res.quality, truth["defects"])
    assert len(cmp) == 5 and (cmp["injected"] > 0).all()
    assert cmp["found"].tolist() == cmp["injected"].tolist()


def test_attrition_matches_generator(demo):
    """Each ineligible person fails one criterion, except that persons treated before their
    diagnosis whose observation ended before it also lack observation at index: they are
    counted at the earlier prior-observation step (checked on the data below)."""
    omop, d, truth, res = demo
    cmp = compare_attrition(res.attrition, list(queries.ATTRITION_STEPS), truth).set_index("step")
    con = duckdb.connect()
    overlap = con.execute(
        f"SELECT COUNT(*) FROM (SELECT person_id, MIN(condition_start_date) AS idx FROM "
        f"'{omop}/condition_occurrence.parquet' WHERE condition_concept_id IN (4115276, "
        f"45768916, 4311999) GROUP BY person_id) AS dx JOIN '{omop}/observation_period.parquet' "
        "AS op USING (person_id) WHERE op.observation_period_end_date < dx.idx").fetchone()[0]
    assert overlap > 0
    diff = (cmp["excluded"] - cmp["expected"]).to_dict()
    assert diff == {"qualifying_dx": 0, "valid_dates": 0, "prior_obs": overlap, "adult": 0,
                    "no_prior_cancer": 0, "no_prior_treatment": -overlap, "first_line": 0,
                    "t0_observed": 0, "arm_assigned": 0, "alive_at_t0": 0}


def test_missingness_close_to_generator(demo):
    _, _, truth, res = demo
    miss = res.cohort.isna().mean()
    for col in ("ecog", "stage_iv", "ldh_u_l", "pdl1_pct", "albumin_g_dl"):
        assert miss[col] == pytest.approx(truth["missingness_eligible"][col], abs=0.02)


def test_pandas_reference_gives_the_same_cohort(demo):
    omop, d, _, res = demo
    pd.testing.assert_frame_equal(pandas_cohort(omop, d), res.cohort)


def test_csv_copy_of_demo_gives_the_same_cohort(demo, tmp_path):
    omop, d, _, res = demo
    con = duckdb.connect()
    for f in Path(omop).glob("*.parquet"):
        con.execute(f"COPY (SELECT * FROM '{f}') TO '{tmp_path / (f.stem + '.csv')}' (HEADER)")
    csv_res = extract_cohort(tmp_path, d, threads=1)
    pd.testing.assert_frame_equal(csv_res.cohort, res.cohort)
    pd.testing.assert_frame_equal(csv_res.quality, res.quality)


def test_params_concept_ids_match_demo_vocabulary():
    """params.yaml cohort: copies the demo vocabulary's ids; catch drift between the two."""
    from pmed.demo import vocabulary as v

    d = parse_definition(config.load_params()["cohort"])
    for name, ids in d.concept_sets.items():
        assert ids == v.CONCEPT_SETS[name], name
    coded = {c.name: c for c in d.categorical}
    smoking, stage = coded["smoking"], coded["stage"]
    assert smoking.levels == {"smoking_current": [v.VALUE_CONCEPTS["current_smoker"]],
                              "smoking_former": [v.VALUE_CONCEPTS["former_smoker"]]}
    assert smoking.reference == [v.VALUE_CONCEPTS["never_smoker"]]
    assert stage.levels == {"stage_iv": [v.VALUE_CONCEPTS["stage_iv"]]}
    assert stage.reference == [v.VALUE_CONCEPTS["stage_iii"]]
    units = {c.column: c.units for c in d.numeric}
    assert units["albumin_g_dl"] == {v.UNITS["g/dL"]: 1.0, v.UNITS["g/L"]: 0.1}
    assert units["creatinine_mg_dl"] == {v.UNITS["mg/dL"]: 1.0, v.UNITS["umol/L"]: 0.011312217}


def test_arms_outcomes_and_driver_status_match_generator(demo):
    """With the generator's k-arm regimens, competing outcomes and driver tests (its
    ground_truth.json keys ``arms`` / ``competing_outcomes``), the cohort must reproduce the
    persons per arm, each outcome's observed status counts exactly and the driver-status
    missingness. The older generator (two single-drug arms) writes none of these keys."""
    _, d, truth, res = demo
    if "arms" not in truth:
        pytest.skip("demo generator predates the k-arm regimens (no 'arms' in ground truth)")
    c = res.cohort
    assert truth["arms"]["reference"] == d.strategies.reference
    assert c["treatment"].value_counts().to_dict() == truth["arms"]["n_eligible_by_arm"]
    for name, info in truth["competing_outcomes"].items():
        status = c[f"{name}_status"].value_counts().to_dict()
        counts = info["observed_status_counts"]
        assert status == {0: counts["censored"], 1: counts["events"], 2: counts["death_first"]}
    assert c["driver_positive"].isna().mean() == pytest.approx(
        truth["missingness_eligible"]["driver_positive"], abs=1e-6)
