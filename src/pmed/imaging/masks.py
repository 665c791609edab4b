"""Tumour masks from NIfTI, DICOM SEG or DICOM RTSTRUCT, on the grid of their image.

:func:`read_roi_mask` picks the reader from the file: ``.nii``/``.nii.gz`` (a label volume
with the image's geometry), or a DICOM file whose SOP class is Segmentation Storage
(BINARY or FRACTIONAL; the segment is chosen by its label) or RT Structure Set Storage
(closed planar contours rasterised on the image slices; the ROI is chosen by its name). A
DICOM mask must reference the image's series and frame of reference (the image is read
with :func:`pmed.imaging.io.read_dicom_series`, which keeps both in its metadata). The
result is a uint8 SimpleITK image (1 = region of interest) with exactly the image's
geometry. Every failure raises :class:`pmed.imaging.io.ImagingError` naming the mask file
and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from matplotlib.path import Path as PolygonPath

from pmed.imaging.io import (
    META_KEYS,
    NIFTI_SUFFIXES,
    ImagingError,
    check_geometry,
    read_mask,
)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SLICE_TOLERANCE = 0.01  # contour / frame off an image slice by more than this fraction: error


@dataclass(frozen=True)
class MaskChoice:
    """Which structure of a DICOM mask file is the tumour (params ``imaging_features.masks``).

    segment_label : regular expression a SEG segment's SegmentLabel must match in full.
    roi_name_pattern : regular expression an RTSTRUCT ROIName must match in full.
    fractional_threshold : FRACTIONAL SEG voxels with value / MaximumFractionalValue at or
        above this are inside.
    """

    segment_label: str = "(?i)(gtv|tumou?r|neoplasm).*"
    roi_name_pattern: str = "(?i)(gtv|tumou?r).*"
    fractional_threshold: float = 0.5

    @classmethod
    def from_params(cls, params: Mapping | None) -> MaskChoice:
        """From a params mapping; unknown keys are an error naming them."""
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise KeyError(f"imaging_features.masks: unknown key(s) {unknown}; expected {sorted(known)}")
        return cls(**params)


def read_roi_mask(path: Path, image: sitk.Image, image_name: str,
                  choice: MaskChoice | None = None) -> sitk.Image:
    """The tumour mask in ``path`` on the grid of ``image`` (uint8, 1 = inside)."""
    choice = choice or MaskChoice()
    path = Path(path)
    if path.name.endswith(NIFTI_SUFFIXES):
        mask = read_mask(path)
        check_geometry(image, mask, image_name, str(path))
        return mask
    if not path.is_file():
        raise ImagingError(f"{path}: mask file not found")
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # pydicom raises several types for broken files
        raise ImagingError(f"{path}: not a readable DICOM file and not .nii/.nii.gz "
                           f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == SEGMENTATION_STORAGE:
        array = _seg_array(path, ds, image, choice)
    elif sop_class == RT_STRUCTURE_SET_STORAGE:
        array = _rtstruct_array(path, ds, image, choice)
    else:
        raise ImagingError(f"{path}: SOP class {sop_class or '(missing)'}; expected a DICOM SEG "
                           f"({SEGMENTATION_STORAGE}) or RTSTRUCT ({RT_STRUCTURE_SET_STORAGE}) mask")
    if not array.any():
        raise ImagingError(f"{path}: the chosen structure has no voxel on the grid of image "
                           f"{image_name}")
    mask = sitk.GetImageFromArray(array.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def _check_reference(path: Path, ds: pydicom.Dataset, image: sitk.Image,
                     frame_uid: str, series_uids: set[str]) -> None:
    """The mask's frame of reference and referenced series must be the image's."""
    key = META_KEYS["frame_of_reference_uid"]
    if not image.HasMetaDataKey(key) or not image.GetMetaData(key):
        raise ImagingError(f"{path}: a DICOM {ds.get('Modality', 'mask')} needs its image as a "
                           f"DICOM series (frame of reference); the image has none")
    image_frame = image.GetMetaData(key)
    if frame_uid != image_frame:
        raise ImagingError(f"{path}: FrameOfReferenceUID {frame_uid or '(missing)'} differs from "
                           f"the image's {image_frame}")
    image_series = image.GetMetaData(META_KEYS["series_uid"])
    if image_series not in series_uids:
        listed = ", ".join(sorted(series_uids)) or "none"
        raise ImagingError(f"{path}: references series {listed}; expected the image series "
                           f"{image_series}")


def _fullmatch(path: Path, pattern: str, names: dict[int, str], what: str, key: str) -> int:
    """The number of the one structure whose name matches ``pattern`` in full."""
    hits = [n for n, name in names.items() if re.fullmatch(pattern, name)]
    if len(hits) != 1:
        raise ImagingError(f"{path}: {len(hits)} {what}s match imaging_features.masks.{key} "
                           f"{pattern!r} (names: {sorted(names.values())}); expected exactly one")
    return hits[0]


def _seg_array(path: Path, ds: pydicom.Dataset, image: sitk.Image, choice: MaskChoice) -> np.ndarray:
    """The chosen SEG segment resampled (nearest neighbour) onto ``image``, (z, y, x) bool."""
    series = {str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])}
    _check_reference(path, ds, image, str(ds.get("FrameOfReferenceUID", "")), series)
    labels = {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in ds.get("SegmentSequence", [])}
    number = _fullmatch(path, choice.segment_label, labels, "segment", "segment_label")
    seg_type = str(ds.get("SegmentationType", ""))
    if seg_type not in ("BINARY", "FRACTIONAL"):
        raise ImagingError(f"{path}: SegmentationType {seg_type or '(missing)'}; expected BINARY "
                           f"or FRACTIONAL")
    try:
        frames = ds.pixel_array.reshape(int(ds.get("NumberOfFrames", 1)), ds.Rows, ds.Columns)
    except Exception as err:  # truncated or undecodable pixel data
        raise ImagingError(f"{path}: cannot decode segmentation frames "
                           f"({str(err).splitlines()[0]})") from err
    if seg_type == "FRACTIONAL":
        inside = frames / float(ds.MaximumFractionalValue) >= choice.fractional_threshold
    else:
        inside = frames > 0
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    positions, orientation, spacing = [], None, None
    keep = []
    for i, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        seg_id = _group_item(group, shared, "SegmentIdentificationSequence", path)
        if int(seg_id.ReferencedSegmentNumber) != number:
            continue
        keep.append(i)
        positions.append(np.asarray(
            _group_item(group, shared, "PlanePositionSequence", path).ImagePositionPatient, float))
        iop = np.asarray(_group_item(group, shared, "PlaneOrientationSequence",
                                     path).ImageOrientationPatient, float)
        measures = _group_item(group, shared, "PixelMeasuresSequence", path)
        if orientation is None:
            orientation, spacing, between = iop, np.asarray(measures.PixelSpacing, float), measures
        elif not np.allclose(iop, orientation, atol=1e-4):
            raise ImagingError(f"{path}: frames of segment {number} differ in orientation; "
                               f"expected parallel frames")
    if not keep:
        raise ImagingError(f"{path}: segment {number} ({labels[number]!r}) has no frame")
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.array(positions) @ normal
    step = float(between.get("SpacingBetweenSlices") or between.get("SliceThickness")
                 or image.GetSpacing()[2])
    index = (along - along.min()) / step
    if np.any(np.abs(index - np.rint(index)) > SLICE_TOLERANCE):
        raise ImagingError(f"{path}: frames of segment {number} are not {step:g} mm apart "
                           f"(SpacingBetweenSlices); expected a regular stack")
    index = np.rint(index).astype(int)
    volume = np.zeros((index.max() + 1, int(ds.Rows), int(ds.Columns)), dtype=np.uint8)
    for k, i in zip(index, keep, strict=True):
        volume[k] |= inside[i].astype(np.uint8)
    seg = sitk.GetImageFromArray(volume)
    seg.SetSpacing((float(spacing[1]), float(spacing[0]), step))
    seg.SetOrigin(tuple(float(v) for v in positions[int(np.argmin(along))]))
    seg.SetDirection(tuple(np.column_stack([orientation[:3], orientation[3:], normal]).ravel()))
    resampled = sitk.Resample(seg, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampled).astype(bool)


def _group_item(group, shared, keyword: str, path: Path):
    """Item 0 of a functional group sequence, per-frame first, then shared."""
    for source in (group, shared):
        if source is not None and keyword in source and len(source[keyword].value):
            return source[keyword].value[0]
    raise ImagingError(f"{path}: functional group {keyword} missing")


def _rtstruct_array(path: Path, ds: pydicom.Dataset, image: sitk.Image,
                    choice: MaskChoice) -> np.ndarray:
    """The chosen ROI's closed planar contours rasterised on ``image``, (z, y, x) bool.

    A pixel is inside when its centre lies inside an odd number of the ROI's contours on
    its slice (even-odd rule: a contour inside another is a hole).
    """
    rois = {int(r.ROINumber): r for r in ds.get("StructureSetROISequence", [])}
    number = _fullmatch(path, choice.roi_name_pattern,
                        {n: str(r.get("ROIName", "")) for n, r in rois.items()},
                        "ROI", "roi_name_pattern")
    series = {
        str(s.SeriesInstanceUID)
        for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        for st in f.get("RTReferencedStudySequence", [])
        for s in st.get("RTReferencedSeriesSequence", [])
    }
    _check_reference(path, ds, image, str(rois[number].get("ReferencedFrameOfReferenceUID", "")),
                     series)
    contours = next((c.get("ContourSequence", []) for c in ds.get("ROIContourSequence", [])
                     if int(c.ReferencedROINumber) == number), [])
    size = image.GetSize()
    out = np.zeros(size[::-1], dtype=bool)
    origin = np.asarray(image.GetOrigin())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    for j, contour in enumerate(contours):
        kind = str(contour.get("ContourGeometricType", ""))
        if kind != "CLOSED_PLANAR":
            raise ImagingError(f"{path}: contour {j + 1} of ROI {number} is {kind or '(untyped)'}; "
                               f"expected CLOSED_PLANAR")
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        index = ((points - origin) @ direction) / spacing  # continuous (x, y, z) indices
        k = float(np.median(index[:, 2]))
        if np.ptp(index[:, 2]) > SLICE_TOLERANCE or abs(k - round(k)) > SLICE_TOLERANCE:
            raise ImagingError(f"{path}: contour {j + 1} of ROI {number} does not lie on an "
                               f"image slice; expected contours in the planes of the image")
        k = int(round(k))
        if not 0 <= k < size[2]:
            raise ImagingError(f"{path}: contour {j + 1} of ROI {number} lies outside the image "
                               f"(slice {k} of {size[2]})")
        out[k] ^= _fill(index[:, :2], size[1], size[0])
    return out


def _fill(xy: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Pixels (rows, cols) whose centre lies inside the polygon ``xy`` (column, row indices)."""
    inside = np.zeros((rows, cols), dtype=bool)
    lo = np.clip(np.floor(xy.min(axis=0)).astype(int), 0, [cols - 1, rows - 1])
    hi = np.clip(np.ceil(xy.max(axis=0)).astype(int), 0, [cols - 1, rows - 1])
    cc, rr = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
    hit = PolygonPath(xy).contains_points(np.column_stack([cc.ravel(), rr.ravel()]))
    inside[lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = hit.reshape(cc.shape)
    return inside
