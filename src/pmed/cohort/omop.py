"""OMOP CDM v5.4 tables as DuckDB views over Parquet or CSV files, validated before use.

One file per table in a folder, named ``<table>.parquet`` or ``<table>.csv``; the format is
detected per table, so a folder may mix both. Tables are never loaded into pandas: each file
becomes a view (``read_parquet`` / ``read_csv``) and the cohort queries run inside DuckDB.
"""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb

from pmed.cohort.errors import CohortError

# The columns the cohort stage reads, with the type family each must have (OMOP CDM v5.4).
REQUIRED_COLUMNS: dict[str, dict[str, str]] = {
    "person": {"person_id": "integer", "gender_concept_id": "integer",
               "year_of_birth": "integer", "month_of_birth": "integer",
               "day_of_birth": "integer"},
    "observation_period": {"person_id": "integer", "observation_period_start_date": "date",
                           "observation_period_end_date": "date"},
    "condition_occurrence": {"condition_occurrence_id": "integer", "person_id": "integer",
                             "condition_concept_id": "integer", "condition_start_date": "date"},
    "drug_exposure": {"drug_exposure_id": "integer", "person_id": "integer",
                      "drug_concept_id": "integer", "drug_exposure_start_date": "date"},
    "measurement": {"measurement_id": "integer", "person_id": "integer",
                    "measurement_concept_id": "integer", "measurement_date": "date",
                    "value_as_number": "number", "value_as_concept_id": "integer",
                    "unit_concept_id": "integer"},
    "observation": {"observation_id": "integer", "person_id": "integer",
                    "observation_concept_id": "integer", "observation_date": "date",
                    "value_as_number": "number", "value_as_concept_id": "integer",
                    "unit_concept_id": "integer"},
    "death": {"person_id": "integer", "death_date": "date"},
    "concept": {"concept_id": "integer"},
    "concept_ancestor": {"ancestor_concept_id": "integer", "descendant_concept_id": "integer"},
}

# DuckDB type for each family when reading CSV (so an empty column is not read as VARCHAR).
CSV_TYPES = {"integer": "BIGINT", "number": "DOUBLE", "date": "DATE"}
TYPE_FAMILIES = {
    "integer": ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                "UINTEGER", "UBIGINT"),
    "number": ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE",
               "DECIMAL"),
    "date": ("DATE",),
}


def find_table_file(folder: Path, table: str) -> Path:
    """``<folder>/<table>.parquet`` or ``.csv``; CohortError if neither (or both) exist."""
    found = [folder / f"{table}.{ext}" for ext in ("parquet", "csv")
             if (folder / f"{table}.{ext}").is_file()]
    if not found:
        raise CohortError(f"OMOP table {table!r}: no {table}.parquet or {table}.csv in {folder}")
    if len(found) > 1:
        raise CohortError(f"OMOP table {table!r}: both {found[0].name} and {found[1].name} in "
                          f"{folder}; keep one")
    return found[0]


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh), [])


def register_table(con: duckdb.DuckDBPyConnection, folder: Path, table: str) -> Path:
    """Create view ``table`` over its file and check the required columns and their types."""
    path = find_table_file(folder, table)
    required = REQUIRED_COLUMNS[table]
    if path.suffix == ".csv":
        header = _csv_header(path)
        types = ", ".join(f"'{c}': '{CSV_TYPES[required[c]]}'" for c in header if c in required)
        source = (f"read_csv('{_sql_path(path)}', header = true, auto_detect = true"
                  + (f", types = {{{types}}}" if types else "") + ")")
    else:
        source = f"read_parquet('{_sql_path(path)}')"
    try:
        con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {source}")
        described = con.execute(f"DESCRIBE {table}").fetchall()
    except duckdb.Error as err:
        raise CohortError(f"OMOP table {table!r}: cannot read {path}: {err}") from err
    have = {name: str(typ).upper() for name, typ, *_ in described}
    for column, family in required.items():
        if column not in have:
            raise CohortError(f"OMOP table {table!r} ({path.name}): missing column {column!r} "
                              f"(OMOP CDM v5.4; has {sorted(have)})")
        base = have[column].split("(")[0]
        if family == "date" and base.startswith("TIMESTAMP"):
            continue  # a datetime where a date is expected is cast by the queries
        if base not in TYPE_FAMILIES[family]:
            raise CohortError(f"OMOP table {table!r} ({path.name}): column {column!r} has type "
                              f"{have[column]}, expected {family}")
    return path


def connect(folder: Path, memory_limit: str = "3GB", threads: int = 2) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB connection with one validated view per OMOP table in ``folder``.

    Parameters
    ----------
    folder : directory holding the OMOP CDM v5.4 files (``config.path("omop")``).
    memory_limit : DuckDB memory cap; larger intermediate results spill to a temp folder.
    threads : DuckDB worker threads.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CohortError(f"OMOP folder {folder} does not exist")
    con = duckdb.connect(config={"memory_limit": memory_limit, "threads": threads})
    for table in REQUIRED_COLUMNS:
        register_table(con, folder, table)
    return con


def check_concepts(con: duckdb.DuckDBPyConnection, concept_sets: dict[str, list[int]]) -> None:
    """CohortError naming the set and ids if any concept id of the definition is not in concept."""
    rows = [(name, cid) for name, ids in concept_sets.items() for cid in ids]
    con.execute("CREATE OR REPLACE TEMP TABLE checked_concepts "
                "(codeset_name VARCHAR, concept_id BIGINT)")
    con.executemany("INSERT INTO checked_concepts VALUES (?, ?)", rows)
    missing = con.execute(
        "SELECT codeset_name, concept_id FROM checked_concepts d "
        "WHERE NOT EXISTS (SELECT 1 FROM concept c WHERE c.concept_id = d.concept_id) "
        "ORDER BY codeset_name, concept_id"
    ).fetchall()
    if missing:
        listed = ", ".join(f"{name}: {cid}" for name, cid in missing)
        raise CohortError(f"cohort definition: concept ids not in table 'concept' ({listed}); "
                          "expected every id of concept_sets to exist in the vocabulary")
