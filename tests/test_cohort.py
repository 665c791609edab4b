"""Cohort extraction on small hand-built OMOP CDM tables, answers worked out by hand.

Fixture: 17 hand-made persons, each testing one rule (see ``PERSONS``); concept ids are
small made-up integers except the OMOP unit / gender ids. Day arithmetic in the comments
uses the calendar (2020 is a leap year).
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import sqlglot

from pmed import config
from pmed.cohort import (
    CohortError,
    contract,
    engine,
    extract,
    extract_cohort,
    parse_definition,
    quality,
    queries,
    write_outputs,
)
from pmed.cohort.extract import attrition_labels, column_windows

D = dt.date
# concept ids of the fixture vocabulary
NSCLC, ADENO, OTHER_CA, IMMUNO, CHEMO, IMMUNO_CHILD, TKI = 1, 2, 3, 10, 11, 12, 13
COPD, DIAB, HF, CKD = 20, 21, 22, 23
ALB, LDH, NEUT, LYMPH, HB, CREAT, WEIGHT, BMI, PDL1, ECOG, SMOKING, STAGE = range(30, 42)
NEVER, FORMER, CURRENT, ST3, ST4, ST4A = 60, 61, 62, 63, 64, 65
PNEUMONITIS, SURGERY = 70, 80
INPATIENT, OUTPATIENT, IU_L = 9201, 9202, 8923
G_DL, G_L, U_L, E9_L, MG_DL, UMOL_L, KG, KG_M2, PCT = 8713, 8636, 8645, 9444, 8840, 8749, 9529, 9531, 8554
FEMALE, MALE = 8532, 8507


def definition_dict() -> dict:
    """A cohort: section over the fixture vocabulary (same shape as params.yaml)."""
    sets = {"nsclc": [NSCLC], "other_cancer": [OTHER_CA], "immunotherapy": [IMMUNO],
            "chemotherapy": [CHEMO], "targeted": [TKI], "pneumonitis": [PNEUMONITIS],
            "surgery": [SURGERY], "copd": [COPD], "diabetes": [DIAB],
            "heart_failure": [HF], "ckd": [CKD], "albumin": [ALB], "ldh": [LDH],
            "neutrophils": [NEUT], "lymphocytes": [LYMPH], "hemoglobin": [HB],
            "creatinine": [CREAT], "weight": [WEIGHT], "bmi": [BMI], "pdl1": [PDL1],
            "ecog": [ECOG], "smoking": [SMOKING], "stage": [STAGE]}

    def num(cs, units, lo, hi, window="lab"):
        return {"concept_set": cs, "table": "measurement", "window": window, "units": units,
                "plausible": [lo, hi], "anchor": "index"}

    return {
        "concept_sets": sets, "include_descendants": True, "target_concept_set": "nsclc",
        "prior_observation_days": 365, "min_age_years": 18, "max_age_years": None,
        "female_concept_id": FEMALE, "male_concept_id": MALE,
        "protocol": {c: {"specification": f"{c} of the target trial"}
                     for c in ("eligibility", "treatment_strategies", "assignment", "time_zero",
                               "outcomes", "follow_up", "causal_contrast")},
        "exclusions": {"prior_concept_sets": ["other_cancer"], "window": [None, 0]},
        "treatment_strategies": {
            "grace_days": 21, "max_days_after_index": 60, "reference": "chemo",
            "arms": {"chemo": {"all_of": ["chemotherapy"], "none_of": ["immunotherapy", "targeted"],
                               "cohort_definition_id": 1},
                     "io": {"all_of": ["immunotherapy"], "none_of": ["chemotherapy", "targeted"],
                            "cohort_definition_id": 2},
                     "chemo_io": {"all_of": ["chemotherapy", "immunotherapy"],
                                  "none_of": ["targeted"], "cohort_definition_id": 3}}},
        "follow_up": {"administrative_censor_date": "2025-12-31"},
        "outcomes": {
            "death": {"type": "death"},
            "pneumonitis": {"type": "event", "concept_set": "pneumonitis",
                            "table": "condition_occurrence", "visit_concept_ids": [INPATIENT],
                            "blanking_days": 0, "competing": "death"},
            "neutropenia": {"type": "event", "concept_set": "neutrophils", "table": "measurement",
                            "value_range": [None, 0.5], "unit_concept_ids": [E9_L]},
            "surgery": {"type": "event", "concept_set": "surgery", "table": "procedure_occurrence",
                        "blanking_days": 7, "competing": None},
            "hospitalisation": {"type": "event", "table": "visit_occurrence",
                                "visit_concept_ids": [INPATIENT]},
        },
        "covariates": {
            "lab_window_days": 90, "condition_window": [None, -1], "condition_anchor": "index",
            "conditions": {"copd": "copd", "diabetes": "diabetes",
                           "heart_failure": "heart_failure", "ckd": "ckd"},
            "numeric": {
                "albumin_g_dl": num("albumin", {G_DL: 1.0, G_L: 0.1}, 1.0, 7.0),
                "ldh_u_l": num("ldh", {U_L: 1.0}, 30, 10000),
                "neutrophils_10e9_l": num("neutrophils", {E9_L: 1.0}, 0.01, 100),
                "lymphocytes_10e9_l": num("lymphocytes", {E9_L: 1.0}, 0.01, 100),
                "hemoglobin_g_dl": num("hemoglobin", {G_DL: 1.0, G_L: 0.1}, 2, 25),
                "creatinine_mg_dl": num("creatinine", {MG_DL: 1.0, UMOL_L: 1 / 88.4}, 0.05, 25),
                "weight_kg": num("weight", {KG: 1.0}, 20, 350),
                "bmi_kg_m2": num("bmi", {KG_M2: 1.0}, 10, 90),
                "ecog": num("ecog", {0: 1.0}, 0, 4),
                "pdl1_pct": num("pdl1", {PCT: 1.0}, 0, 100),
            },
            "categorical": {
                "smoking": {"concept_set": "smoking", "table": "observation", "window": [None, 0],
                            "anchor": "index", "levels": {"smoking_current": [CURRENT], "smoking_former": [FORMER]},
                            "reference": [NEVER]},
                "stage": {"concept_set": "stage", "table": "measurement", "window": [None, 0],
                          "anchor": "index", "levels": {"stage_iv": [ST4]}, "reference": [ST3]},
            },
        },
    }


IDX = D(2020, 3, 1)  # index date of most fixture persons
DEFAULT_OBS = (D(2010, 1, 1), D(2024, 12, 31))  # observation period of most fixture persons


class Omop:
    """Builder of the fixture's OMOP tables (rows appended per person; methods chain)."""

    def __init__(self):
        self.t = {k: [] for k in ("person", "observation_period", "condition_occurrence",
                                  "drug_exposure", "measurement", "observation", "death",
                                  "visit_occurrence", "procedure_occurrence")}

    def person(self, pid, born, female=False, obs=None, gender=None):
        obs = obs or DEFAULT_OBS
        gender = gender if gender is not None else FEMALE if female else MALE
        self.t["person"].append({"person_id": pid, "gender_concept_id": gender,
                                 "year_of_birth": born.year, "month_of_birth": born.month,
                                 "day_of_birth": born.day})
        return self.period(pid, *obs)

    def period(self, pid, start, end):
        rows = self.t["observation_period"]
        rows.append({"observation_period_id": len(rows) + 1, "person_id": pid,
                     "observation_period_start_date": start, "observation_period_end_date": end})
        return self

    def cond(self, pid, concept, date, visit=None):
        visit_id = None
        if visit is not None:
            rows = self.t["visit_occurrence"]
            visit_id = len(rows) + 1
            rows.append({"visit_occurrence_id": visit_id, "person_id": pid,
                         "visit_concept_id": visit, "visit_start_date": date,
                         "visit_end_date": date})
        self.t["condition_occurrence"].append({"condition_occurrence_id": len(self.t["condition_occurrence"]) + 1,
                                               "person_id": pid, "condition_concept_id": concept,
                                               "condition_start_date": date,
                                               "visit_occurrence_id": visit_id})
        return self

    def proc(self, pid, concept, date):
        rows = self.t["procedure_occurrence"]
        rows.append({"procedure_occurrence_id": len(rows) + 1, "person_id": pid,
                     "procedure_concept_id": concept, "procedure_date": date})
        return self

    def drug(self, pid, concept, date):
        self.t["drug_exposure"].append({"drug_exposure_id": len(self.t["drug_exposure"]) + 1,
                                        "person_id": pid, "drug_concept_id": concept,
                                        "drug_exposure_start_date": date})
        return self

    def meas(self, pid, concept, date, value=None, unit=None, value_concept=None, table="measurement"):
        rows = self.t[table]
        rows.append({f"{table}_id": len(rows) + 1, "person_id": pid, f"{table}_concept_id": concept,
                     f"{table}_date": date, "value_as_number": value,
                     "value_as_concept_id": value_concept, "unit_concept_id": unit})
        return self

    def death(self, pid, date):
        self.t["death"].append({"person_id": pid, "death_date": date})
        return self

    def frames(self) -> dict[str, pd.DataFrame]:
        out = {}
        for name, rows in self.t.items():
            df = pd.DataFrame(rows)
            for col in df.columns:
                if col.endswith("_date"):
                    df[col] = pd.to_datetime(df[col]).dt.date
                elif col == "value_as_number":
                    df[col] = df[col].astype("float64")
                else:
                    df[col] = df[col].astype("Int64")
            out[name] = df
        ids = sorted({v for v in [NSCLC, ADENO, OTHER_CA, IMMUNO, CHEMO, IMMUNO_CHILD, TKI, COPD,
                                  DIAB, HF, CKD, *range(30, 42), NEVER, FORMER, CURRENT, ST3, ST4,
                                  ST4A, PNEUMONITIS, SURGERY, INPATIENT, OUTPATIENT, IU_L, G_DL,
                                  G_L, U_L, E9_L, MG_DL, UMOL_L, KG, KG_M2, PCT, FEMALE, MALE]})
        names = {IU_L: "international unit per liter"}
        out["concept"] = pd.DataFrame({"concept_id": ids,
                                       "concept_name": [names.get(i, f"c{i}") for i in ids],
                                       "invalid_reason": pd.array([None] * len(ids), dtype="string")})
        pairs = [(i, i) for i in ids] + [(NSCLC, ADENO), (IMMUNO, IMMUNO_CHILD), (ST4, ST4A)]
        out["concept_ancestor"] = pd.DataFrame(pairs, columns=["ancestor_concept_id",
                                                               "descendant_concept_id"])
        return out


def build_fixture() -> Omop:
    """The 25 fixture persons; each comment gives the rule tested and the hand answer.

    Person 5's gender_concept_id is 0 (unknown): sex_female missing.
    """
    o = Omop()
    # 1: eligible, immunotherapy, female. Index 2020-03-01 (first of two adenocarcinoma
    # (descendant) records). t0 = 2020-03-20 (19 d). Death 2021-03-20: 2020-03-20 ->
    # 2021-03-20 = 365 d, event 1. Age: born 1960-05-10 -> 59 completed years.
    o.person(1, D(1960, 5, 10), female=True)
    o.cond(1, ADENO, IDX).cond(1, ADENO, D(2020, 6, 1))
    o.cond(1, OTHER_CA, D(2020, 5, 1))           # other cancer AFTER index: not excluded
    o.drug(1, IMMUNO_CHILD, D(2020, 3, 20)).drug(1, CHEMO, D(2020, 4, 20))
    o.death(1, D(2021, 3, 20))
    o.cond(1, COPD, D(2019, 1, 1))                # before index -> copd 1
    o.cond(1, DIAB, IDX)                          # ON index: window [-inf, -1] -> diabetes 0
    o.meas(1, ALB, D(2020, 1, 1), 3.5, G_DL)      # day -60
    o.meas(1, ALB, D(2020, 2, 20), 40.0, G_L)     # day -10, last in window: 40 g/L = 4.0 g/dL
    o.meas(1, ALB, D(2020, 3, 2), 2.0, G_DL)      # day +1: after index, ignored
    o.meas(1, CREAT, D(2019, 12, 2), 88.4, UMOL_L)  # day -90 (29+31+29+1): inclusive -> 1.0 mg/dL
    o.meas(1, PDL1, D(2020, 2, 20), 60.0, PCT)    # day -10
    o.meas(1, PDL1, D(2020, 2, 29), 150.0, PCT)   # day -1 but implausible: dropped -> 60
    o.meas(1, ECOG, D(2020, 2, 25), 1.0, None)    # no unit (NULL) = unit 0 -> ecog 1
    o.meas(1, WEIGHT, D(2020, 2, 1), 0.0, KG)     # implausible weight 0: dropped -> NaN
    o.meas(1, HB, D(2020, 2, 1), 12.5, 999)       # unit without factor: dropped -> NaN
    o.meas(1, SMOKING, D(2018, 1, 1), value_concept=FORMER, table="observation")
    o.meas(1, SMOKING, IDX, value_concept=CURRENT, table="observation")  # day 0 inclusive
    o.meas(1, STAGE, IDX, value_concept=ST4)      # stage IV on index day
    # 2: eligible, chemotherapy, male. Index 2021-01-10 (ancestor concept itself), t0
    # 2021-03-11 = day 60 (21 + 28 + 11): inclusive. Alive; observation ends 2022-06-30:
    # 2021-03-11 -> 2022-03-11 = 365, + 20 + 30 + 31 + 30 = 476 d, event 0. The death dated
    # 2022-08-01 lies after observation end: censored at observation end (event 0).
    o.person(2, D(1950, 1, 1), obs=(D(2010, 1, 1), D(2022, 6, 30)))
    o.cond(2, NSCLC, D(2021, 1, 10)).cond(2, NSCLC, D(2021, 1, 10))  # exact duplicate
    o.drug(2, CHEMO, D(2021, 3, 11))
    o.death(2, D(2022, 8, 1))
    o.meas(2, CREAT, D(2020, 10, 11), 1.3, MG_DL)  # day -91 (21+30+31+9): outside -> NaN
    o.meas(2, SMOKING, D(2015, 1, 1), value_concept=NEVER, table="observation")  # never -> 0, 0
    o.meas(2, STAGE, D(2021, 1, 5), value_concept=ST3)  # stage III -> 0
    o.cond(2, HF, D(2021, 1, 9))                  # day -1 -> heart_failure 1
    # 3: excluded at first line: chemo on day 61.
    o.person(3, D(1955, 1, 1)).cond(3, NSCLC, IDX).drug(3, CHEMO, IDX + dt.timedelta(61))
    # 4: excluded at prior observation: period starts 364 days before index.
    o.person(4, D(1955, 1, 1), obs=(IDX - dt.timedelta(364), D(2024, 12, 31)))
    o.cond(4, NSCLC, IDX).drug(4, CHEMO, IDX)
    # 5: eligible: period starts exactly 365 days before index (inclusive); chemo on index
    # day (t0 = index, 0 d). Observation to 2024-12-31: 2020-03-01 -> 2024-12-31 = 1766 d.
    o.person(5, D(1955, 1, 1), obs=(IDX - dt.timedelta(365), D(2024, 12, 31)), gender=0)
    o.cond(5, NSCLC, IDX).drug(5, CHEMO, IDX)
    # 6: excluded at age: born 2002-03-02 is 17 on 2020-03-01 (18th birthday the next day).
    o.person(6, D(2002, 3, 2)).cond(6, NSCLC, IDX).drug(6, CHEMO, IDX)
    # 7: eligible: born 2002-03-01 turns 18 on the index day (inclusive). Immunotherapy at
    # day 5 (t0 2020-03-06); death 2020-03-16 -> 10 d, event 1.
    o.person(7, D(2002, 3, 1), female=True).cond(7, NSCLC, IDX)
    o.drug(7, IMMUNO, D(2020, 3, 6)).death(7, D(2020, 3, 16))
    # 8: excluded: other cancer before index.  9: excluded: other cancer on the index day
    # (exclusion window [-inf, 0] is inclusive).
    o.person(8, D(1955, 1, 1)).cond(8, NSCLC, IDX).cond(8, OTHER_CA, D(2019, 6, 1))
    o.drug(8, CHEMO, IDX)
    o.person(9, D(1955, 1, 1)).cond(9, NSCLC, IDX).cond(9, OTHER_CA, IDX)
    o.drug(9, CHEMO, IDX)
    # 10: excluded: immunotherapy the day before index (treatment before index).
    o.person(10, D(1955, 1, 1)).cond(10, NSCLC, IDX)
    o.drug(10, IMMUNO, IDX - dt.timedelta(1)).drug(10, CHEMO, IDX)
    # 11: chemo and immunotherapy start the same day: regimen chemo_io (t0 2020-03-05).
    o.person(11, D(1955, 1, 1)).cond(11, NSCLC, IDX)
    o.drug(11, IMMUNO, D(2020, 3, 5)).drug(11, CHEMO, D(2020, 3, 5))
    # 12: excluded: death recorded (2020-03-05) before treatment start (2020-03-10).
    o.person(12, D(1955, 1, 1)).cond(12, NSCLC, IDX).drug(12, CHEMO, D(2020, 3, 10))
    o.death(12, D(2020, 3, 5))
    # 13: no NSCLC record at all (not in the cohort's first step).
    o.person(13, D(1955, 1, 1)).cond(13, COPD, IDX).drug(13, CHEMO, IDX)
    # 14: administrative censoring: alive, observed to 2026-06-30, death 2026-01-15 after the
    # censor date 2025-12-31 -> event 0; t0 = index + 30 = 2020-03-31;
    # 2020-03-31 -> 2025-03-31 = 5*365 + 1 (2024-02-29) = 1826, + 30+31+30+31+31+30+31+30+31 = 2101 d.
    o.person(14, D(1955, 1, 1), obs=(D(2010, 1, 1), D(2026, 6, 30)))
    o.cond(14, NSCLC, IDX).drug(14, IMMUNO, IDX + dt.timedelta(30)).death(14, D(2026, 1, 15))
    # 15: death on the last day of observation counts: t0 = index, death 2020-12-31 =
    # observation end: 2020-03-01 -> 2020-12-31 = 305 d, event 1.
    o.person(15, D(1955, 1, 1), obs=(D(2010, 1, 1), D(2020, 12, 31)))
    o.cond(15, NSCLC, IDX).drug(15, CHEMO, IDX).death(15, D(2020, 12, 31))
    # 16: excluded at first line: no exposure drug at all.
    o.person(16, D(1955, 1, 1)).cond(16, NSCLC, IDX)
    # 17: index outside every observation period (diagnosis after the period ended):
    # excluded at prior observation. Its diagnosis is an event outside observation.
    o.person(17, D(1955, 1, 1), obs=(D(2010, 1, 1), D(2019, 12, 31)))
    o.cond(17, NSCLC, IDX).drug(17, CHEMO, IDX)
    add_regimen_outcome_and_date_cases(o)
    return o


def add_regimen_outcome_and_date_cases(o: Omop) -> None:
    """Persons 18-25 and extra records of persons 1-15 for regimens, outcomes, dates."""
    # Regimens (grace 21 days, inclusive). 11 (above): both on the same day -> chemo_io.
    # 18: chemo at t0 = day 5, immunotherapy at t0 + 21 -> chemo_io.
    o.person(18, D(1955, 1, 1)).cond(18, NSCLC, IDX)
    o.drug(18, CHEMO, IDX + dt.timedelta(5)).drug(18, IMMUNO, IDX + dt.timedelta(26))
    # 19: immunotherapy at t0 + 22 (after the grace period) -> chemo alone.
    o.person(19, D(1955, 1, 1)).cond(19, NSCLC, IDX)
    o.drug(19, CHEMO, IDX + dt.timedelta(5)).drug(19, IMMUNO, IDX + dt.timedelta(27))
    # 20: targeted drug alone; 21: chemo + targeted within grace: regimens matching no arm.
    o.person(20, D(1955, 1, 1)).cond(20, NSCLC, IDX).drug(20, TKI, IDX + dt.timedelta(10))
    o.person(21, D(1955, 1, 1)).cond(21, NSCLC, IDX)
    o.drug(21, CHEMO, IDX + dt.timedelta(5)).drug(21, TKI, IDX + dt.timedelta(15))
    # 25: chemo at day 19, after its observation period ended (day 9): own attrition row.
    o.person(25, D(1955, 1, 1), obs=(D(2010, 1, 1), D(2020, 3, 10))).cond(25, NSCLC, IDX)
    o.drug(25, CHEMO, D(2020, 3, 20))
    # Impossible dates, each excluded at 'valid_dates': 22 death before birth; 23 index
    # diagnosis before birth; 24 a second observation period ending before it starts.
    o.person(22, D(1955, 1, 1)).cond(22, NSCLC, IDX).drug(22, CHEMO, IDX)
    o.death(22, D(1950, 1, 1))
    o.person(23, D(1955, 1, 1)).cond(23, NSCLC, D(1954, 6, 1)).drug(23, CHEMO, IDX)
    o.person(24, D(1955, 1, 1)).period(24, D(2005, 1, 1), D(2004, 1, 1))
    o.cond(24, NSCLC, IDX).drug(24, CHEMO, IDX)
    # Pneumonitis (inpatient only, blanking 0 = day 0 ignored, death competing) and
    # hospitalisation (any inpatient visit after t0): person 1 (t0 2020-03-20, death day
    # 365): day 0 inpatient (blanked), 2020-05-01 outpatient (not counted), 2020-06-19
    # inpatient = day 11 + 30 + 31 + 19 = 91 -> status 1, 91 d.
    o.cond(1, PNEUMONITIS, D(2020, 3, 20), visit=INPATIENT)
    o.cond(1, PNEUMONITIS, D(2020, 5, 1), visit=OUTPATIENT)
    o.cond(1, PNEUMONITIS, D(2020, 6, 19), visit=INPATIENT)
    # 7: recorded after death (day 10) -> status 2, 10 d.  15: on the day of death (day
    # 305) -> the event counts: status 1, 305 d.  14: after the administrative date ->
    # status 0 at 2101 d.
    o.cond(7, PNEUMONITIS, D(2020, 3, 20), visit=INPATIENT)
    o.cond(15, PNEUMONITIS, D(2020, 12, 31), visit=INPATIENT)
    o.cond(14, PNEUMONITIS, D(2026, 1, 1), visit=INPATIENT)
    # Surgery (procedure, blanking 7 days, competing null): person 1 day 7 blanked, day 8
    # -> status 1, 8 d. Person 7 dies at day 10 without surgery: censored (0) at 10 d.
    o.proc(1, SURGERY, D(2020, 3, 27)).proc(1, SURGERY, D(2020, 3, 28))
    # Neutropenia (neutrophils <= 0.5 10^9/L): person 5 (t0 = index) 2.0 at day 9 (too
    # high), 0.3 in unit 999 at day 14 (unit not listed), 0.3 at day 31 -> status 1, 31 d.
    o.meas(5, NEUT, D(2020, 3, 10), 2.0, E9_L).meas(5, NEUT, D(2020, 3, 15), 0.3, 999)
    o.meas(5, NEUT, D(2020, 4, 1), 0.3, E9_L)
    # Person 7's stage is a sub-stage (IVA, a descendant of stage IV) -> stage_iv 1.
    o.meas(7, STAGE, IDX, value_concept=ST4A)
    # Person 2's LDH in IU/L (no factor): dropped, reported under unit 8923.
    o.meas(2, LDH, D(2021, 1, 5), 200.0, IU_L)


def write_tables(frames: dict[str, pd.DataFrame], folder: Path, fmt: str = "parquet") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        if fmt == "csv":
            df.to_csv(folder / f"{name}.csv", index=False)
        else:
            df.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


@pytest.fixture(scope="module")
def fixture_result(tmp_path_factory):
    folder = write_tables(build_fixture().frames(), tmp_path_factory.mktemp("omop"))
    d = parse_definition(definition_dict())
    return folder, d, extract_cohort(folder, d, memory_limit="1GB", threads=1)


def row(result, pid) -> pd.Series:
    c = result.cohort
    return c.loc[c["person_id"] == pid].iloc[0]


ELIGIBLE = [1, 2, 5, 7, 11, 14, 15, 18, 19]


def test_eligible_persons_and_attrition(fixture_result):
    _, _, res = fixture_result
    assert res.cohort["person_id"].tolist() == ELIGIBLE
    # 24 persons with NSCLC (all but 13); -3 impossible dates (22, 23, 24); -2 prior obs
    # (4, 17); -1 age (6); -2 other cancer (8, 9); -1 prior treatment (10); -2 no first line
    # within 60 days (3, 16); -1 t0 after observation (25); -2 regimen matching no arm
    # (20, 21); -1 dead before t0 (12).
    assert res.attrition["remaining"].tolist() == [24, 21, 19, 18, 16, 15, 13, 12, 10, 9]
    assert res.attrition["excluded"].tolist() == [0, 3, 2, 1, 2, 1, 2, 1, 2, 1]
    assert res.attrition["criterion"].tolist() == list(attrition_labels(
        parse_definition(definition_dict())).values())


def test_index_treatment_and_outcome(fixture_result):
    _, _, res = fixture_result
    c = res.cohort.set_index("person_id")
    assert c.loc[1, "index_date"] == IDX and c.loc[1, "t0_date"] == D(2020, 3, 20)
    assert c.loc[2, "index_date"] == D(2021, 1, 10)
    assert c["days_dx_to_treatment"].to_dict() == {1: 19, 2: 60, 5: 0, 7: 5, 11: 4, 14: 30,
                                                   15: 0, 18: 5, 19: 5}
    # person 1: chemo 31 days after its immunotherapy start is outside the grace period
    assert c["treatment"].to_dict() == {1: "io", 2: "chemo", 5: "chemo", 7: "io",
                                        11: "chemo_io", 14: "io", 15: "chemo",
                                        18: "chemo_io", 19: "chemo"}
    assert c["arm_io"].tolist() == [1, 0, 0, 1, 0, 1, 0, 0, 0]
    assert c["arm_chemo_io"].tolist() == [0, 0, 0, 0, 1, 0, 0, 1, 0]
    assert "treated" not in c.columns and "arm_chemo" not in c.columns
    assert c["t0_year"].to_dict() == {1: 2020, 2: 2021, 5: 2020, 7: 2020, 11: 2020, 14: 2020,
                                      15: 2020, 18: 2020, 19: 2020}
    to_end = {p: float((D(2024, 12, 31) - c.loc[p, "t0_date"]).days) for p in (11, 18, 19)}
    assert c["time_days"].to_dict() == {1: 365.0, 2: 476.0, 5: 1766.0, 7: 10.0,
                                        14: 2101.0, 15: 305.0} | to_end
    assert c["event"].to_dict() == {1: 1, 2: 0, 5: 0, 7: 1, 11: 0, 14: 0, 15: 1, 18: 0, 19: 0}


def test_event_outcomes_with_blanking_visits_and_competing_death(fixture_result):
    _, _, res = fixture_result
    c = res.cohort.set_index("person_id")
    death_t = c["time_days"]
    status = c["pneumonitis_status"].to_dict()
    assert status == {1: 1, 2: 0, 5: 0, 7: 2, 11: 0, 14: 0, 15: 1, 18: 0, 19: 0}
    expected_t = death_t.to_dict() | {1: 91.0}  # others: death or censoring, as for death
    assert c["pneumonitis_time_days"].to_dict() == expected_t
    assert c["hospitalisation_status"].to_dict() == status
    assert c["hospitalisation_time_days"].to_dict() == expected_t
    # surgery: blanking 7 days, competing null (death censors: status 0 at the death date)
    assert c.loc[1, "surgery_status"] == 1 and c.loc[1, "surgery_time_days"] == 8.0
    assert c.loc[7, "surgery_status"] == 0 and c.loc[7, "surgery_time_days"] == 10.0
    assert set(c["surgery_status"]) == {0, 1}
    # neutropenia: value rule (<= 0.5) in the listed unit only; death competing
    assert c.loc[5, "neutropenia_status"] == 1 and c.loc[5, "neutropenia_time_days"] == 31.0
    assert c["neutropenia_status"].to_dict() == {1: 2, 2: 0, 5: 1, 7: 2, 11: 0, 14: 0, 15: 2,
                                                 18: 0, 19: 0}
    assert str(c["pneumonitis_status"].dtype) == "int8"


def test_cohort_table_in_omop_layout(fixture_result):
    _, d, res = fixture_result
    t = res.cohort_omop
    assert list(t.columns) == ["cohort_definition_id", "subject_id", "cohort_start_date",
                               "cohort_end_date"]
    ids = {a: arm.cohort_definition_id for a, arm in d.strategies.arms.items()}
    c = res.cohort.set_index("person_id")
    assert sorted(t["subject_id"]) == ELIGIBLE
    for _, r in t.iterrows():
        p = c.loc[r["subject_id"]]
        assert r["cohort_definition_id"] == ids[p["treatment"]]
        assert r["cohort_start_date"] == p["t0_date"]
        assert (r["cohort_end_date"] - r["cohort_start_date"]).days == p["time_days"]
    assert t["cohort_definition_id"].tolist() == sorted(t["cohort_definition_id"])


def test_baselines_anchored_at_t0_by_default(tmp_path, fixture_result):
    """Without `anchor: index` the windows count from t0: person 1 (t0 = index + 19) gets
    the albumin of day +1 after index (day -18 from t0: 2.0 g/dL), loses the creatinine of
    day -90 from index (-109 from t0) and has the diabetes recorded on the index day."""
    folder, _, _ = fixture_result
    spec = definition_dict()
    cov = spec["covariates"]
    del cov["condition_anchor"]
    for c in [*cov["numeric"].values(), *cov["categorical"].values()]:
        del c["anchor"]
    d = parse_definition(spec)
    assert column_windows(d)["albumin_g_dl"] == "[-90, 0] days from t0"
    p1 = row(extract_cohort(folder, d, memory_limit="1GB", threads=1), 1)
    assert p1["albumin_g_dl"] == pytest.approx(2.0)
    assert pd.isna(p1["creatinine_mg_dl"]) and p1["diabetes"] == 1


@pytest.mark.parametrize("window", [[-90, 1], [-90, None], [None, 5]])
def test_baseline_window_may_not_pass_its_anchor(window):
    spec = definition_dict()
    spec["covariates"]["numeric"]["albumin_g_dl"]["window"] = window
    with pytest.raises(CohortError, match=r"albumin_g_dl.window ends at .* on or before its anchor"):
        parse_definition(spec)


def test_age_and_sex(fixture_result):
    _, _, res = fixture_result
    p1, p7 = row(res, 1), row(res, 7)
    assert p1["age_years"] == pytest.approx((IDX - D(1960, 5, 10)).days / 365.25)
    assert math.floor(p1["age_years"]) == 59
    # person 7 is exactly 18 in completed years; 6575 d / 365.25 = 18.0014
    assert p7["age_years"] == pytest.approx(6575 / 365.25)
    assert (p1["sex_female"], p7["sex_female"], row(res, 2)["sex_female"]) == (1, 1, 0)
    assert pd.isna(row(res, 5)["sex_female"])  # gender_concept_id 0: unknown, not male


def test_covariate_windows_and_units(fixture_result):
    _, _, res = fixture_result
    p1, p2 = row(res, 1), row(res, 2)
    assert p1["albumin_g_dl"] == pytest.approx(4.0)        # 40 g/L at day -10
    assert p1["creatinine_mg_dl"] == pytest.approx(1.0)    # 88.4 umol/L at day -90
    assert pd.isna(p2["creatinine_mg_dl"])                 # only record at day -91
    assert p1["pdl1_pct"] == 60.0 and p1["ecog"] == 1.0
    assert pd.isna(p1["weight_kg"]) and pd.isna(p1["hemoglobin_g_dl"])
    assert (p1["copd"], p1["diabetes"], p2["heart_failure"], p2["copd"]) == (1, 0, 1, 0)
    assert (p1["smoking_current"], p1["smoking_former"], p1["stage_iv"]) == (1, 0, 1)
    assert (p2["smoking_current"], p2["smoking_former"], p2["stage_iv"]) == (0, 0, 0)
    p5 = row(res, 5)
    assert pd.isna(p5["smoking_current"]) and pd.isna(p5["stage_iv"])
    assert row(res, 7)["stage_iv"] == 1  # sub-stage IVA: a descendant of stage IV
    assert pd.isna(p2["ldh_u_l"])        # only record in IU/L: no factor


def test_output_dtypes_follow_contract(fixture_result):
    _, _, res = fixture_result
    c = res.cohort
    assert list(c.columns) == list(contract.columns(parse_definition(definition_dict())))
    assert c["person_id"].dtype == "int64" and c["event"].dtype == "int8"
    assert str(c["smoking_current"].dtype) == "Int8" and c["ecog"].dtype == "float64"
    assert isinstance(c["index_date"].iloc[0], dt.date)


def test_quality_counts(fixture_result):
    _, _, res = fixture_result
    q = res.quality.groupby(["check", "table", "column"])["count"].sum()
    assert q[("duplicate", "condition_occurrence", "")] == 1        # person 2's dx
    assert q[("duplicate", "measurement", "")] == 0
    # outside observation: persons 17's and 23's NSCLC; persons 2's and 22's deaths;
    # person 14's death lies inside its period (2026-01-15 <= 2026-06-30).
    assert q[("outside_observation", "condition_occurrence", "condition_start_date")] == 2
    assert q[("outside_observation", "death", "death_date")] == 2
    assert q[("outside_observation", "drug_exposure", "drug_exposure_start_date")] == 2  # 17, 25
    assert q[("implausible", "measurement", "pdl1_pct")] == 1
    assert q[("implausible", "measurement", "weight_kg")] == 1
    assert q[("unknown_unit", "measurement", "hemoglobin_g_dl")] == 1
    assert q[("implausible", "measurement", "albumin_g_dl")] == 0
    # impossible dates: their own rows, never another criterion's count
    assert q[("impossible_date", "death", "death_date")] == 1                       # 22
    assert q[("impossible_date", "condition_occurrence", "condition_start_date")] == 1  # 23
    assert q[("impossible_date", "observation_period", "observation_period_end_date")] == 1
    assert q[("impossible_date", "measurement", "measurement_date")] == 0
    assert q[("unknown_gender", "person", "gender_concept_id")] == 1                 # 5
    assert q[("value_via_descendant", "measurement", "stage")] == 1                  # 7
    assert q[("value_via_descendant", "observation", "smoking")] == 0


def test_duplicates_counted_in_person_parts_equal_one_pass(fixture_result, monkeypatch):
    folder, d, res = fixture_result
    monkeypatch.setattr(engine.DuckDBEngine, "max_group_rows", 7)  # several parts per table
    eng = extract.open_cdm(folder, d, memory_limit="1GB", threads=1)
    try:
        extract.load_rule_tables(eng, d)
        parts = quality.duplicate_parts(eng, ["condition_occurrence", "measurement"])
        assert min(parts.values()) > 1
        pd.testing.assert_frame_equal(quality.run_quality(eng, d), res.quality)
    finally:
        eng.close()
    con = duckdb.connect()  # negative and missing person_ids fall in exactly one part
    con.execute("CREATE TABLE t AS SELECT * FROM (VALUES (-3, 1), (-3, 1), (NULL, 2), (NULL, 2), "
                "(NULL, 2), (4, 5), (4, 6), (7, 8), (7, 8)) AS v(person_id, x)")
    whole = con.execute(quality.duplicate_query("t", ["person_id", "x"])).fetchall()[0][-1]
    for k in (2, 3, 5):
        got = sum(con.execute(quality.duplicate_query("t", ["person_id", "x"], (j, k))).fetchall()[0][-1]
                  for j in range(k))
        assert whole == got == 4


def test_unit_drops_reported_per_unit_with_its_name(fixture_result):
    _, _, res = fixture_result
    u = res.quality[res.quality["check"] == "unknown_unit"].set_index("column")
    assert (u.loc["ldh_u_l", "concept_id"], u.loc["ldh_u_l", "concept_name"],
            u.loc["ldh_u_l", "count"]) == (IU_L, "international unit per liter", 1)
    assert (u.loc["hemoglobin_g_dl", "concept_id"], u.loc["hemoglobin_g_dl", "concept_name"]) \
        == (999, "(not in concept table)")
    assert u.loc["neutrophils_10e9_l", "concept_id"] == 999   # person 5's 0.3 in unit 999
    assert pd.isna(u.loc["albumin_g_dl", "concept_id"]) and u.loc["albumin_g_dl", "count"] == 0


def test_csv_input_gives_the_same_cohort(fixture_result, tmp_path):
    _, d, res = fixture_result
    folder = write_tables(build_fixture().frames(), tmp_path / "omop", fmt="csv")
    csv_res = extract_cohort(folder, d, memory_limit="1GB", threads=1)
    pd.testing.assert_frame_equal(csv_res.cohort, res.cohort)
    pd.testing.assert_frame_equal(csv_res.quality, res.quality)


def test_every_query_transpiles_to_postgres_and_spark():
    d = parse_definition(definition_dict())
    cols = {t: ["person_id", "value_as_number"] for t in quality.CLINICAL_TABLES}
    sqls = [*queries.setup_queries(d).values(), *queries.cohort_queries(d).values()]
    dates = {t: list(cols) for t, cols in quality.END_DATES.items()}
    checks = quality.quality_queries(d, cols, dates)
    sqls += [c["sql"] for c in checks]
    assert sum(c["check"] == "impossible_date" for c in checks) == 9
    sqls.append(quality.non_null_columns_query({"measurement": ["person_id", "unit_concept_id"],
                                                "death": ["person_id"]}))
    for sql in sqls:
        for dialect in ("postgres", "spark"):
            out = queries.transpile(sql, dialect)
            sqlglot.parse_one(out, read=dialect)  # the output parses back in its dialect
    pg = queries.transpile(queries.cohort_queries(d)["adult"], "postgres")
    assert "MAKE_DATE(" in pg and "DATE_FROM_PARTS" not in pg


def test_sql_script_reproduces_the_cohort_and_reruns(fixture_result):
    """The rendered script, run as-is on plain views of the OMOP files, gives the same cohort,
    twice in the same session (temporary tables replaced, none permanent); its postgres and
    spark versions parse in their dialects (tests/test_engines.py runs them on the servers)."""
    folder, d, res = fixture_result
    con = duckdb.connect()
    for f in folder.glob("*.parquet"):
        con.execute(f"CREATE VIEW {f.stem} AS SELECT * FROM read_parquet('{f}')")
    script = queries.render_script(d, "duckdb")
    *setup, final = [s for s in script.split(";\n") if s.strip()]
    for _ in range(2):
        for statement in setup:
            con.execute(statement)
        pd.testing.assert_frame_equal(contract.coerce(con.execute(final).df(), d), res.cohort)
    assert con.execute("SELECT COUNT(*) FROM duckdb_tables() WHERE NOT temporary").fetchone()[0] == 0
    for dialect in ("postgres", "spark"):
        statements = sqlglot.parse(queries.render_script(d, dialect), read=dialect)
        creates = [s for s in statements if isinstance(s, sqlglot.exp.Create)]
        assert creates and all(s.find(sqlglot.exp.TemporaryProperty) for s in creates)


def test_write_outputs_atomic_and_complete(fixture_result, tmp_path):
    _, d, res = fixture_result
    paths = write_outputs(res, d, tmp_path)
    back = pd.read_parquet(paths["cohort.parquet"])
    assert back["person_id"].tolist() == ELIGIBLE
    assert str(back["stage_iv"].dtype) == "Int8"
    dictionary = pd.read_csv(paths["cohort_dictionary.csv"])
    assert dictionary["column"].tolist() == list(contract.columns(d))
    assert dictionary.set_index("column").loc["albumin_g_dl", "window"] == "[-90, 0] days from index"
    omop_back = pd.read_parquet(paths["cohort_omop.parquet"])
    assert len(omop_back) == len(back) and omop_back["cohort_definition_id"].dtype == "int64"
    assert not list(tmp_path.glob("*.tmp"))
    bad = res.cohort.copy()
    bad.loc[0, "time_days"] = -1.0
    with pytest.raises(CohortError, match="negative time_days"):
        write_outputs(type(res)(bad, res.attrition, res.quality, res.cohort_omop), d,
                      tmp_path / "bad")
    assert not (tmp_path / "bad" / "cohort.parquet").exists()


# --- bad input ------------------------------------------------------------------------------

def test_missing_table(tmp_path):
    frames = build_fixture().frames()
    del frames["death"]
    folder = write_tables(frames, tmp_path)
    with pytest.raises(CohortError, match=r"OMOP table 'death': no death.parquet or death.csv"):
        extract_cohort(folder, parse_definition(definition_dict()))


def test_missing_column(tmp_path):
    frames = build_fixture().frames()
    frames["measurement"] = frames["measurement"].drop(columns="unit_concept_id")
    with pytest.raises(CohortError, match=r"'measurement'.*missing column 'unit_concept_id'"):
        extract_cohort(write_tables(frames, tmp_path), parse_definition(definition_dict()))


def test_wrong_type(tmp_path):
    frames = build_fixture().frames()
    frames["death"]["death_date"] = frames["death"]["death_date"].astype(str) + "x"
    with pytest.raises(CohortError, match=r"'death'.*column 'death_date' has type VARCHAR, expected date"):
        extract_cohort(write_tables(frames, tmp_path), parse_definition(definition_dict()))


def test_bad_value_in_csv_names_file_and_column(tmp_path):
    frames = build_fixture().frames()
    co = frames["condition_occurrence"]
    co["condition_start_date"] = co["condition_start_date"].astype(str)
    co.loc[3, "condition_start_date"] = "2020-13-45"
    folder = write_tables(frames, tmp_path, fmt="csv")
    with pytest.raises(CohortError, match="failed on the OMOP input") as err:
        extract_cohort(folder, parse_definition(definition_dict()))
    assert "condition_occurrence.csv" in str(err.value)
    assert 'converting column "condition_start_date"' in str(err.value)


def test_unknown_concept_id(tmp_path):
    folder = write_tables(build_fixture().frames(), tmp_path)
    spec = definition_dict()
    spec["concept_sets"]["copd"] = [20, 987654]
    with pytest.raises(CohortError, match=r"not in table 'concept' \(copd: 987654\)"):
        extract_cohort(folder, parse_definition(spec))


def test_empty_after_criterion_names_it(tmp_path):
    folder = write_tables(build_fixture().frames(), tmp_path / "omop")
    spec = definition_dict()
    spec["min_age_years"] = 120
    with pytest.raises(CohortError, match=r"no person left after criterion 'Age at index >= 120"):
        extract_cohort(folder, parse_definition(spec))


@pytest.mark.parametrize("key, value, message", [
    ("prior_observation_days", "365", "prior_observation_days must be an integer"),
    ("target_concept_set", "sclc", "refers to concept set 'sclc'"),
    ("follow_up", {"administrative_censor_date": "31/12/2025"}, "must be an ISO date"),
    ("outcomes", {"pneumonitis": {"type": "event", "table": "condition_occurrence",
                                  "concept_set": "pneumonitis"}}, "exactly one {type: death}"),
    ("outcomes", {"death": {"type": "death"}, "x": {"type": "event", "table": "drug_era",
                                                    "concept_set": "copd"}}, "x.table must be"),
    ("outcomes", {"death": {"type": "death"}, "x": {"type": "event", "table": "condition_occurrence",
                                                    "concept_set": "copd", "value_range": [0, 1]}},
     "x.value_range applies only to tables"),
    ("protocol", {"eligibility": {"specification": "adults"}}, "missing key protocol.'treatment"),
])
def test_bad_definition(key, value, message):
    spec = definition_dict()
    spec[key] = value
    with pytest.raises(CohortError, match=message):
        parse_definition(spec)


def test_arms_must_be_mutually_exclusive_with_a_reference():
    spec = definition_dict()
    arms = spec["treatment_strategies"]["arms"]
    del arms["chemo_io"]["none_of"]
    d = parse_definition(spec)  # chemo_io without none_of still excludes chemo and io
    assert d.strategies.non_reference == ["io", "chemo_io"]
    arms["io"]["none_of"] = ["targeted"]  # io {immuno} and chemo_io {chemo, immuno} overlap
    with pytest.raises(CohortError, match="arms 'io' and 'chemo_io' can match the same regimen"):
        parse_definition(spec)
    spec = definition_dict()
    spec["treatment_strategies"]["reference"] = "placebo"
    with pytest.raises(CohortError, match="reference 'placebo' is not one of the arms"):
        parse_definition(spec)
    spec["treatment_strategies"]["arms"] = {"io": arms["io"]}
    with pytest.raises(CohortError, match=">= 2 arm"):
        parse_definition(spec)


def test_unit_keys_given_as_strings_are_ids():
    """papermill injects dict keys as strings: {"8636": 0.1} means unit concept 8636."""
    spec = definition_dict()
    alb = spec["covariates"]["numeric"]["albumin_g_dl"]
    alb["units"] = {str(k): v for k, v in alb["units"].items()}
    d = parse_definition(spec)
    assert d.numeric[0].units == {G_DL: 1.0, G_L: 0.1}
    alb["units"] = {"g/L": 0.1}
    with pytest.raises(CohortError, match=r"albumin_g_dl.units must be an integer, got 'g/L'"):
        parse_definition(spec)


def test_cli_prints_the_script_for_params_yaml(capsys):
    from pmed.cohort.__main__ import main

    main(["--sql", "postgres"])
    out = capsys.readouterr().out
    assert out.startswith("DROP TABLE IF EXISTS pg_temp.definition_concepts;\n\n"
                          "CREATE TEMP TABLE definition_concepts (") and "MAKE_DATE(" in out
    assert out.rstrip().endswith("SELECT * FROM cohort ORDER BY person_id;")


def test_pandas_reference_gives_the_fixture_cohort(fixture_result):
    """benchmarks/bench_cohort.py's independent pandas version agrees on every rule here."""
    sys.path.insert(0, str(config.ROOT / "benchmarks"))
    from bench_cohort import pandas_cohort

    folder, d, res = fixture_result
    pd.testing.assert_frame_equal(pandas_cohort(folder, d), res.cohort)


def test_observation_outcome_with_value_concepts(tmp_path):
    """An observation outcome restricted to one value concept: person 5 (t0 2020-03-01)
    records 'never' at day 31 (other value) and 'current' at day 61 -> status 1, 61 d."""
    o = build_fixture()
    o.meas(5, SMOKING, D(2020, 4, 1), value_concept=NEVER, table="observation")
    o.meas(5, SMOKING, D(2020, 5, 1), value_concept=CURRENT, table="observation")
    spec = definition_dict()
    spec["outcomes"] = {"death": {"type": "death"},
                        "smoking_relapse": {"type": "event", "table": "observation",
                                            "concept_set": "smoking",
                                            "value_concept_ids": [CURRENT]}}
    d = parse_definition(spec)
    res = extract_cohort(write_tables(o.frames(), tmp_path), d, memory_limit="1GB", threads=1)
    p5 = row(res, 5)
    assert (p5["smoking_relapse_status"], p5["smoking_relapse_time_days"]) == (1, 61.0)
    assert set(res.cohort.loc[res.cohort["person_id"] != 5, "smoking_relapse_status"]) <= {0, 2}
    assert pd.isna(p5["smoking_current"])  # records after index do not enter its baseline


def test_person_row_missing_is_not_an_impossible_date(tmp_path):
    """A diagnosis of a person absent from `person` (no birth date) is excluded at the age
    step, as before, not counted as an impossible date."""
    frames = build_fixture().frames()
    frames["person"] = frames["person"][frames["person"]["person_id"] != 5]
    res = extract_cohort(write_tables(frames, tmp_path), parse_definition(definition_dict()),
                         memory_limit="1GB", threads=1)
    assert res.attrition["excluded"].tolist() == [0, 3, 2, 2, 2, 1, 2, 1, 2, 1]
    assert 5 not in res.cohort["person_id"].tolist()


def test_anchor_must_be_t0_or_index():
    spec = definition_dict()
    spec["covariates"]["condition_anchor"] = "diagnosis"
    with pytest.raises(CohortError, match=r"covariates.condition_anchor must be one of \('t0', 'index'\)"):
        parse_definition(spec)
    spec = definition_dict()
    spec["covariates"]["categorical"]["stage"]["anchor"] = "T0"
    with pytest.raises(CohortError, match=r"categorical.stage.anchor must be one of"):
        parse_definition(spec)


def test_atlas_concept_set_file_gives_the_same_cohort(fixture_result, tmp_path):
    """A concept set given as an ATLAS JSON export resolves like the id list it describes."""
    import json

    folder, d, res = fixture_result
    spec = definition_dict()
    files = {}
    for name in (spec["target_concept_set"], "immunotherapy"):
        if name not in spec["concept_sets"]:
            continue
        items = [{"concept": {"CONCEPT_ID": cid}, "includeDescendants": True,
                  "isExcluded": False, "includeMapped": False} for cid in spec["concept_sets"][name]]
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps({"items": items}))
    assert len(files) == 2, sorted(spec["concept_sets"])
    spec["concept_sets"] = {**spec["concept_sets"], **{k: str(v) for k, v in files.items()}}
    via_atlas = extract_cohort(folder, parse_definition(spec), memory_limit="1GB", threads=1)
    pd.testing.assert_frame_equal(via_atlas.cohort, res.cohort)
    pd.testing.assert_frame_equal(via_atlas.attrition, res.attrition)
