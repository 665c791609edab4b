"""The analysis cohort contract: columns of data/processed/cohort.parquet, units, checks.

``COLUMNS`` is the single description of the output: its order, pandas dtypes, units and
meaning; it is written next to the cohort as ``cohort_dictionary.csv``, and
:func:`validate_cohort` checks a frame against it before anything is written.
"""

from __future__ import annotations

import pandas as pd

from pmed.cohort.errors import CohortError

# column -> (pandas dtype, unit, description). "Int8" is pandas' nullable int8 (NaN = missing).
COLUMNS: dict[str, tuple[str, str, str]] = {
    "person_id": ("int64", "", "OMOP person_id"),
    "index_date": ("date", "date", "first qualifying NSCLC diagnosis"),
    "t0_date": ("date", "date", "start of first-line treatment = start of follow-up"),
    "treatment": ("str", "", "first-line group: immunotherapy | chemotherapy"),
    "treated": ("int8", "0/1", "1 = immunotherapy"),
    "days_dx_to_treatment": ("int64", "days", "t0_date - index_date"),
    "time_days": ("float64", "days", "t0 to death or censoring"),
    "event": ("int8", "0/1", "1 = death observed"),
    "age_years": ("float64", "years", "age at index (days / 365.25)"),
    "sex_female": ("int8", "0/1", "1 = female"),
    "smoking_current": ("Int8", "0/1", "current smoker (never = reference); missing if unknown"),
    "smoking_former": ("Int8", "0/1", "former smoker (never = reference); missing if unknown"),
    "ecog": ("float64", "score", "ECOG performance status, last in window"),
    "stage_iv": ("Int8", "0/1", "1 = stage IV, 0 = stage III; missing if unknown"),
    "copd": ("int8", "0/1", "COPD recorded before index"),
    "diabetes": ("int8", "0/1", "diabetes recorded before index"),
    "heart_failure": ("int8", "0/1", "heart failure recorded before index"),
    "ckd": ("int8", "0/1", "chronic kidney disease recorded before index"),
    "albumin_g_dl": ("float64", "g/dL", "serum albumin, last in window"),
    "ldh_u_l": ("float64", "U/L", "lactate dehydrogenase, last in window"),
    "neutrophils_10e9_l": ("float64", "10^9/L", "neutrophil count, last in window"),
    "lymphocytes_10e9_l": ("float64", "10^9/L", "lymphocyte count, last in window"),
    "hemoglobin_g_dl": ("float64", "g/dL", "haemoglobin, last in window"),
    "creatinine_mg_dl": ("float64", "mg/dL", "serum creatinine, last in window"),
    "weight_kg": ("float64", "kg", "body weight, last in window"),
    "bmi_kg_m2": ("float64", "kg/m2", "body mass index, last in window"),
    "pdl1_pct": ("float64", "%", "PD-L1 tumour proportion score, last in window"),
}


def unit_of(column: str) -> str:
    """The contract unit of ``column`` ("" when unitless or not a contract column)."""
    return COLUMNS.get(column, ("", "", ""))[1]


def dictionary(windows: dict[str, str] | None = None) -> pd.DataFrame:
    """Column dictionary: column, dtype, unit, description (+ the window rule when given)."""
    windows = windows or {}
    return pd.DataFrame(
        [{"column": c, "dtype": t, "unit": u, "description": desc, "window": windows.get(c, "")}
         for c, (t, u, desc) in COLUMNS.items()]
    )


def coerce(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with exactly the contract columns, in order, cast to the contract dtypes."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise CohortError(f"cohort: the definition produced no column(s) {missing}; the "
                          "contract needs every one (add them to params.yaml cohort.covariates)")
    out = pd.DataFrame(index=frame.index)
    for col, (dtype, _, _) in COLUMNS.items():
        s = frame[col]
        if dtype == "date":
            out[col] = pd.to_datetime(s).dt.date
        elif dtype == "str":
            out[col] = s.astype(str)
        else:
            out[col] = s.astype(dtype)
    return out.reset_index(drop=True)


def validate_cohort(frame: pd.DataFrame, groups: list[str]) -> None:
    """CohortError unless ``frame`` meets the contract (checked before any file is written)."""
    if frame.empty:
        raise CohortError("cohort: no person left; expected at least one eligible person")
    if list(frame.columns) != list(COLUMNS):
        raise CohortError(f"cohort: columns {list(frame.columns)} differ from the contract")
    problems = []
    if frame["person_id"].duplicated().any():
        problems.append("person_id is not unique (expected one row per person)")
    if not frame["treatment"].isin(groups).all():
        problems.append(f"treatment outside {groups}")
    if (frame["time_days"] < 0).any():
        problems.append("negative time_days (follow-up must start at t0)")
    if not frame["event"].isin([0, 1]).all():
        problems.append("event not 0/1")
    if (frame["days_dx_to_treatment"] < 0).any():
        problems.append("treatment before index")
    ecog = frame["ecog"].dropna()
    if ((ecog < 0) | (ecog > 4)).any():
        problems.append("ecog outside 0-4")
    pdl1 = frame["pdl1_pct"].dropna()
    if ((pdl1 < 0) | (pdl1 > 100)).any():
        problems.append("pdl1_pct outside 0-100")
    if problems:
        raise CohortError("cohort: contract check failed: " + "; ".join(problems))
