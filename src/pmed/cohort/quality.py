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
* impossible dates: a death or clinical record dated before the person's birth (earliest
  possible birth date), an observation period (or condition, drug, visit) ending before it
  starts. Rule: a person with an impossible death, index diagnosis or observation period is
  excluded at its own attrition step (``valid_dates``); other such records are flagged, kept.

Two further rows describe how values were read, not defects: coded values matched only
through a descendant value concept (``value_via_descendant``) and persons whose
gender_concept_id is neither the female nor the male concept (``unknown_gender``: sex
missing). Unit drops are reported per unit_concept_id with its concept name.
"""

from __future__ import annotations

import pandas as pd

from pmed.cohort.contract import unit_of
from pmed.cohort.definition import CohortDefinition
from pmed.cohort.engine import Engine, as_engine
from pmed.cohort.queries import birth_date

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
RULE_BEFORE_BIRTH = "dated before birth: {consequence}"
RULE_END_BEFORE_START = "ends before it starts: {consequence}"
EXCLUDED = "person excluded (attrition step 'No impossible date')"
FLAGGED = "flagged, kept"
RULE_DESCENDANT = "value concept matched through a descendant in concept_ancestor: used"
RULE_GENDER = "gender_concept_id neither {female} (female) nor {male} (male): sex missing"
# table -> (start date, end date) columns checked for "ends before it starts" when present.
END_DATES = {
    "observation_period": ("observation_period_start_date", "observation_period_end_date"),
    "condition_occurrence": ("condition_start_date", "condition_end_date"),
    "drug_exposure": ("drug_exposure_start_date", "drug_exposure_end_date"),
    "visit_occurrence": ("visit_start_date", "visit_end_date"),
}
QUALITY_COLUMNS = ["check", "table", "column", "concept_id", "concept_name", "rule", "count"]


# Every check's SQL returns rows (item, concept_id, kind, n): ``item`` a covariate name (NULL
# for a whole-table count), ``concept_id`` a unit concept, ``kind`` which count (NULL if one).
_NO_ITEM = "CAST(NULL AS VARCHAR) AS item, CAST(NULL AS BIGINT) AS concept_id, " \
    "CAST(NULL AS VARCHAR) AS kind"


def duplicate_query(table: str, columns: list[str], part: tuple[int, int] | None = None) -> str:
    """Number of surplus exact-duplicate rows of ``table`` over ``columns``: one aggregation
    (GROUP BY treats NULLs as equal, as DISTINCT does). ``part`` = (j, k): only the persons
    with person_id mod k = j (rows without person_id in part 0); duplicates share the
    person_id, so the k parts' counts add up to the whole table's."""
    cols = ", ".join(columns)
    where = ""
    if part is not None:
        j, k = part
        where = f" WHERE ((person_id % {k}) + {k}) % {k} = {j}" + (" OR person_id IS NULL" if j == 0 else "")
    return (f"SELECT {_NO_ITEM}, CAST(COALESCE(SUM(k - 1), 0) AS BIGINT) AS n FROM "
            f"(SELECT COUNT(*) AS k FROM {table}{where} GROUP BY {cols}) AS g")


def duplicate_parts(eng: Engine, tables: list[str]) -> dict[str, int]:
    """Per table, in how many person_id parts its duplicate check runs: one, unless the engine
    caps the rows of one aggregation (:attr:`pmed.cohort.engine.Engine.max_group_rows`)."""
    cap = eng.max_group_rows
    if cap is None:
        return dict.fromkeys(tables, 1)
    return {t: max(1, -(-int(eng.rows(f"SELECT COUNT(*) FROM {t}")[0][0]) // cap)) for t in tables}


def outside_observation_query(table: str, date_column: str) -> str:
    """Number of ``table`` rows whose date is outside every observation period of the person.

    A left join on the person and the date range: a row matching no period comes back once
    with a null period (rows matching several overlapping periods are never null).
    """
    return (f"SELECT {_NO_ITEM}, COUNT(*) AS n FROM {table} AS t LEFT JOIN observation_period "
            f"AS op ON op.person_id = t.person_id AND CAST(t.{date_column} AS DATE) BETWEEN "
            "CAST(op.observation_period_start_date AS DATE) AND "
            "CAST(op.observation_period_end_date AS DATE) WHERE op.person_id IS NULL")


def covariate_values_query(table: str, columns: list[str]) -> str:
    """Per numeric covariate of ``table`` and unit: implausible values and unknown units.

    ``implausible`` = known unit, converted value outside the plausible range;
    ``unknown_unit`` = a value in a unit without conversion factor. Counted among distinct
    records (over ``columns``), the DISTINCT running on the few flagged rows only.
    Rows: item (covariate column), concept_id (unit, NULL read as 0), kind
    ("implausible" | "unknown_unit"), n.
    """
    flagged = (
        "SELECT DISTINCT rc.column_name, CASE WHEN r.factor IS NULL THEN 'unknown_unit' ELSE "
        "'implausible' END AS kind, COALESCE(t.unit_concept_id, 0) AS unit_id, "
        + ", ".join(f"t.{c}" for c in columns)
        + f" FROM {table} AS t JOIN (SELECT DISTINCT column_name, concept_id FROM numeric_rules "
        f"WHERE table_name = '{table}') AS rc ON rc.concept_id = t.{table}_concept_id "
        "LEFT JOIN numeric_rules AS r ON r.column_name = rc.column_name AND r.concept_id = "
        f"t.{table}_concept_id AND r.unit_concept_id = COALESCE(t.unit_concept_id, 0) "
        "WHERE t.value_as_number IS NOT NULL AND (r.factor IS NULL OR t.value_as_number * "
        "r.factor NOT BETWEEN r.plausible_low AND r.plausible_high)"
    )
    return ("SELECT CAST(column_name AS VARCHAR) AS item, CAST(unit_id AS BIGINT) AS "
            "concept_id, CAST(kind AS VARCHAR) AS kind, COUNT(*) AS n "
            f"FROM ({flagged}) AS f GROUP BY column_name, unit_id, kind")


def descendant_values_query(table: str, columns: list[str]) -> str:
    """Per coded covariate of ``table``: distinct records whose value concept matched only
    through a descendant (rows: item = covariate, n)."""
    return (
        "SELECT CAST(covariate AS VARCHAR) AS item, CAST(NULL AS BIGINT) AS concept_id, "
        "CAST(NULL AS VARCHAR) AS kind, COUNT(*) AS n FROM (SELECT DISTINCT r.covariate, "
        + ", ".join(f"t.{c}" for c in columns)
        + f" FROM {table} AS t JOIN categorical_rules AS r ON r.table_name = '{table}' AND "
        f"r.concept_id = t.{table}_concept_id AND r.value_concept_id = t.value_as_concept_id "
        "WHERE r.via_descendant = 1) AS f GROUP BY covariate"
    )


def before_birth_query(table: str, date_column: str) -> str:
    """Number of ``table`` rows dated before their person's earliest possible birth date."""
    return (f"SELECT {_NO_ITEM}, COUNT(*) AS n FROM {table} AS t JOIN person AS p ON "
            f"p.person_id = t.person_id WHERE CAST(t.{date_column} AS DATE) < {birth_date()}")


def end_before_start_query(table: str, start: str, end: str) -> str:
    """Number of ``table`` rows whose ``end`` date precedes their ``start`` date."""
    return (f"SELECT {_NO_ITEM}, COUNT(*) AS n FROM {table} WHERE CAST({end} AS DATE) < "
            f"CAST({start} AS DATE)")


def unknown_gender_query(female: int, male: int) -> str:
    """Number of persons whose gender_concept_id is neither ``female`` nor ``male``."""
    return (f"SELECT {_NO_ITEM}, COUNT(*) AS n FROM person WHERE gender_concept_id IS NULL OR "
            f"gender_concept_id NOT IN ({female}, {male})")


def non_null_columns_query(tables: dict[str, list[str]]) -> str:
    """One row: the number of non-null values of each column of each table, in the order of
    ``tables`` (table -> columns), as c0, c1, ...; each table read once, all in one statement."""
    parts, k = [], 0
    for i, (table, columns) in enumerate(tables.items()):
        counts = ", ".join(f"COUNT({c}) AS c{k + j}" for j, c in enumerate(columns))
        parts.append(f"(SELECT {counts} FROM {table}) AS t{i}")
        k += len(columns)
    return "SELECT * FROM " + " CROSS JOIN ".join(parts)


def quality_queries(d: CohortDefinition, content: dict[str, list[str]],
                    date_columns: dict[str, list[str]] | None = None) -> list[dict]:
    """The checks as rows {check, table, column, rule, sql}.

    ``content`` gives each clinical table's content columns (all but the row id; columns
    null in every row may be left out, they cannot tell rows apart); ``date_columns`` the
    columns present in the tables of :data:`END_DATES` (default: none checked). Each sql
    returns rows (item, concept_id, kind, n): one row for a count; ``covariate_values`` one
    per numeric covariate, unit and kind (:func:`covariate_values_query`),
    ``value_via_descendant`` one per coded covariate (:func:`descendant_values_query`).
    """
    checks = []
    for table, cols in content.items():
        checks.append({"check": "duplicate", "table": table, "column": "", "columns": cols,
                       "rule": RULE_DUPLICATE, "sql": duplicate_query(table, cols)})
    for table, (_, date_col) in CLINICAL_TABLES.items():
        checks.append({"check": "outside_observation", "table": table, "column": date_col,
                       "rule": RULE_OUTSIDE, "sql": outside_observation_query(table, date_col)})
    for table, (_, date_col) in CLINICAL_TABLES.items():
        consequence = EXCLUDED if table in ("death", "condition_occurrence") else FLAGGED
        if table == "condition_occurrence":
            consequence = "flagged, kept; " + EXCLUDED + " when it is the index diagnosis"
        checks.append({"check": "impossible_date", "table": table, "column": date_col,
                       "rule": RULE_BEFORE_BIRTH.format(consequence=consequence),
                       "sql": before_birth_query(table, date_col)})
    for table, cols in (date_columns or {}).items():
        start, end = END_DATES[table]
        if start in cols and end in cols:
            consequence = EXCLUDED if table == "observation_period" else FLAGGED
            checks.append({"check": "impossible_date", "table": table, "column": end,
                           "rule": RULE_END_BEFORE_START.format(consequence=consequence),
                           "sql": end_before_start_query(table, start, end)})
    checks.append({"check": "unknown_gender", "table": "person", "column": "gender_concept_id",
                   "rule": RULE_GENDER.format(female=d.female_concept_id, male=d.male_concept_id),
                   "sql": unknown_gender_query(d.female_concept_id, d.male_concept_id)})
    for table in sorted({c.table for c in d.numeric}):
        checks.append({"check": "covariate_values", "table": table, "column": "",
                       "rule": "", "sql": covariate_values_query(table, content[table])})
    if d.include_descendants:
        for table in sorted({c.table for c in d.categorical}):
            checks.append({"check": "value_via_descendant", "table": table, "column": "",
                           "rule": RULE_DESCENDANT,
                           "sql": descendant_values_query(table, content[table])})
    return checks


def content_columns(eng: Engine) -> dict[str, list[str]]:
    """Each clinical table's columns but its row id, leaving out columns that are all null
    (one statement for all tables, :func:`non_null_columns_query`)."""
    eng = as_engine(eng)
    columns = {table: [c for c, _ in eng.columns(table) if c != pk]
               for table, (pk, _) in CLINICAL_TABLES.items()}
    counts = iter(eng.rows(non_null_columns_query(columns))[0])
    out = {}
    for table, cols in columns.items():
        kept = [c for c in cols if next(counts) > 0]
        out[table] = kept or cols
    return out


def date_columns(eng: Engine) -> dict[str, list[str]]:
    """Columns of the :data:`END_DATES` tables present in the CDM."""
    eng = as_engine(eng)
    return {t: cols for t in END_DATES if (cols := [c for c, _ in eng.columns(t)])}


def concept_names(eng: Engine, ids: list[int]) -> dict[int, str]:
    """concept_id -> concept_name from ``concept`` (ids absent there are left out)."""
    eng = as_engine(eng)
    if not ids or "concept_name" not in {c for c, _ in eng.columns("concept")}:
        return {}
    listed = ", ".join(str(int(i)) for i in ids)
    return {int(i): str(n) for i, n in eng.rows(
        f"SELECT concept_id, concept_name FROM concept WHERE concept_id IN ({listed})")}


def run_quality(con, d: CohortDefinition) -> pd.DataFrame:
    """Run every check; one row per check: :data:`QUALITY_COLUMNS` (count int64).

    ``con``: an :class:`pmed.cohort.engine.Engine` or a DuckDB connection (engine files); the
    checks run there and only their counts come back.

    Numeric covariates get an ``implausible`` row (all units) and one ``unknown_unit`` row
    per unit_concept_id without a factor (concept_id, concept_name set; a single row with
    count 0 and no concept when there is none); coded covariates a ``value_via_descendant``
    row when descendants are used.
    """
    eng = as_engine(con)
    rows = []

    def add(check, table, column, rule, count, concept_id=None, concept_name=""):
        rows.append({"check": check, "table": table, "column": column, "concept_id": concept_id,
                     "concept_name": concept_name, "rule": rule, "count": int(count)})

    # One statement per check: one UNION ALL of all checks took 1.6-2x as long on Spark and
    # no less on DuckDB (100,000 persons; benchmarks/bench_engines.py --quality-plans).
    checks = quality_queries(d, content_columns(eng), date_columns(eng))
    parts = duplicate_parts(eng, [c["table"] for c in checks if c["check"] == "duplicate"])

    def run(c: dict) -> list[tuple]:
        k = parts.get(c["table"], 1) if c["check"] == "duplicate" else 1
        if k == 1:
            return [tuple(r) for r in eng.rows(c["sql"])]
        return [tuple(r) for j in range(k) for r in eng.rows(duplicate_query(c["table"], c["columns"], (j, k)))]

    found = {i: run(c) for i, c in enumerate(checks)}
    bad_units = sorted({int(unit) for rs in found.values() for _, unit, kind, n in rs
                        if kind == "unknown_unit" and n})
    names = concept_names(eng, bad_units)
    for i, c in enumerate(checks):
        if c["check"] == "covariate_values":
            for cov in (x for x in d.numeric if x.table == c["table"]):
                lo, hi = cov.plausible
                mine = [r for r in found[i] if r[0] == cov.column]
                add("implausible", cov.table, cov.column,
                    RULE_IMPLAUSIBLE.format(lo=lo, hi=hi, unit=unit_of(cov.column)),
                    sum(n for _, _, kind, n in mine if kind == "implausible"))
                units = sorted((int(unit), int(n)) for _, unit, kind, n in mine
                               if kind == "unknown_unit" and n)
                for unit, n in units:
                    add("unknown_unit", cov.table, cov.column, RULE_UNIT, n, unit,
                        names.get(unit, "(not in concept table)"))
                if not units:
                    add("unknown_unit", cov.table, cov.column, RULE_UNIT, 0)
        elif c["check"] == "value_via_descendant":
            counts = {item: n for item, _, _, n in found[i]}
            for cov in (x for x in d.categorical if x.table == c["table"]):
                add("value_via_descendant", cov.table, cov.name, c["rule"],
                    counts.get(cov.name, 0))
        else:
            add(c["check"], c["table"], c["column"], c["rule"],
                sum(n for *_, n in found[i]))
    return pd.DataFrame(rows, columns=QUALITY_COLUMNS).astype({"concept_id": "Int64",
                                                               "count": "int64"})
