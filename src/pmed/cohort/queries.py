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

from pmed.cohort import atlas
from pmed.cohort.definition import OUTCOME_TABLES, CohortDefinition

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


def _window_bounds(window: tuple[int | None, int | None]) -> tuple[int, int]:
    start, end = window
    return (-UNBOUNDED_DAYS if start is None else start,
            UNBOUNDED_DAYS if end is None else end)


def rule_tables(d: CohortDefinition) -> dict[str, tuple[list[tuple[str, str]], list[tuple]]]:
    """The definition as three small tables: {name: ([(column, SQL type)], rows)}.

    ``definition_concepts`` (codeset_name, concept_id): the concept sets' own ids;
    ``numeric_rule_spec``: one row per numeric covariate and unit (factor to the contract
    unit, plausible range, window in days from its anchor ('t0' or 'index') with open ends
    as +-UNBOUNDED_DAYS); ``categorical_rule_spec``: one row per coded covariate and value
    concept (its indicator column, NULL for reference values).
    """
    numeric = []
    for c in d.numeric:
        start, end = _window_bounds(c.window)
        numeric += [(c.column, c.table, c.concept_set, unit, factor, *c.plausible, start, end,
                     c.anchor) for unit, factor in c.units.items()]
    categorical = []
    for c in d.categorical:
        start, end = _window_bounds(c.window)
        values = [(v, lvl) for lvl, vs in c.levels.items() for v in vs]
        values += [(v, None) for v in c.reference]
        categorical += [(c.name, c.table, c.concept_set, v, lvl, start, end, c.anchor)
                        for v, lvl in values]
    return {
        "definition_concepts": ([("codeset_name", "VARCHAR"), ("concept_id", "BIGINT")],
                                [(n, c) for n, ids in d.concept_sets.items() for c in ids]),
        atlas.ITEMS_TABLE: (atlas.ITEM_COLUMNS, atlas.item_rows(d.concept_set_expressions)),
        "numeric_rule_spec": ([("column_name", "VARCHAR"), ("table_name", "VARCHAR"),
                               ("codeset_name", "VARCHAR"), ("unit_concept_id", "BIGINT"),
                               ("factor", "DOUBLE"), ("plausible_low", "DOUBLE"),
                               ("plausible_high", "DOUBLE"), ("window_start", "INTEGER"),
                               ("window_end", "INTEGER"), ("anchor", "VARCHAR")], numeric),
        "categorical_rule_spec": ([("covariate", "VARCHAR"), ("table_name", "VARCHAR"),
                                   ("codeset_name", "VARCHAR"), ("value_concept_id", "BIGINT"),
                                   ("level_column", "VARCHAR"), ("window_start", "INTEGER"),
                                   ("window_end", "INTEGER"), ("anchor", "VARCHAR")],
                                  categorical),
    }


def categorical_values_query(include_descendants: bool) -> str:
    """Each coded covariate's value concepts, with their descendants when asked.

    Rows: covariate, value_concept_id (as listed in params), matched_concept_id (the
    value_as_concept_id it matches), via_descendant (1 when matched only through
    concept_ancestor). A descendant listed itself for the same covariate keeps its own
    level (the explicit listing wins).
    """
    own = ("SELECT s.covariate, s.value_concept_id, s.value_concept_id AS matched_concept_id, "
           "0 AS via_descendant FROM categorical_rule_spec AS s")
    if not include_descendants:
        return own
    return (own + " UNION SELECT s.covariate, s.value_concept_id, ca.descendant_concept_id AS "
            "matched_concept_id, 1 AS via_descendant FROM categorical_rule_spec AS s JOIN "
            "concept_ancestor AS ca ON ca.ancestor_concept_id = s.value_concept_id WHERE "
            "ca.descendant_concept_id <> s.value_concept_id AND NOT EXISTS (SELECT 1 FROM "
            "categorical_rule_spec AS o WHERE o.covariate = s.covariate AND o.value_concept_id = "
            "ca.descendant_concept_id)")


def setup_queries(d: CohortDefinition) -> dict[str, str]:
    """Ordered {temp table: SELECT} expanding the rule tables to concept ids.

    ``codesets`` (codeset_name, concept_id) with descendants; ``numeric_rules`` and
    ``categorical_rules``: the rule specs joined to their concept sets' ids (categorical
    value concepts expanded by :func:`categorical_values_query`).
    """
    return {
        "codesets": atlas.resolve_query(any(e.uses_mapping
                                            for e in d.concept_set_expressions.values())),
        "numeric_rules": (
            "SELECT s.column_name, s.table_name, cs.concept_id, s.unit_concept_id, s.factor, "
            "s.plausible_low, s.plausible_high, s.window_start, s.window_end, s.anchor FROM "
            "numeric_rule_spec AS s JOIN codesets AS cs ON cs.codeset_name = s.codeset_name"
        ),
        "categorical_value_concepts": categorical_values_query(d.include_descendants),
        "categorical_rules": (
            "SELECT s.covariate, s.table_name, cs.concept_id, v.matched_concept_id AS "
            "value_concept_id, v.via_descendant, s.level_column, s.window_start, s.window_end, "
            "s.anchor FROM categorical_rule_spec AS s JOIN codesets AS cs ON cs.codeset_name = "
            "s.codeset_name JOIN categorical_value_concepts AS v ON v.covariate = s.covariate "
            "AND v.value_concept_id = s.value_concept_id"
        ),
    }


def _literal(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return repr(value)


def render_script(d: CohortDefinition, dialect: str = "duckdb") -> str:
    """The whole extraction as one SQL script for ``dialect`` (statements end with ``;``).

    The same table strategy as the engine layer (:mod:`pmed.cohort.engine`), so the script
    needs only SELECT on the CDM (plus TEMP on a PostgreSQL database) and reruns in the same
    session: every rule table and step is a session temporary table, replaced when it exists
    (PostgreSQL ``DROP TABLE IF EXISTS pg_temp.<name>`` + ``CREATE TEMP TABLE``, then
    ``ANALYZE``; DuckDB ``CREATE OR REPLACE TEMP TABLE``). Spark has no temporary tables:
    with params ``cohort.source.scratch_schema`` each step is a Parquet table there
    (``DROP TABLE IF EXISTS`` + ``CREATE TABLE ... USING parquet AS``), computed once;
    without, a temporary view, inlined into every later step (correct, but Spark's planner
    takes minutes on the nested plans even at 1,500 persons: use the engine layer or a scratch
    schema). The OMOP tables are read under their CDM names, qualified by
    ``cohort.source.cdm_schema`` / ``vocabulary_schema`` when set; the last statement is
    ``SELECT * FROM cohort ORDER BY person_id``.
    """
    from pmed.cohort.engine import Engine, duckdb_type, split_schema

    renderer = Engine(d.source)
    renderer.dialect = dialect
    tables = {**rule_tables(d)}
    steps = {**setup_queries(d), **cohort_queries(d)}
    scratch = d.source.scratch_schema if dialect == "spark" else None
    if scratch:  # fixed names (not the engine's run-unique ones): a rerun replaces them
        renderer.steps = {name: (*split_schema(scratch), name) for name in [*tables, *steps]}
    use_renderer = d.source.cdm_schema or scratch
    render = renderer.render if use_renderer else (lambda s: transpile(s, dialect))
    statements = []
    for name, (columns, rows) in tables.items():
        if dialect == "spark":  # a view (or table) over typed literal rows
            cols = ", ".join(f"CAST({c} AS {duckdb_type(t, dialect)}) AS {c}" for c, t in columns)
            values = ", ".join("(" + ", ".join(_literal(v) for v in r) + ")" for r in rows)
            source = (f"FROM VALUES {values} AS v({', '.join(c for c, _ in columns)})" if rows
                      else "WHERE 1 = 0")
            statements += _spark_step(renderer.qualified(name), f"SELECT {cols} {source}",
                                      scratch)
            continue
        cols = ", ".join(f"{c} {duckdb_type(t, dialect)}" for c, t in columns)
        statements += _temp_table(name, f"({cols})", dialect)
        if rows:
            values = ", ".join("(" + ", ".join(_literal(v) for v in r) + ")" for r in rows)
            statements.append(transpile(f"INSERT INTO {name} VALUES {values}", dialect))
    for name, sql in steps.items():
        body = render(sql)
        if dialect == "spark":
            statements += _spark_step(renderer.qualified(name), body, scratch)
        else:
            statements += _temp_table(name, f"AS {body}", dialect)
            if dialect == "postgres":  # temporary tables get no autovacuum statistics
                statements.append(f"ANALYZE {name}")
    statements.append(render("SELECT * FROM cohort ORDER BY person_id"))
    return ";\n\n".join(statements) + ";\n"


def _spark_step(target: str, body: str, scratch: str | None) -> list[str]:
    """Spark statements (re)creating step ``target`` from SELECT ``body``."""
    if scratch:
        return [f"DROP TABLE IF EXISTS {target}", f"CREATE TABLE {target} USING parquet AS {body}"]
    return [f"CREATE OR REPLACE TEMPORARY VIEW {target} AS {body}"]


def _temp_table(name: str, body: str, dialect: str) -> list[str]:
    """Statements (re)creating session temporary table ``name`` from ``body`` (already in
    ``dialect``): never a permanent table, never an error when it exists."""
    if dialect == "postgres":  # pg_temp: never drops a permanent table of the same name
        return [f"DROP TABLE IF EXISTS pg_temp.{name}", f"CREATE TEMP TABLE {name} {body}"]
    return [f"CREATE OR REPLACE TEMP TABLE {name} {body}"]


def birth_date(alias: str = "p") -> str:
    """The earliest possible birth date of person ``alias`` (missing month/day -> 1)."""
    return (f"MAKE_DATE({alias}.year_of_birth, COALESCE({alias}.month_of_birth, 1), "
            f"COALESCE({alias}.day_of_birth, 1))")


def _codeset(names: list[str] | str) -> str:
    names = [names] if isinstance(names, str) else names
    return ("(SELECT concept_id FROM codesets WHERE codeset_name IN ("
            + ", ".join(f"'{n}'" for n in names) + "))")


def arm_condition(d: CohortDefinition, label: str) -> str:
    """SQL truth of "the regimen (flags ``x.on_<i>`` per study-drug set) matches arm ``label``"."""
    sets = d.strategies.drug_sets
    arm = d.strategies.arms[label]
    parts = [f"x.on_{sets.index(s)} = 1" for s in arm.all_of]
    parts += [f"x.on_{sets.index(s)} = 0" for s in arm.none_of]
    return "(" + " AND ".join(parts) + ")"


def end_of_followup(d: CohortDefinition, alias: str = "x") -> str:
    """Last day of follow-up: death, end of observation or the administrative date."""
    censor = f"DATE '{d.administrative_censor_date.isoformat()}'"
    end = f"LEAST({alias}.obs_end_date, {censor})"
    return (f"CASE WHEN {alias}.death_date IS NOT NULL AND {alias}.death_date <= {end} THEN "
            f"{alias}.death_date ELSE {end} END")


def cohort_queries(d: CohortDefinition) -> dict[str, str]:
    """Ordered {temp table name: SELECT} building the cohort and its attrition.

    Steps (each table keeps the persons still eligible after the criterion):
    ``qualifying_dx`` first diagnosis of the target set = index date; ``valid_dates`` no
    impossible date (a death or the index diagnosis before birth, an observation period
    ending before it starts); ``prior_obs`` index inside an observation period that started
    >= ``prior_observation_days`` before it; ``adult`` age at index in completed years within
    [min_age, max_age]; ``no_prior_cancer`` no record of an exclusion set in
    ``exclusions.window``; ``no_prior_treatment`` no study drug (any set an arm names) before
    the index date; ``first_line`` a first study drug (t0) in [0, max_days_after_index] days
    after index; ``t0_observed`` t0 inside the observation period; ``arm_assigned`` the regimen (study-drug sets
    started in [t0, t0 + grace_days]) matches an arm; ``alive_at_t0`` no death before t0.
    Then the outcomes (:func:`outcome_queries`), the covariates (:func:`covariate_queries`)
    and ``cohort_omop``, the OMOP CDM ``cohort`` table (one definition id per arm).
    """
    st = d.strategies
    drug_sets = st.drug_sets
    q: dict[str, str] = {}
    q["qualifying_dx"] = (
        "SELECT person_id, MIN(CAST(condition_start_date AS DATE)) AS index_date "
        "FROM condition_occurrence WHERE "
        + _codeset_filter("condition_concept_id", [d.target_concept_set])
        + " GROUP BY person_id"
    )
    # three flat NOT EXISTS (a subquery correlated two levels deep fails on Spark 4.3)
    q["valid_dates"] = (
        "SELECT x.* FROM qualifying_dx AS x WHERE NOT EXISTS (SELECT 1 FROM person AS p "
        f"WHERE p.person_id = x.person_id AND x.index_date < {birth_date()}) AND NOT EXISTS "
        "(SELECT 1 FROM death AS dt JOIN person AS p ON p.person_id = dt.person_id WHERE "
        f"dt.person_id = x.person_id AND CAST(dt.death_date AS DATE) < {birth_date()}) "
        "AND NOT EXISTS (SELECT 1 FROM observation_period AS op WHERE op.person_id = x.person_id AND "
        "CAST(op.observation_period_end_date AS DATE) < "
        "CAST(op.observation_period_start_date AS DATE))"
    )
    q["prior_obs"] = (
        "SELECT x.person_id, x.index_date, "
        "MAX(CAST(op.observation_period_end_date AS DATE)) AS obs_end_date "
        "FROM valid_dates AS x JOIN observation_period AS op ON op.person_id = x.person_id "
        "AND CAST(op.observation_period_start_date AS DATE) <= x.index_date "
        "AND CAST(op.observation_period_end_date AS DATE) >= x.index_date "
        f"AND {_days('op.observation_period_start_date', 'x.index_date')} "
        f">= {d.prior_observation_days} "
        "GROUP BY x.person_id, x.index_date"
    )
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
        f"CAST({_days(birth_date(), 'x.index_date')} AS DOUBLE) / 365.25 AS age_years, "
        f"CASE WHEN p.gender_concept_id = {d.female_concept_id} THEN 1 "
        f"WHEN p.gender_concept_id = {d.male_concept_id} THEN 0 END AS sex_female "
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
        + _codeset_filter("de.drug_concept_id", drug_sets)
        + " AND CAST(de.drug_exposure_start_date AS DATE) < x.index_date)"
    )
    q["first_line"] = (
        f"SELECT x.*, f.t0_date, {_days('x.index_date', 'f.t0_date')} AS days_dx_to_treatment "
        "FROM no_prior_treatment AS x JOIN (SELECT e.person_id, "
        "MIN(CAST(e.drug_exposure_start_date AS DATE)) AS t0_date FROM drug_exposure AS e "
        "WHERE e.person_id IN (SELECT person_id FROM no_prior_treatment) AND "
        + _codeset_filter("e.drug_concept_id", drug_sets)
        + " GROUP BY e.person_id) AS f ON f.person_id = x.person_id "
        f"WHERE {_days('x.index_date', 'f.t0_date')} BETWEEN 0 AND {st.max_days_after_index}"
    )
    q["t0_observed"] = "SELECT x.* FROM first_line AS x WHERE x.t0_date <= x.obs_end_date"
    flags = ", ".join(
        f"MAX(CASE WHEN de.drug_concept_id IN {_codeset(s)} THEN 1 ELSE 0 END) AS on_{i}"
        for i, s in enumerate(drug_sets)
    )
    keys = "x.person_id, x.index_date, x.obs_end_date, x.age_years, x.sex_female, " \
        "x.t0_date, x.days_dx_to_treatment"
    q["regimen"] = (
        f"SELECT {keys}, {flags} FROM t0_observed AS x JOIN drug_exposure AS de ON "
        "de.person_id = x.person_id AND "
        + _codeset_filter("de.drug_concept_id", drug_sets)
        + f" AND {_days('x.t0_date', 'de.drug_exposure_start_date')} BETWEEN 0 AND "
        f"{st.grace_days} GROUP BY {keys}"
    )
    label = "CASE " + " ".join(f"WHEN {arm_condition(d, a)} THEN '{a}'" for a in st.arms) + " END"
    q["arm_assigned"] = (
        f"SELECT x.*, {label} AS treatment FROM regimen AS x WHERE "
        + " OR ".join(arm_condition(d, a) for a in st.arms)
    )
    q["first_death"] = (
        "SELECT person_id, MIN(CAST(death_date AS DATE)) AS death_date FROM death "
        "GROUP BY person_id"
    )
    q["alive_at_t0"] = (
        "SELECT x.*, dth.death_date FROM arm_assigned AS x LEFT JOIN first_death AS dth "
        "ON dth.person_id = x.person_id WHERE dth.death_date IS NULL OR dth.death_date >= x.t0_date"
    )
    censor = f"DATE '{d.administrative_censor_date.isoformat()}'"
    end_of_obs = f"LEAST(x.obs_end_date, {censor})"
    indicators = "".join(f"CASE WHEN x.treatment = '{a}' THEN 1 ELSE 0 END AS arm_{a}, "
                         for a in st.non_reference)
    q["base_cohort"] = (
        "SELECT x.person_id, x.index_date, x.t0_date, x.treatment, " + indicators
        + "EXTRACT(YEAR FROM x.t0_date) AS t0_year, x.days_dx_to_treatment, "
        f"CAST({_days('x.t0_date', end_of_followup(d))} AS DOUBLE) AS time_days, "
        f"CASE WHEN x.death_date IS NOT NULL AND x.death_date <= {end_of_obs} THEN 1 ELSE 0 END "
        "AS event, x.age_years, x.sex_female FROM alive_at_t0 AS x"
    )
    q.update(outcome_queries(d))
    q.update(covariate_queries(d))
    ids = " ".join(f"WHEN '{a}' THEN {arm.cohort_definition_id}" for a, arm in st.arms.items())
    q["cohort_omop"] = (
        f"SELECT CASE x.treatment {ids} END AS cohort_definition_id, x.person_id AS subject_id, "
        f"x.t0_date AS cohort_start_date, {end_of_followup(d)} AS cohort_end_date "
        "FROM alive_at_t0 AS x ORDER BY cohort_definition_id, subject_id"
    )
    return q


def outcome_queries(d: CohortDefinition) -> dict[str, str]:
    """One table per non-death outcome ``outcome_<name>`` (person_id, event_date: the first
    qualifying record more than ``blanking_days`` after t0), then ``outcome_columns``:
    ``<name>_time_days`` and ``<name>_status`` for every person of ``alive_at_t0``.

    Follow-up ends at the end of observation or the administrative date (as for death).
    Status 1: the event on or before the end of follow-up and not after death (an event on
    the day of death counts); 2: death first, when ``competing: death``; 0: censored (with
    ``competing: null`` a death censors the outcome at the death date).
    """
    q: dict[str, str] = {}
    censor = f"DATE '{d.administrative_censor_date.isoformat()}'"
    end = f"LEAST(x.obs_end_date, {censor})"
    columns = []
    for o in d.event_outcomes:
        concept_col, date_col = OUTCOME_TABLES[o.table]
        where = [f"{_days('b.t0_date', f't.{date_col}')} > {o.blanking_days}"]
        if o.concept_set:
            where.append(_codeset_filter(f"t.{concept_col}", [o.concept_set]))
        visit_join = ""
        if o.visit_concept_ids and o.table == "visit_occurrence":
            where.append(f"t.visit_concept_id IN ({', '.join(map(str, o.visit_concept_ids))})")
        elif o.visit_concept_ids:
            visit_join = (" JOIN visit_occurrence AS v ON v.visit_occurrence_id = "
                          "t.visit_occurrence_id AND v.person_id = t.person_id AND "
                          f"v.visit_concept_id IN ({', '.join(map(str, o.visit_concept_ids))})")
        if o.value_range is not None:
            lo, hi = o.value_range
            where += [f"t.value_as_number >= {lo!r}"] if lo is not None else []
            where += [f"t.value_as_number <= {hi!r}"] if hi is not None else []
            where += ["t.value_as_number IS NOT NULL"]
        if o.unit_concept_ids:
            where.append("COALESCE(t.unit_concept_id, 0) IN ("
                         + ", ".join(map(str, o.unit_concept_ids)) + ")")
        if o.value_concept_ids:
            where.append("t.value_as_concept_id IN ("
                         + ", ".join(map(str, o.value_concept_ids)) + ")")
        q[f"outcome_{o.name}"] = (
            f"SELECT b.person_id, MIN(CAST(t.{date_col} AS DATE)) AS event_date FROM {o.table} "
            f"AS t JOIN base_cohort AS b ON b.person_id = t.person_id{visit_join} WHERE "
            + " AND ".join(where) + " GROUP BY b.person_id"
        )
        ev = f"CASE WHEN e{len(columns)}.event_date <= {end} THEN e{len(columns)}.event_date END"
        dth = f"CASE WHEN x.death_date <= {end} THEN x.death_date END"
        status = (f"CASE WHEN {ev} IS NOT NULL AND ({dth} IS NULL OR {ev} <= {dth}) THEN 1 "
                  f"WHEN {dth} IS NOT NULL THEN {2 if o.competing else 0} ELSE 0 END")
        stop = f"CASE WHEN {ev} IS NOT NULL AND ({dth} IS NULL OR {ev} <= {dth}) THEN {ev} " \
            f"WHEN {dth} IS NOT NULL THEN {dth} ELSE {end} END"
        columns.append((o.name, status, stop))
    if not columns:
        return q
    joins = "".join(f" LEFT JOIN outcome_{name} AS e{i} ON e{i}.person_id = x.person_id"
                    for i, (name, _, _) in enumerate(columns))
    select = "".join(f", CAST({_days('x.t0_date', stop)} AS DOUBLE) AS {name}_time_days, "
                     f"{status} AS {name}_status" for name, status, stop in columns)
    q["outcome_columns"] = f"SELECT x.person_id{select} FROM alive_at_t0 AS x{joins}"
    return q


ATTRITION_STEPS = {
    "qualifying_dx": "First qualifying diagnosis (index date)",
    "valid_dates": "No impossible date (death or diagnosis before birth, observation ending before it starts)",
    "prior_obs": "Prior observation at index >= {prior_observation_days} days",
    "adult": "Age at index >= {min_age_years:g} years",
    "no_prior_cancer": "No other cancer before index",
    "no_prior_treatment": "No study drug before index",
    "first_line": "First study drug (t0) within {max_days_to_treatment} days after index",
    "t0_observed": "t0 inside the observation period",
    "arm_assigned": "Regimen started within {grace_days} days of t0 matches an arm",
    "alive_at_t0": "Alive at treatment start",
}
# Why a person fails each step (for the flow diagram's exclusion boxes); first step: none.
EXCLUSION_REASONS = {
    "valid_dates": "impossible date (data error)",
    "prior_obs": "< {prior_observation_days} days of observation before index",
    "adult": "age at index < {min_age_years:g} years",
    "no_prior_cancer": "other cancer up to index",
    "no_prior_treatment": "study drug before index",
    "first_line": "no first-line study drug within {max_days_to_treatment} days",
    "t0_observed": "t0 after the end of observation",
    "arm_assigned": "regimen matching no arm",
    "alive_at_t0": "death recorded before treatment start",
}


def _anchored_offset(date_column: str) -> str:
    """Days from the rule's anchor (``r.anchor``: t0 or index of ``b``) to ``date_column``."""
    return (f"CASE WHEN r.anchor = 't0' THEN {_days('b.t0_date', date_column)} "
            f"ELSE {_days('b.index_date', date_column)} END")


def covariate_queries(d: CohortDefinition) -> dict[str, str]:
    """Baseline covariates of ``base_cohort``: condition flags, last numeric and coded values.

    Each window counts days from its anchor (t0 or the index date). Numeric values: records of the covariate's set in its window whose unit has a factor
    and whose converted value is plausible; the last one wins (latest date, then the
    highest record id). Coded values: likewise, among records with a known value concept.
    An exact duplicate record carries the same value, so duplicates cannot change the result.
    """
    q: dict[str, str] = {}
    flags = []
    for column, codeset in d.conditions.items():
        offset = _days(f"b.{d.condition_anchor}_date", "co.condition_start_date")
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
        offset = _anchored_offset(f"t.{table}_date")
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
        offset = _anchored_offset(f"t.{table}_date")
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
    outcome_cols = [f"oc.{o.name}_{c}" for o in d.event_outcomes for c in ("time_days", "status")]
    select = select[:1] + outcome_cols + select[1:]
    q["cohort"] = (
        f"SELECT {', '.join(select)} FROM base_cohort AS b "
        + ("JOIN outcome_columns AS oc ON oc.person_id = b.person_id " if outcome_cols else "")
        + "JOIN condition_flags AS cf ON cf.person_id = b.person_id "
        "LEFT JOIN numeric_values AS nv ON nv.person_id = b.person_id "
        + ("LEFT JOIN categorical_values AS cv ON cv.person_id = b.person_id " if parts else "")
        + "ORDER BY b.person_id"
    )
    return q
