"""The imaging feature stage on a tiny synthetic workspace (pmed.demo.ct series)."""

from __future__ import annotations

import copy
import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pmed import config
from pmed.demo import ct
from pmed.imaging import extract, stage
from pmed.imaging.io import ImagingError

SEED = 11
COMMON = {"seed": SEED, "min_cell_size": 1}
T0 = dt.date(2022, 3, 1)
IMAGING = {
    "mask_path_template": "imaging/masks/{image_series_uid}.nii.gz",
    "on_error": "exclude",
    "workers": 1,
    "progress": False,
    "baseline_window_days": 90,
    "followup_window_days": [42, 112],
    "radiomics": {
        "resampled_spacing_mm": [2.0, 2.0, 2.0], "interpolator": "sitkLinear",
        "resegment_range_hu": [-500, 400], "bin_width": 25,
        "feature_classes": ["firstorder", "shape", "glcm"], "image_types": {"Original": {}},
    },
    "stability": {"n_images": 3, "perturbations": ["original", "erode", "dilate", "noise", "translate"],
                  "noise_sd_hu": 10.0, "shift_voxels": 0.5, "icc_type": "3,1", "icc_threshold": 0.75},
    "response": {"pr_pct": -30.0, "pd_pct": 20.0, "pd_min_increase_mm": 5.0,
                 "key_features": ["original_shape_MeshVolume"]},
    "truth_features": {"volume_ml": "original_shape_MeshVolume",
                       "heterogeneity": "original_firstorder_Variance"},
}
#          person, days from t0, timepoint, volume, heterogeneity
PLAN = [
    (1, -10, "baseline", 20.0, 0.1),
    (1, 60, "followup", 10.0, 0.1),   # volume halved
    (2, -30, "baseline", 8.0, 0.5),
    (2, 70, "followup", 30.0, 0.5),   # PD
    (3, -5, "baseline", 40.0, 0.9),
    (4, -200, "baseline", 12.0, 0.3),  # outside the baseline window: not selected
    (5, -3, "baseline", 5.0, 0.7),     # corrupted below: excluded with its file name
    (6, -1, "baseline", 15.0, 0.2),
    (99, -2, "baseline", 10.0, 0.4),   # not in the cohort
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    raw = ws / "data" / "raw"
    scans = pd.DataFrame({
        "person_id": [p[0] for p in PLAN],
        "scan_date": [T0 + dt.timedelta(days=p[1]) for p in PLAN],
        "timepoint": [p[2] for p in PLAN],
        "volume_ml": [p[3] for p in PLAN],
        "heterogeneity": [p[4] for p in PLAN],
        "irregularity": 0.3, "patient_name": "X^Y", "patient_mrn": "M",
        "birth_date": dt.date(1950, 1, 1),
    })
    series = ct.write_imaging_study(raw, scans, seed=SEED, workers=2)
    (raw / "omop").mkdir()
    occ = pd.DataFrame({
        "image_occurrence_id": np.arange(len(series)) + 1000,
        "person_id": series["person_id"],
        "image_occurrence_date": pd.to_datetime(series["scan_date"]),
        "image_series_uid": series["image_series_uid"],
        "local_path": series["local_path"],
    })
    occ.to_parquet(raw / "omop" / "image_occurrence.parquet")
    truth = scans[["volume_ml", "heterogeneity"]].assign(image_series_uid=series["image_series_uid"])
    (raw / "truth").mkdir(exist_ok=True)
    truth.to_csv(raw / "truth" / stage.TRUTH_FILE, index=False)
    bad = raw / series.loc[6, "local_path"] / "0020.dcm"  # person 5
    bad.write_bytes(bad.read_bytes()[:300])
    (ws / "data" / "processed").mkdir(parents=True)
    cohort = pd.DataFrame({"person_id": [1, 2, 3, 4, 5, 6], "t0_date": [T0] * 6})
    cohort.to_parquet(ws / "data" / "processed" / "cohort.parquet")
    return ws


@pytest.fixture(scope="module")
def result(workspace):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PMED_WORKSPACE", str(workspace))
        res = stage.run_stage(COMMON, IMAGING)
        stage.write_outputs(res)
    return res


def test_scan_selection(result):
    sel = result.scans.set_index(["person_id", "timepoint"])["days_from_t0"]
    assert sel.to_dict() == {(1, "baseline"): -10, (1, "followup"): 60, (2, "baseline"): -30,
                             (2, "followup"): 70, (3, "baseline"): -5, (5, "baseline"): -3,
                             (6, "baseline"): -1}


def test_series_selection_report(result, workspace):
    """7 series of cohort persons lie in the windows (person 4's is too early); a rule on the
    series description then rejects the two follow-up series before extraction."""
    report = dict(zip(result.series_selection["step"], result.series_selection["n"], strict=True))
    assert (report["considered"], report["chosen"]) == ("7", "7")
    settings = copy.deepcopy(IMAGING)
    settings["series_selection"] = {"description_pattern": "baseline"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PMED_WORKSPACE", str(workspace))
        res = stage.run_stage(COMMON, settings)
    report = dict(zip(res.series_selection["step"], res.series_selection["n"], strict=True))
    assert (report["considered"], report["chosen"], report["rejected: series description"]) == ("7", "5", "2")
    assert set(res.scans["timepoint"]) == {"baseline"}


def test_micdm_rows_hold_every_feature_value(result, workspace):
    """One image_feature + measurement row per non-missing value of every analysed scan,
    written next to the parquet, and the values come back by joining them."""
    names = [*extract.MEASURE_COLUMNS[:2], *result.feature_names]
    wide = result.measured.set_index("image_occurrence_id")[names]
    assert len(result.image_feature) == int(wide.notna().sum().sum())
    joined = result.image_feature.merge(
        result.feature_measurement, left_on="image_feature_event_id", right_on="measurement_id")
    back = joined.pivot(index="image_occurrence_id", columns="measurement_source_value",
                        values="value_as_number")
    expected = wide.rename(columns=lambda c: c.removeprefix("original_"))
    pd.testing.assert_frame_equal(back[expected.columns], expected, check_names=False)
    processed = workspace / "data" / "processed"
    stored = pd.read_parquet(processed / "omop_image_feature.parquet")
    pd.testing.assert_frame_equal(stored, result.image_feature, check_dtype=False)
    assert (processed / "omop_image_feature_measurement.parquet").is_file()


def test_corrupt_series_is_excluded_with_its_name(result):
    assert result.exclusions["person_id"].tolist() == [5]
    reason = result.exclusions["reason"].iloc[0]
    assert "0020.dcm" in reason and "image_occurrence 1006" in reason
    assert sorted(result.measured["person_id"].unique()) == [1, 2, 3, 6]


def test_on_error_raise_names_the_file(workspace):
    settings = copy.deepcopy(IMAGING)
    settings["on_error"] = "raise"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PMED_WORKSPACE", str(workspace))
        with pytest.raises(ImagingError, match="0020.dcm"):
            stage.run_stage(COMMON, settings)


def test_mask_volume_matches_truth(result):
    vol = result.measured.set_index(["person_id", "timepoint"])["volume_ml"]
    assert vol[(1, "baseline")] == pytest.approx(20.0, abs=ct.VOXEL_ML)
    assert vol[(3, "baseline")] == pytest.approx(40.0, abs=ct.VOXEL_ML)
    mesh = result.measured["original_shape_MeshVolume"] / 1000
    np.testing.assert_allclose(mesh, result.measured["volume_ml"], rtol=0.1)


def test_outputs_written(result, workspace):
    processed = workspace / "data" / "processed"
    feats = pd.read_parquet(processed / "image_features.parquet")
    assert list(feats.columns[:3]) == extract.KEY_COLUMNS
    assert all(pd.api.types.is_numeric_dtype(feats[c]) for c in feats.columns[3:])
    assert len(feats) == 6 and feats.shape[1] == 3 + len(result.feature_names)
    stab = pd.read_csv(processed / "feature_stability.csv")
    assert {"feature", "icc", "stable"} <= set(stab.columns) and stab["n_images"].max() == 3
    cat = pd.read_csv(processed / "image_feature_catalog.csv")
    assert cat["ibsi_verified"].sum() == result.settings["n_ibsi_verified"] > 0
    resp = pd.read_parquet(processed / "image_response.parquet")
    assert resp["person_id"].tolist() == [1, 2]
    assert resp["response"].iloc[1] == "PD"
    assert "delta_original_shape_MeshVolume" in resp.columns
    assert (workspace / "data" / "interim" / "image_exclusions.csv").is_file()
    assert len(result.truth) == 2 and result.truth["n"].tolist() == [6, 6]
    metrics = stage.stage_metrics(result)
    assert metrics["n_images"] == 6 and metrics["n_excluded"] == 1


def test_rerun_uses_cache(result, workspace):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PMED_WORKSPACE", str(workspace))
        again = extract.extract_all(
            result.scans, config.path("raw"), config.path("interim") / "radiomics_cache",
            IMAGING["radiomics"], "exclude", workers=1, progress=False,
        )
    features, exclusions, timing = again
    assert timing["n_cached"] == 6 and timing["n_computed"] == 1  # the corrupt one again
    pd.testing.assert_frame_equal(features, result.measured, check_dtype=False)


def test_bad_mask_template_is_named(result):
    occ = result.scans[["image_occurrence_id", "person_id", "image_occurrence_date",
                        "image_series_uid", "local_path"]]
    cohort = pd.DataFrame({"person_id": [1], "t0_date": [T0]})
    with pytest.raises(KeyError, match="mask_path_template: unknown field 'series'"):
        extract.select_scans(occ, cohort, "masks/{series}.nii.gz", 90, (42, 112))


def _break_truncate(raw: Path, scans: pd.DataFrame) -> pd.DataFrame:
    slice_ = raw / scans.iloc[0]["local_path"] / "0010.dcm"
    slice_.write_bytes(slice_.read_bytes()[:300])
    return scans


def _break_delete_slice(raw: Path, scans: pd.DataFrame) -> pd.DataFrame:
    (raw / scans.iloc[0]["local_path"] / "0010.dcm").unlink()
    return scans


def _break_delete_series(raw: Path, scans: pd.DataFrame) -> pd.DataFrame:
    shutil.rmtree(raw / scans.iloc[0]["local_path"])
    return scans


def _break_path(raw: Path, scans: pd.DataFrame) -> pd.DataFrame:
    scans = scans.copy()
    scans.loc[scans.index[0], "local_path"] = "imaging/no-such-series"
    return scans


@pytest.mark.parametrize("fault", [_break_truncate, _break_delete_slice, _break_delete_series,
                                   _break_path])
def test_cache_never_hides_a_broken_image(fault, result, workspace, tmp_path):
    """A fault introduced after a cached run excludes the image instead of reusing its features."""
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    raw, cache = ws / "data" / "raw", ws / "data" / "interim" / "radiomics_cache"
    scans = fault(raw, result.scans)
    features, exclusions, timing = extract.extract_all(
        scans, raw, cache, IMAGING["radiomics"], "exclude", workers=1, progress=False)
    first = scans.iloc[0]
    assert first["image_occurrence_id"] in exclusions["image_occurrence_id"].tolist()
    assert first["image_occurrence_id"] not in features["image_occurrence_id"].tolist()
    reason = exclusions.set_index("image_occurrence_id").loc[first["image_occurrence_id"], "reason"]
    assert f"image_occurrence {first['image_occurrence_id']}" in reason
    assert timing["n_cached"] == 5  # the other five analysable scans still come from the cache


def test_fingerprint_covers_row_image_and_mask(result, workspace):
    raw = workspace / "data" / "raw"
    scan = result.scans.iloc[0].to_dict()
    base = extract.input_fingerprint(raw, scan)
    assert base == extract.input_fingerprint(raw, dict(scan))
    assert extract.input_fingerprint(raw, {**scan, "person_id": 12345}) != base
    assert extract.input_fingerprint(raw, {**scan, "mask_path": "imaging/masks/none.nii.gz"}) is None
