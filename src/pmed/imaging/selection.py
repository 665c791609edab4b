"""Which image series may be analysed: rules on DICOM header attributes, with a report.

A study holds several series (scout, contrast phases, reconstructions with different
kernels and slice thicknesses). :func:`series_headers` reads the attributes the rules need
from one file of each series (header only); :func:`apply_rules` marks every series with the
first rule it breaks (params ``imaging_features.series_selection``, :class:`SeriesRules`);
the eligible ones then go to :func:`pmed.imaging.extract.select_scans`. :func:`selection_report`
counts considered / chosen / rejected series by reason, with small counts suppressed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from pmed.privacy import release_counts

HEADER_COLUMNS = ["modality", "body_part", "slice_thickness_mm", "series_description", "kernel"]
_KEYWORDS = {"modality": "Modality", "body_part": "BodyPartExamined",
             "slice_thickness_mm": "SliceThickness", "series_description": "SeriesDescription",
             "kernel": "ConvolutionKernel"}


@dataclass(frozen=True)
class SeriesRules:
    """Rules a series must meet (params ``imaging_features.series_selection``).

    modalities : allowed DICOM Modality values (e.g. ["CT"]); empty = any.
    body_parts : allowed BodyPartExamined values (case-insensitive); empty = any.
    slice_thickness_mm : [min, max] SliceThickness in mm; null = any.
    description_pattern : regex searched in SeriesDescription (case-insensitive); null = any.
    kernel_pattern : regex searched in ConvolutionKernel (case-insensitive); null = any.
    baseline_choice : "latest" or "earliest" eligible series in the baseline window.
    """

    modalities: tuple = ("CT",)
    body_parts: tuple = ()
    slice_thickness_mm: tuple | None = None
    description_pattern: str | None = None
    kernel_pattern: str | None = None
    baseline_choice: str = "latest"

    @classmethod
    def from_params(cls, params: Mapping | None) -> SeriesRules:
        """From a params mapping; unknown keys or bad values are an error naming them."""
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise KeyError(f"imaging_features.series_selection: unknown key(s) {unknown}; "
                           f"expected {sorted(known)}")
        for key in ("modalities", "body_parts"):
            if key in params:
                params[key] = tuple(str(v) for v in params[key] or ())
        if params.get("slice_thickness_mm") is not None:
            lo, hi = (float(v) for v in params["slice_thickness_mm"])
            if not 0 <= lo <= hi:
                raise ValueError(f"imaging_features.series_selection.slice_thickness_mm: expected "
                                 f"[min, max] with 0 <= min <= max, got {[lo, hi]}")
            params["slice_thickness_mm"] = (lo, hi)
        if params.get("baseline_choice", "latest") not in ("latest", "earliest"):
            raise ValueError(f"imaging_features.series_selection.baseline_choice: expected "
                             f"latest or earliest, got {params['baseline_choice']!r}")
        return cls(**params)


def series_headers(raw_dir: Path, occurrences: pd.DataFrame) -> pd.DataFrame:
    """``occurrences`` plus ``HEADER_COLUMNS`` read from one file of each DICOM series folder
    (``local_path``); NaN for a NIfTI image or an unreadable folder (its reading error is
    reported by the extraction)."""
    values = []
    for rel in occurrences["local_path"]:
        folder = Path(raw_dir) / str(rel)
        first = next((p for p in sorted(folder.iterdir()) if p.is_file()), None) if folder.is_dir() else None
        row = dict.fromkeys(HEADER_COLUMNS, np.nan)
        if first is not None:
            try:
                ds = pydicom.dcmread(first, stop_before_pixels=True)
            except Exception:  # a broken file is reported when the series is read
                ds = None
            for col, keyword in _KEYWORDS.items():
                value = ds.get(keyword) if ds is not None else None
                if value is not None and value != "":
                    row[col] = "\\".join(map(str, value)) if isinstance(value, pydicom.multival.MultiValue) else value
        values.append(row)
    out = occurrences.reset_index(drop=True).copy()
    headers = pd.DataFrame(values, columns=HEADER_COLUMNS)
    headers["slice_thickness_mm"] = pd.to_numeric(headers["slice_thickness_mm"], errors="coerce")
    return pd.concat([out, headers], axis=1)


def apply_rules(series: pd.DataFrame, rules: SeriesRules) -> pd.Series:
    """Per series the first rule it breaks ("" when eligible), in a fixed order."""
    reasons = pd.Series("", index=series.index, dtype=object)

    def reject(failing: pd.Series, reason: str) -> None:
        reasons[(reasons == "") & failing] = reason

    if rules.modalities:
        reject(~series["modality"].isin(rules.modalities), "modality")
    if rules.body_parts:
        allowed = {b.upper() for b in rules.body_parts}
        reject(~series["body_part"].map(lambda v: str(v).upper() in allowed if pd.notna(v) else False),
               "body part")
    if rules.slice_thickness_mm is not None:
        lo, hi = rules.slice_thickness_mm
        reject(~series["slice_thickness_mm"].between(lo, hi), "slice thickness")
    for col, pattern, reason in (("series_description", rules.description_pattern, "series description"),
                                 ("kernel", rules.kernel_pattern, "kernel")):
        if pattern is not None:
            regex = re.compile(pattern, re.IGNORECASE)
            reject(~series[col].map(lambda v, rx=regex: bool(rx.search(str(v))) if pd.notna(v) else False),
                   reason)
    return reasons


REPORT_ROWS = ["considered", "chosen", "rejected: modality", "rejected: body part",
               "rejected: slice thickness", "rejected: series description", "rejected: kernel",
               "not chosen: another eligible series preferred"]


def selection_report(in_windows: pd.DataFrame, reasons: pd.Series, chosen_ids, min_cell: int) -> pd.DataFrame:
    """Counts of series in the time windows: considered, chosen, rejected per rule, not chosen.

    ``in_windows``: series of cohort persons inside the baseline or follow-up window
    (column image_occurrence_id); ``reasons``: :func:`apply_rules` for them (same index);
    ``chosen_ids``: image_occurrence_id of the selected scans. Returns columns ``step`` and
    ``n`` (text: "<min_cell" for small counts, complementary suppression against the total,
    so no small count can be derived from the others).
    """
    chosen = in_windows["image_occurrence_id"].isin(set(chosen_ids))
    counts = [len(in_windows), int(chosen.sum())]
    counts += [int((reasons == r.removeprefix("rejected: ")).sum()) for r in REPORT_ROWS[2:-1]]
    counts.append(int(((reasons == "") & ~chosen).sum()))
    text = release_counts(counts, [list(range(len(counts)))], min_cell)
    return pd.DataFrame({"step": REPORT_ROWS, "n": text})
