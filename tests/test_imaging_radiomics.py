"""pyradiomics features vs the IBSI 1 digital phantom; IBSI name table; catalogue."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import SimpleITK as sitk

from pmed.imaging import radiomics as rad

IBSI_DIR = Path(__file__).parent / "data" / "ibsi"
PHANTOM_SETTINGS = {  # IBSI phantom configuration: no resampling, grey levels as given
    "resampled_spacing_mm": None,
    "interpolator": "sitkBSpline",
    "resegment_range_hu": None,
    "bin_width": 1,
    "feature_classes": list(rad.FEATURE_CLASSES),
    "image_types": {"Original": {}},
}


@pytest.fixture(scope="module")
def phantom_features() -> dict[str, float]:
    image = sitk.ReadImage(str(IBSI_DIR / "digital_phantom_image.nii.gz"))
    mask = sitk.ReadImage(str(IBSI_DIR / "digital_phantom_mask.nii.gz"))
    return rad.extract_features(rad.make_extractor(PHANTOM_SETTINGS), image, mask)


@pytest.fixture(scope="module")
def references() -> pd.DataFrame:
    return pd.read_csv(IBSI_DIR / "digital_phantom_reference_values.csv").set_index("tag")


def allowed_error(reference: float, tolerance: float) -> float:
    """IBSI tolerance, or half a unit of the reference's 3rd significant digit if larger."""
    if reference == 0:
        return max(tolerance, 5e-4)
    return max(tolerance, 0.5 * 10 ** (math.floor(math.log10(abs(reference))) - 2))


def test_every_reported_feature_is_classified(phantom_features):
    """Each of the 107 default features is IBSI-mapped or listed as non-IBSI, not both."""
    keys = {name.split("_", 1)[1] for name in phantom_features}
    assert len(keys) == 107
    assert keys == set(rad.IBSI_TAGS) | set(rad.NON_IBSI)
    assert not set(rad.IBSI_TAGS) & set(rad.NON_IBSI)


def test_ibsi_tags_exist(references):
    missing = sorted(set(rad.IBSI_TAGS.values()) - set(references.index))
    assert missing == []


def test_phantom_matches_ibsi_references(phantom_features, references):
    """All 102 IBSI-mapped features agree with the IBSI 1 phantom consensus values.

    Reference: Zwanenburg et al., Radiology 2020 (IBSI 1), digital phantom, config as
    in tests/data/ibsi/README.md.
    """
    failures = []
    for key, tag in rad.IBSI_TAGS.items():
        value = phantom_features[f"original_{key}"]
        ref, tol = references.loc[tag, "reference_value"], references.loc[tag, "tolerance"]
        if not abs(value - ref) <= allowed_error(ref, tol):
            failures.append(f"{key} ({tag}): {value:.5g} vs {ref} +- {allowed_error(ref, tol):.3g}")
    assert failures == []
    assert len(rad.IBSI_TAGS) == 102


def test_corrections_are_needed(phantom_features, references):
    """Without the corrections kurtosis and the PCA axis lengths would fail IBSI."""
    kurt = phantom_features["original_firstorder_ExcessKurtosis"]
    assert abs((kurt + 3) - references.loc["stat_kurt", "reference_value"]) > 1
    least = phantom_features["original_shape_LeastAxisLength"] / math.sqrt(74 / 73)
    ref = references.loc["morph_pca_least_axis"]
    assert abs(least - ref["reference_value"]) > ref["tolerance"]


def test_catalog_marks_verified():
    features = ["original_glcm_Contrast", "original_glcm_MCC", "log-sigma-2-0-mm-3D_glcm_Contrast",
                "original_firstorder_ExcessKurtosis"]
    cat = rad.feature_catalog(features)
    assert cat["ibsi_verified"].tolist() == [True, False, False, True]
    assert cat["ibsi_tag"].tolist() == ["cm_contrast_3D_avg", "", "cm_contrast_3D_avg", "stat_kurt"]
    with pytest.raises(KeyError, match="original_glcm_Unknown"):
        rad.feature_catalog(["original_glcm_Unknown"])


def test_settings_hash_changes_with_settings():
    other = dict(PHANTOM_SETTINGS, bin_width=25)
    assert rad.settings_hash(PHANTOM_SETTINGS) == rad.settings_hash(dict(PHANTOM_SETTINGS))
    assert rad.settings_hash(PHANTOM_SETTINGS) != rad.settings_hash(other)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="interpolator"):
        rad.make_extractor(dict(PHANTOM_SETTINGS, interpolator="cubic"))
    with pytest.raises(ValueError, match="feature_classes"):
        rad.make_extractor(dict(PHANTOM_SETTINGS, feature_classes=["glcm", "wavelet"]))
    with pytest.raises(KeyError, match="bin_width"):
        rad.pyradiomics_settings({k: v for k, v in PHANTOM_SETTINGS.items() if k != "bin_width"})


def test_features_do_not_depend_on_the_crop(tmp_path, monkeypatch):
    """Resampling is anchored at the image origin, so a wider crop gives the same features.

    Exact with linear interpolation (local). With B-splines the prefilter is global, so
    intensities change in the 5th digit and a few texture features by ~0.1 % (pyradiomics'
    own grid, tied to the crop, changed some texture features by > 30 %).
    """
    import datetime as dt

    from pmed.demo import ct
    from pmed.imaging.io import read_dicom_series, read_mask

    scan = {"person_id": 4, "scan_date": dt.date(2021, 1, 1), "timepoint": "baseline",
            "volume_ml": 12.0, "heterogeneity": 0.6, "irregularity": 0.5, "patient_name": "A^B",
            "patient_mrn": "M", "birth_date": dt.date(1950, 1, 1)}
    row = ct.write_imaging_study(tmp_path, pd.DataFrame([scan]), seed=3).iloc[0]
    image = read_dicom_series(tmp_path / row.local_path)
    mask = read_mask(tmp_path / row.mask_path)
    settings = dict(PHANTOM_SETTINGS, resampled_spacing_mm=[2.0, 2.0, 2.0],
                    resegment_range_hu=[-500, 400], bin_width=25, interpolator="sitkLinear")
    extractor = rad.make_extractor(settings)
    narrow = rad.extract_features(extractor, image, mask)
    monkeypatch.setattr(rad, "CROP_MARGIN_VOXELS", 30)
    wide = rad.extract_features(extractor, image, mask)
    assert narrow.keys() == wide.keys()
    for key in narrow:
        assert narrow[key] == pytest.approx(wide[key], rel=1e-9, abs=1e-12), key
    assert narrow["original_shape_VoxelVolume"] == pytest.approx(12_000, rel=0.05)
