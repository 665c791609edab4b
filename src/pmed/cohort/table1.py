"""Table 1: baseline characteristics by exposure group, with SMDs and missingness.

Built with tableone (Pollard et al., JAMIA Open 2018, doi:10.1093/jamiaopen/ooy012), then
every count cell passes through :mod:`pmed.privacy`: counts in (0, min_cell) show as
``"<11"`` (percentages of such cells are hidden too, since they would reveal the count).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
from tableone import TableOne

from pmed.privacy import format_count

# cohort column -> Table 1 label; the order is the table's row order.
CONTINUOUS = {
    "age_years": "Age, years",
    "albumin_g_dl": "Albumin, g/dL",
    "hemoglobin_g_dl": "Haemoglobin, g/dL",
    "weight_kg": "Weight, kg",
    "bmi_kg_m2": "BMI, kg/m2",
}
SKEWED = {
    "ldh_u_l": "LDH, U/L",
    "neutrophils_10e9_l": "Neutrophils, 10^9/L",
    "lymphocytes_10e9_l": "Lymphocytes, 10^9/L",
    "creatinine_mg_dl": "Creatinine, mg/dL",
    "pdl1_pct": "PD-L1 TPS, %",
}
BINARY = {
    "sex_female": "Female",
    "stage_iv": "Stage IV (vs III)",
    "copd": "COPD",
    "diabetes": "Diabetes",
    "heart_failure": "Heart failure",
    "ckd": "Chronic kidney disease",
}
DERIVED = {"smoking": "Smoking status", "ecog": "ECOG performance status"}
_COUNT_CELL = re.compile(r"^\s*(\d+)\s*\(([^)]*)\)\s*$")


def table1_frame(cohort: pd.DataFrame) -> pd.DataFrame:
    """Cohort columns recoded for display: smoking as one 3-level variable, ECOG as categories.

    Binary flags become "yes"/"no" so that tableone lists them as categorical; NaN stays
    missing (counted in the Missing column).
    """
    out = pd.DataFrame({"treatment": cohort["treatment"]})
    for col, label in CONTINUOUS.items() | SKEWED.items():
        out[label] = cohort[col].astype(float)
    for col, label in BINARY.items():
        v = cohort[col].astype(float)
        out[label] = pd.Series(np.where(v == 1, "yes", "no"), index=v.index).where(v.notna())
    cur, form = cohort["smoking_current"].astype(float), cohort["smoking_former"].astype(float)
    smoking = np.select([cur == 1, form == 1], ["current", "former"], "never")
    out[DERIVED["smoking"]] = pd.Series(smoking, index=cur.index).where(cur.notna() & form.notna())
    ecog = cohort["ecog"].astype(float)
    out[DERIVED["ecog"]] = ecog.map(lambda e: f"{int(e)}", na_action="ignore")
    return out


def suppress_cell(cell: str, min_cell: int) -> str:
    """``"5 (1.2)"`` -> ``"<11"`` when the count is small; other cells unchanged."""
    m = _COUNT_CELL.match(str(cell))
    if m and 0 < int(m.group(1)) < min_cell:
        return format_count(int(m.group(1)), min_cell)
    return cell


def make_table1(cohort: pd.DataFrame, min_cell: int, group: str = "treatment") -> pd.DataFrame:
    """Table 1 (rows: variables/levels; columns: Missing, Overall, one per group, SMD).

    Parameters
    ----------
    cohort : analysis cohort (contract columns).
    min_cell : minimum cell size; smaller counts (group n, level counts, missing) show as "<k".

    Returns
    -------
    pandas.DataFrame of strings, ready to display or save.
    """
    data = table1_frame(cohort)
    categorical = [*BINARY.values(), *DERIVED.values()]
    columns = [*CONTINUOUS.values(), *SKEWED.values(), *categorical]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tableone warns about normality tests it runs
        t1 = TableOne(data, columns=columns, categorical=categorical,
                      nonnormal=list(SKEWED.values()), groupby=group, smd=True, missing=True,
                      pval=False, overall=True, decimals=1, include_null=False)
    table = t1.tableone.copy()
    table.columns = [c[1] for c in table.columns]
    table = table.astype(str).replace({"nan": ""})
    for col in table.columns:
        if col.startswith("SMD"):
            continue
        if col == "Missing":
            table[col] = [format_count(int(v), min_cell) if v.strip().isdigit() else v
                          for v in table[col]]
        else:
            table[col] = [suppress_cell(v, min_cell) for v in table[col]]
    n_row = table.index.get_level_values(0) == "n"
    for col in table.columns:
        if not col.startswith("SMD") and col != "Missing":
            table.loc[n_row, col] = [format_count(int(v), min_cell) if str(v).isdigit() else v
                                     for v in table.loc[n_row, col]]
    return table


def smd_summary(table: pd.DataFrame) -> pd.Series:
    """Absolute SMD per variable (float), from a :func:`make_table1` table."""
    smd_col = next(c for c in table.columns if c.startswith("SMD"))
    values = pd.to_numeric(table[smd_col].replace("", np.nan), errors="coerce")
    values.index = [i[0] for i in table.index]
    return values.dropna().abs().groupby(level=0).first()
