"""Reading DICOM/NIfTI images and masks: geometry, ordering, and named errors."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import numpy.testing as npt
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from pmed.demo import ct
from pmed.imaging.io import (
    ImagingError,
    check_geometry,
    read_dicom_series,
    read_image,
    read_mask,
)

SEED = 7


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, Path, dict]:
    """One synthetic CT series and its mask (pmed.demo.ct)."""
    raw = tmp_path_factory.mktemp("raw")
    scan = {"person_id": 1, "scan_date": dt.date(2022, 2, 2), "timepoint": "baseline",
            "volume_ml": 15.0, "heterogeneity": 0.5, "irregularity": 0.5,
            "patient_name": "A^B", "patient_mrn": "M1", "birth_date": dt.date(1960, 1, 1)}
    row = ct.write_imaging_study(raw, pd.DataFrame([scan]), seed=SEED).iloc[0]
    return raw / row.local_path, raw / row.mask_path, scan


def _copy(folder: Path, tmp_path: Path) -> Path:
    dest = tmp_path / folder.name
    shutil.copytree(folder, dest)
    return dest


def test_reads_known_volume(series):
    """Geometry and HU equal the volume ct.py rendered (sorted by position, not name)."""
    folder, _, scan = series
    image = read_dicom_series(folder)
    assert image.GetSize() == (96, 96, 40)
    npt.assert_allclose(image.GetSpacing(), (2.0, 2.0, 2.5))
    npt.assert_allclose(image.GetOrigin(), (-95.0, -95.0, -50.0))
    npt.assert_allclose(image.GetDirection(), np.eye(3).ravel())
    hu, _ = ct._render(scan, SEED)
    npt.assert_array_equal(sitk.GetArrayFromImage(image), np.clip(np.rint(hu), -1024, 3071))


def test_oblique_orientation_and_reversed_normal(series, tmp_path):
    """A series with columns flipped (ImageOrientationPatient 1,0,0,0,-1,0): the normal is
    -z, so slices sort from high to low z and the direction matrix carries the flip."""
    folder = _copy(series[0], tmp_path)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]
        ds.save_as(f)
    image = read_dicom_series(folder)
    npt.assert_allclose(image.GetDirection(), [1, 0, 0, 0, -1, 0, 0, 0, -1])
    npt.assert_allclose(image.GetOrigin()[2], -50.0 + 2.5 * 39)  # first slice = highest z
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    gdcm = reader.Execute()
    npt.assert_allclose(image.GetOrigin(), gdcm.GetOrigin())
    npt.assert_allclose(image.GetDirection(), gdcm.GetDirection())
    npt.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(gdcm))


def test_rescale_per_slice(series, tmp_path):
    """RescaleSlope/Intercept are applied per slice."""
    folder = _copy(series[0], tmp_path)
    f = folder / "0001.dcm"  # top slice (z index 39)
    ds = pydicom.dcmread(f)
    stored = ds.pixel_array.astype(np.int64)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -2048
    ds.PixelData = np.clip((stored - 1024 + 2048) // 2, 0, 65535).astype("<u2").tobytes()
    ds.save_as(f)
    image = sitk.GetArrayFromImage(read_dicom_series(folder))
    expected = np.clip((stored - 1024 + 2048) // 2, 0, 65535) * 2 - 2048
    npt.assert_array_equal(image[39], expected)


def test_corrupt_file_is_named(series, tmp_path):
    folder = _copy(series[0], tmp_path)
    bad = folder / "0007.dcm"
    bad.write_bytes(b"not a dicom file at all")
    with pytest.raises(ImagingError, match="0007.dcm"):
        read_dicom_series(folder)


def test_truncated_pixel_data_is_named(series, tmp_path):
    folder = _copy(series[0], tmp_path)
    bad = folder / "0012.dcm"
    bad.write_bytes(bad.read_bytes()[:-5000])
    with pytest.raises(ImagingError, match="0012.dcm"):
        read_dicom_series(folder)


def test_duplicate_and_missing_slices(series, tmp_path):
    folder = _copy(series[0], tmp_path)
    shutil.copy(folder / "0003.dcm", folder / "0003b.dcm")
    with pytest.raises(ImagingError, match="duplicate slice position"):
        read_dicom_series(folder)
    (folder / "0003b.dcm").unlink()
    (folder / "0010.dcm").unlink()
    with pytest.raises(ImagingError, match="unevenly spaced"):
        read_dicom_series(folder)


def test_empty_and_missing_folder(tmp_path):
    with pytest.raises(ImagingError, match="no DICOM files"):
        read_dicom_series(tmp_path)
    with pytest.raises(ImagingError, match="not found"):
        read_image(tmp_path / "nowhere.nii.gz")


def test_nifti_image_and_mask_geometry(series, tmp_path):
    folder, mask_path, _ = series
    image = read_dicom_series(folder)
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    nifti = read_image(tmp_path / "ct.nii.gz")
    mask = read_mask(mask_path)
    check_geometry(nifti, mask, "ct.nii.gz", mask_path.name)  # no error
    npt.assert_allclose(sitk.GetArrayFromImage(nifti), sitk.GetArrayFromImage(image))


def test_mask_geometry_mismatch_is_named(series, tmp_path):
    folder, mask_path, _ = series
    image = read_dicom_series(folder)
    mask = read_mask(mask_path)
    shifted = sitk.Image(mask)
    shifted.SetOrigin((-95.0, -95.0, -47.5))
    with pytest.raises(ImagingError, match=r"bad_mask.nii.gz: mask origin .* does not match"):
        check_geometry(image, shifted, str(folder), "bad_mask.nii.gz")
    small = sitk.RegionOfInterest(mask, [96, 96, 39], [0, 0, 0])
    with pytest.raises(ImagingError, match="mask size"):
        check_geometry(image, small, str(folder), "small.nii.gz")


def test_empty_and_corrupt_mask_are_named(series, tmp_path):
    mask = read_mask(series[1])
    empty = sitk.Image(mask.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(mask)
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    with pytest.raises(ImagingError, match="empty.nii.gz: mask is empty"):
        read_mask(tmp_path / "empty.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ImagingError, match="broken.nii.gz: unreadable NIfTI"):
        read_mask(tmp_path / "broken.nii.gz")
