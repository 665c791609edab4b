"""The OMOP vocabulary subset used by the synthetic demo data set.

The ids are OMOP standard concept ids of the OHDSI (Athena) vocabularies, so cohort definitions
written against the demo are meant to run unchanged on a real CDM. Each id was checked against
public OMOP code/concept tables where one could be found; the few that could NOT be confirmed
that way are listed in :data:`UNVERIFIED` (check them against Athena before relying on them).
The demo writes the ``concept``, ``concept_ancestor`` and ``concept_relationship`` tables for
exactly this subset:
a concept set ``{ancestor}`` expands via ``concept_ancestor`` to the (descendant) codes that
the generator actually puts in the clinical tables, as on a real CDM.

Public names
------------
CONCEPT_SETS : dict[str, list[int]]
    Ancestor concept ids per clinical idea (copied into params.yaml ``cohort:``).
VALUE_CONCEPTS : dict[str, int]
    Categorical answers (smoking status, stage group, test result positive/negative).
UNITS : dict[str, int]
    UCUM unit concept ids keyed by the UCUM code.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Concept:
    """One row of the OMOP ``concept`` table (standard concepts only in this subset)."""

    concept_id: int
    concept_name: str
    domain_id: str
    vocabulary_id: str
    concept_class_id: str
    concept_code: str
    standard_concept: str | None = "S"


# --- clinical concepts ------------------------------------------------------------------
NSCLC = Concept(4115276, "Non-small cell lung cancer", "Condition", "SNOMED", "Disorder", "254637007")
LUNG_ADENOCARCINOMA = Concept(
    45768916, "Primary adenocarcinoma of lung", "Condition", "SNOMED", "Disorder", "707451005"
)
LUNG_SQUAMOUS = Concept(
    4311999, "Squamous cell carcinoma of lung", "Condition", "SNOMED", "Disorder", "254634000"
)
BREAST_CANCER = Concept(4112853, "Malignant tumor of breast", "Condition", "SNOMED", "Disorder", "254837009")
PROSTATE_CANCER = Concept(
    200962, "Primary malignant neoplasm of prostate", "Condition", "SNOMED", "Disorder", "93974005"
)
COPD = Concept(255573, "Chronic obstructive lung disease", "Condition", "SNOMED", "Disorder", "13645005")
T2DM = Concept(201826, "Type 2 diabetes mellitus", "Condition", "SNOMED", "Disorder", "44054006")
HEART_FAILURE = Concept(316139, "Heart failure", "Condition", "SNOMED", "Disorder", "84114007")
CKD = Concept(46271022, "Chronic kidney disease", "Condition", "SNOMED", "Disorder", "709044004")

PEMBROLIZUMAB = Concept(45775965, "pembrolizumab", "Drug", "RxNorm", "Ingredient", "1547545")
NIVOLUMAB = Concept(45892628, "nivolumab", "Drug", "RxNorm", "Ingredient", "1597876")
ATEZOLIZUMAB = Concept(42629079, "atezolizumab", "Drug", "RxNorm", "Ingredient", "1792776")
CISPLATIN = Concept(1397599, "cisplatin", "Drug", "RxNorm", "Ingredient", "2555")
CARBOPLATIN = Concept(1344905, "carboplatin", "Drug", "RxNorm", "Ingredient", "40048")
PEMETREXED = Concept(1304919, "pemetrexed", "Drug", "RxNorm", "Ingredient", "68446")

ALBUMIN = Concept(3024561, "Albumin [Mass/volume] in Serum or Plasma", "Measurement", "LOINC", "Lab Test", "1751-7")
LDH = Concept(
    3016436, "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma by Lactate to pyruvate reaction",
    "Measurement", "LOINC", "Lab Test", "2532-0",
)
NEUTROPHILS = Concept(
    3013650, "Neutrophils [#/volume] in Blood by Automated count", "Measurement", "LOINC", "Lab Test", "751-8"
)
LYMPHOCYTES = Concept(
    3004327, "Lymphocytes [#/volume] in Blood by Automated count", "Measurement", "LOINC", "Lab Test", "731-0"
)
HEMOGLOBIN = Concept(3000963, "Hemoglobin [Mass/volume] in Blood", "Measurement", "LOINC", "Lab Test", "718-7")
CREATININE = Concept(
    3016723, "Creatinine [Mass/volume] in Serum or Plasma", "Measurement", "LOINC", "Lab Test", "2160-0"
)
BODY_WEIGHT = Concept(3025315, "Body weight", "Measurement", "LOINC", "Clinical Observation", "29463-7")
BMI = Concept(3038553, "Body mass index (BMI) [Ratio]", "Measurement", "LOINC", "Clinical Observation", "39156-5")
PDL1 = Concept(
    36204026, "PD-L1 by clone 22C3 Ab [Interpretation] in Tissue by Immune stain tumor proportion score",
    "Measurement", "LOINC", "Lab Test", "85147-7",
)
ECOG = Concept(
    36305384, "ECOG Performance Status score", "Measurement", "LOINC", "Clinical Observation", "89247-1",
)
SMOKING_STATUS = Concept(
    43054909, "Tobacco smoking status", "Observation", "LOINC", "Clinical Observation", "72166-2"
)
STAGE_GROUP = Concept(
    3022698, "Stage group.clinical Cancer", "Measurement", "LOINC", "Clinical Observation", "21908-9"
)
# Driver tests. No public source at hand gave the OMOP ids of these LOINC tests: the ids are
# placeholders in the OMOP local-concept range (>= 2,000,000,000; see UNVERIFIED).
EGFR_TEST = Concept(
    2000000001, "EGFR gene mutation analysis in Blood or Tissue by Molecular genetics method",
    "Measurement", "LOINC", "Lab Test", "21665-5",
)
ALK_TEST = Concept(
    2000000002, "ALK gene rearrangements [Presence] in Tissue by FISH", "Measurement", "LOINC", "Lab Test", "76042-8",
)
PNEUMONITIS = Concept(4273378, "Interstitial pneumonia", "Condition", "SNOMED", "Disorder", "64667001")

# --- value (answer) concepts --------------------------------------------------------------
NEVER_SMOKER = Concept(45879404, "Never smoker", "Meas Value", "LOINC", "Answer", "LA18978-9")
FORMER_SMOKER = Concept(45883458, "Former smoker", "Meas Value", "LOINC", "Answer", "LA15920-4")
CURRENT_SMOKER = Concept(45881517, "Current every day smoker", "Meas Value", "LOINC", "Answer", "LA18976-3")
POSITIVE = Concept(9191, "Positive", "Meas Value", "Meas Value", "Meas Value", "10828004")
NEGATIVE = Concept(9189, "Negative", "Meas Value", "Meas Value", "Meas Value", "260385009")
# OMOP Cancer Modifier stage groups (used as value_as_concept_id of the stage-group record);
# their concept_code values below are illustrative (not looked up).
STAGE_III = Concept(1633650, "AJCC/UICC Stage 3", "Measurement", "Cancer Modifier", "Staging/Grading", "AJCC/UICC-Stage-3")
STAGE_IV = Concept(1633308, "AJCC/UICC Stage 4", "Measurement", "Cancer Modifier", "Staging/Grading", "AJCC/UICC-Stage-4")

# --- units (UCUM) ---------------------------------------------------------------------------
UNIT_CONCEPTS = (
    Concept(8713, "gram per deciliter", "Unit", "UCUM", "Unit", "g/dL"),
    Concept(8636, "gram per liter", "Unit", "UCUM", "Unit", "g/L"),
    Concept(8645, "unit per liter", "Unit", "UCUM", "Unit", "U/L"),
    Concept(9444, "billion per liter", "Unit", "UCUM", "Unit", "10*9/L"),
    Concept(8840, "milligram per deciliter", "Unit", "UCUM", "Unit", "mg/dL"),
    Concept(8749, "micromole per liter", "Unit", "UCUM", "Unit", "umol/L"),
    Concept(9529, "kilogram", "Unit", "UCUM", "Unit", "kg"),
    Concept(9531, "kilogram per square meter", "Unit", "UCUM", "Unit", "kg/m2"),
    Concept(8554, "percent", "Unit", "UCUM", "Unit", "%"),
)

# --- imaging, visits, demographics, provenance ------------------------------------------------
CT_MODALITY = Concept(4300757, "Computed tomography", "Procedure", "SNOMED", "Procedure", "77477000")
MR_MODALITY = Concept(4013636, "Magnetic resonance imaging", "Procedure", "SNOMED", "Procedure", "113091000")
CHEST_SITE = Concept(4199473, "Thoracic structure", "Spec Anatomic Site", "SNOMED", "Body Structure", "51185008")
CHEST_CT = Concept(4058335, "CT of chest", "Procedure", "SNOMED", "Procedure", "169069000")
INPATIENT_VISIT = Concept(9201, "Inpatient Visit", "Visit", "Visit", "Visit", "IP")
OUTPATIENT_VISIT = Concept(9202, "Outpatient Visit", "Visit", "Visit", "Visit", "OP")
ER_VISIT = Concept(9203, "Emergency Room Visit", "Visit", "Visit", "Visit", "ER")
MALE = Concept(8507, "MALE", "Gender", "Gender", "Gender", "M")
FEMALE = Concept(8532, "FEMALE", "Gender", "Gender", "Gender", "F")
WHITE = Concept(8527, "White", "Race", "Race", "Race", "5")
BLACK = Concept(8516, "Black or African American", "Race", "Race", "Race", "3")
ASIAN = Concept(8515, "Asian", "Race", "Race", "Race", "2")
HISPANIC = Concept(38003563, "Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "Hispanic")
NOT_HISPANIC = Concept(38003564, "Not Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "Not Hispanic")
EHR_TYPE = Concept(32817, "EHR", "Type Concept", "Type Concept", "Type Concept", "OMOP4976890")
NO_MATCHING_CONCEPT = Concept(0, "No matching concept", "Metadata", "None", "Undefined", "No matching concept",
                              standard_concept=None)

# Ids (and the two Cancer Modifier concept codes) that no public source at hand confirmed.
UNVERIFIED: dict[int, str] = {
    4311999: "Squamous cell carcinoma of lung (SNOMED 254634000): id not confirmed",
    36204026: "PD-L1 22C3 tumour proportion score (LOINC 85147-7): id not confirmed",
    1633650: "AJCC/UICC Stage 3: id confirmed; concept_code follows the Cancer Modifier pattern, not seen written out",
    1633308: "AJCC/UICC Stage 4: id confirmed; concept_code follows the Cancer Modifier pattern, not seen written out",
    2000000001: "EGFR mutation test (LOINC 21665-5): placeholder local id, the standard OMOP id was not found; "
                "the LOINC code is taken from the HL7 FHIR genetics example, its exact long name not confirmed",
    2000000002: "ALK rearrangement test (LOINC 76042-8): placeholder local id, the standard OMOP id was not found; "
                "LOINC code and name from a third-party code table, not confirmed",
    4273378: "Interstitial pneumonia: id confirmed (OHDSI Covid-19 phenotype vocabulary list, SNOMED Condition); "
             "its SNOMED code 64667001 not seen written out. Used for immune-related pneumonitis; SNOMED "
             "'Pneumonitis' (205237003) would be the wider ancestor, its OMOP id not found",
    9191: "Positive: id confirmed (OHDSI ETL tests: a positive lab result maps to value_as_concept_id 9191); "
          "concept_code 10828004 not seen written out",
    4013636: "Magnetic resonance imaging: id confirmed (an OHDSI feature query uses procedure_concept_id "
             "4013636 for it); SNOMED code 113091000 not seen written out",
    9189: "Negative: id confirmed (OHDSI 'Maps to value' table, Meas Value); concept_code 260385009 not seen "
          "written out",
}

# Direct "Is a" edges (descendant, ancestor) of this subset.
IS_A: tuple[tuple[int, int], ...] = (
    (LUNG_ADENOCARCINOMA.concept_id, NSCLC.concept_id),
    (LUNG_SQUAMOUS.concept_id, NSCLC.concept_id),
)

CONCEPTS: tuple[Concept, ...] = (
    NSCLC, LUNG_ADENOCARCINOMA, LUNG_SQUAMOUS, BREAST_CANCER, PROSTATE_CANCER,
    COPD, T2DM, HEART_FAILURE, CKD,
    PEMBROLIZUMAB, NIVOLUMAB, ATEZOLIZUMAB, CISPLATIN, CARBOPLATIN, PEMETREXED,
    ALBUMIN, LDH, NEUTROPHILS, LYMPHOCYTES, HEMOGLOBIN, CREATININE, BODY_WEIGHT, BMI,
    PDL1, ECOG, SMOKING_STATUS, STAGE_GROUP, EGFR_TEST, ALK_TEST, PNEUMONITIS,
    NEVER_SMOKER, FORMER_SMOKER, CURRENT_SMOKER, STAGE_III, STAGE_IV, POSITIVE, NEGATIVE,
    *UNIT_CONCEPTS,
    CT_MODALITY, MR_MODALITY, CHEST_SITE, CHEST_CT,
    INPATIENT_VISIT, OUTPATIENT_VISIT, ER_VISIT,
    MALE, FEMALE, WHITE, BLACK, ASIAN, HISPANIC, NOT_HISPANIC, EHR_TYPE, NO_MATCHING_CONCEPT,
)

CONCEPT_SETS: dict[str, list[int]] = {
    "nsclc": [NSCLC.concept_id],
    "other_cancer": [BREAST_CANCER.concept_id, PROSTATE_CANCER.concept_id],
    "immunotherapy": [PEMBROLIZUMAB.concept_id, NIVOLUMAB.concept_id, ATEZOLIZUMAB.concept_id],
    "chemotherapy": [CISPLATIN.concept_id, CARBOPLATIN.concept_id, PEMETREXED.concept_id],
    "copd": [COPD.concept_id],
    "diabetes": [T2DM.concept_id],
    "heart_failure": [HEART_FAILURE.concept_id],
    "ckd": [CKD.concept_id],
    "albumin": [ALBUMIN.concept_id],
    "ldh": [LDH.concept_id],
    "neutrophils": [NEUTROPHILS.concept_id],
    "lymphocytes": [LYMPHOCYTES.concept_id],
    "hemoglobin": [HEMOGLOBIN.concept_id],
    "creatinine": [CREATININE.concept_id],
    "weight": [BODY_WEIGHT.concept_id],
    "bmi": [BMI.concept_id],
    "pdl1": [PDL1.concept_id],
    "ecog": [ECOG.concept_id],
    "smoking": [SMOKING_STATUS.concept_id],
    "stage": [STAGE_GROUP.concept_id],
    "chest_ct": [CHEST_CT.concept_id],
    "driver_test": [EGFR_TEST.concept_id, ALK_TEST.concept_id],
    "pneumonitis": [PNEUMONITIS.concept_id],
    "inpatient_visit": [INPATIENT_VISIT.concept_id],
}

VALUE_CONCEPTS: dict[str, int] = {
    "never_smoker": NEVER_SMOKER.concept_id,
    "former_smoker": FORMER_SMOKER.concept_id,
    "current_smoker": CURRENT_SMOKER.concept_id,
    "stage_iii": STAGE_III.concept_id,
    "stage_iv": STAGE_IV.concept_id,
    "positive": POSITIVE.concept_id,
    "negative": NEGATIVE.concept_id,
}

UNITS: dict[str, int] = {c.concept_code: c.concept_id for c in UNIT_CONCEPTS}

VOCAB_VALID_START = pd.Timestamp("1970-01-01").date()
VOCAB_VALID_END = pd.Timestamp("2099-12-31").date()


def concept_table() -> pd.DataFrame:
    """The OMOP ``concept`` table of this subset, one row per concept, sorted by id."""
    ids = [c.concept_id for c in CONCEPTS]
    if len(ids) != len(set(ids)):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"vocabulary: duplicate concept ids {dup}")
    df = pd.DataFrame(
        {
            "concept_id": pd.array(ids, dtype="int64"),
            "concept_name": [c.concept_name for c in CONCEPTS],
            "domain_id": [c.domain_id for c in CONCEPTS],
            "vocabulary_id": [c.vocabulary_id for c in CONCEPTS],
            "concept_class_id": [c.concept_class_id for c in CONCEPTS],
            "standard_concept": [c.standard_concept for c in CONCEPTS],
            "concept_code": [c.concept_code for c in CONCEPTS],
            "valid_start_date": VOCAB_VALID_START,
            "valid_end_date": VOCAB_VALID_END,
            "invalid_reason": pd.array([None] * len(CONCEPTS), dtype="string"),
        }
    )
    return df.sort_values("concept_id", ignore_index=True)


def concept_ancestor_table() -> pd.DataFrame:
    """The OMOP ``concept_ancestor`` table: transitive closure of :data:`IS_A` plus self rows.

    Every standard concept is its own ancestor at level 0 (as on a real CDM), so a concept set
    expands with ``descendant_concept_id`` where ``ancestor_concept_id`` is in the set.
    """
    parents: dict[int, set[int]] = {}
    for child, parent in IS_A:
        parents.setdefault(child, set()).add(parent)
    rows = []
    for c in CONCEPTS:
        if c.standard_concept != "S":
            continue
        rows.append((c.concept_id, c.concept_id, 0, 0))
        frontier, level = {c.concept_id}, 0
        seen: dict[int, tuple[int, int]] = {}
        while frontier:
            level += 1
            nxt = set().union(*(parents.get(x, set()) for x in frontier))
            for a in nxt:
                lo, hi = seen.get(a, (level, level))
                seen[a] = (min(lo, level), max(hi, level))
            frontier = nxt
        rows.extend((a, c.concept_id, lo, hi) for a, (lo, hi) in seen.items())
    df = pd.DataFrame(
        rows,
        columns=[
            "ancestor_concept_id", "descendant_concept_id",
            "min_levels_of_separation", "max_levels_of_separation",
        ],
    ).astype("int64")
    return df.sort_values(["ancestor_concept_id", "descendant_concept_id"], ignore_index=True)


def concept_relationship_table() -> pd.DataFrame:
    """The OMOP ``concept_relationship`` table: 'Is a'/'Subsumes' pairs and 'Maps to' self rows."""
    rows = []
    for child, parent in IS_A:
        rows.append((child, parent, "Is a"))
        rows.append((parent, child, "Subsumes"))
    for c in CONCEPTS:
        if c.standard_concept == "S":
            rows.append((c.concept_id, c.concept_id, "Maps to"))
            rows.append((c.concept_id, c.concept_id, "Mapped from"))
    df = pd.DataFrame(rows, columns=["concept_id_1", "concept_id_2", "relationship_id"])
    df["concept_id_1"] = df["concept_id_1"].astype("int64")
    df["concept_id_2"] = df["concept_id_2"].astype("int64")
    df["valid_start_date"] = VOCAB_VALID_START
    df["valid_end_date"] = VOCAB_VALID_END
    df["invalid_reason"] = pd.array([None] * len(df), dtype="string")
    return df.sort_values(["concept_id_1", "concept_id_2", "relationship_id"], ignore_index=True)


def expand(concept_set: list[int]) -> set[int]:
    """All descendant ids (including the ancestors themselves) of a concept set."""
    ca = concept_ancestor_table()
    return set(ca.loc[ca["ancestor_concept_id"].isin(concept_set), "descendant_concept_id"])
