"""Read CT/MR images (DICOM series or NIfTI) and tumour masks; check that they share geometry.

Images are returned as SimpleITK images (float32; CT in Hounsfield units) with spacing,
origin and direction in LPS patient coordinates (mm), numpy order (z, y, x) for their
arrays. A DICOM series carries its identity in the image's metadata dictionary
(:data:`META_KEYS`: modality, series and frame-of-reference UIDs, slice SOP instance UIDs)
so masks stored as DICOM SEG or RTSTRUCT (:mod:`pmed.imaging.masks`) can be checked
against it. Every failure raises :class:`ImagingError` naming the file or series folder at
fault and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
IMAGE_SOP_CLASSES = {CT_IMAGE_STORAGE: "CT", MR_IMAGE_STORAGE: "MR"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit / explicit VR LE
GEOMETRY_TOLERANCE_MM = 1e-3  # NIfTI stores geometry as float32: allow rounding
# metadata keys (DICOM tag "gggg|eeee") set on images read from a DICOM series
META_KEYS = {"modality": "0008|0060", "series_uid": "0020|000e", "frame_of_reference_uid": "0020|0052"}
SOP_UIDS_KEY = "pmed|sop_instance_uids"  # backslash-joined, in slice (z index) order


class ImagingError(ValueError):
    """An image or mask that cannot be used; the message names the file or folder."""


@dataclass(frozen=True)
class SeriesChecks:
    """Tolerances of :func:`read_dicom_series` (params ``imaging_features.dicom``).

    position_tolerance_mm : two slices closer than this along the normal are duplicates.
    spacing_tolerance : largest allowed deviation of a gap between neighbouring slices from
        the median gap, as a fraction of the median gap (a larger gap is a missing slice
        when it is a whole multiple of the median, else non-uniform spacing).
    tilt_tolerance_deg : largest allowed angle between the line through the slice positions
        and the slice normal; a larger angle is gantry tilt, which is refused (a tilted
        series needs an explicit shear correction that this reader does not make).
    """

    position_tolerance_mm: float = 1e-3
    spacing_tolerance: float = 0.01
    tilt_tolerance_deg: float = 0.1

    @classmethod
    def from_params(cls, params: Mapping | None) -> SeriesChecks:
        """From a params mapping; unknown keys are an error naming them."""
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise KeyError(f"imaging_features.dicom: unknown key(s) {unknown}; expected {sorted(known)}")
        return cls(**{k: float(v) for k, v in params.items()})


def read_image(path: Path, checks: SeriesChecks | None = None) -> sitk.Image:
    """An image from a DICOM series folder or a NIfTI file (``.nii``/``.nii.gz``)."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path, checks)
    if path.name.endswith(NIFTI_SUFFIXES):
        return sitk.Cast(read_nifti(path), sitk.sitkFloat32)
    if not path.exists():
        raise ImagingError(f"{path}: image not found")
    raise ImagingError(f"{path}: expected a DICOM series folder or a .nii/.nii.gz file")


def read_nifti(path: Path) -> sitk.Image:
    """A NIfTI volume as stored (no intensity conversion)."""
    path = Path(path)
    if not path.is_file():
        raise ImagingError(f"{path}: NIfTI file not found")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ImagingError(f"{path}: unreadable NIfTI file ({_first_line(err)})") from err


def read_mask(path: Path) -> sitk.Image:
    """A binary mask (uint8, 1 = region of interest) from a NIfTI file.

    Any non-zero voxel counts as inside; an empty mask is an error.
    """
    mask = read_nifti(path)
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise ImagingError(f"{path}: mask must have one component per voxel")
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(binary).any():
        raise ImagingError(f"{path}: mask is empty (no non-zero voxel)")
    return binary


def read_dicom_series(folder: Path, checks: SeriesChecks | None = None) -> sitk.Image:
    """One CT or MR series from a folder of single-frame DICOM files.

    Slices are ordered by ImagePositionPatient projected on the slice normal (the cross
    product of the two ImageOrientationPatient directions), never by file name or
    InstanceNumber; stored values are rescaled with each slice's RescaleSlope/Intercept
    (CT: Hounsfield units). Compressed transfer syntaxes are decoded by pydicom's
    pixel-data handlers (pylibjpeg: JPEG, JPEG-LS excepted, JPEG 2000, RLE).

    Raises
    ------
    ImagingError
        Folder empty or missing; a file that is not DICOM or has no pixel data; a SOP class
        other than CT/MR Image Storage; several series or SOP classes in the folder; a
        multi-frame file; slices differing in orientation, size or pixel spacing; duplicate
        slice positions, missing slices, non-uniform spacing or gantry tilt (tolerances:
        ``checks``). The message names the folder (the series) or file and the reason.
    """
    checks = checks or SeriesChecks()
    folder = Path(folder)
    if not folder.is_dir():
        raise ImagingError(f"{folder}: DICOM series folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        raise ImagingError(f"{folder}: no DICOM files in the series folder")
    slices = [_read_slice(f) for f in files]
    first_file, first = files[0], slices[0]
    for key, what in (("SOPClassUID", "SOP classes"), ("SeriesInstanceUID", "series")):
        values = {str(ds.get(key)) for ds in slices}
        if len(values) > 1:
            raise ImagingError(f"{folder}: mixed {what} in one series folder ({len(values)} "
                               f"different {key} values); expected one {key}")
    for f, ds in zip(files, slices, strict=True):
        for key in ("Rows", "Columns"):
            if ds.get(key) != first.get(key):
                raise ImagingError(f"{f}: {key} differs from {first_file.name} in {folder}")
        for key in ("ImageOrientationPatient", "PixelSpacing"):
            if not np.allclose(_floats(f, ds, key), _floats(first_file, first, key), atol=1e-4):
                raise ImagingError(f"{f}: {key} differs from {first_file.name} in {folder}")
    orientation = _floats(first_file, first, "ImageOrientationPatient")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array(
        [_floats(f, ds, "ImagePositionPatient") for f, ds in zip(files, slices, strict=True)]
    )
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    files = [files[i] for i in order]
    slices = [slices[i] for i in order]
    positions, along = positions[order], along[order]
    slice_spacing = _check_spacing(folder, files, positions, along, normal, checks)
    if slice_spacing is None:
        slice_spacing = _slice_thickness(first)
    volume = np.stack([_pixels(f, ds) for f, ds in zip(files, slices, strict=True)])
    row_spacing, col_spacing = _floats(first_file, first, "PixelSpacing")
    image = sitk.GetImageFromArray(volume.astype(np.float32))
    image.SetSpacing((float(col_spacing), float(row_spacing), float(slice_spacing)))
    image.SetOrigin(tuple(float(v) for v in positions[0]))
    image.SetDirection(tuple(np.column_stack([row_dir, col_dir, normal]).ravel().tolist()))
    image.SetMetaData(META_KEYS["modality"], IMAGE_SOP_CLASSES[str(first.SOPClassUID)])
    image.SetMetaData(META_KEYS["series_uid"], str(first.get("SeriesInstanceUID", "")))
    image.SetMetaData(META_KEYS["frame_of_reference_uid"], str(first.get("FrameOfReferenceUID", "")))
    image.SetMetaData(SOP_UIDS_KEY, "\\".join(str(ds.get("SOPInstanceUID", "")) for ds in slices))
    return image


def _check_spacing(
    folder: Path, files: list[Path], positions: np.ndarray, along: np.ndarray,
    normal: np.ndarray, checks: SeriesChecks,
) -> float | None:
    """The slice spacing (mm) of slices sorted along ``normal``; None for one slice.

    ImagingError for duplicate positions, missing slices, non-uniform spacing or tilt.
    """
    if len(files) < 2:
        return None
    gaps = np.diff(along)
    if np.any(gaps < checks.position_tolerance_mm):
        k = int(np.argmin(gaps))
        raise ImagingError(f"{files[k + 1]}: duplicate slice position in {folder} "
                           f"(same position as {files[k].name})")
    median = float(np.median(gaps))
    deviation = np.abs(gaps - median)
    tolerance = checks.spacing_tolerance * median
    if np.any(deviation > tolerance):
        k = int(np.argmax(deviation))
        ratio = gaps[k] / median
        if ratio > 1.5 and abs(ratio - round(ratio)) * median <= tolerance:
            raise ImagingError(
                f"{folder}: {int(round(ratio)) - 1} missing slice(s) between {files[k].name} "
                f"and {files[k + 1].name} (gap {gaps[k]:.3f} mm, slice spacing {median:.3f} mm)"
            )
        raise ImagingError(
            f"{folder}: non-uniform slice spacing (gaps {gaps.min():.3f}-{gaps.max():.3f} mm, "
            f"tolerance {checks.spacing_tolerance:g} x median {median:.3f} mm)"
        )
    stack = positions[-1] - positions[0]
    cosine = float(np.clip(abs(stack @ normal) / np.linalg.norm(stack), 0.0, 1.0))
    tilt = float(np.degrees(np.arccos(cosine)))
    if tilt > checks.tilt_tolerance_deg:
        raise ImagingError(
            f"{folder}: gantry tilt of {tilt:.2f} degrees (slice positions not along the slice "
            f"normal; tolerance {checks.tilt_tolerance_deg:g} degrees): refused, a tilted series "
            f"needs a shear correction"
        )
    return float(np.mean(gaps))


def check_geometry(
    image: sitk.Image, mask: sitk.Image, image_name: str, mask_name: str,
    tolerance_mm: float = GEOMETRY_TOLERANCE_MM,
) -> None:
    """Raise :class:`ImagingError` unless ``mask`` has the size, spacing, origin and
    direction of ``image`` (within ``tolerance_mm`` mm, or 1e-4 for direction cosines)."""
    checks = [
        ("size", image.GetSize(), mask.GetSize(), 0.0),
        ("spacing", image.GetSpacing(), mask.GetSpacing(), tolerance_mm),
        ("origin", image.GetOrigin(), mask.GetOrigin(), tolerance_mm),
        ("direction", image.GetDirection(), mask.GetDirection(), 1e-4),
    ]
    for what, a, b, tol in checks:
        if not np.allclose(a, b, rtol=0.0, atol=tol):
            raise ImagingError(
                f"{mask_name}: mask {what} {_fmt(b)} does not match image {image_name} "
                f"{what} {_fmt(a)}"
            )


def _read_slice(path: Path) -> pydicom.Dataset:
    """A single-frame CT or MR slice with pixel data; ImagingError naming ``path`` otherwise."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # pydicom raises several types for broken files
        raise ImagingError(f"{path}: not a readable DICOM file ({_first_line(err)})") from err
    if "PixelData" not in ds:
        raise ImagingError(f"{path}: DICOM file has no pixel data")
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in IMAGE_SOP_CLASSES:
        raise ImagingError(f"{path}: SOP class {sop_class or '(missing)'} is not CT or MR "
                           f"Image Storage")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ImagingError(f"{path}: multi-frame file ({ds.NumberOfFrames} frames); expected "
                           f"one slice per file")
    return ds


def _floats(path: Path, ds: pydicom.Dataset, keyword: str) -> np.ndarray:
    """A required numeric DICOM attribute as a float array."""
    value = ds.get(keyword)
    if value is None:
        raise ImagingError(f"{path}: missing DICOM attribute {keyword}")
    return np.atleast_1d(np.asarray(value, dtype=float))


def _pixels(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """Rescaled pixel values of one slice (CT: HU), shape (rows, cols)."""
    try:
        stored = _native_pixels(ds)
        if stored is None:
            stored = ds.pixel_array
    except Exception as err:  # truncated pixel data, unsupported compression, ...
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        name = f" {syntax.name}" if syntax is not None else ""
        raise ImagingError(f"{path}: cannot decode pixel data{name} "
                           f"({_first_line(err)})") from err
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    return stored.astype(np.float64) * slope + intercept


def _native_pixels(ds: pydicom.Dataset) -> np.ndarray | None:
    """Uncompressed little-endian single-sample pixels without pydicom's handler machinery
    (about 10x faster per slice); None for anything else, which ``pixel_array`` decodes."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax not in _NATIVE_LITTLE_ENDIAN or ds.get("SamplesPerPixel", 1) != 1:
        return None
    if ds.get("BitsAllocated") != 16 or ds.get("BitsStored", 16) != 16:
        return None
    dtype = "<i2" if ds.get("PixelRepresentation", 0) == 1 else "<u2"
    rows, cols = int(ds.Rows), int(ds.Columns)
    data = ds.PixelData
    if len(data) < rows * cols * 2:
        raise ValueError(f"pixel data holds {len(data)} bytes, expected {rows * cols * 2}")
    return np.frombuffer(data, dtype=dtype, count=rows * cols).reshape(rows, cols)


def _slice_thickness(ds: pydicom.Dataset) -> float:
    """SliceThickness in mm (spacing of a single-slice series), 1.0 when absent."""
    return float(ds.get("SliceThickness", 1.0) or 1.0)


def _fmt(values) -> str:
    """Numbers as a short tuple string for error messages."""
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _first_line(err: Exception) -> str:
    """The first line of an exception message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
