"""A throwaway PostgreSQL server and a local SparkSession holding an OMOP folder, for
tests/test_engines.py and benchmarks/bench_engines.py.

PostgreSQL: Debian's server binaries (package postgresql, /usr/lib/postgresql/<v>/bin);
as root the server runs as user ``postgres`` (initdb refuses root), data in a temp folder,
listening on 127.0.0.1 only, on a free port, trust authentication (local tests only). The
OMOP tables go to schema ``cdm`` with OMOP CDM v5.4 DDL types (:func:`omop_type`) and the
indexes of OMOP's index script on the keys the cohort reads (:func:`index_columns`), a role
``reader`` gets USAGE + SELECT on ``cdm`` and TEMP on the database (a read-only CDM), and
schema ``scratch`` is writable by it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb


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
    raise ValueError(f"demo column {column}: type {duck_type} has no OMOP DDL type here")


def pg_bindir() -> Path | None:
    """Folder of Debian's newest PostgreSQL server binaries, or None if not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(omop_dir: Path, settings: str = "") -> Iterator[dict]:
    """Start a server holding ``omop_dir`` in schema ``cdm`` of database ``omop``; yields the
    libpq environment of role ``reader`` (PGHOST, PGPORT, PGUSER, PGDATABASE), the admin
    conninfo (``admin``) and the postmaster pid file (``pidfile``); stops it at exit.
    ``settings``: extra ``-c name=value`` server options."""
    import psycopg

    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries missing: `make system-deps` installs the "
                           "Debian package postgresql (.ci/apt-packages.txt)")
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="pmed_pg_"))
    data, port = folder / "data", _free_port()
    if as_pg:
        shutil.chown(folder, "postgres")
    try:
        subprocess.run([*as_pg, bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--locale=C"], check=True, capture_output=True)
        opts = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} "
                f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off {settings}")
        subprocess.run([*as_pg, bindir / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-o",
                        opts, "start"], check=True, capture_output=True)
        admin = f"host=127.0.0.1 port={port} user=postgres"
        with psycopg.connect(admin + " dbname=postgres", autocommit=True) as con:
            con.execute("CREATE DATABASE omop")
        with psycopg.connect(admin + " dbname=omop", autocommit=True) as con:
            load_postgres(con, omop_dir)
            con.execute("CREATE ROLE reader LOGIN")
            con.execute("REVOKE ALL ON DATABASE omop FROM PUBLIC")
            con.execute("GRANT CONNECT, TEMP ON DATABASE omop TO reader")
            con.execute("GRANT USAGE ON SCHEMA cdm TO reader")
            con.execute("GRANT SELECT ON ALL TABLES IN SCHEMA cdm TO reader")
            con.execute("CREATE SCHEMA scratch")
            con.execute("GRANT USAGE, CREATE ON SCHEMA scratch TO reader")
        yield {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "reader",
               "PGDATABASE": "omop", "admin": admin + " dbname=omop",
               "pidfile": str(data / "postmaster.pid")}
    finally:
        subprocess.run([*as_pg, bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def load_postgres(con, omop_dir: Path) -> None:
    """Every Parquet table of ``omop_dir`` into cdm.<table> (v5.4 DDL types): DuckDB writes
    a CSV file, streamed to the server's COPY (NULL = unquoted empty field)."""
    con.execute("CREATE SCHEMA cdm")
    duck = duckdb.connect()
    with tempfile.TemporaryDirectory(prefix="pmed_pg_load_") as tmp:
        for path in sorted(Path(omop_dir).glob("*.parquet")):
            table = path.stem.lower()
            rel = duck.sql(f"SELECT * FROM read_parquet('{path}')")
            cols = [(c.lower(), omop_type(c.lower(), str(t).upper()))
                    for c, t in zip(rel.columns, rel.types, strict=True)]
            con.execute(f"CREATE TABLE cdm.{table} ("
                        + ", ".join(f"{c} {t}" for c, t in cols) + ")")
            csv = Path(tmp) / f"{table}.csv"
            duck.execute(f"COPY (SELECT * FROM read_parquet('{path}')) TO '{csv}' "
                         "(HEADER false, DELIMITER ',', QUOTE '\"')")
            names = ", ".join(c for c, _ in cols)
            with con.cursor().copy(f"COPY cdm.{table} ({names}) FROM STDIN (FORMAT csv)") as cp, \
                    open(csv, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    cp.write(chunk)
            for column in index_columns(table, [c for c, _ in cols]):
                con.execute(f"CREATE INDEX idx_{table}_{column} ON cdm.{table} ({column})")
    con.execute("ANALYZE")


INDEXED = ("person_id", "concept_id", "ancestor_concept_id", "descendant_concept_id",
           "concept_id_1", "concept_id_2", "visit_occurrence_id")


def index_columns(table: str, columns: list[str]) -> list[str]:
    """The columns OMOP's v5.4 index script indexes in ``table``, as far as the cohort reads
    them: person_id, the table's own concept id, visit and vocabulary keys."""
    own = f"{table.split('_')[0]}_concept_id"
    return [c for c in columns if c in INDEXED or c == own]


def spark_session(folder: Path, cores: int = 2, memory: str = "1g"):
    """A local SparkSession (``cores`` threads, warehouse in ``folder``, UI off, UTC, no cap on
    the result size returned to the client; shuffle partitions left to the engine,
    :func:`pmed.cohort.engine.local_shuffle_partitions`)."""
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master(f"local[{cores}]").appName("pmed-local")
            .config("spark.sql.warehouse.dir", str(Path(folder) / "warehouse"))
            .config("spark.ui.enabled", "false")
            .config("spark.driver.memory", memory)
            .config("spark.driver.maxResultSize", "0")  # the cohort comes back whole (1g default: ~4M rows)
            .config("spark.sql.session.timeZone", "UTC")
            .getOrCreate())


def load_spark(session, omop_dir: Path) -> None:
    """Every Parquet table of ``omop_dir`` as external table cdm.<table> (no copy)."""
    session.sql("CREATE DATABASE IF NOT EXISTS cdm")
    for path in sorted(Path(omop_dir).glob("*.parquet")):
        session.sql(f"CREATE TABLE IF NOT EXISTS cdm.{path.stem.lower()} USING parquet "
                    f"LOCATION '{path}'")
