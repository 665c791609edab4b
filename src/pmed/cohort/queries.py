"""The cohort definition as SQL: portable statements run in order as temp tables.

Every query is written in DuckDB's dialect using only constructs that sqlglot transpiles to
PostgreSQL and Spark SQL (:func:`transpile`; tested for every query), and reads OMOP CDM
v5.4 tables by their standard names plus three small rule tables holding the definition as
data (:func:`rule_tables`: ``definition_concepts``, ``numeric_rule_spec``,
``categorical_rule_spec``). :func:`render_script` writes the whole extraction as one SQL
script for another engine. Day offsets are ``DATE_DIFF('day', index_date, event_date)``:
negative before index.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import rename_func
from sqlglot.dialects.postgres import Postgres

from pmed.cohort.definition import CohortDefinition

READ_DIALECT = "duckdb"
UNBOUNDED_DAYS = 1_000_000  # stands in for an open window end (about 2,700 years)


class PostgresCdm(Postgres):
    """PostgreSQL with MAKE_DATE kept as MAKE_DATE (sqlglot 30 writes DATE_FROM_PARTS)."""

    class Generator(Postgres.Generator):
        TRANSFORMS = {**Postgres.Generator.TRANSFORMS, exp.DateFromParts: rename_func("MAKE_DATE")}


DIALECTS = {"postgres": PostgresCdm, "spark": "spark", "duckdb": "duckdb"}


def transpile(sql: str, dialect: str) -> str:
    """``sql`` (DuckDB dialect) rewritten for ``dialect`` ("postgres", "spark" or "duckdb")."""
    return sqlglot.transpile(sql, read=READ_DIALECT, write=DIALECTS[dialect],
                             unsupported_level=sqlglot.ErrorLevel.RAISE)[0]


def _days(date_a: str, date_b: str) -> str:
    """Days from date_a to date_b (positive when b is later)."""
    return f"DATE_DIFF('day', CAST({date_a} AS DATE), CAST({date_b} AS DATE))"


def _in_window(offset: str, window: tuple[int | None, int | None]) -> str:
    start, end = window
    parts = []
    if start is not None:
        parts.append(f"{offset} >= {int(start)}")
    if end is not None:
        parts.append(f"{offset} <= {int(end)}")
    return " AND ".join(parts) if parts else "TRUE"


def _codeset_filter(column: str, names: list[str]) -> str:
    quoted = ", ".join(f"'{n}'" for n in names)
    return (f"{column} IN (SELECT concept_id FROM codesets WHERE codeset_name IN ({quoted}))")


def codesets_query(include_descendants: bool) -> str:
    """Concept sets expanded to their descendants through concept_ancestor (OHDSI Circe style)."""
    own = "SELECT codeset_name, concept_id FROM definition_concepts"
    if not include_descendants:
        return own
    return (own + " UNION SELECT d.codeset_name, ca.descendant_concept_id AS concept_id "
            "FROM definition_concepts AS d JOIN concept_ancestor AS ca "
            "ON ca.ancestor_concept_id = d.concept_id")


def _window_bounds(window: tuple[int | None, int | None]) -> tuple[int, int]:
    start, end = window
    return (-UNBOUNDED_DAYS if start is None else start,
            UNBOUNDED_DAYS if end is None else end)


def rule_tables(d: CohortDefinition) -> dict[str, tuple[list[tuple[str, str]], list[tuple]]]:
    """The definition as three small tables: {name: ([(column, SQL type)], rows)}.

    ``definition_concepts`` (codeset_name, concept_id): the concept sets' own ids;
    ``numeric_rule_spec``: one row per numeric covariate and unit (factor to the contract
    unit, plausible range, window in days with open ends as +-UNBOUNDED_DAYS);
    ``categorical_rule_spec``: one row per coded covariate and value concept (its indicator
    column, NULL for reference values).
    """
    numeric = []
    for c in d.numeric:
        start, end = _window_bounds(c.window)
        numeric += [(c.column, c.table, c.concept_set, unit, factor, *c.plausible, start, end)
                    for unit, factor in c.units.items()]
    categorical = []
    for c in d.categorical:
        start, end = _window_bounds(c.window)
        values = [(v, lvl) for lvl, vs in c.levels.items() for v in vs]
        values += [(v, None) for v in c.reference]
        categorical += [(c.name, c.table, c.concept_set, v, lvl, start, end) for v, lvl in values]
    return {
        "definition_concepts": ([("codeset_name", "VARCHAR"), ("concept_id", "BIGINT")],
                                [(n, c) for n, ids in d.concept_sets.items() for c in ids]),
        "numeric_rule_spec": ([("column_name", "VARCHAR"), ("table_name", "VARCHAR"),
                               ("codeset_name", "VARCHAR"), ("unit_concept_id", "BIGINT"),
                               ("factor", "DOUBLE"), ("plausible_low", "DOUBLE"),
                               ("plausible_high", "DOUBLE"), ("window_start", "INTEGER"),
                               ("window_end", "INTEGER")], numeric),
        "categorical_rule_spec": ([("covariate", "VARCHAR"), ("table_name", "VARCHAR"),
                                   ("codeset_name", "VARCHAR"), ("value_concept_id", "BIGINT"),
                                   ("level_column", "VARCHAR"), ("window_start", "INTEGER"),
                                   ("window_end", "INTEGER")], categorical),
    }


def setup_queries(d: CohortDefinition) -> dict[str, str]:
    """Ordered {temp table: SELECT} expanding the rule tables to concept ids.

    ``codesets`` (codeset_name, concept_id) with descendants; ``numeric_rules`` and
    ``categorical_rules``: the rule specs joined to their concept sets' ids.
    """
    return {
        "codesets": codesets_query(d.include_descendants),
        "numeric_rules": (
            "SELECT s.column_name, s.table_name, cs.concept_id, s.unit_concept_id, s.factor, "
            "s.plausible_low, s.plausible_high, s.window_start, s.window_end FROM "
            "numeric_rule_spec AS s JOIN codesets AS cs ON cs.codeset_name = s.codeset_name"
        ),
        "categorical_rules": (
            "SELECT s.covariate, s.table_name, cs.concept_id, s.value_concept_id, "
            "s.level_column, s.window_start, s.window_end FROM categorical_rule_spec AS s "
            "JOIN codesets AS cs ON cs.codeset_name = s.codeset_name"
        ),
    }


def _literal(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def render_script(d: CohortDefinition, dialect: str = "duckdb") -> str:
    """The whole extraction as one SQL script for ``dialect`` (statements end with ``;``).

    Creates and fills the rule tables, then one temporary table per step; the cohort is
    ``SELECT * FROM cohort`` at the end. The OMOP tables must exist under their CDM names.
    """
    statements = []
    for name, (columns, rows) in rule_tables(d).items():
        cols = ", ".join(f"{c} {t}" for c, t in columns)
        statements.append(f"CREATE TABLE {name} ({cols})")
        if rows:
            values = ", ".join("(" + ", ".join(_literal(v) for v in r) + ")" for r in rows)
            statements.append(f"INSERT INTO {name} VALUES {values}")
    for name, sql in {**setup_queries(d), **cohort_queries(d)}.items():
        statements.append(f"CREATE TEMPORARY TABLE {name} AS {sql}")
    statements.append("SELECT * FROM cohort")
    return ";\n\n".join(transpile(s, dialect) for s in statements) + ";\n"


def cohort_queries(d: CohortDefinition) -> dict[str, str]:
    """Ordered {temp table name: SELECT} building the cohort and its attrition.

    Steps (each table keeps the persons still eligible after the criterion):
    ``qualifying_dx`` first diagnosis of the target set = index date; ``prior_obs`` index
    inside an observation period that started >= ``prior_observation_days`` before it;
    ``adult`` age at index in completed years within [min_age, max_age]; ``no_prior_cancer``
    no record of an exclusion set in ``exclusions.window``; ``no_prior_treatment`` no drug of
    any exposure group before the index date; ``first_line`` a first exposure drug in
    [0, max_days_after_index] days after index, inside the observation period, of exactly one
    group (both groups starting the same day is excluded as ambiguous); ``alive_at_t0`` no
    death recorded before the treatment start.
    """
    groups = list(d.exposure_groups.items())
    exposure_sets = [s for _, s in groups]
    q: dict[str, str] = {}
    q["qualifying_dx"] = (
        "SELECT person_id, MIN(CAST(condition_start_date AS DATE)) AS index_date "
        "FROM condition_occurrence WHERE "
        + _codeset_filter("condition_concept_id", [d.target_concept_set])
        + " GROUP BY person_id"
    )
    q["prior_obs"] = (
        "SELECT x.person_id, x.index_date, "
        "MAX(CAST(op.observation_period_end_date AS DATE)) AS obs_end_date "
        "FROM qualifying_dx AS x JOIN observation_period AS op ON op.person_id = x.person_id "
        "AND CAST(op.observation_period_start_date AS DATE) <= x.index_date "
        "AND CAST(op.observation_period_end_date AS DATE) >= x.index_date "
        f"AND {_days('op.observation_period_start_date', 'x.index_date')} "
        f">= {d.prior_observation_days} "
        "GROUP BY x.person_id, x.index_date"
    )
    birth = "MAKE_DATE(p.year_of_birth, COALESCE(p.month_of_birth, 1), COALESCE(p.day_of_birth, 1))"
    completed_years = (
        "EXTRACT(YEAR FROM x.index_date) - p.year_of_birth - CASE WHEN "
        "EXTRACT(MONTH FROM x.index_date) * 100 + EXTRACT(DAY FROM x.index_date) < "
        "COALESCE(p.month_of_birth, 1) * 100 + COALESCE(p.day_of_birth, 1) THEN 1 ELSE 0 END"
    )
    age_cond = f"{completed_years} >= {d.min_age_years}"
    if d.max_age_years is not None:
        age_cond += f" AND {completed_years} <= {d.max_age_years}"
    q["adult"] = (
        "SELECT x.person_id, x.index_date, x.obs_end_date, "
        f"CAST({_days(birth, 'x.index_date')} AS DOUBLE) / 365.25 AS age_years, "
        f"CASE WHEN p.gender_concept_id = {d.female_concept_id} THEN 1 ELSE 0 END AS sex_female "
        "FROM prior_obs AS x JOIN person AS p ON p.person_id = x.person_id "
        f"WHERE {age_cond}"
    )
    if d.exclusion_concept_sets:
        offset = _days("x.index_date", "co.condition_start_date")
        q["no_prior_cancer"] = (
            "SELECT x.* FROM adult AS x WHERE NOT EXISTS (SELECT 1 FROM condition_occurrence "
            "AS co WHERE co.person_id = x.person_id AND "
            + _codeset_filter("co.condition_concept_id", d.exclusion_concept_sets)
            + f" AND {_in_window(offset, d.exclusion_window)})"
        )
    else:
        q["no_prior_cancer"] = "SELECT x.* FROM adult AS x"
    q["no_prior_treatment"] = (
        "SELECT x.* FROM no_prior_cancer AS x WHERE NOT EXISTS (SELECT 1 FROM drug_exposure "
        "AS de WHERE de.person_id = x.person_id AND "
        + _codeset_filter("de.drug_concept_id", exposure_sets)
        + " AND CAST(de.drug_exposure_start_date AS DATE) < x.index_date)"
    )
    group_flags = ", ".join(
        f"MAX(CASE WHEN de.drug_concept_id IN (SELECT concept_id FROM codesets WHERE "
        f"codeset_name = '{s}') THEN 1 ELSE 0 END) AS on_{i}" for i, (_, s) in enumerate(groups)
    )
    q["first_exposure"] = (
        "SELECT de.person_id, CAST(de.drug_exposure_start_date AS DATE) AS t0_date, "
        f"{group_flags} FROM drug_exposure AS de JOIN (SELECT x.person_id, "
        "MIN(CAST(e.drug_exposure_start_date AS DATE)) AS t0_date FROM no_prior_treatment AS x "
        "JOIN drug_exposure AS e ON e.person_id = x.person_id AND "
        + _codeset_filter("e.drug_concept_id", exposure_sets)
        + " GROUP BY x.person_id) AS f ON f.person_id = de.person_id "
        "AND CAST(de.drug_exposure_start_date AS DATE) = f.t0_date WHERE "
        + _codeset_filter("de.drug_concept_id", exposure_sets)
        + " GROUP BY de.person_id, CAST(de.drug_exposure_start_date AS DATE)"
    )
    label = f"CASE WHEN f.on_0 = 1 THEN '{groups[0][0]}' ELSE '{groups[1][0]}' END"
    q["first_line"] = (
        f"SELECT x.*, f.t0_date, {label} AS treatment, "
        f"{_days('x.index_date', 'f.t0_date')} AS days_dx_to_treatment "
        "FROM no_prior_treatment AS x JOIN first_exposure AS f ON f.person_id = x.person_id "
        f"WHERE {_days('x.index_date', 'f.t0_date')} BETWEEN 0 AND {d.max_days_to_treatment} "
        "AND f.t0_date <= x.obs_end_date AND f.on_0 + f.on_1 = 1"
    )
    q["first_death"] = (
        "SELECT person_id, MIN(CAST(death_date AS DATE)) AS death_date FROM death "
        "GROUP BY person_id"
    )
    q["alive_at_t0"] = (
        "SELECT x.*, dth.death_date FROM first_line AS x LEFT JOIN first_death AS dth "
        "ON dth.person_id = x.person_id WHERE dth.death_date IS NULL OR dth.death_date >= x.t0_date"
    )
    censor = f"DATE '{d.administrative_censor_date.isoformat()}'"
    end_of_obs = f"LEAST(x.obs_end_date, {censor})"
    q["base_cohort"] = (
        "SELECT x.person_id, x.index_date, x.t0_date, x.treatment, "
        f"CASE WHEN x.treatment = '{d.treated_group}' THEN 1 ELSE 0 END AS treated, "
        "x.days_dx_to_treatment, "
        f"CAST({_days('x.t0_date', f'CASE WHEN x.death_date IS NOT NULL AND x.death_date <= {end_of_obs} THEN x.death_date ELSE {end_of_obs} END')} AS DOUBLE) AS time_days, "
        f"CASE WHEN x.death_date IS NOT NULL AND x.death_date <= {end_of_obs} THEN 1 ELSE 0 END "
        "AS event, x.age_years, x.sex_female FROM alive_at_t0 AS x"
    )
    q.update(covariate_queries(d))
    return q


ATTRITION_STEPS = {
    "qualifying_dx": "First qualifying diagnosis (index date)",
    "prior_obs": "Prior observation at index >= {prior_observation_days} days",
    "adult": "Age at index >= {min_age_years:g} years",
    "no_prior_cancer": "No other cancer before index",
    "no_prior_treatment": "No exposure drug before index",
    "first_line": "First-line exposure within {max_days_to_treatment} days after index",
    "alive_at_t0": "Alive at treatment start",
}
# Why a person fails each step (for the flow diagram's exclusion boxes); first step: none.
EXCLUSION_REASONS = {
    "prior_obs": "< {prior_observation_days} days of observation before index",
    "adult": "age at index < {min_age_years:g} years",
    "no_prior_cancer": "other cancer up to index",
    "no_prior_treatment": "study drug before index",
    "first_line": "no single-group first line within {max_days_to_treatment} days",
    "alive_at_t0": "death recorded before treatment start",
}


def covariate_queries(d: CohortDefinition) -> dict[str, str]:
    """Baseline covariates of ``base_cohort``: condition flags, last numeric and coded values.

    Numeric values: records of the covariate's set in its window whose unit has a factor
    and whose converted value is plausible; the last one wins (latest date, then the
    highest record id). Coded values: likewise, among records with a known value concept.
    An exact duplicate record carries the same value, so duplicates cannot change the result.
    """
    q: dict[str, str] = {}
    flags = []
    for column, codeset in d.conditions.items():
        offset = _days("b.index_date", "co.condition_start_date")
        flags.append(
            f"CASE WHEN EXISTS (SELECT 1 FROM condition_occurrence AS co WHERE co.person_id = "
            f"b.person_id AND {_codeset_filter('co.condition_concept_id', [codeset])} AND "
            f"{_in_window(offset, d.condition_window)}) THEN 1 ELSE 0 END AS {column}"
        )
    q["condition_flags"] = "SELECT b.person_id" + "".join(f", {f}" for f in flags) + \
        " FROM base_cohort AS b"
    parts = []
    for table in ("measurement", "observation"):
        if not any(c.table == table for c in d.numeric):
            continue
        offset = _days("b.index_date", f"t.{table}_date")
        parts.append(
            f"SELECT t.person_id, r.column_name, CAST(t.{table}_date AS DATE) AS "
            f"value_date, t.{table}_id AS record_id, t.value_as_number * r.factor AS value "
            f"FROM {table} AS t JOIN base_cohort AS b ON b.person_id = t.person_id "
            f"JOIN numeric_rules AS r ON r.table_name = '{table}' AND r.concept_id = "
            f"t.{table}_concept_id AND r.unit_concept_id = COALESCE(t.unit_concept_id, 0) "
            f"WHERE {offset} BETWEEN r.window_start AND r.window_end "
            "AND t.value_as_number * r.factor BETWEEN r.plausible_low AND r.plausible_high"
        )
    pivot = "".join(f", MAX(CASE WHEN column_name = '{c.column}' THEN value END) AS {c.column}"
                    for c in d.numeric)
    q["numeric_values"] = (
        f"SELECT person_id{pivot} FROM (SELECT v.*, ROW_NUMBER() OVER (PARTITION BY "
        "person_id, column_name ORDER BY value_date DESC, record_id DESC, value DESC) AS rn "
        f"FROM ({' UNION ALL '.join(parts)}) AS v) AS ranked WHERE rn = 1 GROUP BY person_id"
    )
    parts = []
    for table in ("measurement", "observation"):
        if not any(c.table == table for c in d.categorical):
            continue
        offset = _days("b.index_date", f"t.{table}_date")
        parts.append(
            f"SELECT t.person_id, r.covariate, CAST(t.{table}_date AS DATE) AS "
            f"value_date, t.{table}_id AS record_id, r.level_column "
            f"FROM {table} AS t JOIN base_cohort AS b ON b.person_id = t.person_id "
            f"JOIN categorical_rules AS r ON r.table_name = '{table}' AND r.concept_id = "
            f"t.{table}_concept_id AND r.value_concept_id = t.value_as_concept_id "
            f"WHERE {offset} BETWEEN r.window_start AND r.window_end"
        )
    indicators = "".join(
        f", MAX(CASE WHEN covariate = '{c.name}' THEN CASE WHEN level_column = '{level}' "
        f"THEN 1 ELSE 0 END END) AS {level}" for c in d.categorical for level in c.levels
    )
    if parts:
        q["categorical_values"] = (
            f"SELECT person_id{indicators} FROM (SELECT v.*, ROW_NUMBER() OVER (PARTITION BY "
            "person_id, covariate ORDER BY value_date DESC, record_id DESC, level_column DESC) "
            f"AS rn FROM ({' UNION ALL '.join(parts)}) AS v) AS ranked WHERE rn = 1 "
            "GROUP BY person_id"
        )
    cat_cols = [lvl for c in d.categorical for lvl in c.levels]
    select = ["b.*"] + [f"cf.{c}" for c in d.conditions] + [f"nv.{c.column}" for c in d.numeric]
    select += [f"cv.{c}" for c in cat_cols]
    q["cohort"] = (
        f"SELECT {', '.join(select)} FROM base_cohort AS b "
        "JOIN condition_flags AS cf ON cf.person_id = b.person_id "
        "LEFT JOIN numeric_values AS nv ON nv.person_id = b.person_id "
        + ("LEFT JOIN categorical_values AS cv ON cv.person_id = b.person_id " if parts else "")
        + "ORDER BY b.person_id"
    )
    return q
