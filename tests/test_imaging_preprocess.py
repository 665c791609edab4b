"""MR-style preprocessing: z-score normalisation, bin count, N4 bias-field correction."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import SimpleITK as sitk

from pmed.demo import ct
from pmed.imaging import radiomics as rad
from pmed.imaging.io import ImagingError
from pmed.imaging.preprocess import body_mask, n4_correct, normalise

SEED = 5
SETTINGS = {"resampled_spacing_mm": None, "interpolator": "sitkLinear", "resegment_range_hu": None,
            "bin_width": 25, "bin_count": 32, "feature_classes": ["firstorder", "glcm", "glszm"],
            "image_types": {"Original": {}}}


@pytest.fixture(scope="module")
def phantom() -> tuple[sitk.Image, sitk.Image]:
    """The demo chest phantom (HU + 1100, positive like MR) and its tumour mask."""
    scan = {"person_id": 3, "scan_date": dt.date(2022, 1, 1), "timepoint": "baseline",
            "volume_ml": 30.0, "heterogeneity": 0.8, "irregularity": 0.5}
    hu, mask = ct._render(scan, SEED)
    image = sitk.GetImageFromArray((hu + 1100.0).astype(np.float32))
    image.SetSpacing((2.0, 2.0, 2.5))
    roi = sitk.GetImageFromArray(mask.astype(np.uint8))
    roi.CopyInformation(image)
    return image, roi


def _stats(image, region):
    values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(region) > 0]
    return values.mean(), values.std()


def test_zscore_within_roi_and_body(phantom):
    image, roi = phantom
    mean, sd = _stats(normalise(image, roi, "zscore_roi"), roi)
    assert mean == pytest.approx(0.0, abs=1e-4) and sd == pytest.approx(1.0, rel=1e-4)
    body = body_mask(image)
    mean, sd = _stats(normalise(image, roi, "zscore_body"), body)
    assert mean == pytest.approx(0.0, abs=1e-4) and sd == pytest.approx(1.0, rel=1e-4)
    # the body is the phantom's ellipse (88 x 70 mm semi-axes): pi * 44 * 35 pixels per slice
    per_slice = sitk.GetArrayViewFromImage(body).sum(axis=(1, 2))
    np.testing.assert_allclose(per_slice, np.pi * 44 * 35, rtol=0.03)
    assert normalise(image, roi, "none") is image


def test_flat_region_and_unknown_method_are_named(phantom):
    image, roi = phantom
    flat = sitk.Image(image.GetSize(), sitk.sitkFloat32)
    flat.CopyInformation(image)
    with pytest.raises(ImagingError, match="normalisation zscore_roi: the region has .* no intensity spread"):
        normalise(flat, roi, "zscore_roi")
    with pytest.raises(ValueError, match="expected one of .*, got 'minmax'"):
        normalise(image, roi, "minmax")


@pytest.mark.parametrize("scale, offset", [(3.0, 100.0), (0.2, -50.0)])
def test_zscore_and_bin_count_make_features_scale_free(phantom, scale, offset):
    """A linear change of MR intensities (another scanner gain/offset) leaves the features
    unchanged after ROI z-scoring with a fixed bin count; with a fixed bin width it does not."""
    image, roi = phantom
    other = image * scale + offset
    extractor = rad.make_extractor(SETTINGS)
    a = rad.extract_features(extractor, normalise(image, roi, "zscore_roi"), roi)
    b = rad.extract_features(extractor, normalise(other, roi, "zscore_roi"), roi)
    texture = [k for k in a if "_glcm_" in k or "_glszm_" in k]
    np.testing.assert_allclose([b[k] for k in texture], [a[k] for k in texture], rtol=1e-4, atol=1e-6)
    width = rad.make_extractor({**SETTINGS, "bin_count": None})
    c = rad.extract_features(width, image, roi)
    d = rad.extract_features(width, other, roi)
    assert not np.allclose([c[k] for k in texture], [d[k] for k in texture], rtol=1e-3)


def test_n4_reduces_a_smooth_bias_field(phantom):
    """A multiplicative left-right bias (0.7 to 1.3) on the phantom: N4 brings the soft-tissue
    intensities of both sides closer together."""
    image, _ = phantom
    x = np.linspace(-1, 1, image.GetSize()[0])
    bias = (1.0 + 0.3 * x)[None, None, :].astype(np.float32)
    biased = sitk.GetImageFromArray(sitk.GetArrayFromImage(image) * bias)
    biased.CopyInformation(image)
    corrected = n4_correct(biased)
    tissue = np.abs(sitk.GetArrayFromImage(image) - 1140.0) < 30  # 40 HU soft tissue

    def side_ratio(img):
        arr = sitk.GetArrayFromImage(img)
        left = tissue.copy()
        left[..., 48:] = False
        right = tissue.copy()
        right[..., :48] = False
        return arr[right].mean() / arr[left].mean()

    before, after = side_ratio(biased), side_ratio(corrected)
    assert before > 1.2
    assert abs(after - 1.0) < 0.5 * abs(before - 1.0)


def test_bin_count_setting():
    settings = rad.pyradiomics_settings(SETTINGS)
    assert settings["binCount"] == 32 and "binWidth" not in settings
    assert rad.pyradiomics_settings({**SETTINGS, "bin_count": None})["binWidth"] == 25.0
