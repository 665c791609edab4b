"""Table 1: baseline characteristics by exposure group, with SMDs and missingness.

Built with tableone (Pollard et al., JAMIA Open 2018, doi:10.1093/jamiaopen/ooy012), then
every count cell passes through :mod:`pmed.privacy` as one system (:func:`protect_counts`):
counts in (0, min_cell) show as ``"<11"``, and so that none can be derived by subtraction
(a level across the arms and Overall, the levels and missing of a variable within a column,
the group sizes), complementary cells show as ``"suppressed"``. Percentages (whose
denominator is the column's non-missing count) are dropped wherever a cell of the same
variable and column is hidden, and from every column whose group size is hidden; summary
statistics of a group smaller than min_cell are not shown.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
from tableone import TableOne

from pmed.privacy import SECONDARY, complementary_suppression, format_count, is_small

# cohort column -> Table 1 label; the order is the table's row order.
CONTINUOUS = {
    "age_years": "Age, years",
    "albumin_g_dl": "Albumin, g/dL",
    "hemoglobin_g_dl": "Haemoglobin, g/dL",
    "weight_kg": "Weight, kg",
    "bmi_kg_m2": "BMI, kg/m2",
}
SKEWED = {
    "t0_year": "Calendar year of t0",
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
    "driver_positive": "EGFR/ALK driver",
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


def tableone_table(cohort: pd.DataFrame, group: str = "treatment") -> pd.DataFrame:
    """Table 1 as tableone computes it (strings, unprotected): rows variables/levels,
    columns Missing, Overall, one per group, SMD."""
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
    return table.astype(str).replace({"nan": ""})


def make_table1(cohort: pd.DataFrame, min_cell: int, group: str = "treatment",
                hide=()) -> pd.DataFrame:
    """Table 1 (rows: variables/levels; columns: Missing, Overall, one per group, SMD).

    Parameters
    ----------
    cohort : analysis cohort (contract columns).
    min_cell : minimum cell size; smaller counts (group n, level counts, missing) show as "<k".
    hide : group labels (``"total"`` = Overall) whose size is hidden whatever it is, because
        another table of the report hides it (:func:`pmed.cohort.summary.hidden_group_sizes`).

    Returns
    -------
    pandas.DataFrame of strings, ready to display or save.
    """
    return protect_counts(tableone_table(cohort, group), min_cell, hide)


def _count_of(cell: str) -> float:
    m = _COUNT_CELL.match(str(cell))
    if m:
        return float(m.group(1))
    return float(cell) if str(cell).strip().isdigit() else np.nan


def protect_counts(table: pd.DataFrame, min_cell: int, hide=()) -> pd.DataFrame:
    """Table 1 strings with primary and complementary suppression of every count.

    ``table``: tableone's table (index (variable, level); columns Missing, Overall, the
    groups, SMD ...). Cells: group sizes (row ``n``), level counts per column, Missing
    (published for Overall; derivable per group as n - levels). Lines: each level and the
    missing counts across Overall and the groups, each variable's levels + missing within a
    column, the group sizes. ``hide``: group labels (``"total"`` = Overall) whose size is
    hidden whatever it is. See :func:`pmed.privacy.complementary_suppression`.
    """
    out = table.copy()
    groups = [c for c in table.columns if c not in ("Missing", "Overall") and not c.startswith("SMD")]
    cols = ["Overall", *groups]
    n_row = [i for i in table.index if i[0] == "n"][0]
    cells, values, lines, cost = {}, [], [], []

    def cell(key, value, weight: float = 0.0) -> int:
        """Register a cell; ``weight`` ranks it as a complement (group sizes last)."""
        cells[key] = len(values)
        values.append(value)
        cost.append(weight + (0.0 if np.isnan(value) else value))
        return cells[key]

    n_idx = [cell((n_row, c), _count_of(table.loc[n_row, c]), 1e9) for c in cols]
    lines.append(n_idx)
    variables = dict.fromkeys(i[0] for i in table.index if i[1] != "")
    for var in variables:
        rows = [i for i in table.index if i[0] == var]
        missing = _count_of(table.loc[rows[0], "Missing"])
        miss_idx = []
        for j, c in enumerate(cols):
            level_idx = [cell((r, c), _count_of(table.loc[r, c]), 1e6 * (c == "Overall"))
                         for r in rows]
            known = sum(values[k] for k in level_idx)
            m_value = missing if c == "Overall" else values[n_idx[j]] - known
            # the Overall Missing count is printed; per group it is only derivable (never hidden)
            miss_idx.append(cell(("missing", var, c), m_value, 1e3 if c == "Overall" else np.inf))
            lines.append([n_idx[j], *level_idx, miss_idx[-1]])
        lines.append(miss_idx)
        for r in rows:
            lines.append([cells[(r, c)] for c in cols])
    force = np.zeros(len(values), dtype=bool)
    force[[n_idx[j] for j, c in enumerate(cols) if ("total" if c == "Overall" else c) in hide]] = True
    hidden = complementary_suppression(values, lines, min_cell, cost, force)
    hidden_n = {c for j, c in enumerate(cols) if hidden[n_idx[j]]}
    small_n = {c for j, c in enumerate(cols) if is_small(values[n_idx[j]], min_cell)}
    for key, k in cells.items():
        if key[0] == "missing":
            continue
        row, col = key
        if hidden[k]:
            out.loc[row, col] = format_count(values[k], min_cell) if is_small(values[k], min_cell) \
                else SECONDARY
        elif row != n_row and (col in hidden_n or any(
                hidden[cells[key]] for key in cells if key[0] == "missing" and key[1:] == (row[0], col)
        ) or any(hidden[cells[(r, col)]] for r in table.index if r[0] == row[0] and r[1] != "")):
            # percentages use the non-missing count of the column as denominator: with any
            # cell of this variable and column hidden, they would give it back
            out.loc[row, col] = f"{int(values[k])}"
    for var in variables:
        rows = [i for i in table.index if i[0] == var]
        k = cells[("missing", var, "Overall")]
        if hidden[k]:
            out.loc[rows[0], "Missing"] = format_count(values[k], min_cell) \
                if is_small(values[k], min_cell) else SECONDARY
    for row in table.index:
        if row[1] == "" and row != n_row:  # continuous: mean (SD) or median [Q1,Q3]
            for c in small_n:
                out.loc[row, c] = ""
            miss = _count_of(table.loc[row, "Missing"])
            out.loc[row, "Missing"] = format_count(miss, min_cell) if not np.isnan(miss) else ""
    return out


def smd_summary(table: pd.DataFrame) -> pd.Series:
    """Absolute SMD per variable (float), from a :func:`make_table1` table."""
    smd_col = next(c for c in table.columns if c.startswith("SMD"))
    values = pd.to_numeric(table[smd_col].replace("", np.nan), errors="coerce")
    values.index = [i[0] for i in table.index]
    return values.dropna().abs().groupby(level=0).first()
