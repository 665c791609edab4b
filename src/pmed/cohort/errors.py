"""The one exception the cohort stage raises for bad definitions or bad OMOP input."""

from __future__ import annotations


class CohortError(ValueError):
    """Bad cohort definition or OMOP input: the message names the table/column/criterion.

    Raised before any output file is written, so a failed run never leaves a partial
    ``cohort.parquet`` behind.
    """
