"""Synthetic CT writer (pmed.demo.ct): DICOM geometry, HU values, masks, determinism."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import numpy as np
import numpy.testing as npt
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset

from pmed.demo import ct
from pmed.imaging.io import read_dicom_series

SEED = 20261127


def _scans() -> pd.DataFrame:
    """Two persons, one with a follow-up: small, regular and large, irregular tumours."""
    return pd.DataFrame(
        {
            "person_id": [7, 7, 12],
            "scan_date": [dt.date(2021, 3, 1), dt.date(2021, 5, 10), dt.date(2022, 1, 15)],
            "timepoint": ["baseline", "followup", "baseline"],
            "volume_ml": [20.0, 8.5, 120.0],
            "heterogeneity": [0.2, 0.2, 0.9],
            "irregularity": [0.0, 0.0, 1.0],
            "patient_name": ["DOE^JANE", "DOE^JANE", "ROE^RICHARD"],
            "patient_mrn": ["MRN0007", "MRN0007", "MRN0012"],
            "birth_date": [dt.date(1950, 6, 1)] * 2 + [dt.date(1944, 2, 29)],
        }
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    raw = tmp_path_factory.mktemp("raw")
    return raw, ct.write_imaging_study(raw, _scans(), seed=SEED, workers=2)


def _sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_series_table(written):
    raw, series = written
    assert list(series.columns) == ct.SERIES_COLUMNS
    assert series["person_id"].tolist() == [7, 7, 12]
    assert series["image_series_uid"].is_unique and series["image_study_uid"].is_unique
    for row in series.itertuples():
        assert row.local_path == f"imaging/{row.image_series_uid}"
        assert row.mask_path == f"imaging/masks/{row.image_series_uid}.nii.gz"
        assert len(list((raw / row.local_path).glob("*.dcm"))) == ct.N_SLICES
        assert (raw / row.mask_path).is_file()


def test_simpleitk_reads_geometry_and_hu(written):
    """GDCM sorts by position: spacing, origin, direction, size and HU as rendered."""
    raw, series = written
    for row, scan in zip(series.itertuples(), _scans().to_dict("records"), strict=True):
        image = _sitk_series(raw / row.local_path)
        assert image.GetSize() == (ct.N_COLS, ct.N_ROWS, ct.N_SLICES)
        npt.assert_allclose(image.GetSpacing(), (2.0, 2.0, 2.5))
        npt.assert_allclose(image.GetOrigin(), ct.ORIGIN_MM)
        npt.assert_allclose(image.GetDirection(), np.eye(3).ravel())
        hu, _ = ct._render(scan, SEED)
        expected = np.clip(np.rint(hu), -1024, 3071)
        npt.assert_array_equal(sitk.GetArrayFromImage(image), expected)


def test_own_reader_matches_simpleitk(written):
    raw, series = written
    folder = raw / series["local_path"].iloc[2]
    ours, theirs = read_dicom_series(folder), _sitk_series(folder)
    assert ours.GetSize() == theirs.GetSize()
    npt.assert_allclose(ours.GetSpacing(), theirs.GetSpacing())
    npt.assert_allclose(ours.GetOrigin(), theirs.GetOrigin())
    npt.assert_allclose(ours.GetDirection(), theirs.GetDirection())
    npt.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))


def test_anatomy_hu_levels(written):
    """Air, lung, soft tissue and tumour have their nominal HU (noise SD 12 HU)."""
    raw, series = written
    image = sitk.GetArrayFromImage(read_dicom_series(raw / series["local_path"].iloc[0]))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / series["mask_path"].iloc[0]))) > 0
    assert abs(image[:, :5, :5].mean() - (-1000)) < 5  # corner: air (clipped at -1024)
    assert abs(image[20, 45:50, 70:75].mean() - (-850)) < 10  # left lung
    assert abs(image[20, 20:24, 46:50].mean() - 40) < 10  # anterior soft tissue
    eroded = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(mask.astype("u1"))))
    assert abs(image[eroded > 0].mean() - 40) < 15  # tumour core


def test_slice_order_is_superior_first(written):
    """InstanceNumber 1 is the top slice, so file order is not z order."""
    raw, series = written
    folder = raw / series["local_path"].iloc[0]
    first = pydicom.dcmread(folder / "0001.dcm")
    last = pydicom.dcmread(folder / f"{ct.N_SLICES:04d}.dcm")
    assert first.InstanceNumber == 1
    assert first.ImagePositionPatient[2] > last.ImagePositionPatient[2]
    assert first.Modality == "CT" and first.SOPClassUID == pydicom.uid.CTImageStorage
    assert first.PatientName == "DOE^JANE" and first.PatientID == "MRN0007"
    assert first.PatientBirthDate == "19500601" and first.StudyDate == "20210301"
    assert first.RescaleIntercept == -1024 and first.RescaleSlope == 1


def test_mask_geometry_and_volume(written):
    """The mask has the image geometry and exactly round(volume / voxel volume) voxels."""
    raw, series = written
    for row, scan in zip(series.itertuples(), _scans().itertuples(), strict=True):
        image = _sitk_series(raw / row.local_path)
        mask = sitk.ReadImage(str(raw / row.mask_path))
        assert mask.GetSize() == image.GetSize()
        npt.assert_allclose(mask.GetSpacing(), image.GetSpacing())
        npt.assert_allclose(mask.GetOrigin(), image.GetOrigin())
        npt.assert_allclose(mask.GetDirection(), image.GetDirection())
        n_voxels = int(sitk.GetArrayFromImage(mask).sum())
        assert abs(n_voxels * ct.VOXEL_ML - scan.volume_ml) <= ct.VOXEL_ML / 2


def test_longest_diameter_matches_sphere(written):
    """A regular tumour of 20 ml is a voxelised sphere: diameter ~ 2 r = 33.7 mm."""
    _, series = written
    r = (3 * 20_000 / (4 * np.pi)) ** (1 / 3)
    assert abs(series["longest_diameter_mm"].iloc[0] - 2 * r) < 2 * ct.PIXEL_SPACING_MM
    assert series["longest_diameter_mm"].iloc[1] < series["longest_diameter_mm"].iloc[0]


def test_followup_keeps_tumour_position(written):
    """Baseline and follow-up tumours of a person share their centre (within 2 mm)."""
    raw, series = written
    centres = [
        np.argwhere(sitk.GetArrayFromImage(sitk.ReadImage(str(raw / p)))).mean(axis=0)
        for p in series["mask_path"].iloc[:2]
    ]
    npt.assert_allclose(centres[0] * [2.5, 2, 2], centres[1] * [2.5, 2, 2], atol=2.0)


def test_same_seed_gives_identical_bytes(written, tmp_path):
    raw, series = written
    again = ct.write_imaging_study(tmp_path, _scans(), seed=SEED, workers=1)
    pd.testing.assert_frame_equal(again, series)
    files = sorted(p.relative_to(raw) for p in (raw / "imaging").rglob("*") if p.is_file())
    assert len(files) == 3 * (ct.N_SLICES + 1)
    for rel in files:
        assert (tmp_path / rel).read_bytes() == (raw / rel).read_bytes(), rel


def test_other_seed_changes_uids_and_pixels(written, tmp_path):
    raw, series = written
    other = ct.write_imaging_study(tmp_path, _scans().iloc[:1], seed=SEED + 1)
    assert other["image_series_uid"].iloc[0] != series["image_series_uid"].iloc[0]
    a = sitk.GetArrayFromImage(read_dicom_series(raw / series["local_path"].iloc[0]))
    b = sitk.GetArrayFromImage(read_dicom_series(tmp_path / other["local_path"].iloc[0]))
    assert not np.array_equal(a, b)


def test_fast_writer_equals_pydicom_save_as(written):
    """The per-series encoding cache writes what Dataset.save_as writes for the slice."""
    raw, series = written
    scan = _scans().to_dict("records")[0]
    row = series.iloc[0]
    hu, _ = ct._render(scan, SEED)
    stored = np.clip(np.rint(hu + 1024), 0, 4095).astype("<u2")
    k = ct.N_SLICES - 1  # top slice = instance 1
    template = ct._series_template(scan, SEED, row.image_study_uid, row.image_series_uid)
    ds = Dataset(template)
    uid = ct._uid(SEED, scan, f"slice {k}")
    for element in ct._slice_elements(stored[k], 1, ct.ORIGIN_MM[2] + 2.5 * k, uid):
        ds.update(element)
    ds.file_meta = FileMetaDataset(template.file_meta)
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert buffer.getvalue() == (raw / row.local_path / "0001.dcm").read_bytes()


def test_no_wall_clock_dates(written):
    """Every date/time element is the scan date, the birth date or a fixed time."""
    raw, series = written
    ds = pydicom.dcmread(raw / series["local_path"].iloc[0] / "0001.dcm")
    dates = {e.value for e in ds.iterall() if e.VR in ("DA", "DT")}
    times = {e.value for e in ds.iterall() if e.VR == "TM"}
    assert dates == {"20210301", "19500601"} and times == {"090000"}


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("volume_ml", 0.0, "volume_ml"),
        ("volume_ml", 500.0, "volume_ml"),
        ("heterogeneity", 1.5, "heterogeneity"),
        ("timepoint", "week6", "timepoint"),
    ],
)
def test_bad_input_is_named(tmp_path, column, value, message):
    scans = _scans()
    scans.loc[0, column] = value
    with pytest.raises(ValueError, match=message):
        ct.write_imaging_study(tmp_path, scans, seed=SEED)


def test_missing_column_is_named(tmp_path):
    with pytest.raises(ValueError, match="patient_mrn"):
        ct.write_imaging_study(tmp_path, _scans().drop(columns="patient_mrn"), seed=SEED)


def test_mask_formats_change_only_the_mask_file(written, tmp_path):
    """With SEG/RTSTRUCT shares the CT files are byte-identical and each mask, read through
    its own route, is the NIfTI mask voxel for voxel."""
    from pmed.imaging.masks import read_roi_mask

    raw, series = written
    scans = _scans()
    mixed = ct.write_imaging_study(tmp_path, scans, seed=SEED, mask_formats={"seg": 0.5, "rtstruct": 0.5})
    kinds = [ct.mask_format(r, SEED, (0.5, 0.5)) for r in scans.to_dict("records")]
    for row, other, kind in zip(series.itertuples(), mixed.itertuples(), kinds, strict=True):
        assert other.mask_path == f"imaging/masks/{row.image_series_uid}{ct.MASK_FORMATS[kind]}"
        for f in sorted((raw / row.local_path).iterdir()):
            assert (tmp_path / other.local_path / f.name).read_bytes() == f.read_bytes()
        image = read_dicom_series(raw / row.local_path)
        nifti = sitk.GetArrayFromImage(read_roi_mask(raw / row.mask_path, image, "ct"))
        dicom = sitk.GetArrayFromImage(read_roi_mask(tmp_path / other.mask_path, image, "ct"))
        npt.assert_array_equal(dicom, nifti)


def test_mask_format_draw_and_errors():
    """The per-series draw follows the shares over many series; bad shares are named."""
    rows = [{"person_id": i, "timepoint": "baseline", "scan_date": dt.date(2021, 1, 1)} for i in range(4000)]
    kinds = pd.Series([ct.mask_format(r, SEED, (0.25, 0.25)) for r in rows]).value_counts(normalize=True)
    npt.assert_allclose(kinds[["seg", "rtstruct", "nifti"]], [0.25, 0.25, 0.5], atol=0.03)
    with pytest.raises(ValueError, match=r"demo.mask_formats: unknown format\(s\) \['png'\]"):
        ct.write_imaging_study(Path("/nonexistent"), _scans(), SEED, mask_formats={"png": 0.1})
    with pytest.raises(ValueError, match="demo.mask_formats: shares must be >= 0 and sum to <= 1"):
        ct.write_imaging_study(Path("/nonexistent"), _scans(), SEED, mask_formats={"seg": 0.8, "rtstruct": 0.3})
