"""The analysis cohort contract: columns of data/processed/cohort.parquet, units, checks.

:func:`columns` is the single description of the output for a definition: its order, pandas
dtypes, units and meaning. Fixed columns (:data:`CORE`, :data:`COVARIATES`) are always
there; the definition adds one ``arm_<label>`` indicator per non-reference arm, a
``<name>_time_days`` / ``<name>_status`` pair per non-death outcome and any further
covariate of params. It is written next to the cohort as ``cohort_dictionary.csv``, and
:func:`validate_cohort` checks a frame against it before anything is written.
"""

from __future__ import annotations

import pandas as pd

from pmed.cohort.definition import CohortDefinition
from pmed.cohort.errors import CohortError

# column -> (pandas dtype, unit, description). "Int8" is pandas' nullable int8 (NaN = missing).
CORE: dict[str, tuple[str, str, str]] = {
    "person_id": ("int64", "", "OMOP person_id"),
    "index_date": ("date", "date", "first qualifying NSCLC diagnosis"),
    "t0_date": ("date", "date", "start of the first-line regimen = start of follow-up"),
    "treatment": ("str", "", "arm of the first-line regimen (cohort.treatment_strategies.arms)"),
    "t0_year": ("int64", "year", "calendar year of t0"),
    "days_dx_to_treatment": ("int64", "days", "t0_date - index_date"),
    "time_days": ("float64", "days", "t0 to death or censoring"),
    "event": ("int8", "0/1", "1 = death observed"),
}
DEMOGRAPHICS: dict[str, tuple[str, str, str]] = {
    "age_years": ("float64", "years", "age at index (days / 365.25)"),
    "sex_female": ("Int8", "0/1", "1 = female, 0 = male; missing if gender unknown"),
}
# Baseline covariates every cohort must have (the downstream stages use them).
COVARIATES: dict[str, tuple[str, str, str]] = {
    "smoking_current": ("Int8", "0/1", "current smoker (never = reference); missing if unknown"),
    "smoking_former": ("Int8", "0/1", "former smoker (never = reference); missing if unknown"),
    "ecog": ("float64", "score", "ECOG performance status, last in window"),
    "stage_iv": ("Int8", "0/1", "1 = stage IV, 0 = stage III; missing if unknown"),
    "copd": ("int8", "0/1", "COPD recorded before the window end"),
    "diabetes": ("int8", "0/1", "diabetes recorded before the window end"),
    "heart_failure": ("int8", "0/1", "heart failure recorded before the window end"),
    "ckd": ("int8", "0/1", "chronic kidney disease recorded before the window end"),
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
# Optional covariates with a known meaning (present when params defines them).
KNOWN_OPTIONAL: dict[str, tuple[str, str, str]] = {
    "driver_positive": ("Int8", "0/1", "last EGFR/ALK result positive (1) / negative (0); "
                                      "missing if untested"),
}


def unit_of(column: str) -> str:
    """The contract unit of ``column`` ("" when unitless or not a fixed contract column)."""
    return {**CORE, **DEMOGRAPHICS, **COVARIATES, **KNOWN_OPTIONAL}.get(column, ("", "", ""))[1]


def columns(d: CohortDefinition) -> dict[str, tuple[str, str, str]]:
    """The cohort's columns for definition ``d``, in order: {column: (dtype, unit, description)}."""
    st = d.strategies
    out = dict(list(CORE.items())[:4])
    for a in st.non_reference:
        out[f"arm_{a}"] = ("int8", "0/1", f"1 = arm {a!r} (reference arm: {st.reference!r})")
    out |= dict(list(CORE.items())[4:])
    for o in d.event_outcomes:
        out[f"{o.name}_time_days"] = ("float64", "days", f"t0 to first {o.name}, competing "
                                      "death or censoring")
        out[f"{o.name}_status"] = ("int8", "0/1/2", f"1 = {o.name}, 2 = death first "
                                   "(competing), 0 = censored")
    out |= DEMOGRAPHICS | COVARIATES
    extra = {c: ("int8", "0/1", f"concept set {s!r} recorded in window")
             for c, s in d.conditions.items()}
    extra |= {c.column: ("float64", "", f"concept set {c.concept_set!r}, last in window")
              for c in d.numeric}
    extra |= {lvl: ("Int8", "0/1", f"last {c.name} value is {lvl}; missing if unknown")
              for c in d.categorical for lvl in c.levels}
    for col, spec in extra.items():
        if col not in out:
            out[col] = KNOWN_OPTIONAL.get(col, spec)
    return out


def dictionary(d: CohortDefinition, windows: dict[str, str] | None = None) -> pd.DataFrame:
    """Column dictionary: column, dtype, unit, description (+ the window rule when given)."""
    windows = windows or {}
    return pd.DataFrame(
        [{"column": c, "dtype": t, "unit": u, "description": desc, "window": windows.get(c, "")}
         for c, (t, u, desc) in columns(d).items()]
    )


def coerce(frame: pd.DataFrame, d: CohortDefinition) -> pd.DataFrame:
    """``frame`` with exactly the contract columns of ``d``, in order, cast to their dtypes."""
    spec = columns(d)
    missing = [c for c in spec if c not in frame.columns]
    if missing:
        raise CohortError(f"cohort: the definition produced no column(s) {missing}; the "
                          "contract needs every one (add them to params.yaml cohort.covariates)")
    out = pd.DataFrame(index=frame.index)
    for col, (dtype, _, _) in spec.items():
        s = frame[col]
        if dtype == "date":
            out[col] = pd.to_datetime(s).dt.date
        elif dtype == "str":
            out[col] = s.astype(str)
        elif dtype == "Int8":
            out[col] = pd.to_numeric(s).astype("Int8")
        else:
            out[col] = s.astype(dtype)
    return out.reset_index(drop=True)


def validate_cohort(frame: pd.DataFrame, d: CohortDefinition) -> None:
    """CohortError unless ``frame`` meets the contract (checked before any file is written)."""
    if frame.empty:
        raise CohortError("cohort: no person left; expected at least one eligible person")
    if list(frame.columns) != list(columns(d)):
        raise CohortError(f"cohort: columns {list(frame.columns)} differ from the contract")
    problems = []
    arms = list(d.strategies.arms)
    if frame["person_id"].duplicated().any():
        problems.append("person_id is not unique (expected one row per person)")
    if not frame["treatment"].isin(arms).all():
        problems.append(f"treatment outside {arms}")
    for a in d.strategies.non_reference:
        if not (frame[f"arm_{a}"] == (frame["treatment"] == a)).all():
            problems.append(f"arm_{a} disagrees with treatment")
    if (frame["time_days"] < 0).any():
        problems.append("negative time_days (follow-up must start at t0)")
    if not frame["event"].isin([0, 1]).all():
        problems.append("event not 0/1")
    for o in d.event_outcomes:
        if (frame[f"{o.name}_time_days"] < 0).any():
            problems.append(f"negative {o.name}_time_days")
        if not frame[f"{o.name}_status"].isin([0, 1, 2]).all():
            problems.append(f"{o.name}_status not 0/1/2")
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
