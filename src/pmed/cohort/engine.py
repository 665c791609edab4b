"""Where the cohort SQL runs: DuckDB over files (default), a DuckDB database, PostgreSQL, Spark.

params.yaml ``cohort.source`` (:func:`parse_source`):

* ``engine``: ``files`` (DuckDB views over the Parquet/CSV files of ``paths.omop``, validated
  by :mod:`pmed.cohort.omop`), ``duckdb`` (a DuckDB database file, opened read-only),
  ``postgres`` or ``spark``.
* ``cdm_schema`` / ``vocabulary_schema``: schemas of the clinical and vocabulary tables
  (database engines; the vocabulary defaults to the CDM schema; Spark also takes
  ``catalog.schema``). Table names are qualified when the SQL is rendered.
* ``scratch_schema``: where intermediate tables go (unique per run, dropped at the end);
  default none: session temporary tables (PostgreSQL ``CREATE TEMP TABLE``, Spark
  materialised temporary views), so a read-only CDM suffices.
* ``database``: the DuckDB database file (engine ``duckdb`` only; read-only unless a scratch
  schema is set).

Credentials never come from params: PostgreSQL reads libpq's environment (``PGHOST``,
``PGPORT``, ``PGDATABASE``, ``PGUSER``, ``PGPASSWORD`` or ``~/.pgpass``, ``PGSERVICE``);
Spark uses the active SparkSession or builds one from its own configuration
(``spark-defaults.conf``, ``PYSPARK_SUBMIT_ARGS``).

Every query is written once in DuckDB's dialect (:mod:`pmed.cohort.queries`); an
:class:`Engine` renders it (schema-qualified, transpiled by sqlglot), materialises each step
as a table in the engine and brings back only what the caller asks for: the cohort rows,
attrition counts and data-quality counts.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import sqlglot
from sqlglot import exp

from pmed.cohort.errors import CohortError

ENGINES = ("files", "duckdb", "postgres", "spark")
SOURCE_KEYS = ("encoding", "engine", "cdm_schema", "vocabulary_schema", "scratch_schema",
               "database", "data_version")
# OMOP CDM v5.4 standardized vocabulary tables (read from vocabulary_schema).
VOCABULARY_TABLES = frozenset({
    "concept", "vocabulary", "domain", "concept_class", "concept_relationship", "relationship",
    "concept_synonym", "concept_ancestor", "source_to_concept_map", "drug_strength"})
# OMOP CDM v5.4 clinical, health-system, derived and metadata tables (read from cdm_schema).
CDM_TABLES = frozenset({
    "person", "observation_period", "visit_occurrence", "visit_detail", "condition_occurrence",
    "drug_exposure", "procedure_occurrence", "device_exposure", "measurement", "observation",
    "death", "note", "note_nlp", "specimen", "fact_relationship", "location", "care_site",
    "provider", "payer_plan_period", "cost", "drug_era", "dose_era", "condition_era",
    "episode", "episode_event", "metadata", "cdm_source", "image_occurrence"})
_SCHEMA = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
# Type family of an engine's column type (lower case, without length/precision).
FAMILY_TYPES = {
    "integer": {"tinyint", "smallint", "integer", "int", "bigint", "hugeint", "int2", "int4",
                "int8", "utinyint", "usmallint", "uinteger", "ubigint"},
    "number": {"numeric", "decimal", "real", "double", "double precision", "float", "float4",
               "float8"},
    "date": {"date", "timestamp", "timestamp without time zone", "timestamp with time zone",
             "timestamp_ntz", "timestamp_ltz", "timestamptz"},
    "text": {"varchar", "character varying", "text", "character", "char", "string", "bpchar"},
}


@dataclass(frozen=True)
class SourceSpec:
    """Where the OMOP CDM is (params ``cohort.source``; see the module docstring)."""

    engine: str = "files"
    cdm_schema: str | None = None
    vocabulary_schema: str | None = None
    scratch_schema: str | None = None
    database: str | None = None

    @property
    def vocabulary(self) -> str | None:
        return self.vocabulary_schema or self.cdm_schema


def parse_source(source: Mapping | None) -> SourceSpec:
    """:class:`SourceSpec` of params ``cohort.source``; CohortError naming the key otherwise."""
    source = dict(source or {})
    unknown = sorted(set(source) - set(SOURCE_KEYS))
    if unknown:
        raise CohortError(f"cohort.source: unknown key(s) {unknown}; expected some of "
                          f"{list(SOURCE_KEYS)}")
    eng = str(source.get("engine") or "files")
    if eng not in ENGINES:
        raise CohortError(f"cohort.source.engine: {eng!r}; expected one of {list(ENGINES)}")
    schemas = {}
    for key in ("cdm_schema", "vocabulary_schema", "scratch_schema"):
        value = source.get(key)
        if value is None:
            continue
        if eng == "files":
            raise CohortError(f"cohort.source.{key}: only for a database engine (duckdb, "
                              "postgres, spark); engine files reads paths.omop")
        if not isinstance(value, str) or not _SCHEMA.match(value):
            raise CohortError(f"cohort.source.{key}: {value!r} is not a schema name; expected "
                              "letters, digits and _ (Spark: catalog.schema)")
        schemas[key] = value
    if eng in ("postgres", "spark") and "cdm_schema" not in schemas:
        raise CohortError(f"cohort.source.cdm_schema: required with engine {eng} (the schema "
                          "holding person, condition_occurrence, ...)")
    database = source.get("database")
    if (database is None) != (eng != "duckdb"):
        raise CohortError("cohort.source.database: the DuckDB database file, required with "
                          "engine duckdb and only there")
    return SourceSpec(engine=eng, database=None if database is None else str(database), **schemas)


def duckdb_type(sql_type: str, dialect: str) -> str:
    """A DuckDB column type (``VARCHAR``, ``BIGINT``, ...) in ``dialect``'s spelling."""
    from pmed.cohort.queries import DIALECTS

    return exp.DataType.build(sql_type, dialect="duckdb").sql(dialect=DIALECTS[dialect])


def type_family(sql_type: str) -> str | None:
    """"integer", "number", "date" or "text" for an engine's column type; None if another."""
    base = str(sql_type).lower().split("(")[0].strip()
    for family in ("integer", "number", "date", "text"):
        if base in FAMILY_TYPES[family]:
            return family
    return None


def fits(family: str, wanted: str) -> bool:
    """True if a column of type family ``family`` serves where ``wanted`` is required."""
    return family == wanted or (wanted == "number" and family == "integer")


class Engine:
    """One open connection to the CDM; steps are kept there, not in the client.

    Subclasses define how SQL runs (:meth:`_run`, :meth:`_fetch`) and how a step table is
    made; the SQL handed in is DuckDB's dialect, rendered by :meth:`render`.
    """

    dialect = "duckdb"
    max_group_rows: int | None = None  # rows one aggregation may group; None = the engine spills

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.run_id = f"pmed_{secrets.token_hex(4)}_"  # scratch tables of this run
        self.steps: dict[str, tuple[str | None, str | None, str]] = {}  # name -> (catalog, db, table)

    # -- SQL rendering -------------------------------------------------------------------
    def _schema_of(self, table: str) -> str | None:
        if table in VOCABULARY_TABLES:
            return self.spec.vocabulary
        if table in CDM_TABLES:
            return self.spec.cdm_schema
        return None

    def qualified(self, table: str) -> str:
        """The table's name as the engine sees it (schema-qualified CDM tables)."""
        table = table.lower()
        if table in self.steps:
            parts = self.steps[table]
        else:
            schema = self._schema_of(table)
            parts = (*split_schema(schema), table)
        return ".".join(p for p in parts if p)

    def render(self, sql: str) -> str:
        """``sql`` (DuckDB dialect) with CDM tables qualified and steps renamed, transpiled."""
        if self.dialect == "duckdb" and not (self.spec.cdm_schema or self.spec.scratch_schema):
            return sql  # engine files: the SQL exactly as written
        from pmed.cohort.queries import DIALECTS

        tree = sqlglot.parse_one(sql, read="duckdb")
        ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
        for t in list(tree.find_all(exp.Table)):
            name = t.name.lower()
            if t.args.get("db") or name in ctes or not name:
                continue
            if name in self.steps:
                catalog, db, table = self.steps[name]
            else:
                catalog, db = split_schema(self._schema_of(name))
                table = name
            if db:
                t.set("this", exp.to_identifier(table))
                t.set("db", exp.to_identifier(db))
                if catalog:
                    t.set("catalog", exp.to_identifier(catalog))
        return tree.sql(dialect=DIALECTS[self.dialect], unsupported_level=sqlglot.ErrorLevel.RAISE)

    # -- what callers use ----------------------------------------------------------------
    def rows(self, sql: str) -> list[tuple]:
        """Result rows of a SELECT (DuckDB dialect)."""
        return self._fetch(self.render(sql))[1]

    def frame(self, sql: str) -> pd.DataFrame:
        """Result of a SELECT as a DataFrame (dates as ``datetime.date``; see :meth:`_fetch`)."""
        names, rows = self._fetch(self.render(sql))
        return pd.DataFrame.from_records(rows, columns=names)

    def count(self, step: str) -> int:
        return int(self.rows(f"SELECT COUNT(*) FROM {step}")[0][0])

    def materialise(self, name: str, sql: str) -> None:
        """Step table ``name`` = result of ``sql``, stored in the engine (re-created on rerun)."""
        raise NotImplementedError

    def load_rows(self, name: str, columns: Sequence[tuple[str, str]], rows: list[tuple]) -> None:
        """Small table ``name`` (columns: (name, DuckDB type)) filled with ``rows``."""
        raise NotImplementedError

    def columns(self, table: str) -> list[tuple[str, str]]:
        """(column name in lower case, engine type) of a CDM table, in table order; [] if absent."""
        raise NotImplementedError

    def has_table(self, table: str) -> bool:
        return bool(self.columns(table))

    def where(self, table: str) -> str:
        """How messages name a CDM table."""
        return f"OMOP table {table!r}" + (f" ({self.qualified(table)})" if self.spec.cdm_schema
                                          else "")

    def describe_error(self, err: Exception) -> str:
        from pmed.cohort import omop

        return omop.describe_error(err)

    def errors(self) -> tuple[type[BaseException], ...]:
        return (duckdb.Error,)

    def close(self) -> None:
        """Drop the run's step tables and close what this engine opened."""

    def _fetch(self, sql: str) -> tuple[list[str], list[tuple]]:
        raise NotImplementedError

    def _step_name(self, name: str) -> tuple[str | None, str | None, str]:
        """Where step ``name`` lives: a run-unique table in scratch_schema, or the bare name."""
        if self.spec.scratch_schema:
            catalog, db = split_schema(self.spec.scratch_schema)
            return catalog, db, self.run_id + name
        return None, None, name


def split_schema(schema: str | None) -> tuple[str | None, str | None]:
    """(catalog, schema) of ``schema`` or ``catalog.schema`` (None for what is absent)."""
    if not schema:
        return None, None
    parts = schema.split(".")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


class DuckDBEngine(Engine):
    """DuckDB: views over the OMOP files (engine files) or a database file (engine duckdb)."""

    # A GROUP BY of all columns over 364M measurement rows ran out of the 3 GB memory_limit;
    # in parts of <= 40M rows it stayed at 3.1 GB peak in the same time (10M-person demo).
    max_group_rows = 40_000_000

    def __init__(self, spec: SourceSpec, con: duckdb.DuckDBPyConnection, owned: bool = True):
        super().__init__(spec)
        self.con, self.owned = con, owned

    def materialise(self, name, sql):
        self.steps[name] = self._step_name(name)
        kind = "TABLE" if self.spec.scratch_schema else "TEMP TABLE"
        self.con.execute(f"CREATE OR REPLACE {kind} {self.qualified(name)} AS {self.render(sql)}")

    def load_rows(self, name, columns, rows):
        self.steps[name] = self._step_name(name)
        kind = "TABLE" if self.spec.scratch_schema else "TEMP TABLE"
        cols = ", ".join(f"{c} {t}" for c, t in columns)
        self.con.execute(f"CREATE OR REPLACE {kind} {self.qualified(name)} ({cols})")
        if rows:
            marks = ", ".join("?" for _ in columns)
            self.con.executemany(f"INSERT INTO {self.qualified(name)} VALUES ({marks})", rows)

    def columns(self, table):
        table = table.lower()
        if self.spec.engine == "files" and table not in self.steps:
            from pmed.cohort import omop

            if not omop.has_table(self.con, table) and table not in {
                    r[0] for r in self.con.execute("SHOW TABLES").fetchall()}:
                return []
            return [(r[0].lower(), str(r[1])) for r in
                    self.con.execute(f"DESCRIBE {table}").fetchall()]
        catalog, db = split_schema(self._schema_of(table))
        return [(r[0].lower(), str(r[1])) for r in self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
            "AND table_schema = COALESCE(?, current_schema()) AND (? IS NULL OR "
            "table_catalog = ?) ORDER BY ordinal_position", [table, db, catalog, catalog]
        ).fetchall()]

    def _fetch(self, sql):
        cur = self.con.execute(sql)
        names = [c[0] for c in cur.description]
        return names, cur.fetchall()

    def frame(self, sql):
        return self.con.execute(self.render(sql)).df()

    def close(self):
        if self.spec.scratch_schema:
            for name in list(self.steps):
                self.con.execute(f"DROP TABLE IF EXISTS {self.qualified(name)}")
        if self.owned:
            self.con.close()


class PostgresEngine(Engine):
    """PostgreSQL through psycopg; connection settings from libpq's environment only."""

    dialect = "postgres"

    def __init__(self, spec: SourceSpec, conninfo: str = ""):
        super().__init__(spec)
        import psycopg

        self.psycopg = psycopg
        try:
            self.con = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as err:
            raise CohortError("cohort.source.engine postgres: cannot connect with the PG* "
                              f"environment variables / service file: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
                              ) from None  # libpq's text names host, port, user: no data

    def materialise(self, name, sql):
        self.steps[name] = self._step_name(name)
        self._create(name, f"AS {self.render(sql)}")
        self.con.execute(f"ANALYZE {self.qualified(name)}")  # temp tables get no autovacuum

    def load_rows(self, name, columns, rows):
        self.steps[name] = self._step_name(name)
        self._create(name, "(" + ", ".join(f"{c} {duckdb_type(t, 'postgres')}"
                                           for c, t in columns) + ")")
        if rows:
            with self.con.cursor() as cur:
                marks = ", ".join("%s" for _ in columns)
                cur.executemany(f"INSERT INTO {self.qualified(name)} VALUES ({marks})", rows)

    def _create(self, name: str, body: str) -> None:
        if self.spec.scratch_schema:
            target = self.qualified(name)
            self.con.execute(f"DROP TABLE IF EXISTS {target}")
            self.con.execute(f"CREATE TABLE {target} {body}")
        else:  # pg_temp: never drops a permanent table of the same name
            self.con.execute(f"DROP TABLE IF EXISTS pg_temp.{name}")
            self.con.execute(f"CREATE TEMP TABLE {name} {body}")

    def columns(self, table):
        table = table.lower()
        _, db = split_schema(self._schema_of(table))
        return [(r[0].lower(), r[1]) for r in self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
            "AND table_schema = COALESCE(%s, current_schema()) ORDER BY ordinal_position",
            [table, db]).fetchall()]

    def _fetch(self, sql):
        cur = self.con.execute(sql)
        return [c.name for c in cur.description], cur.fetchall()

    def describe_error(self, err):
        return _pg_text(err)

    def errors(self):
        return (self.psycopg.Error,)

    def close(self):
        try:
            if self.spec.scratch_schema and not self.con.closed:
                for name in list(self.steps):
                    self.con.execute(f"DROP TABLE IF EXISTS {self.qualified(name)}")
        finally:
            self.con.close()


def _pg_text(err: Exception) -> str:
    """A psycopg error without data: its class and SQLSTATE; the server's message only for
    access-rule and missing-object errors (class 42, 28, 3D, 08: they name objects, not values)."""
    state = getattr(err, "sqlstate", None) or ""
    diag = getattr(err, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = f"{type(err).__name__} (SQLSTATE {state or 'none'})"
    if primary and state[:2] in ("42", "28", "3D", "08", ""):
        return f"{text}: {primary}"
    return text + " (the server's message is not shown: it may quote the data)"


class SparkEngine(Engine):
    """Spark SQL in a SparkSession: every step is computed once (local checkpoint), not a lazy
    view re-evaluated at each use; with scratch_schema, run-unique tables dropped at the end."""

    dialect = "spark"

    def __init__(self, spec: SourceSpec, spark=None):
        super().__init__(spec)
        from pyspark.sql import SparkSession

        self.spark = spark or SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
        self.frames: list = []
        self.tuned = local_shuffle_partitions(self.spark)

    def materialise(self, name, sql):
        self.steps[name] = self._step_name(name)
        rendered = self.render(sql)
        if self.spec.scratch_schema:
            target = self.qualified(name)
            self.spark.sql(f"DROP TABLE IF EXISTS {target}")
            self.spark.sql(f"CREATE TABLE {target} USING parquet AS {rendered}")
            return
        df = self.spark.sql(rendered).localCheckpoint(eager=True)
        self.frames.append(df)
        df.createOrReplaceTempView(name)

    def load_rows(self, name, columns, rows):
        self.steps[name] = self._step_name(name)
        schema = ", ".join(f"{c} {duckdb_type(t, 'spark')}" for c, t in columns)
        floats = [t.upper() in ("DOUBLE", "FLOAT", "REAL") for _, t in columns]
        rows = [tuple(float(v) if f and v is not None else v for v, f in zip(r, floats, strict=True))
                for r in rows]
        df = self.spark.createDataFrame(rows, schema=schema)
        if self.spec.scratch_schema:
            target = self.qualified(name)
            self.spark.sql(f"DROP TABLE IF EXISTS {target}")
            df.write.format("parquet").saveAsTable(target)
        else:
            df.createOrReplaceTempView(name)

    def columns(self, table):
        name = self.qualified(table)
        if not self.spark.catalog.tableExists(name):
            return []
        return [(f.name.lower(), f.dataType.simpleString())
                for f in self.spark.table(name).schema.fields]

    def _fetch(self, sql):
        df = self.spark.sql(sql)
        return df.columns, [tuple(r) for r in df.collect()]

    def frame(self, sql):
        """Through Arrow (columnar batches; ``collect()``'s Python rows would cost several GB and
        minutes for millions of cohort rows); the session's Arrow setting is restored after."""
        key = "spark.sql.execution.arrow.pyspark.enabled"
        before = self.spark.conf.get(key, None)
        self.spark.conf.set(key, "true")
        try:
            return self.spark.sql(self.render(sql)).toPandas()
        finally:
            if before is None:
                self.spark.conf.unset(key)
            else:
                self.spark.conf.set(key, before)

    def describe_error(self, err):
        cond = getattr(err, "getCondition", None) or getattr(err, "getErrorClass", None)
        kind = cond() if cond else None
        return f"{type(err).__name__} ({kind or 'no error class'}; Spark's message is not shown: " \
            "it may quote the data)"

    def errors(self):
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException

        return (PySparkException, Py4JError)

    def close(self):
        for name in list(self.steps):
            if self.spec.scratch_schema:
                self.spark.sql(f"DROP TABLE IF EXISTS {self.qualified(name)}")
            else:
                self.spark.catalog.dropTempView(name)
        for df in self.frames:
            df.unpersist()
        self.frames.clear()
        if self.tuned:
            self.spark.conf.unset(SHUFFLE_PARTITIONS)


SHUFFLE_PARTITIONS = "spark.sql.shuffle.partitions"


def local_shuffle_partitions(spark) -> bool:
    """In local mode, shuffle into as many partitions as there are cores (not Spark's default
    200: each is a task, and the steps' tables are small), unless the user configured it
    (launch configuration or the session). True if set here (:meth:`SparkEngine.close` unsets)."""
    sc = spark.sparkContext
    if not sc.master.startswith("local") or sc.getConf().contains(SHUFFLE_PARTITIONS) or \
            spark.conf.get(SHUFFLE_PARTITIONS) != "200":
        return False
    spark.conf.set(SHUFFLE_PARTITIONS, str(sc.defaultParallelism))
    return True


def as_engine(con) -> Engine:
    """``con`` itself if it is an Engine; a DuckDB connection wrapped (engine files) otherwise."""
    if isinstance(con, Engine):
        return con
    return DuckDBEngine(SourceSpec(), con, owned=False)


def open_engine(spec: SourceSpec, omop_dir: Path | None = None, memory_limit: str = "3GB",
                threads: int = 2, encoding: str = "utf-8", spark=None) -> Engine:
    """Open the CDM described by ``spec``.

    engine files: :func:`pmed.cohort.omop.connect` over ``omop_dir`` (validated views);
    duckdb: the database file read-only; postgres: libpq environment; spark: ``spark`` or the
    active session. Database tables are checked by :func:`validate_cdm`, called by the caller.
    """
    if spec.engine == "files":
        from pmed.cohort import omop

        return DuckDBEngine(spec, omop.connect(Path(omop_dir), memory_limit=memory_limit,
                                               threads=threads, encoding=encoding))
    if spec.engine == "duckdb":
        from pmed import config

        path = Path(spec.database)
        path = path if path.is_absolute() else config.ROOT / path
        if not path.is_file():
            raise CohortError(f"cohort.source.database: no DuckDB database file {path}")
        # read-only unless run-unique step tables go to a scratch schema of the file
        return DuckDBEngine(spec, duckdb.connect(str(path), read_only=not spec.scratch_schema, config={
            "memory_limit": memory_limit, "threads": threads}))
    if spec.engine == "postgres":
        return PostgresEngine(spec)
    return SparkEngine(spec, spark)


def validate_cdm(eng: Engine, tables: Mapping[str, Mapping[str, str]]) -> None:
    """CohortError unless each table exists with the required columns of the right type family.

    ``tables``: table -> column -> "integer" | "number" | "date" | "text"; also checks that
    person_id is unique in ``person``. Engine files validates the files instead
    (:mod:`pmed.cohort.omop`).
    """
    for table, required in tables.items():
        found = dict(eng.columns(table))
        where = eng.where(table)
        if not found:
            raise CohortError(f"{where}: not found (or no SELECT privilege on it); expected the "
                              "OMOP CDM v5.4 table there (params cohort.source.cdm_schema / "
                              "vocabulary_schema)")
        for column, wanted in required.items():
            if column not in found:
                raise CohortError(f"{where}: missing column {column!r} (OMOP CDM v5.4; has "
                                  f"{sorted(found)})")
            family = type_family(found[column])
            if family is None or not fits(family, wanted):
                raise CohortError(f"{where}: column {column!r} has type {found[column]}, "
                                  f"expected {wanted}")
    if "person" in tables:
        n = eng.rows("SELECT COUNT(*) - COUNT(DISTINCT person_id) FROM person")[0][0]
        if n:
            raise CohortError(f"{eng.where('person')}: person_id is not unique ({n} surplus rows "
                              "share a person_id); expected one row per person")
