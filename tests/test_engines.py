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
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from pmed import config
from pmed.cohort import extract_cohort, parse_definition
from pmed.cohort.engine import SourceSpec
from pmed.cohort.errors import CohortError

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


def omop_type(column: str, duck_type: str) -> str:
    """The OMOP CDM v5.4 PostgreSQL DDL type of a demo column: ids and counts integer,
    values numeric, dates date, datetimes timestamp, text varchar."""
    if duck_type in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT"):
        return "INTEGER"
    if duck_type in ("DOUBLE", "FLOAT") or duck_type.startswith("DECIMAL"):
        return "NUMERIC"
    if duck_type in ("DATE", "TIMESTAMP"):
        return duck_type
    if duck_type == "VARCHAR":
        return "VARCHAR(255)"
    raise AssertionError(f"demo column {column}: type {duck_type} has no OMOP DDL type here")


# --- PostgreSQL ---------------------------------------------------------------------------

def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries missing: `make system-deps` installs the "
                        "Debian package postgresql (.ci/apt-packages.txt)")
        pytest.skip("PostgreSQL server not installed (make system-deps)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres(demo):
    """A PostgreSQL server on 127.0.0.1 (free port, data in a temp folder) holding the demo
    in schema ``cdm`` of database ``omop``; yields the libpq environment of role ``reader``."""
    psycopg = pytest.importorskip("psycopg")
    bindir = _pg_bin()
    root = os.geteuid() == 0
    as_pg = ["runuser", "-u", "postgres", "--"] if root else []
    folder = Path(tempfile.mkdtemp(prefix="pmed_pg_"))
    data, port = folder / "data", _free_port()
    if root:
        shutil.chown(folder, "postgres")
    subprocess.run([*as_pg, bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--locale=C"], check=True, capture_output=True)
    opts = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
    subprocess.run([*as_pg, bindir / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-o", opts,
                    "start"], check=True, capture_output=True)
    try:
        admin = f"host=127.0.0.1 port={port} user=postgres"
        with psycopg.connect(admin + " dbname=postgres", autocommit=True) as con:
            con.execute("CREATE DATABASE omop")
        with psycopg.connect(admin + " dbname=omop", autocommit=True) as con:
            _load_cdm(con, demo[0])
            con.execute("CREATE ROLE reader LOGIN")
            con.execute("REVOKE ALL ON DATABASE omop FROM PUBLIC")
            con.execute("GRANT CONNECT, TEMP ON DATABASE omop TO reader")
            con.execute("GRANT USAGE ON SCHEMA cdm TO reader")
            con.execute("GRANT SELECT ON ALL TABLES IN SCHEMA cdm TO reader")
            con.execute("CREATE SCHEMA scratch")
            con.execute("GRANT USAGE, CREATE ON SCHEMA scratch TO reader")
        yield {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "reader",
               "PGDATABASE": "omop", "admin": admin + " dbname=omop"}
    finally:
        subprocess.run([*as_pg, bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _load_cdm(con, omop_dir: Path) -> None:
    """Every demo table into cdm.<table> with OMOP v5.4 DDL types, through COPY."""
    con.execute("CREATE SCHEMA cdm")
    duck = duckdb.connect()
    for path in sorted(omop_dir.glob("*.parquet")):
        table = path.stem.lower()
        rel = duck.sql(f"SELECT * FROM read_parquet('{path}')")
        cols = [(c.lower(), omop_type(c.lower(), str(t).upper()))
                for c, t in zip(rel.columns, rel.types, strict=True)]
        con.execute(f"CREATE TABLE cdm.{table} ("
                    + ", ".join(f"{c} {t}" for c, t in cols) + ")")
        names = ", ".join(c for c, _ in cols)
        with con.cursor().copy(f"COPY cdm.{table} ({names}) FROM STDIN") as copy_:
            for row in rel.fetchall():
                copy_.write_row(row)
    con.execute("ANALYZE")


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
    finally:
        eng.close()


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


# --- Spark --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spark(demo, tmp_path_factory):
    """A local SparkSession (2 cores) with the demo as external Parquet tables in ``cdm``."""
    if os.environ.get("CI"):
        import pyspark  # noqa: F401  (CI must have it: `make engines-check` installs .[spark])
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    folder = tmp_path_factory.mktemp("spark")
    session = (SparkSession.builder.master("local[2]").appName("pmed-test")
               .config("spark.sql.warehouse.dir", str(folder / "warehouse"))
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.ui.enabled", "false")
               .config("spark.driver.memory", "1g")
               .config("spark.sql.session.timeZone", "UTC")
               .getOrCreate())
    session.sql("CREATE DATABASE IF NOT EXISTS cdm")
    for path in sorted(demo[0].glob("*.parquet")):
        session.sql(f"CREATE TABLE cdm.{path.stem.lower()} USING parquet LOCATION '{path}'")
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
