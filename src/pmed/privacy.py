"""Small-cell suppression: no count below the minimum cell size leaves the project.

Every table and figure in a report goes through these helpers, so a count of 1..k-1
(k = ``common.min_cell_size`` in params.yaml, default 11) is shown as ``<k``. Zero is
not disclosive and is shown as 0.
"""

from __future__ import annotations

from collections.abc import Iterable

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
