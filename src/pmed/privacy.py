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


def complementary_suppression(values, lines: Iterable[Iterable[int]], min_cell: int,
                              cost=None, force=None) -> np.ndarray:
    """Cells to hide so that no small count can be derived from a published sum.

    Parameters
    ----------
    values : (m,) counts of the cells (NaN = not published, i.e. unknown to a reader).
    lines : groups of cell indices bound by one relation a reader knows, the FIRST index being
        the total and the others its parts (e.g. ``[n_overall, n_group_1, n_group_2]``).
    min_cell : counts in (0, min_cell) are hidden (primary suppression).
    cost : (m,) preference for hiding each cell as a complement (lowest first; default the
        count). ``inf`` marks cells that cannot be hidden: counts not printed anywhere but
        derivable (e.g. survivors = persons - deaths); they are still protected when small.
    force : (m,) bool, cells hidden whatever their count (hidden in another published table
        that shares them, e.g. a group size), protected like primary cells.

    Returns
    -------
    (m,) bool: True = hide (derived cells are never marked; they are not printed). Primary
    cells, plus complements until no line lets a reader compute a hidden count or a small
    derived one (its only unknown), nor a small sum of unknown parts (total shown). A
    complement is the cheapest shown cell of the line that lifts the unknown sum to >=
    min_cell, else the cheapest (zeros included). Lines with an unpublished (NaN) cell reveal
    nothing. This is the usual greedy heuristic, line by line; it does not solve the full
    linear system a determined reader could set up across lines.
    """
    v = np.asarray(values, dtype=float)
    c = v.copy() if cost is None else np.asarray(cost, dtype=float)
    unpublished = np.isnan(v)
    derived = ~unpublished & ~np.isfinite(c)  # not printed, but computable from its lines
    hidden = ~unpublished & ~derived & (v > 0) & (v < min_cell)
    if force is not None:
        hidden |= ~unpublished & ~derived & np.asarray(force, dtype=bool)
    lines = [list(line) for line in lines]

    def exposed(line: list[int]) -> bool:
        """True if the line lets a reader compute a hidden count, a small derived count, or
        a small sum of unknown parts."""
        if any(unpublished[i] for i in line):
            return False
        unknown = [i for i in line if hidden[i] or derived[i]]
        if not unknown:
            return False
        if len(unknown) == 1:
            i = unknown[0]
            return bool(hidden[i] or is_small(v[i], min_cell))
        if line[0] in unknown:  # the total is unknown: only differences of unknowns follow
            return False
        return is_small(sum(v[i] for i in unknown), min_cell)

    changed = True
    while changed:
        changed = False
        for line in lines:
            if not exposed(line):
                continue
            visible = [i for i in line if not hidden[i] and not derived[i] and not unpublished[i]]
            if not visible:
                continue
            unknown_sum = sum(v[i] for i in line[1:] if hidden[i] or derived[i])
            lifting = [i for i in visible if i != line[0] and unknown_sum + v[i] >= min_cell]
            hidden[min(lifting or visible, key=lambda i: (c[i], i))] = True
            changed = True
    return hidden


def merge_small_steps(steps: pd.DataFrame, min_cell: int) -> pd.DataFrame:
    """Attrition steps with every small exclusion merged into a neighbouring step.

    ``steps`` has columns ``criterion``, ``remaining``, ``excluded`` in order (first row: the
    starting population, excluded 0). A step excluding 1..min_cell-1 persons is merged with
    the next step (at the end, with the previous ones): criteria (and the ``reason`` and
    ``step`` columns when present) joined by " or ",
    exclusions added, the remaining count of the later step kept, so no published difference
    of two remaining counts is small. Returns a new frame (same columns, fewer rows).
    """
    text = [c for c in ("criterion", "reason", "step") if c in steps.columns]

    def merged(first: dict, second: dict) -> dict:
        return {**second, **{c: f"{first[c]} or {second[c]}" for c in text},
                "excluded": first["excluded"] + second["excluded"]}

    rows = steps.reset_index(drop=True).to_dict("records")
    out, pending = rows[:1], None
    for row in rows[1:]:
        if pending is not None:
            row = merged(pending, row)
        pending = row if is_small(row["excluded"], min_cell) else None
        if pending is None:
            out.append(row)
    while pending is not None and len(out) > 1 and is_small(pending["excluded"], min_cell):
        pending = merged(out.pop(), pending)
    if pending is not None:
        out.append(pending)  # still small only if the whole flow excludes < min_cell
    return pd.DataFrame(out, columns=steps.columns)


def release_counts(values, lines: Iterable[Iterable[int]], min_cell: int, cost=None,
                   force=None) -> list[str]:
    """Counts as report text after primary and complementary suppression.

    Small counts read ``"<k"``, cells hidden to protect them read :data:`SECONDARY`; see
    :func:`complementary_suppression` for ``lines``, ``cost`` and ``force``.
    """
    v = np.asarray(values, dtype=float)
    hidden = complementary_suppression(v, lines, min_cell, cost, force)
    return [format_count(x, min_cell) if not h or is_small(x, min_cell) else SECONDARY
            for x, h in zip(v, hidden, strict=True)]


def release_nested(counts: dict, parts: dict | None, min_cell: int) -> tuple[dict, dict]:
    """Report text for a nested sequence of counts and a breakdown of its last count.

    ``counts`` is ordered and non-increasing (e.g. with a response -> alive at the landmark
    -> assessed), so each difference of neighbours is an implicit exclusion; ``parts`` (or
    None) splits the last count into categories. As in a flow (:func:`merge_small_steps`), a
    count whose difference to the previous one is small is not shown (``"suppressed"``), so
    no small difference appears; the remaining counts, the implicit exclusions (never
    printed) and the parts are then protected together (:func:`release_counts`). Returns
    (counts text, parts text).
    """
    names, parts = list(counts), dict(parts or {})
    seq = [float(counts[k]) for k in names]
    steps = pd.DataFrame({"step": names, "criterion": names, "remaining": seq,
                          "excluded": [0.0, *(a - b for a, b in zip(seq[:-1], seq[1:], strict=True))]})
    kept = merge_small_steps(steps, min_cell)
    last = [str(s).split(" or ")[-1] for s in kept["step"]]
    rem, exc = kept["remaining"].tolist(), kept["excluded"].tolist()
    m = len(kept)
    values = [*rem, *exc[1:], *parts.values()]
    lines = [[i - 1, i, m + i - 1] for i in range(1, m)]
    if parts:
        lines.append([m - 1, *range(2 * m - 1, 2 * m - 1 + len(parts))])
    cost = [*rem, *([np.inf] * (m - 1)), *parts.values()]  # exclusions are derived, not printed
    text = release_counts(values, lines, min_cell, cost)
    shown = dict(zip(last, text[:m], strict=True))
    if last[-1] != names[-1]:  # the last count merged away: its parts' total is not shown
        shown[names[-1]] = SECONDARY
    return ({k: shown.get(k, SECONDARY) for k in names},
            dict(zip(parts, text[2 * m - 1:], strict=True)))


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
    """A Kaplan-Meier or cumulative-incidence curve cut where fewer than ``min_cell`` persons
    remain at risk.

    ``curve`` is :func:`pmed.survival.kaplan_meier` or :func:`pmed.competing.cumulative_incidence`
    output (needs ``n_at_risk``). Rows from the first time with ``n_at_risk < min_cell`` on are
    dropped, and so are the per-time event/competing/censoring counts, so neither a figure nor
    its CSV shows a step of a small risk set. A group smaller than ``min_cell`` from the start
    gives an empty frame (not drawn).
    """
    if "n_at_risk" not in curve.columns:
        raise KeyError("release_km: the curve needs an n_at_risk column (pmed.survival.kaplan_meier)")
    small = np.asarray(curve["n_at_risk"], dtype=float) < min_cell
    stop = int(np.argmax(small)) if small.any() else len(curve)
    counts = ["n_events", "n_censored", "n_event", "n_competing"]
    return curve.iloc[:stop].drop(columns=counts, errors="ignore").reset_index(drop=True)


# --- audit: no identifier of the raw extract in any report file -------------------------

# DICOM tags naming the patient or the examination (a series' first file is read)
DICOM_IDENTIFIERS = ["PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber"]
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.^_\-]*[A-Za-z0-9]")


def raw_identifiers(omop_dir: Path, raw_dir: Path) -> set[str]:
    """Direct identifiers held by the raw extract, as strings of >= 4 characters.

    person.person_source_value (e.g. MRNs), image_occurrence study/series UIDs, and the
    DICOM :data:`DICOM_IDENTIFIERS` of the first file of every series listed there.
    """
    import duckdb
    import pydicom
    from pydicom.multival import MultiValue

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
        ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=DICOM_IDENTIFIERS)
        for tag in DICOM_IDENTIFIERS:
            value = ds.get(tag)
            found |= {str(v) for v in (value if isinstance(value, MultiValue) else [value])
                      if v is not None}
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
