"""The cohort stage on real engines: a PostgreSQL server and a local SparkSession.

The demo's ci-size CDM (EHR part) is loaded into schema ``cdm`` of each engine; the stage
runs through :mod:`pmed.cohort.engine` (PostgreSQL as a read-only role: USAGE + SELECT on
``cdm``, TEMP on the database) and must give exactly DuckDB's cohort, OMOP cohort table,
attrition and data-quality counts, twice in the same session (reruns). Slow (a server start,
a JVM): ``make engines-check`` runs them, and ``make test`` runs that.

PostgreSQL comes from Debian's packages (.ci/apt-packages.txt); as root (CI) the server runs
as the ``postgres`` user, since initdb refuses root. pyspark is the optional extra ``spark``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys

import pandas as pd
import pytest

from pmed import config
from pmed.cohort import contract, extract, extract_cohort, fingerprint, parse_definition, queries
from pmed.cohort.engine import SourceSpec
from pmed.cohort.errors import CohortError

sys.path.insert(0, str(config.ROOT / "benchmarks"))
import local_engines  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The ci-size demo CDM (no CT images) and DuckDB's result on its files."""
    from pmed.demo.generate import generate

    params = config.load_params()
    demo_params = copy.deepcopy(params["demo"])
    demo_params["sizes"]["ci"]["n_imaged"] = 0
    raw = tmp_path_factory.mktemp("engines_ci") / "raw"
    generate(raw, "ci", params["common"]["seed"], demo_params)
    d = parse_definition(params["cohort"])
    return raw / "omop", d, extract_cohort(raw / "omop", d, threads=1)


def assert_same(got, expected) -> None:
    """Identical cohort (after contract.coerce), OMOP cohort table, attrition and quality."""
    pd.testing.assert_frame_equal(got.cohort, expected.cohort, check_exact=True)
    pd.testing.assert_frame_equal(got.cohort_omop, expected.cohort_omop, check_exact=True)
    pd.testing.assert_frame_equal(got.attrition, expected.attrition, check_exact=True)
    pd.testing.assert_frame_equal(got.quality, expected.quality, check_exact=True)


# --- PostgreSQL ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def postgres(demo):
    """A PostgreSQL server (benchmarks/local_engines.py) holding the demo in schema ``cdm``;
    yields the libpq environment of the read-only role ``reader``."""
    pytest.importorskip("psycopg")
    if local_engines.pg_bindir() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries missing: `make system-deps` installs the "
                        "Debian package postgresql (.ci/apt-packages.txt)")
        pytest.skip("PostgreSQL server not installed (make system-deps)")
    with local_engines.postgres_server(demo[0]) as server:
        yield server


def _pg_env(monkeypatch, server) -> None:
    for key in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE"):
        monkeypatch.setenv(key, server[key])
    for key in ("PGSERVICE", "PGSERVICEFILE", "PGPASSWORD", "PGOPTIONS"):
        monkeypatch.delenv(key, raising=False)


def test_postgres_read_only_role_gives_duckdbs_cohort_twice(demo, postgres, monkeypatch):
    _, d, expected = demo
    _pg_env(monkeypatch, postgres)
    pg = dataclasses.replace(d, source=SourceSpec(engine="postgres", cdm_schema="cdm"))
    for _ in range(2):  # a rerun in a new session, and the temp tables cannot clash
        assert_same(extract_cohort(None, pg), expected)
    from pmed.cohort import engine

    eng = engine.open_engine(pg.source)
    try:  # the same session twice: steps are dropped and re-created
        from pmed.cohort.extract import load_rule_tables

        load_rule_tables(eng, pg)
        load_rule_tables(eng, pg)
        import psycopg

        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            eng.con.execute("CREATE TABLE cdm.x (a integer)")  # the role is read-only on cdm
        on_pg = fingerprint.fingerprint(eng, pg)
    finally:
        eng.close()
    files = extract.open_cdm(demo[0], d)
    try:  # the same counts and latest dates as the files
        assert on_pg["tables"] == fingerprint.fingerprint(files, d)["tables"]
    finally:
        files.close()


def test_postgres_scratch_schema_leaves_no_table(demo, postgres, monkeypatch):
    import psycopg

    _, d, expected = demo
    _pg_env(monkeypatch, postgres)
    pg = dataclasses.replace(d, source=SourceSpec(engine="postgres", cdm_schema="cdm",
                                                  scratch_schema="scratch"))
    assert_same(extract_cohort(None, pg), expected)
    with psycopg.connect(postgres["admin"]) as con:
        left = con.execute("SELECT COUNT(*) FROM information_schema.tables WHERE "
                           "table_schema = 'scratch'").fetchone()[0]
    assert left == 0


def test_postgres_errors_name_the_schema(demo, postgres, monkeypatch):
    _, d, _ = demo
    _pg_env(monkeypatch, postgres)
    pg = dataclasses.replace(d, source=SourceSpec(engine="postgres", cdm_schema="nope"))
    with pytest.raises(CohortError, match=r"OMOP table 'person' \(nope.person\): not found"):
        extract_cohort(None, pg)
    monkeypatch.setenv("PGUSER", "nobody")
    with pytest.raises(CohortError, match="cannot connect"):
        extract_cohort(None, dataclasses.replace(pg, source=SourceSpec(engine="postgres",
                                                                         cdm_schema="cdm")))


def script_statements(d, dialect: str) -> list[str]:
    """``python -m pmed.cohort --sql <dialect>``'s script, one statement per item."""
    script = queries.render_script(d, dialect)
    return [s.removesuffix(";\n") for s in script.split(";\n\n")]


def test_postgres_printed_script_runs_twice_as_read_only_role(demo, postgres):
    """The printed script (temporary tables only) on the read-only role, twice in one session:
    DuckDB's cohort both times (before: permanent CREATE TABLE, "permission denied" on a
    read-only CDM and "already exists" on a rerun)."""
    import psycopg

    _, d, expected = demo
    pg = dataclasses.replace(d, source=SourceSpec(engine="postgres", cdm_schema="cdm"))
    *setup, final = script_statements(pg, "postgres")
    conninfo = " ".join(f"{k}={postgres[f'PG{k.upper()}']}"
                        for k in ("host", "port", "user")) + f" dbname={postgres['PGDATABASE']}"
    with psycopg.connect(conninfo, autocommit=True) as con:
        for _ in range(2):
            for statement in setup:
                con.execute(statement)
            cur = con.execute(final)
            frame = pd.DataFrame.from_records(cur.fetchall(), columns=[c.name for c in cur.description])
            pd.testing.assert_frame_equal(contract.coerce(frame, d), expected.cohort, check_exact=True)


# --- Spark --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spark(demo, tmp_path_factory):
    """A local SparkSession (2 cores) with the demo as external Parquet tables in ``cdm``."""
    if os.environ.get("CI"):
        import pyspark  # noqa: F401  (CI must have it: `make engines-check` installs .[spark])
    pytest.importorskip("pyspark")
    session = local_engines.spark_session(tmp_path_factory.mktemp("spark"))
    local_engines.load_spark(session, demo[0])
    yield session
    session.stop()


def test_spark_gives_duckdbs_cohort_and_reruns(demo, spark):
    """Temporary views: a rerun in the same session replaces them ("already exists" before);
    a scratch schema: run-unique tables, all dropped. Reruns skip the quality checks (each is
    a Spark job; the first run compares them)."""
    _, d, expected = demo
    sp = dataclasses.replace(d, source=SourceSpec(engine="spark", cdm_schema="cdm"))
    assert_same(extract_cohort(None, sp, spark=spark), expected)
    no_quality = dataclasses.replace(expected, quality=pd.DataFrame())
    assert_same(extract_cohort(None, sp, spark=spark, check_quality=False), no_quality)
    assert not [t for t in spark.catalog.listTables() if t.isTemporary]
    spark.sql("CREATE DATABASE IF NOT EXISTS scratch")
    sp = dataclasses.replace(d, source=SourceSpec(engine="spark", cdm_schema="cdm",
                                                  scratch_schema="scratch"))
    assert_same(extract_cohort(None, sp, spark=spark, check_quality=False), no_quality)
    assert spark.catalog.listTables("scratch") == []


def test_spark_local_shuffle_partitions_set_for_the_run_only(spark):
    """Unconfigured local session: as many shuffle partitions as cores during a run (not
    Spark's 200 tasks per shuffle), Spark's default again after close; a user's value is kept."""
    from pmed.cohort import engine

    key = "spark.sql.shuffle.partitions"
    assert spark.conf.get(key) == "200"
    eng = engine.open_engine(SourceSpec(engine="spark", cdm_schema="cdm"), spark=spark)
    assert spark.conf.get(key) == str(spark.sparkContext.defaultParallelism) == "2"
    eng.close()
    assert spark.conf.get(key) == "200"
    spark.conf.set(key, "7")
    try:
        engine.open_engine(SourceSpec(engine="spark", cdm_schema="cdm"), spark=spark).close()
        assert spark.conf.get(key) == "7"
    finally:
        spark.conf.unset(key)


def test_spark_printed_script_with_scratch_schema_runs_twice(demo, spark):
    """The printed Spark script with a scratch schema (Parquet tables there, fixed names)
    twice in one session: DuckDB's cohort both times."""
    _, d, expected = demo
    spark.sql("CREATE DATABASE IF NOT EXISTS script_scratch")
    sp = dataclasses.replace(d, source=SourceSpec(engine="spark", cdm_schema="cdm",
                                                  scratch_schema="script_scratch"))
    *setup, final = script_statements(sp, "spark")
    try:
        for _ in range(2):
            for statement in setup:
                spark.sql(statement)
            df = spark.sql(final)
            frame = pd.DataFrame.from_records([tuple(r) for r in df.collect()], columns=df.columns)
            pd.testing.assert_frame_equal(contract.coerce(frame, d), expected.cohort,
                                          check_exact=True)
    finally:
        spark.sql("DROP DATABASE script_scratch CASCADE")
