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
    """Number of ``table`` rows whose date is outside every observation period of the person."""
    return (f"SELECT COUNT(*) AS n FROM {table} AS t WHERE NOT EXISTS (SELECT 1 FROM "
            "observation_period AS op WHERE op.person_id = t.person_id AND "
            f"CAST(t.{date_column} AS DATE) BETWEEN CAST(op.observation_period_start_date AS "
            "DATE) AND CAST(op.observation_period_end_date AS DATE))")


def _distinct(table: str, columns: list[str]) -> str:
    return f"(SELECT DISTINCT {', '.join(columns)} FROM {table})"


def implausible_query(table: str, column: str, columns: list[str]) -> str:
    """Distinct records (over ``columns``) of numeric covariate ``column`` with a known unit
    but an implausible value."""
    return (f"SELECT COUNT(*) AS n FROM {_distinct(table, columns)} AS t JOIN numeric_rules AS r ON r.column_name = "
            f"'{column}' AND r.concept_id = t.{table}_concept_id AND r.unit_concept_id = "
            "COALESCE(t.unit_concept_id, 0) WHERE t.value_as_number IS NOT NULL AND "
            "t.value_as_number * r.factor NOT BETWEEN r.plausible_low AND r.plausible_high")


def unknown_unit_query(table: str, column: str, concept_set: str, columns: list[str]) -> str:
    """Distinct records of ``concept_set`` with a value but a unit without factor for ``column``."""
    return (f"SELECT COUNT(*) AS n FROM {_distinct(table, columns)} AS t WHERE t.{table}_concept_id IN (SELECT "
            f"concept_id FROM codesets WHERE codeset_name = '{concept_set}') AND "
            "t.value_as_number IS NOT NULL AND NOT EXISTS (SELECT 1 FROM numeric_rules AS r "
            f"WHERE r.column_name = '{column}' AND r.unit_concept_id = "
            "COALESCE(t.unit_concept_id, 0))")


def quality_queries(d: CohortDefinition, table_columns: dict[str, list[str]]) -> list[dict]:
    """The checks as rows {check, table, column, rule, sql}; each sql returns one count ``n``.

    ``table_columns`` gives each clinical table's columns (duplicates compare all of them
    but the table's id).
    """
    checks = []
    content = {t: [c for c in table_columns[t] if c != pk]
               for t, (pk, _) in CLINICAL_TABLES.items()}
    for table, cols in content.items():
        checks.append({"check": "duplicate", "table": table, "column": "",
                       "rule": RULE_DUPLICATE, "sql": duplicate_query(table, cols)})
    for table, (_, date_col) in CLINICAL_TABLES.items():
        checks.append({"check": "outside_observation", "table": table, "column": date_col,
                       "rule": RULE_OUTSIDE, "sql": outside_observation_query(table, date_col)})
    for cov in d.numeric:
        unit = unit_of(cov.column)
        checks.append({"check": "implausible", "table": cov.table, "column": cov.column,
                       "rule": RULE_IMPLAUSIBLE.format(lo=cov.plausible[0], hi=cov.plausible[1],
                                                       unit=unit),
                       "sql": implausible_query(cov.table, cov.column, content[cov.table])})
        checks.append({"check": "unknown_unit", "table": cov.table, "column": cov.column,
                       "rule": RULE_UNIT,
                       "sql": unknown_unit_query(cov.table, cov.column, cov.concept_set,
                                                  content[cov.table])})
    return checks


def run_quality(con: duckdb.DuckDBPyConnection, d: CohortDefinition) -> pd.DataFrame:
    """Run every check; one row per check: check, table, column, rule, count (int64)."""
    table_columns = {t: [r[0] for r in con.execute(f"DESCRIBE {t}").fetchall()]
                     for t in CLINICAL_TABLES}
    rows = []
    for c in quality_queries(d, table_columns):
        n = con.execute(c["sql"]).fetchone()[0]
        rows.append({k: c[k] for k in ("check", "table", "column", "rule")} | {"count": int(n)})
    return pd.DataFrame(rows).astype({"count": "int64"})
