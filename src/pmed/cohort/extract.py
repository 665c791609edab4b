"""Run the cohort definition over an OMOP CDM and write the outputs.

:func:`extract_cohort` opens the CDM through :mod:`pmed.cohort.engine` (DuckDB views over
the OMOP files by default; a DuckDB database, PostgreSQL or Spark), loads the definition's
rule tables there, runs the data-quality checks and the ordered cohort queries of
:mod:`pmed.cohort.queries`, and returns the cohort, its attrition and the quality report.
:func:`write_outputs` validates and writes them atomically (temp file, then rename).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from pmed.cohort import contract, engine, omop, quality, queries
from pmed.cohort.definition import CohortDefinition
from pmed.cohort.errors import CohortError


@dataclass(frozen=True)
class CohortResult:
    """Everything the stage produces.

    cohort : one row per person, contract columns (:func:`pmed.cohort.contract.columns`).
    attrition : criterion, remaining, excluded (one row per step, in order).
    quality : check, table, column, concept_id, concept_name, rule, count (one row per
        data-quality check, :func:`pmed.cohort.quality.run_quality`).
    cohort_omop : the OMOP CDM ``cohort`` table: cohort_definition_id (one per arm),
        subject_id, cohort_start_date (t0), cohort_end_date (end of follow-up).
    """

    cohort: pd.DataFrame
    attrition: pd.DataFrame
    quality: pd.DataFrame
    cohort_omop: pd.DataFrame


def load_rule_tables(con, d: CohortDefinition) -> None:
    """Create the definition's rule tables and expand them to concept ids (setup queries).

    ``con``: an :class:`pmed.cohort.engine.Engine` or a DuckDB connection. Also checks every
    concept id of the definition (sets, units, values) against ``concept``.
    """
    eng = engine.as_engine(con)
    extra = {f"units of {c.column}": [u for u in c.units if u != 0] for c in d.numeric}
    extra |= {f"values of {c.name}": [v for ids in c.levels.values() for v in ids] + c.reference
              for c in d.categorical}
    for o in d.event_outcomes:
        extra |= {f"outcomes.{o.name}.{key}": [i for i in getattr(o, key) or [] if i != 0]
                  for key in ("visit_concept_ids", "unit_concept_ids", "value_concept_ids")}
    omop.check_concepts(eng, d.concept_sets | {k: v for k, v in extra.items() if v})
    for name, (columns, rows) in queries.rule_tables(d).items():
        eng.load_rows(name, columns, rows)
    for name, sql in queries.setup_queries(d).items():
        eng.materialise(name, sql)


# Columns the outcome queries read from tables that omop.connect does not open.
OUTCOME_TABLE_COLUMNS = {
    "procedure_occurrence": ["person_id", "procedure_concept_id", "procedure_date"],
    "visit_occurrence": ["visit_occurrence_id", "person_id", "visit_concept_id",
                         "visit_start_date"],
}


def outcome_tables(d: CohortDefinition) -> list[str]:
    """The OMOP tables the outcome definitions read, sorted."""
    tables = {o.table for o in d.event_outcomes}
    tables |= {"visit_occurrence" for o in d.event_outcomes if o.visit_concept_ids}
    return sorted(tables)


def register_outcome_tables(con: duckdb.DuckDBPyConnection, folder: Path,
                            d: CohortDefinition) -> None:
    """Validated views over the outcome tables :func:`pmed.cohort.omop.connect` does not open
    (same file conventions and checks as every OMOP table; CohortError naming table and column)."""
    for table in outcome_tables(d):
        if table in omop.REQUIRED_COLUMNS:
            continue
        need = OUTCOME_TABLE_COLUMNS[table]
        if table != "visit_occurrence" and any(o.visit_concept_ids and o.table == table
                                               for o in d.event_outcomes):
            need = [*need, "visit_occurrence_id"]
        omop.register_table(con, Path(folder), table, d.encoding,
                            required={c: "date" if c.endswith("_date") else "integer" for c in need})


def _step_values(d: CohortDefinition) -> dict:
    return {"prior_observation_days": d.prior_observation_days,
            "min_age_years": d.min_age_years,
            "max_days_to_treatment": d.strategies.max_days_after_index,
            "grace_days": d.strategies.grace_days}


def attrition_labels(d: CohortDefinition) -> dict[str, str]:
    """Step table name -> criterion text, in order."""
    return {step: text.format(**_step_values(d)) for step, text in queries.ATTRITION_STEPS.items()}


def exclusion_reasons(d: CohortDefinition) -> list[str]:
    """Why persons fail each attrition step after the first, in order (flow diagram text)."""
    return [queries.EXCLUSION_REASONS[step].format(**_step_values(d))
            for step in list(queries.ATTRITION_STEPS)[1:]]


def cdm_tables(d: CohortDefinition) -> dict[str, dict[str, str]]:
    """Every OMOP table the definition reads: table -> required column -> type family."""
    tables = {t: dict(cols) for t, cols in omop.REQUIRED_COLUMNS.items()}
    for table in outcome_tables(d):
        if table in tables:
            continue
        need = OUTCOME_TABLE_COLUMNS[table]
        if table != "visit_occurrence" and any(o.visit_concept_ids and o.table == table
                                               for o in d.event_outcomes):
            need = [*need, "visit_occurrence_id"]
        tables[table] = {c: "date" if c.endswith("_date") else "integer" for c in need}
    return tables


def open_cdm(omop_dir: Path | None, d: CohortDefinition, memory_limit: str = "3GB",
             threads: int = 2, spark=None) -> engine.Engine:
    """The CDM of ``d.source`` opened and checked: files validated (:mod:`pmed.cohort.omop`),
    database tables checked for columns and types (:func:`pmed.cohort.engine.validate_cdm`)."""
    eng = engine.open_engine(d.source, omop_dir, memory_limit=memory_limit, threads=threads,
                             encoding=d.encoding, spark=spark)
    try:
        if d.source.engine == "files":
            register_outcome_tables(eng.con, omop_dir, d)
        else:
            tables = cdm_tables(d)
            tables |= {t: dict(c) for t, c in omop.OPTIONAL_TABLES.items() if eng.has_table(t)}
            engine.validate_cdm(eng, tables)
    except BaseException:
        eng.close()
        raise
    return eng


def extract_cohort(omop_dir: Path | None, d: CohortDefinition, memory_limit: str = "3GB",
                   threads: int = 2, check_quality: bool = True, spark=None) -> CohortResult:
    """Build the analysis cohort from the OMOP CDM of params ``cohort.source`` (``d.source``).

    Parameters
    ----------
    omop_dir : folder of ``<table>.parquet|csv`` files (OMOP CDM v5.4), read by engine
        ``files`` (the default); unused by the database engines.
    d : the validated definition (:func:`pmed.cohort.definition.parse_definition`).
    memory_limit, threads : DuckDB settings (larger intermediates spill to disk).
    check_quality : run the data-quality counts (False: empty quality table; benchmarks).
    spark : SparkSession for engine ``spark`` (default: the active one, or one built from
        Spark's own configuration).

    Every step runs in the engine; only the cohort rows, the OMOP cohort table, the
    attrition and the data-quality counts come back.

    Returns
    -------
    CohortResult
        Raises :class:`CohortError` on bad input, or when a criterion leaves nobody.
    """
    eng = open_cdm(omop_dir, d, memory_limit=memory_limit, threads=threads, spark=spark)
    where = omop_dir if d.source.engine == "files" else \
        f"the {d.source.engine} CDM {eng.qualified('person').rsplit('.', 1)[0]}"
    step = "loading the definition's concept sets"
    try:
        load_rule_tables(eng, d)
        step = "the data-quality checks"
        qc = quality.run_quality(eng, d) if check_quality else pd.DataFrame()
        labels = attrition_labels(d)
        rows = []
        for name, sql in queries.cohort_queries(d).items():
            step = f"cohort query {name!r}"
            eng.materialise(name, sql)
            if name in labels:
                n = eng.count(name)
                previous = rows[-1]["remaining"] if rows else n
                rows.append({"criterion": labels[name], "remaining": n, "excluded": previous - n})
                if n == 0:
                    raise CohortError(f"cohort: no person left after criterion "
                                      f"{labels[name]!r} (step {name!r}); expected >= 1")
        frame = eng.frame("SELECT * FROM cohort")
        cohort_omop = eng.frame("SELECT * FROM cohort_omop")
    except eng.errors() as err:
        # e.g. a CSV value that does not convert to the column's OMOP type
        raise CohortError(f"cohort: {step} failed on the OMOP input in {where}: "
                          f"{eng.describe_error(err)}") from None
    finally:
        eng.close()
    cohort = contract.coerce(frame, d)
    contract.validate_cohort(cohort, d)
    attrition = pd.DataFrame(rows).astype({"remaining": "int64", "excluded": "int64"})
    return CohortResult(cohort=cohort, attrition=attrition, quality=qc,
                        cohort_omop=omop_cohort_table(cohort_omop))


def omop_cohort_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The OMOP CDM v5.4 ``cohort`` table layout: ids int64, dates as dates."""
    out = frame.astype({"cohort_definition_id": "int64", "subject_id": "int64"})
    for col in ("cohort_start_date", "cohort_end_date"):
        out[col] = pd.to_datetime(out[col]).dt.date
    return out.reset_index(drop=True)


def window_text(window: tuple[int | None, int | None], anchor: str = "index") -> str:
    """``[-90, 0] days from t0`` style text of a window (inclusive)."""
    start, end = ("-inf" if window[0] is None else window[0],
                  "+inf" if window[1] is None else window[1])
    return f"[{start}, {end}] days from {anchor}"


def column_windows(d: CohortDefinition) -> dict[str, str]:
    """Output column -> its look-back window and anchor as text, for the column dictionary."""
    out = {c: window_text(d.condition_window, d.condition_anchor) for c in d.conditions}
    out |= {c.column: window_text(c.window, c.anchor) for c in d.numeric}
    out |= {lvl: window_text(c.window, c.anchor) for c in d.categorical for lvl in c.levels}
    return out


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_outputs(result: CohortResult, d: CohortDefinition, out_dir: Path) -> dict[str, Path]:
    """Validate, then write cohort.parquet, cohort_omop.parquet (OMOP ``cohort`` table),
    cohort_dictionary.csv, attrition.csv and quality.csv.

    Each file is written to ``<name>.tmp`` and renamed, so a failure leaves no partial file.
    """
    contract.validate_cohort(result.cohort, d)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in
             ("cohort.parquet", "cohort_omop.parquet", "cohort_dictionary.csv", "attrition.csv",
              "quality.csv")}
    _atomic_write(paths["cohort.parquet"],
                  lambda p: result.cohort.to_parquet(p, index=False, engine="pyarrow"))
    _atomic_write(paths["cohort_omop.parquet"],
                  lambda p: result.cohort_omop.to_parquet(p, index=False, engine="pyarrow"))
    _atomic_write(paths["cohort_dictionary.csv"],
                  lambda p: contract.dictionary(d, column_windows(d)).to_csv(p, index=False))
    _atomic_write(paths["attrition.csv"], lambda p: result.attrition.to_csv(p, index=False))
    _atomic_write(paths["quality.csv"], lambda p: result.quality.to_csv(p, index=False))
    return paths
