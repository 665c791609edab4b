"""Reading DICOM/NIfTI images and masks: geometry, ordering, and named errors."""

from __future__ import annotations

import datetime as dt
import re
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
    META_KEYS,
    MR_IMAGE_STORAGE,
    ImagingError,
    SeriesChecks,
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
    (folder / "0010.dcm").unlink()  # instance 10 = z index 30; neighbours 0009 and 0011
    expected = (f"{folder}: 1 missing slice(s) between 0011.dcm and 0009.dcm "
                f"(gap 5.000 mm, slice spacing 2.500 mm)")
    with pytest.raises(ImagingError, match=f"^{re.escape(expected)}$"):
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


def _edit(folder: Path, change) -> None:
    """Apply ``change(ds, z_index)`` to every slice file of ``folder`` and save it."""
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        change(ds, int(round((float(ds.ImagePositionPatient[2]) + 50.0) / 2.5)))
        ds.save_as(f)


def _exact(message: str) -> str:
    return f"^{re.escape(message)}$"


def test_non_uniform_spacing_and_tolerance(series, tmp_path):
    """A slice 0.5 mm off its place is refused; 0.02 mm passes the default tolerance
    (1 % of 2.5 mm) but not a stricter one from params."""
    folder = _copy(series[0], tmp_path)
    f = folder / "0021.dcm"  # z index 19
    ds = pydicom.dcmread(f)
    ds.ImagePositionPatient = [-95.0, -95.0, -50.0 + 2.5 * 19 + 0.02]
    ds.save_as(f)
    read_dicom_series(folder)  # within tolerance
    strict = SeriesChecks.from_params({"spacing_tolerance": 0.001})
    with pytest.raises(ImagingError, match=_exact(
            f"{folder}: non-uniform slice spacing (gaps 2.480-2.520 mm, tolerance 0.001 x "
            f"median 2.500 mm)")):
        read_dicom_series(folder, strict)
    ds.ImagePositionPatient = [-95.0, -95.0, -50.0 + 2.5 * 19 + 0.5]
    ds.save_as(f)
    with pytest.raises(ImagingError, match=_exact(
            f"{folder}: non-uniform slice spacing (gaps 2.000-3.000 mm, tolerance 0.01 x "
            f"median 2.500 mm)")):
        read_dicom_series(folder)


def test_unknown_check_key_is_named():
    with pytest.raises(KeyError, match=r"imaging_features.dicom: unknown key\(s\) \['gap'\]"):
        SeriesChecks.from_params({"gap": 1.0})


def test_gantry_tilt_refused(series, tmp_path):
    """Slice positions shifted along y by tan(10 deg) x z (a tilted gantry with axial
    orientation kept): refused with the angle, not read as an orthogonal volume."""
    folder = _copy(series[0], tmp_path)
    shift = np.tan(np.radians(10.0)) * 2.5

    def tilt(ds, k):
        ds.ImagePositionPatient = [-95.0, -95.0 + shift * k, -50.0 + 2.5 * k]

    _edit(folder, tilt)
    with pytest.raises(ImagingError, match=_exact(
            f"{folder}: gantry tilt of 10.00 degrees (slice positions not along the slice "
            f"normal; tolerance 0.1 degrees): refused, a tilted series needs a shear correction")):
        read_dicom_series(folder)


def test_mixed_sop_classes_and_series_refused(series, tmp_path):
    folder = _copy(series[0], tmp_path)
    f = folder / "0005.dcm"
    ds = pydicom.dcmread(f)
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.save_as(f)
    with pytest.raises(ImagingError, match=_exact(
            f"{folder}: mixed SOP classes in one series folder (2 different SOPClassUID "
            f"values); expected one SOPClassUID")):
        read_dicom_series(folder)
    shutil.rmtree(folder)
    folder = _copy(series[0], tmp_path)
    ds = pydicom.dcmread(folder / "0005.dcm")
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.save_as(folder / "0005.dcm")
    with pytest.raises(ImagingError, match=_exact(
            f"{folder}: mixed series in one series folder (2 different SeriesInstanceUID "
            f"values); expected one SeriesInstanceUID")):
        read_dicom_series(folder)


def test_other_sop_class_and_multiframe_refused(series, tmp_path):
    folder = _copy(series[0], tmp_path)
    f = folder / "0002.dcm"
    ds = pydicom.dcmread(f)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    ds.save_as(f)
    with pytest.raises(ImagingError, match=_exact(
            f"{f}: SOP class 1.2.840.10008.5.1.4.1.1.7 is not CT or MR Image Storage")):
        read_dicom_series(folder)
    ds.SOPClassUID = pydicom.uid.CTImageStorage
    ds.NumberOfFrames = 2
    ds.save_as(f)
    with pytest.raises(ImagingError, match=_exact(
            f"{f}: multi-frame file (2 frames); expected one slice per file")):
        read_dicom_series(folder)


@pytest.mark.parametrize("syntax", [pydicom.uid.RLELossless, pydicom.uid.JPEG2000Lossless,
                                    pydicom.uid.DeflatedExplicitVRLittleEndian])
def test_compressed_transfer_syntaxes(series, tmp_path, syntax):
    """Lossless compressed series decode (pydicom handlers, pylibjpeg) to the same HU."""
    folder = _copy(series[0], tmp_path)
    reference = sitk.GetArrayFromImage(read_dicom_series(series[0]))
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        if syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax, encoding_plugin="pylibjpeg" if "4.90" in syntax else "")
        ds.save_as(f)
    assert pydicom.dcmread(folder / "0001.dcm").file_meta.TransferSyntaxUID == syntax
    image = read_dicom_series(folder)
    npt.assert_array_equal(sitk.GetArrayFromImage(image), reference)


def test_undecodable_pixel_data_is_named(series, tmp_path):
    """JPEG 2000 declared but the fragment is garbage: the error names file and syntax."""
    folder = _copy(series[0], tmp_path)
    f = folder / "0008.dcm"
    ds = pydicom.dcmread(f)
    ds.compress(pydicom.uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds.save_as(f)
    with pytest.raises(ImagingError, match=f"^{re.escape(str(f))}: cannot decode pixel data "
                                           f"JPEG 2000 Image Compression \\(Lossless Only\\) \\("):
        read_dicom_series(folder)


def test_series_identity_in_metadata(series):
    folder = series[0]
    image = read_dicom_series(folder)
    first = pydicom.dcmread(folder / "0001.dcm")
    assert image.GetMetaData(META_KEYS["modality"]) == "CT"
    assert image.GetMetaData(META_KEYS["series_uid"]) == first.SeriesInstanceUID
    assert image.GetMetaData(META_KEYS["frame_of_reference_uid"]) == first.FrameOfReferenceUID


def test_mr_series_is_read_with_its_modality(series, tmp_path):
    """An MR Image Storage series (no rescale: arbitrary units) is read with its geometry
    and modality "MR" in the metadata; its values are the stored ones."""
    folder = _copy(series[0], tmp_path)

    def to_mr(ds, k):
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        ds.Modality = "MR"
        for key in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
            del ds[key]

    _edit(folder, to_mr)
    image = read_dicom_series(folder)
    ct_image = read_dicom_series(series[0])
    assert image.GetMetaData(META_KEYS["modality"]) == "MR"
    npt.assert_allclose(image.GetOrigin(), ct_image.GetOrigin())
    npt.assert_allclose(image.GetSpacing(), ct_image.GetSpacing())
    npt.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ct_image) + 1024)
