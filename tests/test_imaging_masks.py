"""Tumour masks from DICOM SEG and RTSTRUCT: same mask as the NIfTI route, named errors."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from pmed import config
from pmed.demo import ct, ct_masks
from pmed.imaging import radiomics as rad
from pmed.imaging.io import ImagingError, read_dicom_series, read_nifti
from pmed.imaging.masks import MaskChoice, read_roi_mask

SEED = 11


def _scan(person_id: int, volume_ml: float, irregularity: float) -> dict:
    return {"person_id": person_id, "scan_date": dt.date(2022, 3, 1), "timepoint": "baseline",
            "volume_ml": volume_ml, "heterogeneity": 0.6, "irregularity": irregularity,
            "patient_name": "A^B", "patient_mrn": f"M{person_id}", "birth_date": dt.date(1960, 1, 1)}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, list[dict], pd.DataFrame]:
    """Four CT series (small/large, smooth/irregular tumours) with NIfTI, SEG and RTSTRUCT."""
    raw = tmp_path_factory.mktemp("raw")
    scans = [_scan(1, 0.4, 0.0), _scan(2, 15.0, 1.0), _scan(3, 60.0, 0.5), _scan(4, 150.0, 0.9)]
    series = ct.write_imaging_study(raw, pd.DataFrame(scans), seed=SEED)
    for scan, row in zip(scans, series.itertuples(), strict=True):
        _, mask = ct._render(scan, SEED)
        ct_masks.write_seg(raw / f"{row.image_series_uid}.seg.dcm", mask, scan, SEED)
        ct_masks.write_rtstruct(raw / f"{row.image_series_uid}.rt.dcm", mask, scan, SEED)
    return raw, scans, series


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(bool)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def _exact(message: str) -> str:
    return f"^{re.escape(message)}$"


def test_three_routes_give_the_same_mask(study):
    """SEG (frames on the CT grid) and RTSTRUCT (marching-squares contours rasterised at pixel
    centres, even-odd) give back the NIfTI mask voxel for voxel, for every tumour."""
    raw, _, series = study
    for row in series.itertuples():
        image = read_dicom_series(raw / row.local_path)
        nifti = _array(read_roi_mask(raw / row.mask_path, image, "ct"))
        seg = _array(read_roi_mask(raw / f"{row.image_series_uid}.seg.dcm", image, "ct"))
        rt = _array(read_roi_mask(raw / f"{row.image_series_uid}.rt.dcm", image, "ct"))
        assert nifti.sum() > 0
        np.testing.assert_array_equal(seg, nifti)
        np.testing.assert_array_equal(rt, nifti)


def test_identical_masks_give_identical_features(study):
    raw, _, series = study
    row = series.iloc[2]
    settings = config.load_params()["imaging_features"]["radiomics"]
    extractor = rad.make_extractor(settings)
    image = read_dicom_series(raw / row.local_path)
    features = [
        rad.extract_features(extractor, image, read_roi_mask(raw / name, image, "ct"))
        for name in (row.mask_path, f"{row.image_series_uid}.seg.dcm",
                     f"{row.image_series_uid}.rt.dcm")
    ]
    assert len(features[0]) > 90
    assert features[1] == features[0]
    assert features[2] == features[0]


def test_holes_and_several_contours_per_slice(study, tmp_path):
    """A ring (outer contour + hole) and a separate blob on the same slices."""
    raw, scans, series = study
    image = read_dicom_series(raw / series.local_path.iloc[0])
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in (ct.N_SLICES, ct.N_ROWS, ct.N_COLS)),
                             indexing="ij")
    r2 = (yy - 40) ** 2 + (xx - 30) ** 2
    mask = (r2 <= 12**2) & (r2 > 5**2) & (zz >= 10) & (zz < 14)
    mask |= ((yy - 60) ** 2 + (xx - 70) ** 2 <= 4**2) & (zz >= 11) & (zz < 13)
    assert len(ct_masks.slice_contours(mask[11])) == 3  # outer, hole, blob
    ct_masks.write_rtstruct(tmp_path / "ring.dcm", mask, scans[0], SEED)
    np.testing.assert_array_equal(_array(read_roi_mask(tmp_path / "ring.dcm", image, "ct")), mask)


def _sphere(centre_mm, radius_mm, size, origin, spacing) -> np.ndarray:
    """Voxels (z, y, x) whose centre lies in the sphere; size, origin, spacing as (x, y, z)."""
    axes = [origin[i] + spacing[i] * np.arange(size[i]) for i in range(3)]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return (xx - centre_mm[0]) ** 2 + (yy - centre_mm[1]) ** 2 + (zz - centre_mm[2]) ** 2 <= radius_mm**2


@pytest.mark.parametrize("radius_mm", [8.0, 15.0, 25.0])
def test_rasterised_circles_agree_with_the_sphere(study, tmp_path, radius_mm):
    """Contours drawn as 72-gon circles (as a planning system stores them), not on pixel
    edges: the rasterised ROI agrees with the voxelised sphere (Dice >= 0.98)."""
    raw, scans, series = study
    image = read_dicom_series(raw / series.local_path.iloc[0])
    centre = (-30.3, 4.1, 0.0)
    truth = _sphere(centre, radius_mm, image.GetSize(), image.GetOrigin(), image.GetSpacing())
    ct_masks.write_rtstruct(tmp_path / "s.dcm", truth, scans[0], SEED)
    ds = pydicom.dcmread(tmp_path / "s.dcm")
    items = []
    angles = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    for k in range(truth.shape[0]):
        z = ct.ORIGIN_MM[2] + ct.SLICE_THICKNESS_MM * k
        if abs(z - centre[2]) >= radius_mm:
            continue
        r = np.sqrt(radius_mm**2 - (z - centre[2]) ** 2)
        item = pydicom.Dataset()
        item.ContourGeometricType = "CLOSED_PLANAR"
        pts = np.column_stack([centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles),
                               np.full(72, z)])
        item.NumberOfContourPoints = 72
        item.ContourData = [f"{v:.2f}" for v in pts.ravel()]
        items.append(item)
    ds.ROIContourSequence[0].ContourSequence = pydicom.Sequence(items)
    ds.save_as(tmp_path / "s.dcm")
    mask = _array(read_roi_mask(tmp_path / "s.dcm", image, "ct"))
    assert _dice(mask, truth) >= 0.98
    assert not np.array_equal(mask, truth) or radius_mm < 10  # rasterisation does differ


def test_seg_on_a_finer_grid_is_resampled(study, tmp_path):
    """A SEG stored at 1 mm x 1 mm x 1.25 mm (same frame of reference, grid offset by
    a quarter voxel) is resampled by nearest neighbour onto the 2 x 2 x 2.5 mm CT grid: Dice >= 0.97 with the sphere voxelised on that grid."""
    raw, scans, series = study
    image = read_dicom_series(raw / series.local_path.iloc[0])
    centre, radius = (-30.3, 4.1, 0.0), 20.0
    fine_origin = (ct.ORIGIN_MM[0] - 0.25, ct.ORIGIN_MM[1] - 0.25, ct.ORIGIN_MM[2] - 0.3)
    fine = _sphere(centre, radius, (192, 192, 80), fine_origin, (1.0, 1.0, 1.25))
    ct_masks.write_seg(tmp_path / "fine.dcm", np.zeros((ct.N_SLICES, 1, 1), bool) | True,
                       scans[0], SEED)  # a valid object to edit
    ds = pydicom.dcmread(tmp_path / "fine.dcm")
    slices = [k for k in range(fine.shape[0]) if fine[k].any()]
    ds.Rows = ds.Columns = 192
    ds.NumberOfFrames = len(slices)
    ds.PixelData = pydicom.pixels.pack_bits(fine[slices].astype(np.uint8))
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.PixelSpacing, measures.SpacingBetweenSlices = [1.0, 1.0], 1.25
    template = ds.PerFrameFunctionalGroupsSequence[0]
    groups = []
    for k in slices:
        group = pydicom.Dataset()
        group.update(template)
        group.PlanePositionSequence = pydicom.Sequence([pydicom.Dataset()])
        group.PlanePositionSequence[0].ImagePositionPatient = [fine_origin[0], fine_origin[1],
                                                               fine_origin[2] + 1.25 * k]
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence(groups)
    ds.save_as(tmp_path / "fine.dcm")
    truth = _sphere(centre, radius, image.GetSize(), image.GetOrigin(), image.GetSpacing())
    mask = _array(read_roi_mask(tmp_path / "fine.dcm", image, "ct"))
    # a boundary shift of up to 0.25-0.3 mm on a 20 mm sphere costs about 3 x E|shift . n| / r
    # ~ 2-3 % Dice: resampling is close to, but not, the mask on the CT grid
    assert 0.97 <= _dice(mask, truth) < 1.0


def test_fractional_seg_threshold(study, tmp_path):
    raw, scans, series = study
    row = series.iloc[1]
    image = read_dicom_series(raw / row.local_path)
    _, mask = ct._render(scans[1], SEED)
    rng = np.random.default_rng(3)
    value = np.where(mask, rng.uniform(0.5, 1.0, mask.shape), 0.0)
    weak = mask & (rng.random(mask.shape) < 0.3)
    value[weak] = 0.4  # below the 0.5 threshold
    ct_masks.write_seg(tmp_path / "frac.dcm", mask, scans[1], SEED, fractional=value)
    assert pydicom.dcmread(tmp_path / "frac.dcm").SegmentationType == "FRACTIONAL"
    got = _array(read_roi_mask(tmp_path / "frac.dcm", image, "ct"))
    np.testing.assert_array_equal(got, mask & ~weak)
    lax = MaskChoice.from_params({"fractional_threshold": 0.3})
    np.testing.assert_array_equal(_array(read_roi_mask(tmp_path / "frac.dcm", image, "ct", lax)), mask)


def test_reference_errors_name_the_file(study, tmp_path):
    raw, _, series = study
    row, other = series.iloc[0], series.iloc[1]
    image = read_dicom_series(raw / row.local_path)
    other_seg = raw / f"{other.image_series_uid}.seg.dcm"
    frame = image.GetMetaData("0020|0052")
    other_frame = pydicom.dcmread(other_seg).FrameOfReferenceUID
    with pytest.raises(ImagingError, match=_exact(
            f"{other_seg}: FrameOfReferenceUID {other_frame} differs from the image's {frame}")):
        read_roi_mask(other_seg, image, "ct")
    ds = pydicom.dcmread(other_seg)
    ds.FrameOfReferenceUID = frame
    ds.save_as(tmp_path / "wrong_series.dcm")
    with pytest.raises(ImagingError, match=_exact(
            f"{tmp_path / 'wrong_series.dcm'}: references series {other.image_series_uid}; "
            f"expected the image series {row.image_series_uid}")):
        read_roi_mask(tmp_path / "wrong_series.dcm", image, "ct")
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    nifti = read_nifti(tmp_path / "ct.nii.gz")
    seg = raw / f"{row.image_series_uid}.seg.dcm"
    with pytest.raises(ImagingError, match=_exact(
            f"{seg}: a DICOM SEG needs its image as a DICOM series (frame of reference); "
            f"the image has none")):
        read_roi_mask(seg, nifti, "ct.nii.gz")


def test_structure_choice_errors(study, tmp_path):
    raw, _, series = study
    row = series.iloc[0]
    image = read_dicom_series(raw / row.local_path)
    seg, rt = raw / f"{row.image_series_uid}.seg.dcm", raw / f"{row.image_series_uid}.rt.dcm"
    liver = MaskChoice.from_params({"segment_label": "Liver", "roi_name_pattern": "Liver.*"})
    with pytest.raises(ImagingError, match=_exact(
            f"{seg}: 0 segments match imaging_features.masks.segment_label 'Liver' "
            f"(names: ['Tumour']); expected exactly one")):
        read_roi_mask(seg, image, "ct", liver)
    with pytest.raises(ImagingError, match=_exact(
            f"{rt}: 0 ROIs match imaging_features.masks.roi_name_pattern 'Liver.*' "
            f"(names: ['GTV-1']); expected exactly one")):
        read_roi_mask(rt, image, "ct", liver)
    ds = pydicom.dcmread(rt)
    second = pydicom.Dataset()
    second.update(ds.StructureSetROISequence[0])
    second.ROINumber, second.ROIName = 2, "GTV-2"
    ds.StructureSetROISequence.append(second)
    ds.save_as(tmp_path / "two.dcm")
    with pytest.raises(ImagingError, match=_exact(
            f"{tmp_path / 'two.dcm'}: 2 ROIs match imaging_features.masks.roi_name_pattern "
            f"'(?i)(gtv|tumou?r).*' (names: ['GTV-1', 'GTV-2']); expected exactly one")):
        read_roi_mask(tmp_path / "two.dcm", image, "ct")
    with pytest.raises(KeyError, match=r"imaging_features.masks: unknown key\(s\) \['label'\]"):
        MaskChoice.from_params({"label": "x"})


def test_malformed_contours_and_objects(study, tmp_path):
    raw, _, series = study
    row = series.iloc[0]
    image = read_dicom_series(raw / row.local_path)
    rt = raw / f"{row.image_series_uid}.rt.dcm"
    ds = pydicom.dcmread(rt)
    ds.ROIContourSequence[0].ContourSequence[0].ContourGeometricType = "OPEN_PLANAR"
    ds.save_as(tmp_path / "open.dcm")
    with pytest.raises(ImagingError, match=_exact(
            f"{tmp_path / 'open.dcm'}: contour 1 of ROI 1 is OPEN_PLANAR; expected CLOSED_PLANAR")):
        read_roi_mask(tmp_path / "open.dcm", image, "ct")
    ds = pydicom.dcmread(rt)
    data = np.asarray(ds.ROIContourSequence[0].ContourSequence[0].ContourData, float)
    data[2::3] += 1.0  # 1 mm off the slice plane
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = [f"{v:.6g}" for v in data]
    ds.save_as(tmp_path / "off.dcm")
    with pytest.raises(ImagingError, match=_exact(
            f"{tmp_path / 'off.dcm'}: contour 1 of ROI 1 does not lie on an image slice; "
            f"expected contours in the planes of the image")):
        read_roi_mask(tmp_path / "off.dcm", image, "ct")
    ds = pydicom.dcmread(rt)
    ds.ROIContourSequence[0].ContourSequence = pydicom.Sequence([])
    ds.save_as(tmp_path / "empty.dcm")
    with pytest.raises(ImagingError, match=_exact(
            f"{tmp_path / 'empty.dcm'}: the chosen structure has no voxel on the grid of image ct")):
        read_roi_mask(tmp_path / "empty.dcm", image, "ct")
    ct_slice = next((raw / row.local_path).iterdir())
    with pytest.raises(ImagingError, match=_exact(
            f"{ct_slice}: SOP class 1.2.840.10008.5.1.4.1.1.2; expected a DICOM SEG "
            f"(1.2.840.10008.5.1.4.1.1.66.4) or RTSTRUCT (1.2.840.10008.5.1.4.1.1.481.3) mask")):
        read_roi_mask(ct_slice, image, "ct")
    with pytest.raises(ImagingError, match=_exact(f"{tmp_path / 'none.dcm'}: mask file not found")):
        read_roi_mask(tmp_path / "none.dcm", image, "ct")
