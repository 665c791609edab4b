"""Series selection rules: headers read from DICOM, first broken rule, suppressed report."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pydicom
import pytest

from pmed.demo import ct
from pmed.imaging import extract, selection
from pmed.imaging.selection import SeriesRules


def _series() -> pd.DataFrame:
    """Eight series of one study, one per rule outcome."""
    return pd.DataFrame({
        "image_occurrence_id": range(1, 9),
        "modality": ["CT", "MR", "CT", "CT", "CT", "CT", "CT", np.nan],
        "body_part": ["CHEST", "CHEST", "ABDOMEN", "chest", "CHEST", "CHEST", "CHEST", np.nan],
        "slice_thickness_mm": [2.5, 3.0, 2.5, 0.6, 2.5, 2.5, 1.25, np.nan],
        "series_description": ["CT chest", "T2 ax", "CT abd", "CT chest thin", "Scout",
                               "CT chest", "Thorax lung", np.nan],
        "kernel": ["B30f", "", "B30f", "B30f", "B30f", "B70f", "B31f", np.nan],
    })


def test_first_broken_rule_in_order():
    rules = SeriesRules.from_params({
        "modalities": ["CT"], "body_parts": ["chest"], "slice_thickness_mm": [1.0, 5.0],
        "description_pattern": "chest|thorax", "kernel_pattern": "B3[01]f"})
    reasons = selection.apply_rules(_series(), rules)
    assert reasons.tolist() == ["", "modality", "body part", "slice thickness",
                                "series description", "kernel", "", "modality"]
    assert (selection.apply_rules(_series(), SeriesRules.from_params({"modalities": []})) == "").all()


def test_rule_params_are_checked():
    with pytest.raises(KeyError, match=r"series_selection: unknown key\(s\) \['kernel'\]"):
        SeriesRules.from_params({"kernel": "B30f"})
    with pytest.raises(ValueError, match=r"slice_thickness_mm: expected \[min, max\] with "
                                         r"0 <= min <= max, got \[5.0, 1.0\]"):
        SeriesRules.from_params({"slice_thickness_mm": [5, 1]})
    with pytest.raises(ValueError, match="baseline_choice: expected latest or earliest, got 'last'"):
        SeriesRules.from_params({"baseline_choice": "last"})


def test_report_counts_and_suppression():
    series = pd.DataFrame({"image_occurrence_id": range(40)})
    reasons = pd.Series([""] * 30 + ["modality"] * 3 + ["kernel"] * 7)
    chosen = list(range(18))
    full = selection.selection_report(series, reasons, chosen, min_cell=1)
    assert dict(zip(full["step"], full["n"], strict=True)) == {
        "considered": "40", "chosen": "18", "rejected: modality": "3",
        "rejected: body part": "0", "rejected: slice thickness": "0",
        "rejected: series description": "0", "rejected: kernel": "7",
        "not chosen: another eligible series preferred": "12"}
    safe = dict(zip(*selection.selection_report(series, reasons, chosen, min_cell=5).values.T,
                    strict=True))
    assert safe["rejected: modality"] == "<5"
    # the 3 cannot be derived: a complement is hidden too
    shown = [v for k, v in safe.items() if k != "considered"]
    assert sum(not v.isdigit() for v in shown) >= 2


def test_headers_from_a_series_and_earliest_baseline(tmp_path):
    scans = pd.DataFrame({
        "person_id": [1, 1], "scan_date": [dt.date(2022, 1, 5), dt.date(2022, 2, 1)],
        "timepoint": ["baseline", "followup"], "volume_ml": [10.0, 12.0],
        "heterogeneity": [0.5, 0.5], "irregularity": [0.5, 0.5], "patient_name": ["A^B"] * 2,
        "patient_mrn": ["M"] * 2, "birth_date": [dt.date(1950, 1, 1)] * 2})
    series = ct.write_imaging_study(tmp_path, scans, seed=3)
    occ = pd.DataFrame({"image_occurrence_id": [10, 11], "person_id": [1, 1],
                        "image_occurrence_date": pd.to_datetime(["2022-01-05", "2022-02-01"]),
                        "image_series_uid": series["image_series_uid"],
                        "local_path": series["local_path"]})
    headers = selection.series_headers(tmp_path, occ)
    assert headers["modality"].tolist() == ["CT", "CT"]
    assert headers["body_part"].tolist() == ["CHEST", "CHEST"]
    assert headers["kernel"].isna().all()  # the demo writes no ConvolutionKernel
    assert headers["slice_thickness_mm"].tolist() == [2.5, 2.5]
    f = next((tmp_path / series["local_path"][1]).iterdir())
    ds = pydicom.dcmread(f)
    assert headers["series_description"][1] == ds.SeriesDescription
    cohort = pd.DataFrame({"person_id": [1], "t0_date": pd.to_datetime(["2022-02-10"])})
    for choice, expected in (("latest", 11), ("earliest", 10)):
        picked = extract.select_scans(occ, cohort, "m/{image_series_uid}.nii.gz", 90, (42, 112),
                                      baseline_choice=choice)
        assert picked["image_occurrence_id"].tolist() == [expected]
