"""Read CT images (DICOM series or NIfTI) and tumour masks; check that they share geometry.

Images are returned as SimpleITK images in Hounsfield units (float32) with spacing, origin
and direction in LPS patient coordinates (mm), numpy order (z, y, x) for their arrays.
Every failure raises :class:`ImagingError` naming the file or folder at fault.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit / explicit VR LE
GEOMETRY_TOLERANCE_MM = 1e-3  # NIfTI stores geometry as float32: allow rounding


class ImagingError(ValueError):
    """An image or mask that cannot be used; the message names the file or folder."""


def read_image(path: Path) -> sitk.Image:
    """A CT image in HU from a DICOM series folder or a NIfTI file (``.nii``/``.nii.gz``)."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
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


def read_dicom_series(folder: Path) -> sitk.Image:
    """One axial CT series from a folder of single-frame DICOM files, in HU.

    Slices are ordered by ImagePositionPatient projected on the slice normal (the cross
    product of the two ImageOrientationPatient directions), never by file name or
    InstanceNumber; stored values are rescaled with each slice's RescaleSlope/Intercept.

    Raises
    ------
    ImagingError
        Folder empty or missing; a file that is not DICOM or has no pixel data; several
        series; slices differing in orientation, size or pixel spacing; duplicate or
        unevenly spaced slice positions. The message names the folder or file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImagingError(f"{folder}: DICOM series folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        raise ImagingError(f"{folder}: no DICOM files in the series folder")
    slices = [_read_slice(f) for f in files]
    first_file, first = files[0], slices[0]
    for f, ds in zip(files, slices, strict=True):
        for key in ("SeriesInstanceUID", "Rows", "Columns"):
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
    gaps = np.diff(along[order])
    if len(slices) > 1:
        if np.any(gaps < 1e-3):
            dup = files[order[int(np.argmin(gaps)) + 1]]
            raise ImagingError(f"{dup}: duplicate slice position in {folder}")
        if np.ptp(gaps) > 1e-2 * max(1.0, float(np.median(gaps))):
            raise ImagingError(
                f"{folder}: unevenly spaced slices (gaps {gaps.min():.3f}-{gaps.max():.3f} mm)"
            )
    volume = np.stack([_hu(files[i], slices[i]) for i in order]).astype(np.float32)
    row_spacing, col_spacing = _floats(first_file, first, "PixelSpacing")
    slice_spacing = float(np.mean(gaps)) if len(slices) > 1 else _slice_thickness(first)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((float(col_spacing), float(row_spacing), slice_spacing))
    image.SetOrigin(tuple(float(v) for v in positions[order[0]]))
    image.SetDirection(tuple(np.column_stack([row_dir, col_dir, normal]).ravel().tolist()))
    return image


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
    """A CT slice with pixel data; ImagingError naming ``path`` otherwise."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # pydicom raises several types for broken files
        raise ImagingError(f"{path}: not a readable DICOM file ({_first_line(err)})") from err
    if "PixelData" not in ds:
        raise ImagingError(f"{path}: DICOM file has no pixel data")
    sop_class = ds.get("SOPClassUID")
    if sop_class is not None and sop_class != CT_IMAGE_STORAGE:
        raise ImagingError(f"{path}: SOP class {sop_class} is not CT Image Storage")
    return ds


def _floats(path: Path, ds: pydicom.Dataset, keyword: str) -> np.ndarray:
    """A required numeric DICOM attribute as a float array."""
    value = ds.get(keyword)
    if value is None:
        raise ImagingError(f"{path}: missing DICOM attribute {keyword}")
    return np.atleast_1d(np.asarray(value, dtype=float))


def _hu(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """Pixel values of one slice in HU, shape (rows, cols)."""
    try:
        stored = _native_pixels(ds)
        if stored is None:
            stored = ds.pixel_array
    except Exception as err:  # truncated pixel data, unsupported compression, ...
        raise ImagingError(f"{path}: cannot decode pixel data ({_first_line(err)})") from err
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
