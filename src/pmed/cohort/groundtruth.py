"""Checks of the stage's outputs against the demo generator's ground_truth.json (demo only).

The demo writes which persons are eligible, how many fail each criterion and every injected
data-quality defect; these functions line them up with the cohort, attrition and quality
tables so the notebook (and the tests) can show found-vs-injected side by side.
"""

from __future__ import annotations

import pandas as pd

# demo defect name -> the quality checks (check, table, columns or None = all) that find it
DEFECT_CHECKS: dict[str, tuple[str, str, tuple[str, ...] | None]] = {
    "duplicate_condition_occurrence": ("duplicate", "condition_occurrence", None),
    "duplicate_measurement": ("duplicate", "measurement", None),
    "negative_lab_value": ("implausible", "measurement",
                           ("albumin_g_dl", "ldh_u_l", "neutrophils_10e9_l", "lymphocytes_10e9_l",
                            "hemoglobin_g_dl", "creatinine_mg_dl")),
    "zero_weight": ("implausible", "measurement", ("weight_kg",)),
    "death_outside_observation": ("outside_observation", "death", None),
}
# demo exclusion reason -> attrition step (pmed.cohort.queries.ATTRITION_STEPS key)
REASON_STEPS = {
    "short_prior_observation": "prior_obs",
    "age_under_18": "adult",
    "other_cancer_before": "no_prior_cancer",
    "treatment_before_diagnosis": "no_prior_treatment",
    "no_first_line_within_60d": "first_line",
}


def compare_defects(quality: pd.DataFrame, truth_defects: dict) -> pd.DataFrame:
    """One row per injected defect: defect, table, injected, found (sum of matching checks).

    Raises KeyError naming a defect of ground_truth.json that no quality check covers.
    """
    rows = []
    for name, info in sorted(truth_defects.items()):
        if name not in DEFECT_CHECKS:
            raise KeyError(f"ground_truth.json defect {name!r} has no matching quality check "
                           f"(known: {sorted(DEFECT_CHECKS)})")
        check, table, columns = DEFECT_CHECKS[name]
        sel = (quality["check"] == check) & (quality["table"] == table)
        if columns is not None:
            sel &= quality["column"].isin(columns)
        rows.append({"defect": name, "table": table, "injected": int(info["count"]),
                     "found": int(quality.loc[sel, "count"].sum())})
    return pd.DataFrame(rows)


def compare_attrition(attrition: pd.DataFrame, steps: list[str], truth: dict) -> pd.DataFrame:
    """Excluded per criterion, found vs expected by the generator.

    Parameters
    ----------
    attrition : the stage's attrition table (criterion, remaining, excluded).
    steps : the step names of its rows, in order (``list(ATTRITION_STEPS)``).
    truth : the parsed ground_truth.json.

    Returns one row per step: step, criterion, excluded, expected; the first row compares
    the persons with no qualifying diagnosis (n_persons - remaining) with ``no_nsclc``.
    """
    expected = truth["attrition"]["excluded"]
    by_step = {step: reason for reason, step in REASON_STEPS.items()}
    rows = [{"step": "qualifying_dx", "criterion": "No qualifying diagnosis",
             "excluded": int(truth["n_persons"] - attrition["remaining"].iloc[0]),
             "expected": int(expected["no_nsclc"])}]
    for step, (_, r) in zip(steps[1:], attrition.iloc[1:].iterrows(), strict=True):
        rows.append({"step": step, "criterion": r["criterion"], "excluded": int(r["excluded"]),
                     "expected": int(expected.get(by_step.get(step, ""), 0))})
    return pd.DataFrame(rows)
