"""The demo data generator: determinism, vocabulary closure, imaging links, defects, eligibility."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pmed import config
from pmed.demo import generate as gen
from pmed.demo import model
from pmed.demo import vocabulary as v

PARAMS = config.load_params()
SEED = PARAMS["common"]["seed"]
DEMO = PARAMS["demo"]
CLINICAL = ["person", "observation_period", "visit_occurrence", "condition_occurrence", "drug_exposure",
            "procedure_occurrence", "measurement", "observation", "death", "image_occurrence"]


@pytest.fixture(scope="module")
def ci_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_ci_a")
    gen.generate(out, "ci", SEED, DEMO, workers=1)
    return out


@pytest.fixture(scope="module")
def tables(ci_dir) -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_parquet(p) for p in (ci_dir / "omop").glob("*.parquet")}


@pytest.fixture(scope="module")
def truth(ci_dir) -> dict:
    return json.loads((ci_dir / "truth" / "ground_truth.json").read_text())


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_and_size_give_byte_identical_files(ci_dir, tmp_path):
    gen.generate(tmp_path, "ci", SEED, DEMO, workers=2)
    first, second = _hashes(ci_dir), _hashes(tmp_path)
    assert any(k.startswith("imaging/") for k in first), "imaging part missing"
    assert first == second


def test_other_seed_gives_other_data(tables, tmp_path):
    small = {**DEMO, "sizes": {"tiny": {"n_persons": 300, "n_imaged": 0, "followup_share": 0.0}}}
    gen.generate(tmp_path, "tiny", SEED + 1, small)
    other = pd.read_parquet(tmp_path / "omop" / "person.parquet")
    assert not other["year_of_birth"].equals(tables["person"]["year_of_birth"].iloc[:300])


def test_every_table_has_cdm_columns(tables):
    from pmed.demo.schema import SCHEMAS

    for name, cols in SCHEMAS.items():
        assert list(tables[name].columns) == [c for c, _ in cols], name
    for name in CLINICAL:
        assert len(tables[name]) > 0, name


def test_every_concept_id_used_exists_in_concept(tables):
    known = set(tables["concept"]["concept_id"])
    for name in CLINICAL:
        for col in [c for c in tables[name].columns if c.endswith("concept_id")]:
            used = set(tables[name][col].dropna().astype(int))
            assert used <= known, f"{name}.{col}: unknown concept ids {sorted(used - known)}"


@pytest.mark.parametrize(("concept_set", "table", "column"), [
    ("nsclc", "condition_occurrence", "condition_concept_id"),
    ("immunotherapy", "drug_exposure", "drug_concept_id"),
    ("chemotherapy", "drug_exposure", "drug_concept_id"),
    ("other_cancer", "condition_occurrence", "condition_concept_id"),
    ("ckd", "condition_occurrence", "condition_concept_id"),
    ("albumin", "measurement", "measurement_concept_id"),
    ("pdl1", "measurement", "measurement_concept_id"),
    ("ecog", "measurement", "measurement_concept_id"),
    ("stage", "measurement", "measurement_concept_id"),
    ("smoking", "observation", "observation_concept_id"),
    ("chest_ct", "procedure_occurrence", "procedure_concept_id"),
    ("driver_test", "measurement", "measurement_concept_id"),
    ("pneumonitis", "condition_occurrence", "condition_concept_id"),
])
def test_concept_sets_expand_through_concept_ancestor_to_codes_in_data(tables, concept_set, table, column):
    ca = tables["concept_ancestor"]
    expanded = set(ca.loc[ca["ancestor_concept_id"].isin(v.CONCEPT_SETS[concept_set]), "descendant_concept_id"])
    used = set(tables[table][column])
    assert expanded & used, f"{concept_set}: none of {sorted(expanded)} used in {table}"


def test_nsclc_data_use_descendant_codes_found_only_through_the_hierarchy(tables):
    ca = tables["concept_ancestor"]
    desc = set(ca.loc[(ca["ancestor_concept_id"] == v.NSCLC.concept_id)
                      & (ca["min_levels_of_separation"] > 0), "descendant_concept_id"])
    used = set(tables["condition_occurrence"]["condition_concept_id"])
    assert len(desc & used) >= 2


def test_image_occurrence_points_at_real_series_and_masks(ci_dir, tables):
    img = tables["image_occurrence"]
    ct_tumours = pd.read_csv(ci_dir / "truth" / "ground_truth_tumours.csv")
    mr_tumours = pd.read_csv(ci_dir / "truth" / "ground_truth_tumours_mr.csv")
    tumours = pd.concat([ct_tumours, mr_tumours])
    assert len(img) == len(tumours) and len(ct_tumours) >= 60 and len(mr_tumours) > 0
    for row in img.itertuples():
        series = ci_dir / row.local_path
        assert series.is_dir() and any(series.glob("*.dcm")), row.local_path
    masks = tumours.set_index("image_series_uid").loc[img["image_series_uid"], "mask_path"]
    assert all((ci_dir / m).is_file() for m in masks)
    proc = tables["procedure_occurrence"].set_index("procedure_occurrence_id")
    linked = proc.loc[img["procedure_occurrence_id"]]
    assert (linked["person_id"].to_numpy() == img["person_id"].to_numpy()).all()
    assert (linked["procedure_date"].to_numpy() == img["image_occurrence_date"].to_numpy()).all()
    modality = img["image_series_uid"].isin(mr_tumours["image_series_uid"]).map(
        {True: v.MR_MODALITY.concept_id, False: v.CT_MODALITY.concept_id})
    assert (img["modality_concept_id"] == modality).all()
    assert (linked["procedure_concept_id"].to_numpy() == np.where(
        modality == v.MR_MODALITY.concept_id, v.MR_MODALITY.concept_id, v.CHEST_CT.concept_id)).all()


def test_defect_counts_in_ground_truth_equal_the_files(tables, truth):
    d = truth["defects"]
    cond = tables["condition_occurrence"].drop(columns="condition_occurrence_id")
    assert cond.duplicated().sum() == d["duplicate_condition_occurrence"]["count"] > 0
    meas = tables["measurement"]
    assert meas.drop(columns="measurement_id").duplicated().sum() == d["duplicate_measurement"]["count"] > 0
    # a duplicated defective row is counted once as a defect: compare on distinct rows
    distinct = meas.drop(columns="measurement_id").drop_duplicates()
    assert (distinct["value_as_number"] < 0).sum() == d["negative_lab_value"]["count"] > 0
    weight = distinct[distinct["measurement_concept_id"] == v.BODY_WEIGHT.concept_id]
    assert (weight["value_as_number"] == 0).sum() == d["zero_weight"]["count"] > 0
    op = tables["observation_period"].set_index("person_id")
    death = tables["death"].set_index("person_id")
    end = op.loc[death.index, "observation_period_end_date"]
    assert (death["death_date"] > end).sum() == d["death_outside_observation"]["count"] > 0
    for item in d.values():
        assert 0 < item["rate"] < 0.5


def test_eligible_ids_match_a_direct_derivation_from_the_tables(tables, truth):
    """Re-derive the cohort from the OMOP tables with the issue's criteria (plain pandas)."""
    ca = tables["concept_ancestor"]

    def expand(name):
        return set(ca.loc[ca["ancestor_concept_id"].isin(v.CONCEPT_SETS[name]), "descendant_concept_id"])

    cond, drug = tables["condition_occurrence"], tables["drug_exposure"]
    index = cond[cond["condition_concept_id"].isin(expand("nsclc"))].groupby("person_id")["condition_start_date"].min()
    person = tables["person"].set_index("person_id").loc[index.index]
    birth = pd.to_datetime(person["birth_datetime"]).dt.date
    age = np.array([(i.year - b.year) - ((i.month, i.day) < (b.month, b.day)) for i, b in zip(index, birth, strict=True)])
    op = tables["observation_period"].set_index("person_id").loc[index.index]
    prior = np.array([(i - s).days for i, s in zip(index, op["observation_period_start_date"], strict=True)])
    other = cond[cond["condition_concept_id"].isin(expand("other_cancer"))].merge(
        index.rename("index"), left_on="person_id", right_index=True)
    other_before = set(other.loc[other["condition_start_date"] <= other["index"], "person_id"])
    tx = drug[drug["drug_concept_id"].isin(expand("immunotherapy") | expand("chemotherapy"))]
    first_tx = tx.groupby("person_id")["drug_exposure_start_date"].min().reindex(index.index)
    gap = np.array([(t - i).days if pd.notna(t) else 10**6 for t, i in zip(first_tx, index, strict=True)])
    ok = (age >= 18) & (prior >= 365) & ~index.index.isin(list(other_before)) & (gap >= 0) & (gap <= 60)
    assert sorted(index.index[ok]) == truth["eligible_person_ids"]
    assert truth["n_persons"] == truth["n_eligible"] + sum(truth["attrition"]["excluded"].values())


def test_unit_variations_are_present_and_convertible(tables):
    meas = tables["measurement"]
    alb = meas[(meas["measurement_concept_id"] == v.ALBUMIN.concept_id) & (meas["value_as_number"] > 0)]
    in_gl = alb[alb["unit_concept_id"] == v.UNITS["g/L"]]["value_as_number"]
    in_gdl = alb[alb["unit_concept_id"] == v.UNITS["g/dL"]]["value_as_number"]
    assert len(in_gl) > 0 and len(in_gdl) > 0
    assert abs(np.median(in_gl) / 10 - np.median(in_gdl)) < 0.3  # same quantity, 10x the number
    crea = meas[meas["measurement_concept_id"] == v.CREATININE.concept_id]
    assert (crea["unit_concept_id"] == v.UNITS["umol/L"]).any()


def test_baseline_covariates_in_tables_equal_the_latent_values(tables, truth):
    """The last in-window albumin (converted to g/dL) of eligible persons is the model's value."""
    lat = gen.latent_chunk(SEED, DEMO, "ci").set_index("person_id").loc[truth["eligible_person_ids"]]
    meas = tables["measurement"]
    alb = meas[(meas["measurement_concept_id"] == v.ALBUMIN.concept_id)]
    alb = alb.merge(lat[["index_day"]], left_on="person_id", right_index=True)
    day = (pd.to_datetime(alb["measurement_date"]) - pd.Timestamp("1970-01-01")).dt.days
    window = alb[(day <= alb["index_day"]) & (day >= alb["index_day"] - 90) & (alb["value_as_number"] > 0)]
    window = window.assign(g_dl=np.where(window["unit_concept_id"] == v.UNITS["g/L"],
                                         window["value_as_number"] / 10, window["value_as_number"]))
    last = window.sort_values("measurement_date").groupby("person_id")["g_dl"].last()
    np.testing.assert_allclose(last.to_numpy(), lat.loc[last.index, "albumin_g_dl"].to_numpy(), atol=1e-9)
    assert len(last) > 0.8 * truth["n_eligible"]


def test_arm_assignment_is_visibly_confounded(truth):
    """io patients have higher PD-L1 and fewer drivers than chemo patients; chemo_io is the largest
    arm and its share rises over calendar years of t0."""
    lat = gen.latent_chunk(SEED, DEMO, "ci")
    e = lat[lat["reason"] == "eligible"]
    by_arm = e.groupby("arm")
    assert by_arm["pdl1_pct"].mean()["io"] > by_arm["pdl1_pct"].mean()["chemo"] + 15
    assert by_arm["driver_positive"].mean()["io"] < by_arm["driver_positive"].mean()["chemo"]
    n = truth["arms"]["n_eligible_by_arm"]
    assert max(n, key=n.get) == "chemo_io" and min(n.values()) > 0.15 * truth["n_eligible"]
    early, late = e[e["t0_year"] <= 2017], e[e["t0_year"] >= 2021]
    assert (late["arm"] == "chemo_io").mean() > (early["arm"] == "chemo_io").mean() + 0.2


def test_weibull_time_inverts_the_survival_function():
    """Hand check: S(t) = exp(-lambda t^rho e^lp) = u at the returned (pre-rounding) time."""
    u, lp = np.array([0.5, 0.1]), np.array([0.0, 1.0])
    t = model.weibull_time(u, lp)
    exact = (-np.log(u) / (model.WEIBULL_SCALE * np.exp(lp))) ** (1 / model.WEIBULL_SHAPE)
    np.testing.assert_array_equal(t, np.ceil(exact))
    np.testing.assert_allclose(model.survival_at(exact, lp), u)


def test_unknown_size_names_the_params_key(tmp_path):
    with pytest.raises(KeyError, match="demo.sizes"):
        gen.generate(tmp_path, "huge", SEED, DEMO)


@pytest.mark.parametrize("arm", ["io", "chemo_io"])
def test_ldh_slope_difference_after_t0_is_recovered(tables, truth, arm):
    """Per-person least-squares LDH slopes after t0; the arm - chemo mean difference covers the
    truth within 3 SE (slope SD and noise are the generator's, so the SE is honest)."""
    lat = gen.latent_chunk(SEED, DEMO, "ci").set_index("person_id").loc[truth["eligible_person_ids"]]
    meas = tables["measurement"].drop(columns="measurement_id").drop_duplicates()
    ldh = meas[(meas["measurement_concept_id"] == v.LDH.concept_id) & (meas["value_as_number"] > 0)]
    ldh = ldh.merge(lat[["t0_day", "arm", "untreated"]], left_on="person_id", right_index=True)
    ldh = ldh[~ldh["untreated"]]
    ldh = ldh.assign(t=(pd.to_datetime(ldh["measurement_date"]) - pd.Timestamp("1970-01-01")).dt.days
                     - ldh["t0_day"])
    ldh = ldh[ldh["t"] > 0]
    slopes = ldh.groupby("person_id").filter(lambda g: len(g) >= 3).groupby("person_id").apply(
        lambda g: 30.0 * np.polyfit(g["t"], g["value_as_number"], 1)[0], include_groups=False)
    labels = lat.loc[slopes.index, "arm"]
    s1, s0 = slopes[labels == arm], slopes[labels == "chemo"]
    diff = s1.mean() - s0.mean()
    se = np.sqrt(s1.var() / len(s1) + s0.var() / len(s0))
    true = truth["lab_trajectories"]["slope_difference_per_30d"]["ldh_u_l"][arm]
    assert abs(diff - true) < 3 * se, (diff, se, true)
    assert abs(true) > 4 * se  # the trajectory effect is detectable on the CI data


def test_chunked_generation_keeps_ids_unique_across_chunks(tmp_path):
    """Three chunks of 100 persons: consecutive person ids, unique row and visit ids."""
    small = {**DEMO, "chunk_size": 100,
             "sizes": {"tiny": {"n_persons": 300, "n_imaged": 0, "followup_share": 0.0}}}
    truth = gen.generate(tmp_path, "tiny", SEED, small)
    omop_dir = tmp_path / "omop"
    person = pd.read_parquet(omop_dir / "person.parquet")
    assert person["person_id"].tolist() == list(range(1, 301))
    for table, key in (("measurement", "measurement_id"), ("visit_occurrence", "visit_occurrence_id"),
                       ("condition_occurrence", "condition_occurrence_id")):
        ids = pd.read_parquet(omop_dir / f"{table}.parquet", columns=[key])[key]
        assert ids.is_unique and ids.min() == 1 and ids.max() == len(ids), table
    visits = set(pd.read_parquet(omop_dir / "visit_occurrence.parquet")["visit_occurrence_id"])
    used = set(pd.read_parquet(omop_dir / "measurement.parquet")["visit_occurrence_id"])
    assert used <= visits
    assert truth["n_persons"] == 300
    assert len(pd.read_parquet(omop_dir / "image_occurrence.parquet")) == 0


def test_concept_ancestor_is_the_closure_of_the_is_a_edges():
    """Hand-computed: NSCLC has itself (level 0) and its two histologies (level 1)."""
    ca = v.concept_ancestor_table()
    rows = ca[ca["ancestor_concept_id"] == v.NSCLC.concept_id]
    assert dict(zip(rows["descendant_concept_id"], rows["min_levels_of_separation"], strict=True)) == {
        v.NSCLC.concept_id: 0, v.LUNG_ADENOCARCINOMA.concept_id: 1, v.LUNG_SQUAMOUS.concept_id: 1}
    assert v.expand(v.CONCEPT_SETS["ldh"]) == {v.LDH.concept_id}
    standard = v.concept_table().query("standard_concept == 'S'")["concept_id"]
    assert set(ca.loc[ca["min_levels_of_separation"] == 0, "ancestor_concept_id"]) == set(standard)


def test_to_arrow_rejects_unknown_columns_and_names_the_table():
    from pmed.demo.schema import to_arrow

    with pytest.raises(KeyError, match="death has no column"):
        to_arrow("death", {"person_id": np.array([1]), "not_a_column": np.array([1])})
    with pytest.raises(KeyError, match="unknown OMOP table"):
        to_arrow("deaths", {"person_id": np.array([1])})
