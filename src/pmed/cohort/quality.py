"""Data-quality rules: each defect found in the OMOP input is counted with the rule applied.

Three kinds of defect, each counted over the whole table (not only the cohort):

* exact duplicates: rows equal on every column but the table's own id. Rule: dropped; the
  cohort queries read distinct records (first/last/any), so a duplicate cannot change them.
* implausible values: a covariate record (known unit) whose converted value lies outside
  ``plausible``; records in a unit with no conversion factor. Counted among distinct
  records (duplicates dropped first). Rule: dropped, so the covariate falls back to the
  previous record in its window, or is missing.
* events outside observation: a record dated outside every observation period of its
  person. Rule: flagged and kept; follow-up never extends past the observation period, so a
  death after its end is not counted as an event (censored at the end of observation).
"""

from __future__ import annotations

import duckdb
import pandas as pd

from pmed.cohort.contract import unit_of
from pmed.cohort.definition import CohortDefinition

# table -> (primary key, event date column) for the clinical tables checked.
CLINICAL_TABLES = {
    "condition_occurrence": ("condition_occurrence_id", "condition_start_date"),
    "drug_exposure": ("drug_exposure_id", "drug_exposure_start_date"),
    "measurement": ("measurement_id", "measurement_date"),
    "observation": ("observation_id", "observation_date"),
    "death": (None, "death_date"),
}

RULE_DUPLICATE = "exact duplicate (all columns but the id): dropped"
RULE_OUTSIDE = "dated outside every observation period: flagged, kept; follow-up ends at observation end"
RULE_IMPLAUSIBLE = "value outside plausible range {lo:g}-{hi:g} {unit}: dropped (treated as missing)"
RULE_UNIT = "unit without conversion factor: dropped (treated as missing)"


def duplicate_query(table: str, columns: list[str]) -> str:
    """Number of surplus exact-duplicate rows of ``table`` over ``columns``."""
    cols = ", ".join(columns)
    return (f"SELECT (SELECT COUNT(*) FROM {table}) - (SELECT COUNT(*) FROM "
            f"(SELECT DISTINCT {cols} FROM {table}) AS d) AS n")


def outside_observation_query(table: str, date_column: str) -> str:
    """Number of ``table`` rows whose date is outside every observation period of the person.

    A left join on the person and the date range: a row matching no period comes back once
    with a null period (rows matching several overlapping periods are never null).
    """
    return (f"SELECT COUNT(*) AS n FROM {table} AS t LEFT JOIN observation_period AS op ON "
            f"op.person_id = t.person_id AND CAST(t.{date_column} AS DATE) BETWEEN "
            "CAST(op.observation_period_start_date AS DATE) AND "
            "CAST(op.observation_period_end_date AS DATE) WHERE op.person_id IS NULL")


def covariate_values_query(table: str, columns: list[str]) -> str:
    """Per numeric covariate of ``table``: counts of implausible values and unknown units.

    ``implausible`` = known unit, converted value outside the plausible range;
    ``unknown_unit`` = a value in a unit without conversion factor. Counted among distinct
    records (over ``columns``), the DISTINCT running on the few flagged rows only.
    Rows: column_name, implausible, unknown_unit.
    """
    flagged = (
        "SELECT DISTINCT rc.column_name, CASE WHEN r.factor IS NULL THEN 0 ELSE 1 END AS "
        "implausible, CASE WHEN r.factor IS NULL THEN 1 ELSE 0 END AS unknown_unit, "
        + ", ".join(f"t.{c}" for c in columns)
        + f" FROM {table} AS t JOIN (SELECT DISTINCT column_name, concept_id FROM numeric_rules "
        f"WHERE table_name = '{table}') AS rc ON rc.concept_id = t.{table}_concept_id "
        "LEFT JOIN numeric_rules AS r ON r.column_name = rc.column_name AND r.concept_id = "
        f"t.{table}_concept_id AND r.unit_concept_id = COALESCE(t.unit_concept_id, 0) "
        "WHERE t.value_as_number IS NOT NULL AND (r.factor IS NULL OR t.value_as_number * "
        "r.factor NOT BETWEEN r.plausible_low AND r.plausible_high)"
    )
    return (f"SELECT column_name, SUM(implausible) AS implausible, SUM(unknown_unit) AS "
            f"unknown_unit FROM ({flagged}) AS f GROUP BY column_name")


def non_null_columns_query(table: str, columns: list[str]) -> str:
    """One row: the number of non-null values of each of ``columns`` in ``table``."""
    return f"SELECT {', '.join(f'COUNT({c}) AS {c}' for c in columns)} FROM {table}"


def quality_queries(d: CohortDefinition, content: dict[str, list[str]]) -> list[dict]:
    """The checks as rows {check, table, column, rule, sql}.

    ``content`` gives each clinical table's content columns (all but the row id; columns
    null in every row may be left out, they cannot tell rows apart). Duplicate and outside-
    observation sql return one count ``n``; ``covariate_values`` sql returns one row per
    numeric covariate (:func:`covariate_values_query`).
    """
    checks = []
    for table, cols in content.items():
        checks.append({"check": "duplicate", "table": table, "column": "",
                       "rule": RULE_DUPLICATE, "sql": duplicate_query(table, cols)})
    for table, (_, date_col) in CLINICAL_TABLES.items():
        checks.append({"check": "outside_observation", "table": table, "column": date_col,
                       "rule": RULE_OUTSIDE, "sql": outside_observation_query(table, date_col)})
    for table in sorted({c.table for c in d.numeric}):
        checks.append({"check": "covariate_values", "table": table, "column": "",
                       "rule": "", "sql": covariate_values_query(table, content[table])})
    return checks


def content_columns(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Each clinical table's columns but its row id, leaving out columns that are all null."""
    out = {}
    for table, (pk, _) in CLINICAL_TABLES.items():
        cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall() if r[0] != pk]
        counts = con.execute(non_null_columns_query(table, cols)).fetchone()
        out[table] = [c for c, n in zip(cols, counts, strict=True) if n > 0] or cols
    return out


def run_quality(con: duckdb.DuckDBPyConnection, d: CohortDefinition) -> pd.DataFrame:
    """Run every check; one row per check: check, table, column, rule, count (int64).

    Numeric covariates get two rows each: ``implausible`` and ``unknown_unit``.
    """
    rows = []
    for c in quality_queries(d, content_columns(con)):
        if c["check"] != "covariate_values":
            n = con.execute(c["sql"]).fetchone()[0]
            rows.append({k: c[k] for k in ("check", "table", "column", "rule")} | {"count": int(n)})
            continue
        found = {name: (bad, unit) for name, bad, unit in con.execute(c["sql"]).fetchall()}
        for cov in (x for x in d.numeric if x.table == c["table"]):
            bad, unit = found.get(cov.column, (0, 0))
            lo, hi = cov.plausible
            rows.append({"check": "implausible", "table": cov.table, "column": cov.column,
                         "rule": RULE_IMPLAUSIBLE.format(lo=lo, hi=hi, unit=unit_of(cov.column)),
                         "count": int(bad)})
            rows.append({"check": "unknown_unit", "table": cov.table, "column": cov.column,
                         "rule": RULE_UNIT, "count": int(unit)})
    return pd.DataFrame(rows).astype({"count": "int64"})
