"""Small-cell suppression: no count below the minimum cell size leaves the project.

Every table and figure in a report goes through these helpers, so a count of 1..k-1
(k = ``common.min_cell_size`` in params.yaml, default 11) is shown as ``<k``. Zero is
not disclosive and is shown as 0. The report stage then audits every report file for the
raw extract's direct identifiers (:func:`raw_identifiers`, :func:`find_leaks`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd


def is_small(n: float, min_cell: int) -> bool:
    """True when ``n`` is a positive count below ``min_cell``."""
    return bool(0 < n < min_cell)


def format_count(n: float, min_cell: int) -> str:
    """A count as text for a report: ``"<11"`` when 0 < n < min_cell, else the integer."""
    if n is None or (isinstance(n, float) and np.isnan(n)):
        return ""
    return f"<{min_cell}" if is_small(n, min_cell) else f"{int(n)}"


def suppress_counts(
    df: pd.DataFrame, min_cell: int, columns: Iterable[str] | None = None
) -> pd.DataFrame:
    """Copy of ``df`` with small counts in ``columns`` (default: all integer columns) as text.

    Returns object columns holding strings like ``"<11"`` or ``"42"``.
    """
    out = df.copy()
    cols = list(columns) if columns is not None else list(
        df.select_dtypes(include="integer").columns
    )
    for col in cols:
        if col not in out.columns:
            raise KeyError(f"suppress_counts: column {col!r} not in table (has {list(out.columns)})")
        out[col] = [format_count(v, min_cell) for v in out[col]]
    return out


def mask_small(values: np.ndarray, min_cell: int) -> np.ndarray:
    """Float copy of ``values`` with counts in (0, min_cell) replaced by NaN (for figures)."""
    arr = np.asarray(values, dtype=float).copy()
    arr[(arr > 0) & (arr < min_cell)] = np.nan
    return arr


# --- audit: no identifier of the raw extract in any report file -------------------------

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.^_\-]*[A-Za-z0-9]")


def raw_identifiers(omop_dir: Path, raw_dir: Path) -> set[str]:
    """Direct identifiers held by the raw extract, as strings of >= 4 characters.

    person.person_source_value (e.g. MRNs), image_occurrence study/series UIDs, and the
    DICOM PatientName / PatientID of the first file of every series listed there.
    """
    import duckdb
    import pydicom

    def column(table: str, col: str) -> list[str]:
        files = [p for p in (omop_dir / f"{table}.parquet", omop_dir / f"{table}.csv") if p.exists()]
        if not files:
            return []
        reader = "read_parquet" if files[0].suffix == ".parquet" else "read_csv_auto"
        rel = duckdb.sql(f"SELECT DISTINCT CAST({col} AS VARCHAR) FROM {reader}('{files[0]}')")
        return [v for (v,) in rel.fetchall() if v]

    found = set(column("person", "person_source_value"))
    found |= set(column("image_occurrence", "image_study_uid"))
    found |= set(column("image_occurrence", "image_series_uid"))
    for local in column("image_occurrence", "local_path"):
        first = next(iter(sorted((raw_dir / local).glob("*.dcm"))), None)
        if first is None:
            continue
        ds = pydicom.dcmread(first, stop_before_pixels=True,
                             specific_tags=["PatientName", "PatientID"])
        found |= {str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))}
    return {s for s in found if len(s) >= 4}


def find_leaks(files: Iterable[Path], identifiers: set[str]) -> dict[str, list[str]]:
    """{file: identifiers found in it} over text files (HTML, JSON, CSV); empty = clean.

    Matches whole tokens (letters, digits, ``. ^ _ -``), so an MRN or a DICOM name like
    ``DOE^JANE`` is found wherever a report prints it.
    """
    leaks = {}
    for file in files:
        tokens = set(_TOKEN.findall(Path(file).read_text(encoding="utf-8", errors="ignore")))
        hits = sorted(tokens & identifiers)
        if hits:
            leaks[str(file)] = hits
    return leaks
