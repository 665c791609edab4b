"""MR support: the demo's T2 series, modality-aware preprocessing and the MR path of the stage."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from pmed import config, params_schema
from pmed.demo import ct, mr
from pmed.demo.generate import generate
from pmed.imaging import radiomics as rad
from pmed.imaging import stage
from pmed.imaging.io import read_image
from pmed.imaging.preprocess import Preprocessing

SEED = 23
COMMON = {"seed": SEED, "min_cell_size": 1}
T0 = dt.date(2022, 3, 1)
IMAGING = {
    "mask_path_template": "imaging/masks/{image_series_uid}.nii.gz",
    "on_error": "raise",
    "workers": 1,
    "progress": False,
    "baseline_window_days": 90,
    "followup_window_days": [42, 112],
    "series_selection": {"modalities": ["CT"]},
    "radiomics": {
        "resampled_spacing_mm": [2.0, 2.0, 2.0], "interpolator": "sitkLinear",
        "resegment_range_hu": [-500, 400], "bin_width": 25,
        "feature_classes": ["firstorder", "shape", "glcm"], "image_types": {"Original": {}},
    },
    "preprocessing": {"normalisation": "none", "n4_bias_correction": False},
    "mr": {
        "enabled": True,
        "series_selection": {"modalities": ["MR"], "description_pattern": "T2"},
        "preprocessing": {"normalisation": "zscore_body", "n4_bias_correction": True},
        "radiomics": {"resegment_range_hu": None, "bin_count": 32},
        "stability": {"noise_sd_hu": 0.1},
    },
    "stability": {"n_images": 3, "perturbations": ["original", "erode", "noise"],
                  "noise_sd_hu": 10.0, "shift_voxels": 0.5, "icc_type": "3,1", "icc_threshold": 0.75},
    "response": {"pr_pct": -30.0, "pd_pct": 20.0, "pd_min_increase_mm": 5.0,
                 "key_features": ["original_shape_MeshVolume"]},
    "truth_features": {"volume_ml": "original_shape_MeshVolume"},
}
#       person, days from t0, volume, heterogeneity
PLAN = [(1, -10, 20.0, 0.1), (2, -30, 8.0, 0.5), (3, -5, 40.0, 0.9), (4, -2, 12.0, 0.3)]
TEXTURE = ("_firstorder_", "_glcm_")


def _scans() -> pd.DataFrame:
    return pd.DataFrame({
        "person_id": [p[0] for p in PLAN],
        "scan_date": [T0 + dt.timedelta(days=p[1]) for p in PLAN],
        "timepoint": "baseline", "volume_ml": [p[2] for p in PLAN],
        "heterogeneity": [p[3] for p in PLAN], "irregularity": 0.4,
        "patient_name": "X^Y", "patient_mrn": "M", "birth_date": dt.date(1950, 1, 1),
    })


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Baseline CT and T2 MR (pmed.demo) of 4 cohort persons, in one image_occurrence table."""
    ws = tmp_path_factory.mktemp("ws")
    raw = ws / "data" / "raw"
    scans = _scans()
    ct_series = ct.write_imaging_study(raw, scans, seed=SEED)
    mr_series = mr.write_mr_series(raw, scans, seed=SEED)
    both = pd.concat([ct_series, mr_series[ct.SERIES_COLUMNS]], ignore_index=True)
    (raw / "omop").mkdir()
    pd.DataFrame({
        "image_occurrence_id": np.arange(len(both)) + 100, "person_id": both["person_id"],
        "image_occurrence_date": pd.to_datetime(both["scan_date"]),
        "image_series_uid": both["image_series_uid"], "local_path": both["local_path"],
    }).to_parquet(raw / "omop" / "image_occurrence.parquet")
    (raw / "truth").mkdir(exist_ok=True)
    for series, name in ((ct_series, stage.TRUTH_FILES["CT"]), (mr_series, stage.TRUTH_FILES["MR"])):
        scans[["volume_ml"]].assign(image_series_uid=series["image_series_uid"]).to_csv(
            raw / "truth" / name, index=False)
    (ws / "data" / "processed").mkdir(parents=True)
    pd.DataFrame({"person_id": [1, 2, 3, 4], "t0_date": [T0] * 4}).to_parquet(
        ws / "data" / "processed" / "cohort.parquet")
    return ws


@pytest.fixture(scope="module")
def result(workspace):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PMED_WORKSPACE", str(workspace))
        res = stage.run_stage(COMMON, IMAGING)
        paths = stage.write_outputs(res)
    return res, paths


def test_demo_mr_series_is_mr_with_an_arbitrary_scale(workspace):
    """MR Image Storage, no rescale to a physical unit; gains differ between series."""
    import pydicom

    truth = mr.write_mr_series(workspace / "scratch", _scans().iloc[:1], seed=SEED)
    folder = workspace / "scratch" / truth["local_path"].iloc[0]
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    assert (ds.SOPClassUID, ds.Modality, ds.SeriesDescription) == (
        "1.2.840.10008.5.1.4.1.1.4", "MR", "T2 TSE axial")
    assert "RescaleSlope" not in ds
    image = read_image(folder)
    assert image.GetSize() == (ct.N_COLS, ct.N_ROWS, ct.N_SLICES)
    gains = [mr.scanner_draw({"person_id": p, "scan_date": T0}, SEED)[1] for p in range(1, 40)]
    assert min(gains) >= mr.GAIN_RANGE[0] and max(gains) <= mr.GAIN_RANGE[1]
    assert max(gains) / min(gains) > 3


def _phantom(person: int):
    """Demo MR signal of one person (before the scanner scale) and its tumour mask."""
    row = {**_scans().iloc[0].to_dict(), "person_id": person, "heterogeneity": 0.7}
    signal, mask, _ = mr.render(row, SEED)
    image = sitk.GetImageFromArray(signal.astype(np.float32))
    image.SetSpacing((ct.PIXEL_SPACING_MM, ct.PIXEL_SPACING_MM, ct.SLICE_THICKNESS_MM))
    roi = sitk.GetImageFromArray(mask.astype(np.uint8))
    roi.CopyInformation(image)
    return image, roi


@pytest.mark.parametrize("normalisation", ["zscore_roi", "zscore_body"])
def test_normalisation_makes_features_invariant_to_scanner_gain_and_offset(normalisation):
    """Over 12 random scanner scales (gain log-uniform in [0.2, 10], offset in [0, 1000]) and
    3 persons, the first-order and GLCM features after z-scoring with a bin count equal those
    of the unscaled image; without normalisation (fixed bin width) they do not."""
    settings = {**IMAGING["radiomics"], "resegment_range_hu": None, "bin_count": 32,
                "feature_classes": ["firstorder", "glcm"], "resampled_spacing_mm": None}
    extractor = rad.make_extractor(settings)
    raw_extractor = rad.make_extractor({**settings, "bin_count": None})
    prep = Preprocessing(normalisation=normalisation)
    rng = np.random.default_rng(SEED)
    changed = 0
    for person in (1, 2, 3):
        image, roi = _phantom(person)
        reference = rad.extract_features(extractor, prep.apply(image, roi), roi)
        raw_reference = rad.extract_features(raw_extractor, image, roi)
        keys = [k for k in reference if any(t in k for t in TEXTURE)]
        for _ in range(4):
            gain, offset = np.exp(rng.uniform(np.log(0.2), np.log(10.0))), rng.uniform(0, 1000)
            scaled = image * float(gain) + float(offset)
            got = rad.extract_features(extractor, prep.apply(scaled, roi), roi)
            np.testing.assert_allclose([got[k] for k in keys], [reference[k] for k in keys],
                                       rtol=1e-4, atol=1e-6)
            raw = rad.extract_features(raw_extractor, scaled, roi)
            changed += not np.allclose([raw[k] for k in keys], [raw_reference[k] for k in keys], rtol=1e-3)
    assert changed == 12


def test_mr_runs_apart_from_ct(result):
    """CT and MR series are selected by their own rules; MR features come from its own
    preprocessing and agree with the CT's on the shared tumour mask (same grid)."""
    res, _ = result
    assert res.mr is not None
    ct_ids, mr_ids = set(res.scans["image_occurrence_id"]), set(res.mr.scans["image_occurrence_id"])
    assert len(ct_ids) == len(mr_ids) == 4 and not ct_ids & mr_ids
    assert res.mr.settings["preprocessing"] == {"normalisation": "zscore_body", "n4_bias_correction": True}
    assert res.mr.settings["radiomics"]["bin_count"] == 32
    assert res.mr.settings["radiomics"]["resegment_range_hu"] is None
    assert "preprocessing" not in res.settings or res.settings["preprocessing"]["normalisation"] == "none"
    volumes = [r.measured.set_index("person_id")["original_shape_MeshVolume"].sort_index() for r in (res, res.mr)]
    np.testing.assert_allclose(volumes[1], volumes[0], rtol=1e-9)
    report = dict(zip(res.mr.series_selection["step"], res.mr.series_selection["n"], strict=True))
    assert (report["considered"], report["chosen"], report["rejected: modality"]) == ("8", "4", "4")
    body = res.mr.measured["original_firstorder_Mean"]
    assert body.abs().max() < 10  # z-scores, not raw MR units (hundreds to thousands)
    assert res.mr.truth["spearman"].iloc[0] == pytest.approx(1.0)
    assert len(res.mr.stability) and res.mr.response.empty


def test_mr_outputs_metrics_and_micdm(result, workspace):
    res, paths = result
    processed = workspace / "data" / "processed"
    ct_table = pd.read_parquet(processed / "image_features.parquet")
    mr_table = pd.read_parquet(processed / "image_features_mr.parquet")
    assert set(ct_table["image_occurrence_id"]) == set(res.scans["image_occurrence_id"])
    assert set(mr_table["image_occurrence_id"]) == set(res.mr.scans["image_occurrence_id"])
    settings = json.loads((processed / "image_features_settings_mr.json").read_text())
    assert settings["modality"] == "MR" and settings["preprocessing"]["normalisation"] == "zscore_body"
    for key in ("catalog_mr", "stability_mr", "series_selection_mr", "exclusions_mr"):
        assert paths[key].is_file()
    metrics = stage.stage_metrics(res)
    assert metrics["mr"]["n_images"] == 4 and metrics["mr"]["preprocessing"]["n4_bias_correction"]
    feature = res.image_feature
    assert feature["image_feature_id"].is_unique and res.feature_measurement["measurement_id"].is_unique
    assert set(feature["image_occurrence_id"]) == _all_ids(res)
    assert feature["alg_system"].str.contains(" MR; ").sum() == feature["image_occurrence_id"].isin(
        res.mr.scans["image_occurrence_id"]).sum()


def _all_ids(res) -> set:
    """image_occurrence_id of every analysed CT and MR scan."""
    return set(res.scans["image_occurrence_id"]) | set(res.mr.scans["image_occurrence_id"])


def test_mr_disabled_writes_empty_mr_outputs(workspace, tmp_path):
    settings = copy.deepcopy(IMAGING)
    settings["mr"]["enabled"] = False
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PMED_WORKSPACE", str(workspace))
        res = stage.run_stage(COMMON, settings)
        paths = stage.write_outputs(res)
    assert res.mr is None and "mr" not in stage.stage_metrics(res)
    assert pd.read_parquet(paths["features_mr"]).empty
    assert json.loads(paths["settings_mr"].read_text()) == {"modality": "MR", "analysed": False}


def test_modality_params_replace_and_merge():
    params = stage.modality_params(IMAGING, "MR")
    assert params["series_selection"] == {"modalities": ["MR"], "description_pattern": "T2"}
    assert params["radiomics"]["bin_count"] == 32 and params["radiomics"]["bin_width"] == 25
    assert params["stability"]["noise_sd_hu"] == 0.1 and params["stability"]["n_images"] == 3
    assert "mr" not in params and stage.modality_params(IMAGING, "CT")["preprocessing"]["normalisation"] == "none"
    with pytest.raises(ValueError, match="expected one of .*'CT', 'MR'.*got 'PET'"):
        stage.modality_params(IMAGING, "PET")


def test_schema_refuses_pooled_modalities():
    section = copy.deepcopy(config.load_params()["imaging_features"])
    section["series_selection"]["modalities"] = ["CT", "MR"]
    problems = params_schema.check_section("imaging_features", section)
    assert any("series_selection.modalities" in p and "no CT/MR pooling" in p for p in problems)
    section = copy.deepcopy(config.load_params()["imaging_features"])
    section["mr"]["preprocessing"]["normalisation"] = "minmax"
    assert any("mr.preprocessing.normalisation" in p for p in params_schema.check_section("imaging_features", section))


def _digest(folder: Path, exclude: set[str]) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() not in exclude}


def test_demo_mr_subset_leaves_every_ct_and_other_table_unchanged(tmp_path):
    """The MR subset draws from its own streams: with mr_share 0.5 every CT file, mask and
    OMOP table except image_occurrence / procedure_occurrence / concept is byte-identical to
    mr_share 0, and the CT rows of those tables are unchanged."""
    demo = copy.deepcopy(config.load_params()["demo"])
    demo["sizes"] = {"tiny": {"n_persons": 300, "n_imaged": 8, "followup_share": 0.4}}
    out = {}
    for share in (0.0, 0.5):
        generate(tmp_path / str(share), "tiny", SEED, {**demo, "mr_share": share})
        out[share] = tmp_path / str(share)
    mr_truth = pd.read_csv(out[0.5] / "truth" / "ground_truth_tumours_mr.csv")
    assert 0 < len(mr_truth) < 8
    mr_files = {p.relative_to(out[0.5]).as_posix() for uid in mr_truth["image_series_uid"]
                for p in (out[0.5] / "imaging").rglob(f"*{uid}*")}
    changed = {"omop/image_occurrence.parquet", "omop/procedure_occurrence.parquet", "omop/concept.parquet",
               "truth/ground_truth.json", "truth/ground_truth_tumours_mr.csv"}
    before = _digest(out[0.0], changed)
    after = _digest(out[0.5], changed)
    assert {k: v for k, v in after.items() if not k.startswith(tuple(mr_files))} == before
    occ = [pd.read_parquet(out[s] / "omop" / "image_occurrence.parquet") for s in (0.0, 0.5)]
    pd.testing.assert_frame_equal(occ[1].iloc[:len(occ[0])], occ[0])
    assert (occ[1].iloc[len(occ[0]):]["modality_concept_id"] == 4013636).all()
    assert set(occ[1].iloc[len(occ[0]):]["image_series_uid"]) == set(mr_truth["image_series_uid"])
    proc = [pd.read_parquet(out[s] / "omop" / "procedure_occurrence.parquet") for s in (0.0, 0.5)]
    pd.testing.assert_frame_equal(proc[1].iloc[:len(proc[0])], proc[0])
