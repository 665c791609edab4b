"""Small-cell suppression: no count below the minimum cell size leaves the project.

Every table and figure in a report goes through these helpers, so a count of 1..k-1
(k = ``common.min_cell_size`` in params.yaml, default 11) is shown as ``<k``. Zero is
not disclosive and is shown as 0. A suppressed count must not be recoverable by
subtraction either: :func:`complementary_suppression` hides a second cell of every published
sum that would otherwise have exactly one hidden cell, :func:`merge_small_steps` merges
attrition steps that exclude a small number, :func:`suppress_metric_counts` applies both
rules to metrics JSON, and :func:`release_km` cuts Kaplan-Meier curves where fewer than k
remain at risk. The report stage then audits every report file for the raw extract's
direct identifiers (:func:`raw_identifiers`, :func:`find_leaks`).
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


SECONDARY = "suppressed"  # shown for a count hidden only so that a small one cannot be derived


def complementary_suppression(values, lines: Iterable[Iterable[int]], min_cell: int) -> np.ndarray:
    """Cells to hide so that no small count can be derived from a published sum.

    Parameters
    ----------
    values : (m,) counts of the published cells (NaN = not published, i.e. unknown).
    lines : groups of cell indices bound by one published linear relation (a total and its
        parts, e.g. ``[n_overall, n_group_1, n_group_2]``): one hidden cell in such a group is
        recoverable from the others.
    min_cell : counts in (0, min_cell) are hidden (primary suppression).

    Returns
    -------
    (m,) bool: True = hide. Primary cells plus, for every line left with exactly one unknown
    cell that is a hidden count, its smallest positive visible cell (secondary suppression),
    repeated until no line reveals a hidden count. Unpublished (NaN) cells stay unknown and
    protect the lines they are in.
    """
    v = np.asarray(values, dtype=float)
    unpublished = np.isnan(v)
    hidden = ~unpublished & (v > 0) & (v < min_cell)
    lines = [list(line) for line in lines]
    changed = True
    while changed:
        changed = False
        for line in lines:
            unknown = [i for i in line if hidden[i] or unpublished[i]]
            if len(unknown) != 1 or unpublished[unknown[0]]:
                continue
            visible = [i for i in line if not hidden[i] and not unpublished[i] and v[i] > 0]
            if visible:
                hidden[min(visible, key=lambda i: (v[i], i))] = True
                changed = True
    return hidden


def merge_small_steps(steps: pd.DataFrame, min_cell: int) -> pd.DataFrame:
    """Attrition steps with every small exclusion merged into a neighbouring step.

    ``steps`` has columns ``criterion``, ``remaining``, ``excluded`` in order (first row: the
    starting population, excluded 0). A step excluding 1..min_cell-1 persons is merged with
    the next step (at the end, with the previous ones): criteria joined by " or ",
    exclusions added, the remaining count of the later step kept, so no published difference
    of two remaining counts is small. Returns a new frame (same columns, fewer rows).
    """
    rows = steps.reset_index(drop=True).to_dict("records")
    out, pending = rows[:1], None
    for row in rows[1:]:
        if pending is not None:
            row = {**row, "criterion": f"{pending['criterion']} or {row['criterion']}",
                   "excluded": pending["excluded"] + row["excluded"]}
        pending = row if is_small(row["excluded"], min_cell) else None
        if pending is None:
            out.append(row)
    while pending is not None and len(out) > 1 and is_small(pending["excluded"], min_cell):
        last = out.pop()
        pending = {**pending, "criterion": f"{last['criterion']} or {pending['criterion']}",
                   "excluded": last["excluded"] + pending["excluded"]}
    if pending is not None:
        out.append(pending)  # still small only if the whole flow excludes < min_cell
    return pd.DataFrame(out, columns=steps.columns)


def release_counts(values, lines: Iterable[Iterable[int]], min_cell: int) -> list[str]:
    """Counts as report text after primary and complementary suppression.

    Small counts read ``"<k"``, cells hidden to protect them read :data:`SECONDARY`.
    """
    v = np.asarray(values, dtype=float)
    hidden = complementary_suppression(v, lines, min_cell)
    return [format_count(x, min_cell) if not h or is_small(x, min_cell) else SECONDARY
            for x, h in zip(v, hidden, strict=True)]


def release_nested(counts: dict, parts: dict | None, min_cell: int) -> tuple[dict, dict]:
    """Report text for a nested sequence of counts and a breakdown of its last count.

    ``counts`` is ordered and non-increasing (e.g. with a response -> alive at the landmark
    -> assessed), so each difference of neighbours is an implicit exclusion; ``parts`` (or
    None) splits the last count into categories. Small counts, small implicit exclusions
    and every cell that would reveal them are hidden. Returns (counts text, parts text).
    """
    names, parts = list(counts), dict(parts or {})
    seq = [float(counts[k]) for k in names]
    diffs = [a - b for a, b in zip(seq[:-1], seq[1:], strict=True)]
    values = [*seq, *diffs, *parts.values()]
    m, d = len(seq), len(diffs)
    lines = [[i, i + 1, m + i] for i in range(d)]
    if parts:
        lines.append([m - 1, *range(m + d, m + d + len(parts))])
    text = release_counts(values, lines, min_cell)
    return dict(zip(names, text[:m], strict=True)), dict(zip(parts, text[m + d:], strict=True))


_COUNT_KEY = re.compile(r"^n(_|$)|(^|_)(n|count)$")


def suppress_metric_counts(metrics, min_cell: int):
    """Copy of a metrics dict with small counts, and their complements, as text.

    Count-valued keys (``n``, ``n_*``, ``*_n``, ``*_count``; integer values) of one dict are
    treated as one published relation (conservatively: siblings often are a total and its
    parts), so one small count hides the smallest other positive count beside it.
    """
    if isinstance(metrics, list):
        return [suppress_metric_counts(m, min_cell) for m in metrics]
    if not isinstance(metrics, dict):
        return metrics
    out = {k: suppress_metric_counts(v, min_cell) for k, v in metrics.items()}
    keys = [k for k, v in out.items() if _COUNT_KEY.search(str(k))
            and isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))]
    if keys:
        text = release_counts([out[k] for k in keys], [range(len(keys))], min_cell)
        for k, t in zip(keys, text, strict=True):
            if not t.isdigit():
                out[k] = t
    return out


def release_km(curve: pd.DataFrame, min_cell: int) -> pd.DataFrame:
    """A Kaplan-Meier curve cut where fewer than ``min_cell`` persons remain at risk.

    ``curve`` is :func:`pmed.survival.kaplan_meier` output (needs ``n_at_risk``). Rows from
    the first time with ``n_at_risk < min_cell`` on are dropped, and so are the per-time
    event/censoring counts, so neither the figure nor its CSV shows a step of a small risk
    set. A group smaller than ``min_cell`` from the start gives an empty frame (not drawn).
    """
    if "n_at_risk" not in curve.columns:
        raise KeyError("release_km: the curve needs an n_at_risk column (pmed.survival.kaplan_meier)")
    small = np.asarray(curve["n_at_risk"], dtype=float) < min_cell
    stop = int(np.argmax(small)) if small.any() else len(curve)
    return curve.iloc[:stop].drop(columns=["n_events", "n_censored"], errors="ignore")


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
