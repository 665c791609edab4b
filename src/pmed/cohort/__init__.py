"""Cohort extraction: OMOP CDM -> analysis-ready cohort, attrition, Table 1, data quality.

The definition is data (params.yaml ``cohort:``, :mod:`.definition`); the engine runs
portable SQL (:mod:`.queries`) in DuckDB over Parquet/CSV files (:mod:`.omop`).
"""

from pmed.cohort.definition import CohortDefinition, parse_definition
from pmed.cohort.errors import CohortError
from pmed.cohort.extract import CohortResult, extract_cohort, write_outputs

__all__ = ["CohortDefinition", "CohortError", "CohortResult", "extract_cohort",
           "parse_definition", "write_outputs"]
