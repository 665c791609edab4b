"""OMOP CDM v5.4 tables as DuckDB views over Parquet or CSV files, validated before use.

One file per table in a folder: ``<table>.parquet``, ``<table>.csv`` or ``<table>.csv.gz``,
file names and column names matched in any letter case (Athena ships ``CONCEPT.csv`` with
upper-case headers); a folder may mix formats. Tables are never loaded into pandas: each file
becomes a view and the cohort queries run inside DuckDB.

Conventions of real extracts handled at registration (:func:`register_table`):

* CSV delimiter: comma, tab (Athena vocabulary files) or semicolon, told from the header;
  ``""``, ``NULL``, ``\\N`` and ``NA`` read as missing; text encoding ``utf-8`` (default),
  ``latin-1`` or ``utf-16`` (:data:`ENCODING_PARAM`), checked before DuckDB reads the file.
* id columns (the required integer columns and any numeric ``*_id`` column) written as
  DOUBLE or DECIMAL (pandas and R write nullable integers so) are cast to BIGINT after a
  check that every value is integral.
* person_id and the table's primary key must not be NULL; person ids must be unique.

Every problem is a :class:`CohortError` naming the table, file, column and row or line
number, never a value: DuckDB's own CSV errors quote the offending line, so they are
rewritten (:func:`describe_error`).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import re
from collections.abc import Mapping
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

# Tables registered only when their file is present (ATLAS concept sets with includeMapped).
OPTIONAL_TABLES: dict[str, dict[str, str]] = {
    "concept_relationship": {"concept_id_1": "integer", "concept_id_2": "integer",
                             "relationship_id": "text"},
}

# Columns added as typed NULL when a file lacks them (a vocabulary export without validity).
OPTIONAL_COLUMNS: dict[str, dict[str, str]] = {"concept": {"invalid_reason": "text"},
                                               "concept_relationship": {"invalid_reason": "text"}}

# DuckDB type for each family when reading CSV (so an empty column is not read as VARCHAR).
CSV_TYPES = {"integer": "BIGINT", "number": "DOUBLE", "date": "DATE", "text": "VARCHAR"}
TYPE_FAMILIES = {
    "integer": ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                "UINTEGER", "UBIGINT"),
    "number": ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE",
               "DECIMAL"),
    "date": ("DATE",),
    "text": ("VARCHAR",),
}
FRACTIONAL = ("FLOAT", "DOUBLE", "DECIMAL")  # id columns of these types are checked, then cast

SUFFIXES = (".parquet", ".csv", ".csv.gz")
NULL_STRINGS = ("", "NULL", "\\N", "NA")  # NA: R's write.csv
DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon"}
ENCODINGS = {"utf-8": "utf-8", "utf8": "utf-8", "latin-1": "latin-1", "latin1": "latin-1",
             "iso-8859-1": "latin-1", "utf-16": "utf-16", "utf16": "utf-16"}
ENCODING_PARAM = "cohort.source.encoding"
REJECTS_LIMIT = 100  # rejected CSV lines recorded per file (enough to name the first ones)
BIGINT_RANGE = (-(2**63), 2**63 - 1)


def find_table_file(folder: Path, table: str) -> Path:
    """The one file of ``table`` in ``folder`` (any letter case); CohortError if none or several."""
    wanted = {table + s for s in SUFFIXES}
    found = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.lower() in wanted)
    if not found:
        raise CohortError(f"OMOP table {table!r}: no {table}.parquet or {table}.csv (or "
                          f"{table}.csv.gz; file names in any letter case) in {folder}")
    if len(found) > 1:
        raise CohortError(f"OMOP table {table!r}: {' and '.join(p.name for p in found)} in "
                          f"{folder}; keep one")
    return found[0]


def _sql_str(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _is_csv(path: Path) -> bool:
    return not path.name.lower().endswith(".parquet")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def normalise_encoding(encoding: str) -> str:
    """DuckDB's name for ``encoding`` (``utf-8``, ``latin-1`` or ``utf-16``); CohortError otherwise."""
    key = str(encoding).strip().lower().replace("_", "-")
    if key not in ENCODINGS:
        raise CohortError(f"{ENCODING_PARAM}: unknown CSV encoding {encoding!r}; expected one "
                          "of utf-8, latin-1, utf-16 (read Windows-1252 files as latin-1)")
    return ENCODINGS[key]


def check_encoding(path: Path, table: str, encoding: str) -> None:
    """CohortError naming file and line if ``path`` is not valid text in ``encoding``.

    Streams the file through Python's decoder (DuckDB's own message quotes the line). The
    line is exact for utf-8 (a newline byte never occurs inside a multi-byte character); for
    utf-16 it is the first line of the 1 MiB block holding the bad bytes.
    """
    if encoding == "latin-1":
        return  # every byte is a latin-1 character
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    line = 1
    with _open_binary(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as err:
                if encoding == "utf-8":
                    line += chunk[:max(err.start, 0)].count(b"\n")
                    where = f"line {line}"
                else:
                    where = f"at or after line {line}"
                raise CohortError(
                    f"OMOP table {table!r}: {path.name} is not valid {encoding} text ({where}; "
                    f"the line is not shown); set {ENCODING_PARAM} to the file's encoding, "
                    "e.g. latin-1") from None
            line += text.count("\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise CohortError(f"OMOP table {table!r}: {path.name} is not valid {encoding} text "
                              f"(it ends inside a character); set {ENCODING_PARAM} to the "
                              "file's encoding, e.g. latin-1") from None


def _first_lines(path: Path, encoding: str, n: int = 20) -> list[str]:
    pyenc = "utf-8-sig" if encoding == "utf-8" else encoding
    with _open_binary(path) as raw:
        text = codecs.getreader(pyenc)(raw, errors="replace")
        lines = []
        for line in text:
            lines.append(line.rstrip("\r\n"))
            if len(lines) == n:
                break
    return lines


def detect_delimiter(path: Path, table: str, encoding: str = "utf-8") -> str:
    """The CSV delimiter of ``path``: the one of comma, tab, semicolon in its header line.

    OMOP column names contain none of them, so the header decides; when it holds several,
    the first lines decide (the delimiter splitting every line into as many fields as the
    header). A one-column file is read with a comma.
    """
    lines = _first_lines(path, encoding)
    if not lines:
        raise CohortError(f"OMOP table {table!r}: {path.name} is empty; expected a header line "
                          "with the OMOP column names")
    in_header = [d for d in DELIMITERS if d in lines[0]]
    if len(in_header) == 1:
        return in_header[0]
    if not in_header:
        if not re.search(r"[^\w\"' ]", lines[0].strip()):
            return ","  # a single column
        raise CohortError(f"OMOP table {table!r}: cannot tell the delimiter of {path.name}: its "
                          "header line holds no comma, tab or semicolon; expected one of them "
                          "between the column names")
    n_fields = {d: len(next(csv.reader([lines[0]], delimiter=d))) for d in in_header}
    fits = [d for d in in_header
            if all(len(row) == n_fields[d] for row in csv.reader(lines[1:], delimiter=d))]
    if len(fits) == 1:
        return fits[0]
    raise CohortError(f"OMOP table {table!r}: cannot tell the delimiter of {path.name}: its "
                      f"header line holds {' and '.join(DELIMITERS[d] for d in in_header)}, and "
                      f"{'each' if fits else 'none'} of them splits the first lines into as many "
                      "fields as the header; expected exactly one of comma, tab or semicolon")


def csv_header(path: Path, delimiter: str, encoding: str = "utf-8") -> list[str]:
    """Column names of the CSV file as written (quotes removed, BOM dropped)."""
    lines = _first_lines(path, encoding, n=1)
    return [h.strip() for h in next(csv.reader(lines, delimiter=delimiter), [])]


def describe_error(err: Exception) -> str:
    """A DuckDB error as text without data: line, column and kind only.

    DuckDB's CSV and conversion errors quote the original line and the value (an MRN, a
    birth date); only the line number, the column name and the target type are kept.
    """
    text = "\n".join(line for line in str(err).splitlines()
                     if not line.lstrip().startswith("Original Line"))
    kind = text.split(":", 1)[0].strip() if ":" in text.split("\n", 1)[0] else type(err).__name__
    parts = [kind]
    line = re.search(r"CSV Error on Line: (\d+)", text)
    if line:
        parts.append(f"line {line.group(1)}")
    column = re.search(r'converting column "([A-Za-z0-9_]+)"', text)
    if column:  # the type is the last quoted word of that line: DuckDB's text ends with it
        line_text = next(t for t in text.splitlines() if "converting column" in t)
        target = re.findall(r" to '([A-Z][A-Z0-9_]*(?:\(\d+(?:, ?\d+)?\))?)'", line_text)
        parts.append(f'error converting column "{column.group(1)}"'
                     + (f" to {target[-1]}" if target else ""))
    elif "not utf-8 encoded" in text or "Invalid unicode" in text:
        parts.append(f"invalid text encoding (set {ENCODING_PARAM})")
    elif "sniffing file" in text:
        parts.append("the CSV dialect could not be detected")
    elif "Expected Number of Columns" in text:
        parts.append("wrong number of fields")
    return ", ".join(parts) + " (DuckDB's message is not shown: it may quote the data)"


REJECT_TEXT = {  # DuckDB's CSV reject kinds other than CAST (a value of the wrong type)
    "MISSING COLUMNS": "fewer fields than the header",
    "TOO MANY COLUMNS": "more fields than the header",
    "UNQUOTED VALUE": "a quote inside an unquoted value",
    "LINE SIZE OVER MAXIMUM": "line too long",
    "INVALID ENCODING": f"invalid text encoding (set {ENCODING_PARAM})",
    "INVALID STATE": "malformed quoting",
}


class _TableFile:
    """One OMOP table file: how to read it, its columns and their types.

    ``names``: column name as read (lower case) -> name in the file; ``types``: lower-case
    name -> DuckDB type of the checking read (CSV integer columns as DOUBLE, checked in SQL).
    """

    def __init__(self, con, path: Path, table: str, required: Mapping[str, str], encoding: str):
        self.path, self.table, self.required = path, table, dict(required)
        self.csv = _is_csv(path)
        self.where = f"OMOP table {table!r} ({path.name})"
        if self.csv:
            check_encoding(path, table, encoding)
            self.delimiter = detect_delimiter(path, table, encoding)
            self.encoding = encoding
            self.names = self._lower_case(csv_header(path, self.delimiter, encoding))
            described = self._describe(con)
        else:
            described = self._describe(con)
            self.names = self._lower_case([name for name, _ in described])
        self.types = {name.lower(): typ for name, typ in described}

    def _lower_case(self, header: list[str]) -> dict[str, str]:
        names: dict[str, str] = {}
        for name in header:
            if name.lower() in names:
                raise CohortError(f"{self.where}: columns {names[name.lower()]!r} and {name!r} "
                                  "differ only in letter case; keep one")
            names[name.lower()] = name
        return names

    def source(self, types: Mapping[str, str], rejects: str | None = None,
               row_numbers: bool = False) -> str:
        """``read_csv(...)`` / ``read_parquet(...)`` with lower-case names and ``types``.

        ``rejects``: CSV lines DuckDB cannot read go to tables ``<rejects>_errors|_scans``;
        ``row_numbers``: Parquet column ``file_row_number`` (0-based).
        """
        if not self.csv:
            return (f"read_parquet({_sql_str(self.path)}"
                    + (", file_row_number = true)" if row_numbers else ")"))
        opts = [f"header = true, delim = {_sql_str(self.delimiter)}",
                f"encoding = {_sql_str(self.encoding)}",
                "names = [" + ", ".join(_sql_str(n) for n in self.names) + "]",
                "nullstr = [" + ", ".join(_sql_str(s) for s in NULL_STRINGS) + "]"]
        if types:
            opts.append("types = {" + ", ".join(f"{_sql_str(c)}: {_sql_str(t)}"
                                                for c, t in types.items()) + "}")
        if rejects:
            opts.append(f"store_rejects = true, rejects_table = {_sql_str(rejects + '_errors')}, "
                        f"rejects_scan = {_sql_str(rejects + '_scans')}, "
                        f"rejects_limit = {REJECTS_LIMIT}")
        return f"read_csv({_sql_str(self.path)}, {', '.join(opts)})"

    def check_types(self) -> dict[str, str]:
        """CSV types of the checking read: required columns typed, integer ids as DOUBLE.

        DOUBLE lets the check see a fraction that BIGINT would round away (DuckDB reads
        "3.5" as 4); the view then reads the checked column as BIGINT, exact above 2**53.
        """
        return {c: ("DOUBLE" if f == "integer" else CSV_TYPES[f])
                for c, f in self.required.items() if c in self.names} if self.csv else {}

    def check_source(self, rejects: str | None = None, row_numbers: bool = False) -> str:
        return self.source(self.check_types(), rejects, row_numbers)

    def _describe(self, con) -> list[tuple[str, str]]:
        """(column, type) of the checking read; CSV with rejects, so a bad line does not stop
        the sniffing (it is named by the validation scan)."""
        try:
            described = con.execute(
                f"DESCRIBE SELECT * FROM {self.check_source(f'sniff_{self.table}')}").fetchall()
            _drop_rejects(con, f"sniff_{self.table}")
        except duckdb.Error as err:
            raise CohortError(f"{self.where}: cannot read the file: {describe_error(err)}") from None
        return [(name, str(typ).upper()) for name, typ, *_ in described]

    def col(self, name: str) -> str:
        """SQL reference to column ``name`` in the file's own spelling."""
        return _ident(name if self.csv else self.names[name])


def _base(sql_type: str) -> str:
    return sql_type.split("(")[0]


def _check_columns(f: _TableFile) -> list[str]:
    """Required columns present with the right type family; returns the id columns to check.

    Id columns to check: required integer columns read as DOUBLE (CSV) or stored as
    DOUBLE/DECIMAL (Parquet), and any other ``*_id`` column stored as DOUBLE/DECIMAL.
    """
    ids = []
    for column, family in f.required.items():
        if column not in f.types:
            raise CohortError(f"{f.where}: missing column {column!r} (OMOP CDM v5.4; has "
                              f"{sorted(f.types)})")
        base = _base(f.types[column])
        if base == '"NULL"':
            continue  # no value at all (pandas writes an all-None column so): cast in the view
        if family == "integer" and (f.csv or base in FRACTIONAL):
            ids.append(column)
            continue
        if family == "date" and base.startswith("TIMESTAMP"):
            continue  # a datetime where a date is expected is cast by the queries
        if base not in TYPE_FAMILIES[family]:
            raise CohortError(f"{f.where}: column {column!r} has type {f.types[column]}, "
                              f"expected {family}")
    ids += [c for c, t in f.types.items()
            if c not in f.required and c.endswith("_id") and _base(t) in FRACTIONAL]
    return ids


def _not_integer(f: _TableFile, column: str) -> str:
    """SQL condition: the value of ``column`` is present but not an integer id."""
    c = f.col(column)
    lo, hi = BIGINT_RANGE
    bad = f"{c} <> TRUNC({c}) OR {c} < {lo} OR {c} > {hi}"
    if _base(f.types[column]) in ("FLOAT", "DOUBLE"):
        # NaN: missing in Parquet (TRY_CAST gives NULL); in CSV BIGINT cannot read "nan"
        bad = f"isnan({c}) OR {bad}" if f.csv else f"NOT isnan({c}) AND ({bad})"
    return f"({c} IS NOT NULL AND ({bad}))"


def _is_null(f: _TableFile, column: str) -> str:
    c = f.col(column)
    return f"({c} IS NULL OR isnan({c}))" if _base(f.types[column]) in ("FLOAT", "DOUBLE") \
        else f"{c} IS NULL"


def key_columns(table: str, required: Mapping[str, str]) -> list[str]:
    """Columns that may never be NULL: person_id and the primary key ``<table>_id``."""
    return [c for c in ("person_id", f"{table}_id") if c in required]


def _first_row(con, f: _TableFile, condition: str) -> str:
    """'row N' (Parquet) or 'data row N (line N+1)' (CSV) of the first row meeting ``condition``."""
    if f.csv:
        n = con.execute(f"SELECT MIN(ordinality) FROM {f.check_source()} WITH ORDINALITY "
                        f"WHERE {condition}").fetchone()[0]
        return f"data row {n} (line {n + 1})"
    n = con.execute(f"SELECT MIN(file_row_number) FROM {f.check_source(row_numbers=True)} "
                    f"WHERE {condition}").fetchone()[0]
    return f"row {n + 1}"


def _parquet_null_counts(con, f: _TableFile, columns: list[str]) -> dict[str, int]:
    """NULL counts of integer ``columns`` from Parquet statistics, where every row group has them.

    Saves a scan of the largest tables (tens of millions of rows); columns without complete
    statistics, or of a float type (NaN is not counted as null there), are left out.
    """
    wanted = {f.names[c]: c for c in columns
              if not f.csv and _base(f.types[c]) in TYPE_FAMILIES["integer"]}
    if not wanted:
        return {}
    rows = con.execute(
        "SELECT path_in_schema, SUM(stats_null_count), COUNT(*) = COUNT(stats_null_count) "
        f"FROM parquet_metadata({_sql_str(f.path)}) WHERE path_in_schema IN "
        f"({', '.join(_sql_str(n) for n in wanted)}) GROUP BY path_in_schema").fetchall()
    return {wanted[name]: int(n) for name, n, complete in rows if complete}


def _validate(con, f: _TableFile, ids: list[str]) -> None:
    """One scan of the file: CSV lines DuckDB rejects, NULL keys, non-integer ids."""
    keys = key_columns(f.table, f.required)
    found = {f"null_{c}": n for c, n in _parquet_null_counts(con, f, keys).items()}
    checks = {f"null_{c}": _is_null(f, c) for c in keys if f"null_{c}" not in found}
    checks |= {f"bad_{c}": _not_integer(f, c) for c in ids}
    parts = [f"COUNT(*) FILTER (WHERE {cond}) AS {name}" for name, cond in checks.items()]
    if f.csv:  # convert the columns queries read, so a bad value is found now, not later:
        # all of a clinical table (the quality checks compare whole rows), else the required
        read = f.types if "person_id" in f.types else [c for c in f.required if c in f.types]
        parts += [f"COUNT({f.col(c)})" for c in read]
    rejects = f"rejects_{f.table}" if f.csv else None
    if parts:
        try:
            sql = f"SELECT {', '.join(parts)} FROM {f.check_source(rejects)}"
            found |= dict(zip(checks, con.execute(sql).fetchall()[0], strict=False))
            if rejects:
                _raise_rejects(con, f, rejects)
        except duckdb.Error as err:
            raise CohortError(f"{f.where}: reading failed on the OMOP input: "
                              f"{describe_error(err)}") from None
    for c in keys:
        if found[f"null_{c}"]:
            raise CohortError(f"{f.where}: {found[f'null_{c}']} rows with a missing {c}; expected "
                              f"every row to have one (OMOP CDM v5.4: {c} is required)")
    for c in ids:
        if found[f"bad_{c}"]:
            where = _first_row(con, f, _not_integer(f, c))
            raise CohortError(f"{f.where}: column {c!r} holds {found[f'bad_{c}']} values that are "
                              f"not whole numbers (first at {where}; values not shown); expected "
                              "integers such as 8713 or 8713.0")


def _drop_rejects(con, rejects: str) -> None:
    con.execute(f"DROP TABLE IF EXISTS {rejects}_errors; DROP TABLE IF EXISTS {rejects}_scans")


def _raise_rejects(con, f: _TableFile, rejects: str) -> None:
    rows = con.execute(f"SELECT line, column_name, CAST(error_type AS VARCHAR) FROM "
                       f"{rejects}_errors ORDER BY line LIMIT 1").fetchall()
    n = con.execute(f"SELECT COUNT(DISTINCT line) FROM {rejects}_errors").fetchone()[0]
    _drop_rejects(con, rejects)
    if not rows:
        return
    line, column, kind = rows[0]
    what = REJECT_TEXT.get(kind, kind.lower())
    if kind == "CAST":
        expected = f.required.get(column)
        what = (f'error converting column "{column}" to '
                f'{CSV_TYPES[expected] if expected else f.types.get(column, "its type")}')
    more = f"at least {n}" if n >= REJECTS_LIMIT else str(n)
    raise CohortError(f"{f.where}: reading failed on the OMOP input at line {line} "
                      f"(data row {line - 1}): {what}; {more} bad lines in all (values not shown)")


def _view_sql(f: _TableFile, ids: list[str]) -> str:
    """SELECT over the file: lower-case names, checked ids as BIGINT, optional columns added."""
    optional = {c: t for c, t in OPTIONAL_COLUMNS.get(f.table, {}).items() if c not in f.types}
    extra = "".join(f", CAST(NULL AS {CSV_TYPES[t]}) AS {c}" for c, t in optional.items())
    if f.csv:
        types = {c: CSV_TYPES[t] for c, t in f.required.items() if c in f.types}
        types |= {c: "BIGINT" for c in ids}
        return f"SELECT *{extra} FROM {f.source(types)}"
    def expr(c: str) -> str:
        if c in ids:
            return f"TRY_CAST({f.col(c)} AS BIGINT)"
        if f.types[c] == '"NULL"':
            return f"CAST({f.col(c)} AS {CSV_TYPES[f.required.get(c, 'text')]})"
        return f.col(c)

    cols = [f"{expr(c)} AS {_ident(c)}" for c in f.types]
    return f"SELECT {', '.join(cols)}{extra} FROM {f.source({})}"


def register_table(con: duckdb.DuckDBPyConnection, folder: Path, table: str,
                   encoding: str = "utf-8", required: Mapping[str, str] | None = None) -> Path:
    """Create view ``table`` over its file after checking columns, types, keys and ids.

    Parameters
    ----------
    con : DuckDB connection the view is created in.
    folder : the OMOP folder; the file is found by :func:`find_table_file`.
    table : OMOP table name (lower case), also the view's name.
    encoding : text encoding of CSV files (:func:`normalise_encoding`).
    required : column -> type family ("integer", "number", "date", "text"); default
        ``REQUIRED_COLUMNS[table]``.

    Returns the file's path; raises CohortError naming table, file, column and row.
    """
    path = find_table_file(Path(folder), table)
    required = REQUIRED_COLUMNS[table] if required is None else required
    f = _TableFile(con, path, table, required, normalise_encoding(encoding))
    ids = _check_columns(f)
    _validate(con, f, ids)
    try:
        con.execute(f"CREATE OR REPLACE VIEW {table} AS {_view_sql(f, ids)}")
        con.execute(f"DESCRIBE {table}").fetchall()
    except duckdb.Error as err:
        raise CohortError(f"{f.where}: cannot read the file: {describe_error(err)}") from None
    if table == "person":
        n = con.execute("SELECT COUNT(*) - COUNT(DISTINCT person_id) FROM person").fetchone()[0]
        if n:
            raise CohortError(f"{f.where}: person_id is not unique ({n} surplus rows share a "
                              "person_id); expected one row per person")
    return path


def connect(folder: Path, memory_limit: str = "3GB", threads: int = 2, encoding: str = "utf-8",
            tables: Mapping[str, Mapping[str, str]] | None = None) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB connection with one validated view per OMOP table in ``folder``.

    Parameters
    ----------
    folder : directory holding the OMOP CDM v5.4 files (``config.path("omop")``).
    memory_limit : DuckDB memory cap; larger intermediate results spill to a temp folder.
    threads : DuckDB worker threads.
    encoding : text encoding of the CSV files (params :data:`ENCODING_PARAM`).
    tables : table -> required columns and type families; default :data:`REQUIRED_COLUMNS`.
        Tables of :data:`OPTIONAL_TABLES` are registered too when their file exists.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CohortError(f"OMOP folder {folder} does not exist")
    encoding = normalise_encoding(encoding)
    con = duckdb.connect(config={"memory_limit": memory_limit, "threads": threads})
    try:
        for table, required in (REQUIRED_COLUMNS if tables is None else tables).items():
            register_table(con, folder, table, encoding, required)
        present = {p.name.lower() for p in folder.iterdir()}
        for table, required in OPTIONAL_TABLES.items():
            if any(table + s in present for s in SUFFIXES):
                register_table(con, folder, table, encoding, required)
    except BaseException:
        con.close()
        raise
    return con


def has_table(con, table: str) -> bool:
    """True if view/table ``table`` exists in ``con`` (a DuckDB connection or an
    :class:`pmed.cohort.engine.Engine`; optional tables are registered if present)."""
    if not isinstance(con, duckdb.DuckDBPyConnection):
        return con.has_table(table)
    return bool(con.execute("SELECT COUNT(*) FROM duckdb_views() WHERE view_name = ? AND NOT "
                            "internal", [table]).fetchone()[0])


def check_concepts(con, concept_sets: dict[str, list[int]]) -> None:
    """CohortError naming the set and ids if any concept id of the definition is not in concept.

    ``con``: a DuckDB connection or an :class:`pmed.cohort.engine.Engine`; the ids are
    loaded into a temporary table there, only the missing ones come back.
    """
    from pmed.cohort.engine import as_engine

    eng = as_engine(con)
    rows = [(name, cid) for name, ids in concept_sets.items() for cid in ids]
    eng.load_rows("checked_concepts", [("codeset_name", "VARCHAR"), ("concept_id", "BIGINT")],
                  rows)
    missing = eng.rows(
        "SELECT codeset_name, concept_id FROM checked_concepts d "
        "WHERE NOT EXISTS (SELECT 1 FROM concept c WHERE c.concept_id = d.concept_id) "
        "ORDER BY codeset_name, concept_id"
    )
    if missing:
        listed = ", ".join(f"{name}: {cid}" for name, cid in missing)
        raise CohortError(f"cohort definition: concept ids not in table 'concept' ({listed}); "
                          "expected every id of concept_sets to exist in the vocabulary")
