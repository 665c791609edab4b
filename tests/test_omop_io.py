"""Reading real OMOP extracts: files as hospitals and Athena ship them, and bad input named.

Every fixture is a small file written to ``tmp_path`` byte for byte as a user would meet it
(upper-case Athena names, tab/semicolon/gzip CSV, DOUBLE ids from pandas, NULL literals,
latin-1 text, NULL or duplicate person ids). Error messages are asserted verbatim, and a
planted identifier in every bad row must never reach a message.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from pmed.cohort import CohortError, omop

CANARY = "MRN-CANARY-7741"  # planted in every bad row; must never appear in a message


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    data = text.encode(encoding)
    path.write_bytes(gzip.compress(data) if path.name.lower().endswith(".gz") else data)
    return path


def view(con, table: str) -> pd.DataFrame:
    return con.execute(f"SELECT * FROM {table} ORDER BY ALL").df()


def types(con, table: str) -> dict[str, str]:
    return {r[0]: r[1] for r in con.execute(f"DESCRIBE {table}").fetchall()}


def register(folder: Path, table: str, **kw):
    con = duckdb.connect()
    omop.register_table(con, folder, table, **kw)
    return con


def raises(folder: Path, table: str, **kw) -> str:
    with pytest.raises(CohortError) as err:
        register(folder, table, **kw)
    message = str(err.value)
    assert CANARY not in message
    return message


PERSON = ("person_id,gender_concept_id,year_of_birth,month_of_birth,day_of_birth,"
          "person_source_value\n")


# --- file names, headers, compression, delimiters ------------------------------------------

def test_athena_vocabulary_file_upper_case_tab_delimited(tmp_path):
    """CONCEPT.csv as Athena ships it: tab-delimited, upper-case header, quotes in names."""
    write(tmp_path / "CONCEPT.csv",
          "CONCEPT_ID\tCONCEPT_NAME\tDOMAIN_ID\tVOCABULARY_ID\tCONCEPT_CLASS_ID\t"
          "STANDARD_CONCEPT\tCONCEPT_CODE\tVALID_START_DATE\tVALID_END_DATE\tINVALID_REASON\n"
          '4115276\tNon-small cell lung "cancer"\tCondition\tSNOMED\tClinical Finding\tS\t'
          "254637007\t20020131\t20991231\t\n"
          '40000001\t"Old code\tCondition\tSNOMED\tClinical Finding\t\t1\t19700101\t20091231\tD\n')
    con = register(tmp_path, "concept")
    got = view(con, "concept")
    assert list(got.columns[:2]) == ["concept_id", "concept_name"]
    assert got["concept_id"].tolist() == [4115276, 40000001]
    assert got["concept_name"].tolist() == ['Non-small cell lung "cancer"', '"Old code']
    assert got["invalid_reason"].tolist()[0] is None and got["invalid_reason"].tolist()[1] == "D"
    assert types(con, "concept")["concept_id"] == "BIGINT"


def test_parquet_with_upper_case_file_and_column_names(tmp_path):
    pd.DataFrame({"PERSON_ID": [2, 1], "Gender_Concept_Id": [8532, 8507],
                  "YEAR_OF_BIRTH": [1950, 1960], "MONTH_OF_BIRTH": [1, 2],
                  "DAY_OF_BIRTH": [3, 4]}).to_parquet(tmp_path / "Person.parquet")
    con = register(tmp_path, "person")
    assert list(view(con, "person").columns) == ["person_id", "gender_concept_id",
                                                 "year_of_birth", "month_of_birth", "day_of_birth"]
    assert view(con, "person")["gender_concept_id"].tolist() == [8507, 8532]


def test_concept_without_invalid_reason_gets_it_as_null(tmp_path):
    write(tmp_path / "concept.csv", "concept_id\n1\n2\n")
    con = register(tmp_path, "concept")
    assert view(con, "concept")["invalid_reason"].isna().all()
    assert types(con, "concept")["invalid_reason"] == "VARCHAR"


@pytest.mark.parametrize("name, sep", [("person.csv.gz", ","), ("PERSON.CSV", "\t"),
                                       ("person.csv", ";")])
def test_gzip_tab_and_semicolon_read_alike(tmp_path, name, sep):
    rows = [["1", "8532", "1950", "1", "3", "A"], ["2", "8507", "1960", "", "", "B"]]
    header = PERSON.strip().split(",")
    write(tmp_path / name, "\n".join(sep.join(r) for r in [header, *rows]) + "\n")
    got = view(register(tmp_path, "person"), "person")
    assert got["person_id"].tolist() == [1, 2]
    assert got["month_of_birth"].isna().tolist() == [False, True]
    assert got["person_source_value"].tolist() == ["A", "B"]


def test_utf8_bom_and_crlf(tmp_path):
    write(tmp_path / "person.csv", "\ufeff" + PERSON.replace("\n", "\r\n")
          + "1,8532,1950,1,3,A\r\n")
    assert view(register(tmp_path, "person"), "person")["person_id"].tolist() == [1]


def test_ambiguous_delimiter_names_the_file(tmp_path):
    write(tmp_path / "person.csv", "person_id,gender_concept_id;year_of_birth\n1,2,3\n")
    assert raises(tmp_path, "person") == (
        "OMOP table 'person': cannot tell the delimiter of person.csv: its header line holds "
        "comma and semicolon, and none of them splits the first lines into as many fields as "
        "the header; expected exactly one of comma, tab or semicolon")


def test_delimiter_from_the_lines_when_the_header_holds_two(tmp_path):
    """A header with both ',' and ';' is read with the one that splits every line alike."""
    write(tmp_path / "concept.csv", "concept_id;concept_name,x\n1;a,b\n2;c,d\n")
    with pytest.raises(CohortError) as err:  # ';' splits 2|2|2; ',' splits 2|2|2 as well
        register(tmp_path, "concept")
    assert "each of them splits the first lines" in str(err.value)
    write(tmp_path / "concept.csv", "concept_id;concept_name,x\n1;a\n2;c\n")
    assert view(register(tmp_path, "concept"), "concept")["concept_id"].tolist() == [1, 2]


def test_unknown_delimiter(tmp_path):
    write(tmp_path / "person.csv", PERSON.replace(",", "|") + "1|8532|1950|1|3|A\n")
    assert raises(tmp_path, "person") == (
        "OMOP table 'person': cannot tell the delimiter of person.csv: its header line holds "
        "no comma, tab or semicolon; expected one of them between the column names")


def test_two_files_for_one_table(tmp_path):
    write(tmp_path / "person.csv", PERSON)
    write(tmp_path / "PERSON.csv.gz", PERSON)
    assert raises(tmp_path, "person") == (
        f"OMOP table 'person': PERSON.csv.gz and person.csv in {tmp_path}; keep one")


def test_columns_differing_only_in_case(tmp_path):
    write(tmp_path / "concept.csv", "concept_id,CONCEPT_ID\n1,1\n")
    assert raises(tmp_path, "concept") == (
        "OMOP table 'concept' (concept.csv): columns 'concept_id' and 'CONCEPT_ID' differ only "
        "in letter case; keep one")


# --- missing values and integral ids --------------------------------------------------------

def test_null_literals_are_missing(tmp_path):
    write(tmp_path / "measurement.csv",
          "measurement_id,person_id,measurement_concept_id,measurement_date,value_as_number,"
          "value_as_concept_id,unit_concept_id\n"
          "1,1,30,2020-01-01,NULL,\\N,8713\n"
          "2,1,30,2020-01-02,,NA,\n"
          "3,1,30,NULL,4.5,,\\N\n")
    con = register(tmp_path, "measurement")
    got = view(con, "measurement")
    assert got["value_as_number"].isna().tolist() == [True, True, False]
    assert got["value_as_concept_id"].isna().all()
    assert got["unit_concept_id"].isna().tolist() == [False, True, True]
    assert got["measurement_date"].isna().tolist() == [False, False, True]
    t = types(con, "measurement")
    assert (t["unit_concept_id"], t["value_as_number"], t["measurement_date"]) == \
        ("BIGINT", "DOUBLE", "DATE")


def measurement_frame(units) -> pd.DataFrame:
    n = len(units)
    return pd.DataFrame({"measurement_id": np.arange(1, n + 1), "person_id": np.ones(n, int),
                         "measurement_concept_id": np.full(n, 30),
                         "measurement_date": pd.to_datetime(["2020-01-01"] * n).date,
                         "value_as_number": np.full(n, 1.5), "value_as_concept_id": units,
                         "unit_concept_id": units, "provider_id": units,
                         "measurement_source_value": [CANARY] * n})


def test_integral_double_ids_from_pandas_are_cast(tmp_path):
    """pandas writes a nullable integer column as float64 (NaN for missing)."""
    measurement_frame([8713.0, np.nan, 8840.0]).to_parquet(tmp_path / "measurement.parquet")
    con = register(tmp_path, "measurement")
    t = types(con, "measurement")
    assert (t["unit_concept_id"], t["provider_id"]) == ("BIGINT", "BIGINT")
    assert view(con, "measurement")["unit_concept_id"].tolist()[::2] == [8713, 8840]
    assert view(con, "measurement")["unit_concept_id"].isna().tolist() == [False, True, False]


def test_decimal_ids_are_cast(tmp_path):
    con = duckdb.connect()
    con.execute(f"COPY (SELECT CAST(1 AS DECIMAL(18, 0)) AS concept_id UNION ALL SELECT 2) "
                f"TO '{tmp_path / 'concept.parquet'}' (FORMAT parquet)")
    con = register(tmp_path, "concept")
    assert types(con, "concept")["concept_id"] == "BIGINT"
    assert view(con, "concept")["concept_id"].tolist() == [1, 2]


def test_integral_double_ids_in_csv(tmp_path):
    write(tmp_path / "concept_ancestor.csv",
          "ancestor_concept_id,descendant_concept_id,min_levels_of_separation\n"
          "1.0,2.0,1.0\n1,12345678901234567,0\n")
    con = register(tmp_path, "concept_ancestor")
    assert view(con, "concept_ancestor")["descendant_concept_id"].tolist() == \
        [2, 12345678901234567]  # above 2**53: read exactly, never through a double


def test_non_integral_double_id_names_table_column_and_row(tmp_path):
    measurement_frame([8713.0, 8713.0, 8713.5]).to_parquet(tmp_path / "measurement.parquet")
    message = raises(tmp_path, "measurement")
    assert message == (
        "OMOP table 'measurement' (measurement.parquet): column 'value_as_concept_id' holds 1 "
        "values that are not whole numbers (first at row 3; values not shown); expected "
        "integers such as 8713 or 8713.0")
    assert "8713.5" not in message


MEASUREMENT_CSV = ("measurement_id,person_id,measurement_concept_id,measurement_date,"
                   "value_as_number,value_as_concept_id,unit_concept_id,measurement_source_value\n")


def test_non_integral_id_in_csv_names_the_line(tmp_path):
    write(tmp_path / "measurement.csv", MEASUREMENT_CSV
          + f"1,1,30,2020-01-01,1.5,,8713,{CANARY}\n"
          + f"2,1,30,2020-01-01,1.5,,8713.25,{CANARY}\n"
          + f"3,1,30,2020-01-01,1.5,,8713.5,{CANARY}\n")
    message = raises(tmp_path, "measurement")
    assert message == (
        "OMOP table 'measurement' (measurement.csv): column 'unit_concept_id' holds 2 values "
        "that are not whole numbers (first at data row 2 (line 3); values not shown); expected "
        "integers such as 8713 or 8713.0")
    assert "8713.25" not in message


def test_text_in_an_id_column_of_a_csv(tmp_path):
    write(tmp_path / "measurement.csv", MEASUREMENT_CSV
          + f"1,1,30,2020-01-01,1.5,,8713,{CANARY}\n"
          + f"2,1,30,2020-01-01,1.5,,g/dL,{CANARY}\n")
    message = raises(tmp_path, "measurement")
    assert message == (
        "OMOP table 'measurement' (measurement.csv): reading failed on the OMOP input at line 3 "
        '(data row 2): error converting column "unit_concept_id" to BIGINT; 1 bad lines in all '
        "(values not shown)")
    assert "g/dL" not in message


def test_non_integral_optional_id_column_is_an_error_too(tmp_path):
    measurement_frame([8713.0, 8713.0]).assign(provider_id=[1.0, 2.5]).to_parquet(
        tmp_path / "measurement.parquet")
    assert "column 'provider_id' holds 1 values that are not whole numbers (first at row 2;" in \
        raises(tmp_path, "measurement")


# --- required ids ---------------------------------------------------------------------------

def test_null_person_id_is_an_error_with_its_count(tmp_path):
    frame = measurement_frame([8713.0] * 4)
    frame["person_id"] = pd.array([1, None, 3, None], dtype="Int64")
    frame.to_parquet(tmp_path / "measurement.parquet")
    assert raises(tmp_path, "measurement") == (
        "OMOP table 'measurement' (measurement.parquet): 2 rows with a missing person_id; "
        "expected every row to have one (OMOP CDM v5.4: person_id is required)")


def test_null_primary_key_and_null_literal_person_id_in_csv(tmp_path):
    body = "".join(f"{i},{p},1,2020-01-01\n" for i, p in [("1", "1"), ("NULL", "2"), ("", "3")])
    write(tmp_path / "condition_occurrence.csv",
          "condition_occurrence_id,person_id,condition_concept_id,condition_start_date\n" + body)
    assert raises(tmp_path, "condition_occurrence") == (
        "OMOP table 'condition_occurrence' (condition_occurrence.csv): 2 rows with a missing "
        "condition_occurrence_id; expected every row to have one (OMOP CDM v5.4: "
        "condition_occurrence_id is required)")
    write(tmp_path / "condition_occurrence.csv",
          "condition_occurrence_id,person_id,condition_concept_id,condition_start_date\n"
          "1,\\N,1,2020-01-01\n")
    assert "1 rows with a missing person_id" in raises(tmp_path, "condition_occurrence")


def test_duplicate_person_id_names_the_table(tmp_path):
    write(tmp_path / "person.csv", PERSON + "1,8532,1950,1,3,A\n2,8507,1950,1,3,B\n"
          "1,8532,1951,1,3,C\n")
    assert raises(tmp_path, "person") == (
        "OMOP table 'person' (person.csv): person_id is not unique (1 surplus rows share a "
        "person_id); expected one row per person")


# --- encodings and DuckDB's own CSV errors --------------------------------------------------

def latin1_person(tmp_path) -> Path:
    return write(tmp_path / "person.csv", PERSON + "1,8532,1950,1,3,A\n"
                 f"2,8507,1960,1,3,{CANARY} Müller 1960-01-03\n", encoding="latin-1")


def test_latin1_file_without_the_encoding_option(tmp_path):
    latin1_person(tmp_path)
    assert raises(tmp_path, "person") == (
        "OMOP table 'person': person.csv is not valid utf-8 text (line 3; the line is not "
        "shown); set cohort.source.encoding to the file's encoding, e.g. latin-1")


def test_latin1_file_with_the_encoding_option(tmp_path):
    latin1_person(tmp_path)
    got = view(register(tmp_path, "person", encoding="latin-1"), "person")
    assert got["person_source_value"].str.contains("Müller").tolist() == [False, True]


def test_bad_byte_late_in_a_big_file_names_its_line(tmp_path):
    rows = "".join(f"{i},8532,1950,1,3,A\n" for i in range(1, 200_001))
    write(tmp_path / "person.csv.gz", PERSON + rows + f"0,1,1,1,1,{CANARY}\xe9\n",
          encoding="latin-1")
    assert "(line 200002; the line is not shown)" in raises(tmp_path, "person")


def test_unknown_encoding_names_the_param(tmp_path):
    write(tmp_path / "person.csv", PERSON)
    assert raises(tmp_path, "person", encoding="cp1252") == (
        "cohort.source.encoding: unknown CSV encoding 'cp1252'; expected one of utf-8, latin-1, "
        "utf-16 (read Windows-1252 files as latin-1)")


def test_utf16_file_with_the_encoding_option(tmp_path):
    write(tmp_path / "person.csv", PERSON + "1,8532,1950,1,3,Zoë\n", encoding="utf-16")
    got = view(register(tmp_path, "person", encoding="utf-16"), "person")
    assert got["person_source_value"].tolist() == ["Zoë"]


def test_conversion_error_names_line_and_column_not_the_row(tmp_path):
    write(tmp_path / "death.csv", "person_id,death_date,death_source_value\n"
          "1,2020-01-01,x\n" f"2,1960-13-45,{CANARY}\n")
    message = raises(tmp_path, "death")
    assert message == (
        "OMOP table 'death' (death.csv): reading failed on the OMOP input at line 3 (data row "
        '2): error converting column "death_date" to DATE; 1 bad lines in all (values not '
        "shown)")
    assert "1960-13-45" not in message


def test_wrong_field_count_names_the_line(tmp_path):
    write(tmp_path / "death.csv", "person_id,death_date\n1,2020-01-01\n"
          f"2,2020-01-01,{CANARY},x\n3,2020-01-01\n")
    assert raises(tmp_path, "death") == (
        "OMOP table 'death' (death.csv): reading failed on the OMOP input at line 3 (data row "
        "2): more fields than the header; 1 bad lines in all (values not shown)")


def test_late_type_change_in_an_unused_column(tmp_path):
    """The sniffer types a column from a sample; a late value of another type is named."""
    rows = "".join(f"{i},2020-01-01,{i}\n" for i in range(1, 30_001))
    write(tmp_path / "death.csv", "person_id,death_date,cause_source_concept_id\n" + rows
          + f"30001,2020-01-01,{CANARY}\n")
    message = raises(tmp_path, "death")
    assert message.startswith("OMOP table 'death' (death.csv): reading failed on the OMOP input "
                              'at line 30002 (data row 30001): error converting column '
                              '"cause_source_concept_id" to BIGINT')


def test_describe_error_keeps_no_data():
    con = duckdb.connect()
    with pytest.raises(duckdb.Error) as err:
        con.execute(f"SELECT CAST('{CANARY}' AS DATE)")
    text = omop.describe_error(err.value)
    assert CANARY not in text and text.startswith("Conversion Error")


def test_describe_error_on_a_raw_csv_error(tmp_path):
    path = write(tmp_path / "p.csv", f"a,b\n1,2020-01-01\n2,{CANARY}\n")
    with pytest.raises(duckdb.Error) as err:
        duckdb.connect().execute(f"SELECT * FROM read_csv('{path}', types = {{'b': 'DATE'}})"
                                 ).fetchall()
    assert CANARY in str(err.value)  # what DuckDB says
    text = omop.describe_error(err.value)
    assert CANARY not in text
    assert re.search(r'line 3, error converting column "b" to DATE', text)


# --- a whole extract ------------------------------------------------------------------------

def tiny_cdm() -> dict[str, pd.DataFrame]:
    """Two persons in every table the cohort stage reads (OMOP CDM v5.4 columns)."""
    d = pd.to_datetime
    return {
        "person": pd.DataFrame({"person_id": [1, 2], "gender_concept_id": [8532, 8507],
                                "year_of_birth": [1950, 1960], "month_of_birth": [1, None],
                                "day_of_birth": [3, None]}),
        "observation_period": pd.DataFrame({
            "observation_period_id": [1, 2], "person_id": [1, 2],
            "observation_period_start_date": d(["2010-01-01", "2011-01-01"]).date,
            "observation_period_end_date": d(["2022-01-01", "2023-01-01"]).date}),
        "condition_occurrence": pd.DataFrame({
            "condition_occurrence_id": [1, 2], "person_id": [1, 2],
            "condition_concept_id": [1, 1], "condition_start_date": d(["2020-01-01"] * 2).date,
            "condition_source_value": ["C34.1", "C34.9"]}),
        "drug_exposure": pd.DataFrame({
            "drug_exposure_id": [1, 2], "person_id": [1, 2], "drug_concept_id": [10, 11],
            "drug_exposure_start_date": d(["2020-01-10", "2020-01-20"]).date}),
        "measurement": pd.DataFrame({
            "measurement_id": [1, 2], "person_id": [1, 2], "measurement_concept_id": [30, 30],
            "measurement_date": d(["2020-01-01"] * 2).date, "value_as_number": [3.5, None],
            "value_as_concept_id": [None, 60], "unit_concept_id": [8713, None]}),
        "observation": pd.DataFrame({
            "observation_id": [1], "person_id": [1], "observation_concept_id": [40],
            "observation_date": d(["2020-01-01"]).date, "value_as_number": [None],
            "value_as_concept_id": [61], "unit_concept_id": [None]}),
        "death": pd.DataFrame({"person_id": [2], "death_date": d(["2021-05-05"]).date}),
        "concept": pd.DataFrame({"concept_id": [1, 10, 11, 30, 40, 60, 61, 8713, 8532, 8507]}),
        "concept_ancestor": pd.DataFrame({"ancestor_concept_id": [1],
                                          "descendant_concept_id": [1]}),
    }


def test_a_real_style_extract_reads_like_the_clean_one(tmp_path):
    """Same tables as clean Parquet and as a hospital export: every view is identical."""
    clean, messy = tmp_path / "clean", tmp_path / "messy"
    clean.mkdir()
    messy.mkdir()
    styles = [(".csv", "\t"), (".csv.gz", ";"), (".CSV", ","), (".parquet", None)]
    for i, (table, frame) in enumerate(tiny_cdm().items()):
        frame.to_parquet(clean / f"{table}.parquet")  # Int-like columns with None: float64
        upper = frame.rename(columns=str.upper)
        suffix, sep = styles[i % len(styles)]
        path = messy / f"{table.upper()}{suffix}"
        if sep is None:
            upper.to_parquet(path)
        else:
            upper.to_csv(path, sep=sep, index=False, na_rep="NULL",
                         compression="gzip" if suffix.endswith(".gz") else None)
    a, b = omop.connect(clean, memory_limit="1GB", threads=1), \
        omop.connect(messy, memory_limit="1GB", threads=1)
    for table in omop.REQUIRED_COLUMNS:
        pd.testing.assert_frame_equal(view(a, table), view(b, table), check_dtype=False)
        for column, family in omop.REQUIRED_COLUMNS[table].items():
            if family == "integer":
                assert types(a, table)[column] == types(b, table)[column] == "BIGINT"


def test_describe_error_ignores_patterns_planted_in_the_original_line(tmp_path):
    planted = "MRNCANARY7741"
    path = write(tmp_path / "p.csv", f"a,b,c\n1,x,2020-01-01\n2,converting column {planted} "
                                     f"to 'MRNCANARY',1960-13-45\n")
    with pytest.raises(duckdb.Error) as err:
        duckdb.connect().execute(f"SELECT * FROM read_csv('{path}', types = {{'c': 'DATE'}})"
                                 ).fetchall()
    text = omop.describe_error(err.value)
    assert planted not in text and "MRNCANARY" not in text
    assert 'line 3, error converting column "c" to DATE' in text


def test_corrupt_parquet_is_a_named_error(tmp_path):
    (tmp_path / "death.parquet").write_bytes(b"PAR1 not really parquet")
    assert raises(tmp_path, "death").startswith(
        "OMOP table 'death' (death.parquet): cannot read the file: ")


def test_vocabulary_columns_no_query_reads_are_not_checked(tmp_path):
    """Athena's concept_code looks numeric for many rows, then holds 'C34.1': not our business."""
    rows = "".join(f"{i}\tname {i}\t{100000 + i}\n" for i in range(1, 30_001))
    write(tmp_path / "CONCEPT.csv", "CONCEPT_ID\tCONCEPT_NAME\tCONCEPT_CODE\n" + rows
          + "30001\tlung\tC34.1\n")
    con = register(tmp_path, "concept")
    assert con.execute("SELECT COUNT(*), MAX(concept_id) FROM concept").fetchone() == \
        (30001, 30001)
