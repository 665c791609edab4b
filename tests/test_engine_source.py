"""The engine layer without a server: params cohort.source, SQL rendering (schema-qualified,
steps renamed, transpiled), the cohort on a DuckDB database file with a CDM schema (the same
code path as PostgreSQL and Spark), and the CDM fingerprint."""

from __future__ import annotations

import copy
import dataclasses
import json

import duckdb
import pandas as pd
import pytest

from pmed import config
from pmed.cohort import extract_cohort, fingerprint, parse_definition, queries
from pmed.cohort.engine import Engine, SourceSpec, parse_source
from pmed.cohort.errors import CohortError


def test_parse_source_defaults_and_errors():
    assert parse_source({"encoding": "utf-8"}) == SourceSpec()
    spec = parse_source({"engine": "postgres", "cdm_schema": "cdm", "vocabulary_schema": "voc"})
    assert (spec.cdm_schema, spec.vocabulary, spec.scratch_schema) == ("cdm", "voc", None)
    assert parse_source({"engine": "spark", "cdm_schema": "cat.cdm"}).vocabulary == "cat.cdm"
    for bad, key in [({"engine": "oracle"}, "engine"), ({"engine": "postgres"}, "cdm_schema"),
                     ({"cdm_schema": "cdm"}, "cdm_schema"), ({"engine": "duckdb"}, "database"),
                     ({"engine": "postgres", "cdm_schema": "a b"}, "cdm_schema"),
                     ({"host": "x"}, "unknown")]:
        with pytest.raises(CohortError, match=key):
            parse_source(bad)


def test_render_qualifies_cdm_and_vocabulary_tables_only():
    eng = Engine(SourceSpec(engine="postgres", cdm_schema="cdm", vocabulary_schema="voc"))
    eng.dialect = "postgres"
    sql = eng.render("WITH x AS (SELECT person_id FROM person) SELECT c.concept_id FROM x "
                     "JOIN condition_occurrence AS co ON co.person_id = x.person_id JOIN concept "
                     "AS c ON c.concept_id = co.condition_concept_id JOIN codesets AS s ON "
                     "s.concept_id = c.concept_id")
    assert "FROM cdm.person" in sql and "JOIN cdm.condition_occurrence AS co" in sql
    assert "JOIN voc.concept AS c" in sql and "JOIN codesets AS s" in sql and "FROM x" in sql


def test_render_names_steps_in_the_scratch_schema():
    eng = Engine(SourceSpec(engine="spark", cdm_schema="cat.cdm", scratch_schema="work"))
    eng.dialect = "spark"
    eng.steps["adult"] = eng._step_name("adult")
    sql = eng.render("SELECT a.person_id FROM adult AS a JOIN death AS d ON "
                     "d.person_id = a.person_id WHERE DATE_DIFF('day', a.index_date, "
                     "d.death_date) > 0")
    assert f"FROM work.{eng.run_id}adult AS a" in sql and "JOIN cat.cdm.death AS d" in sql
    assert "DATEDIFF(" in sql  # transpiled


def test_render_script_qualifies_with_the_params_schema():
    d = parse_definition(config.load_params()["cohort"])
    pg = dataclasses.replace(d, source=SourceSpec(engine="postgres", cdm_schema="cdm"))
    script = queries.render_script(pg, "postgres")
    assert "FROM cdm.condition_occurrence" in script and "JOIN cdm.concept_ancestor" in script
    assert "FROM condition_occurrence" not in script
    assert queries.render_script(d, "postgres") != script


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The ci-size demo without images, its cohort on the files, and a DuckDB database file
    holding the same tables in schema ``cdm``."""
    from pmed.demo.generate import generate

    params = config.load_params()
    demo_params = copy.deepcopy(params["demo"])
    demo_params["sizes"]["ci"]["n_imaged"] = 0
    base = tmp_path_factory.mktemp("engine_source")
    generate(base / "raw", "ci", params["common"]["seed"], demo_params)
    omop = base / "raw" / "omop"
    db = base / "omop.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE SCHEMA cdm")
        for path in sorted(omop.glob("*.parquet")):
            con.execute(f"CREATE TABLE cdm.{path.stem} AS SELECT * FROM read_parquet('{path}')")
    d = parse_definition(params["cohort"])
    return omop, db, d, extract_cohort(omop, d, threads=1)


def test_duckdb_database_with_schema_gives_the_files_cohort(demo):
    """Engine duckdb: read-only file, schema-qualified SQL, steps as temp tables."""
    omop, db, d, expected = demo
    dd = dataclasses.replace(d, source=SourceSpec(engine="duckdb", cdm_schema="cdm",
                                                  database=str(db)))
    got = extract_cohort(None, dd, threads=1)
    for field in ("cohort", "cohort_omop", "attrition", "quality"):
        pd.testing.assert_frame_equal(getattr(got, field), getattr(expected, field),
                                      check_exact=True)


def test_duckdb_database_errors_name_table_and_column(demo, tmp_path):
    _, _, d, _ = demo
    db = tmp_path / "bad.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE SCHEMA cdm; CREATE TABLE cdm.person (person_id BIGINT)")
    dd = dataclasses.replace(d, source=SourceSpec(engine="duckdb", cdm_schema="cdm",
                                                  database=str(db)))
    with pytest.raises(CohortError, match=r"'person' \(cdm.person\): missing column "
                                          "'gender_concept_id'"):
        extract_cohort(None, dd)
    with duckdb.connect(str(db)) as con:
        con.execute("DROP TABLE cdm.person; CREATE TABLE cdm.person (person_id VARCHAR, "
                    "gender_concept_id INT, year_of_birth INT, month_of_birth INT, "
                    "day_of_birth INT)")
    with pytest.raises(CohortError, match="column 'person_id' has type VARCHAR, expected integer"):
        extract_cohort(None, dd)


def test_fingerprint_counts_and_changes_with_the_cdm(demo, tmp_path):
    omop, db, d, _ = demo
    files = fingerprint.write_fingerprint(tmp_path / "a.json", _params(d, {}, omop))
    assert json.loads((tmp_path / "a.json").read_text()) == files
    n_person = len(pd.read_parquet(omop / "person.parquet"))
    assert files["tables"]["person"] == {"rows": n_person, "max_date": None}
    assert files["tables"]["death"]["max_date"] == str(
        pd.read_parquet(omop / "death.parquet")["death_date"].max())
    source = {"engine": "duckdb", "cdm_schema": "cdm", "database": str(db)}
    in_db = fingerprint.write_fingerprint(tmp_path / "b.json", _params(d, source, omop))
    assert in_db["tables"] == files["tables"]
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM cdm.death WHERE person_id = (SELECT MIN(person_id) FROM "
                    "cdm.death)")
    changed = fingerprint.write_fingerprint(tmp_path / "b.json", _params(d, source, omop))
    assert changed["tables"]["death"]["rows"] < in_db["tables"]["death"]["rows"]
    label = fingerprint.write_fingerprint(tmp_path / "c.json",
                                          _params(d, source | {"data_version": "v2026q3"}, omop))
    assert label["data_version"] == "v2026q3" and "tables" not in label


def _params(d, source: dict, omop) -> dict:
    params = copy.deepcopy(config.load_params())
    params["cohort"]["source"] = {"encoding": "utf-8", **source}
    params["paths"]["omop"] = str(omop)
    return params
