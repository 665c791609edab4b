"""Synthetic chest CT studies (DICOM) with tumour masks (NIfTI) for the demo data set.

Each scan is a small chest-like volume in Hounsfield units: air outside the body, a body
ellipse of soft tissue (40 HU) with a subcutaneous fat ring (-100 HU), two lungs (-850 HU),
a vertebral body (350 HU) with cortical rim (800 HU), a PSF-like blur and white noise. A
lung tumour whose

- volume equals ``volume_ml`` to within one voxel (the mask holds exactly
  ``round(volume_ml / voxel volume)`` voxels),
- surface is a sphere with random lobes of relative amplitude ``0.3 * irregularity``
  (the lobe directions are fixed per person, so follow-up scans look like the baseline),
- texture is 40 HU plus a smooth Gaussian random field of SD ``80 * heterogeneity`` HU,

is placed in the right lung. The mask is the tumour, written as NIfTI with exactly the
geometry SimpleITK reads from the DICOM series.

Geometry (LPS patient coordinates, head-first supine): 96 x 96 pixels of 2.0 mm, 40 axial
slices of 2.5 mm (FOV 192 x 192 x 100 mm), ImageOrientationPatient 1\\0\\0\\0\\1\\0.
InstanceNumber 1 is the most superior slice (z decreasing with instance number, as on
scanners), so a reader must sort by ImagePositionPatient, not by file name.

Everything is a function of ``seed`` and the row: UIDs come from
``pydicom.uid.generate_uid(entropy_srcs=...)`` and no wall-clock time is written, so the
same inputs give byte-identical files.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from pmed.imaging.response import longest_axial_diameter_mm

N_ROWS = 96  # pixels along y (anterior -> posterior)
N_COLS = 96  # pixels along x (patient right -> left)
N_SLICES = 40  # axial slices
PIXEL_SPACING_MM = 2.0  # in-plane spacing, rows and columns
SLICE_THICKNESS_MM = 2.5  # slice thickness = spacing between slice centres
VOXEL_ML = PIXEL_SPACING_MM**2 * SLICE_THICKNESS_MM / 1000.0
MAX_VOLUME_ML = 200.0  # largest tumour that fits the field of view with its lobes
RESCALE_INTERCEPT = -1024.0  # stored value 0 = -1024 HU
RESCALE_SLOPE = 1.0
# origin = centre of the first voxel (x, y) and of the lowest slice (z), in mm
ORIGIN_MM = (-95.0, -95.0, -50.0)

SCAN_COLUMNS = [
    "person_id", "scan_date", "timepoint", "volume_ml", "heterogeneity", "irregularity",
    "patient_name", "patient_mrn", "birth_date",
]
SERIES_COLUMNS = [
    "person_id", "scan_date", "timepoint", "image_study_uid", "image_series_uid",
    "local_path", "mask_path", "longest_diameter_mm",
]
_TIMEPOINT_CODE = {"baseline": 0, "followup": 1}


def write_imaging_study(
    raw_dir: Path, scans: pd.DataFrame, seed: int, workers: int = 1
) -> pd.DataFrame:
    """Write one DICOM CT series and one NIfTI tumour mask per row of ``scans``.

    Parameters
    ----------
    raw_dir : Path
        Raw-data folder; series go to ``raw_dir/imaging/<series_uid>/NNNN.dcm`` and masks
        to ``raw_dir/imaging/masks/<series_uid>.nii.gz``.
    scans : DataFrame, one row per CT
        Columns ``SCAN_COLUMNS``: person_id (int), scan_date (date), timepoint
        ("baseline" | "followup"), volume_ml (true tumour volume, ml, in (0, 200]),
        heterogeneity and irregularity (0..1), patient_name, patient_mrn, birth_date
        (synthetic DICOM patient tags; birth_date a date).
    seed : int
        Master seed; with the row it fixes every voxel, UID and byte of the output.
    workers : int, default 1
        Processes writing series in parallel.

    Returns
    -------
    DataFrame, one row per series (same order as ``scans``)
        Columns ``SERIES_COLUMNS``; local_path and mask_path are relative to ``raw_dir``;
        longest_diameter_mm is the true longest axial diameter of the mask (mm).
    """
    _check_scans(scans)
    raw_dir = Path(raw_dir)
    (raw_dir / "imaging" / "masks").mkdir(parents=True, exist_ok=True)
    tasks = [(raw_dir, row, int(seed)) for row in scans[SCAN_COLUMNS].to_dict("records")]
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(_write_one, tasks, chunksize=max(1, len(tasks) // (8 * workers))))
    else:
        rows = [_write_one(task) for task in tasks]
    return pd.DataFrame(rows, columns=SERIES_COLUMNS)


def _check_scans(scans: pd.DataFrame) -> None:
    """Raise a ValueError naming the column when ``scans`` breaks the input contract."""
    missing = [c for c in SCAN_COLUMNS if c not in scans.columns]
    if missing:
        raise ValueError(f"scans: missing column(s) {missing}; expected {SCAN_COLUMNS}")
    bad_tp = sorted(set(scans["timepoint"]) - set(_TIMEPOINT_CODE))
    if bad_tp:
        raise ValueError(f"scans.timepoint: unexpected value(s) {bad_tp}; expected baseline|followup")
    vol = scans["volume_ml"].astype(float)
    if not ((vol > 0) & (vol <= MAX_VOLUME_ML)).all():
        raise ValueError(f"scans.volume_ml: values must be in (0, {MAX_VOLUME_ML}] ml")
    for col in ("heterogeneity", "irregularity"):
        v = scans[col].astype(float)
        if not ((v >= 0) & (v <= 1)).all():
            raise ValueError(f"scans.{col}: values must be in [0, 1]")
    if scans.duplicated(["person_id", "scan_date", "timepoint"]).any():
        raise ValueError("scans: (person_id, scan_date, timepoint) must be unique")


def _as_date(value) -> dt.date:
    """A date from a date, datetime or pandas Timestamp."""
    return pd.Timestamp(value).date()


def _uid(seed: int, row: dict, what: str) -> str:
    """Deterministic DICOM UID for ``what`` (study, series, frame, slice k) of a scan."""
    return generate_uid(
        entropy_srcs=[
            "pmed-demo-ct", str(seed), str(int(row["person_id"])),
            _as_date(row["scan_date"]).isoformat(), str(row["timepoint"]), what,
        ]
    )


def _grids() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates (z, y, x) in mm, each of shape (N_SLICES, N_ROWS, N_COLS)."""
    z = ORIGIN_MM[2] + SLICE_THICKNESS_MM * np.arange(N_SLICES)
    y = ORIGIN_MM[1] + PIXEL_SPACING_MM * np.arange(N_ROWS)
    x = ORIGIN_MM[0] + PIXEL_SPACING_MM * np.arange(N_COLS)
    return np.meshgrid(z, y, x, indexing="ij")


def _anatomy(zz: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Noise-free chest phantom in HU, shape (N_SLICES, N_ROWS, N_COLS)."""
    hu = np.full(zz.shape, -1000.0)
    body = (xx / 88.0) ** 2 + (yy / 70.0) ** 2 <= 1.0
    hu[body] = -100.0  # subcutaneous fat
    hu[(xx / 80.0) ** 2 + (yy / 62.0) ** 2 <= 1.0] = 40.0  # soft tissue
    # lungs narrow towards the apex (high z)
    taper = 1.0 - 0.25 * (zz - ORIGIN_MM[2]) / (SLICE_THICKNESS_MM * N_SLICES)
    for centre_x in (-38.0, 38.0):
        lung = ((xx - centre_x) / (28.0 * taper)) ** 2 + ((yy + 5.0) / (45.0 * taper)) ** 2 <= 1
        hu[lung] = -850.0
    spine = (xx**2 + (yy - 48.0) ** 2) <= 12.0**2
    hu[spine] = 800.0
    hu[(xx**2 + (yy - 48.0) ** 2) <= 10.0**2] = 350.0
    return hu


def _tumour(
    zz: np.ndarray, yy: np.ndarray, xx: np.ndarray, row: dict, seed: int
) -> np.ndarray:
    """Boolean tumour mask holding round(volume_ml / VOXEL_ML) voxels (at least one)."""
    person = np.random.default_rng([seed, int(row["person_id"]), 1])  # fixed per person
    centre = np.array([0.0, -5.0, -38.0]) + person.uniform(-3.0, 3.0, size=3)
    n_lobes = 6
    lobe_dirs = person.normal(size=(n_lobes, 3))
    lobe_dirs /= np.linalg.norm(lobe_dirs, axis=1, keepdims=True)
    lobe_signs = person.choice([-1.0, 1.0], size=n_lobes)
    dz, dy, dx = zz - centre[0], yy - centre[1], xx - centre[2]
    dist = np.sqrt(dz**2 + dy**2 + dx**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = np.stack([dz, dy, dx], axis=-1) / dist[..., None]
    unit = np.nan_to_num(unit)
    cos = unit @ lobe_dirs.T  # (..., n_lobes)
    lobes = (np.exp(4.0 * (cos - 1.0)) * lobe_signs).sum(axis=-1)
    radius_factor = 1.0 + 0.3 * float(row["irregularity"]) * lobes
    radius_factor = np.clip(radius_factor, 0.3, None)
    scaled = dist / radius_factor  # inside the tumour when scaled <= R0
    n_voxels = max(1, int(round(float(row["volume_ml"]) / VOXEL_ML)))
    order = np.argsort(scaled, axis=None, kind="stable")[:n_voxels]
    mask = np.zeros(zz.shape, dtype=bool)
    mask.flat[order] = True
    return mask


def _render(row: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """HU volume (float) and tumour mask (bool) for one scan, numpy order (z, y, x)."""
    zz, yy, xx = _grids()
    hu = _anatomy(zz, yy, xx)
    mask = _tumour(zz, yy, xx, row, seed)
    scan = np.random.default_rng(
        [seed, int(row["person_id"]), _TIMEPOINT_CODE[row["timepoint"]],
         _as_date(row["scan_date"]).toordinal()]
    )
    # smooth random field, ~3 mm correlation length, unit SD inside the volume
    sigma_vox = (3.0 / SLICE_THICKNESS_MM, 3.0 / PIXEL_SPACING_MM, 3.0 / PIXEL_SPACING_MM)
    field = ndimage.gaussian_filter(scan.normal(size=hu.shape), sigma_vox)
    field /= field.std()
    hu[mask] = 40.0 + 80.0 * float(row["heterogeneity"]) * field[mask]
    hu = ndimage.gaussian_filter(hu, (0.0, 0.6, 0.6))  # in-plane point-spread function
    hu += scan.normal(scale=12.0, size=hu.shape)  # quantum noise
    return hu, mask


def _write_one(task: tuple[Path, dict, int]) -> dict:
    """Write the DICOM series and NIfTI mask of one scan; return its SERIES_COLUMNS row."""
    raw_dir, row, seed = task
    hu, mask = _render(row, seed)
    study_uid = _uid(seed, row, "study")
    series_uid = _uid(seed, row, "series")
    series_dir = raw_dir / "imaging" / series_uid
    series_dir.mkdir(parents=True, exist_ok=True)
    _write_dicom_series(series_dir, hu, row, seed, study_uid, series_uid)
    mask_rel = Path("imaging") / "masks" / f"{series_uid}.nii.gz"
    _write_mask(raw_dir / mask_rel, mask)
    return {
        "person_id": int(row["person_id"]),
        "scan_date": _as_date(row["scan_date"]),
        "timepoint": row["timepoint"],
        "image_study_uid": study_uid,
        "image_series_uid": series_uid,
        "local_path": f"imaging/{series_uid}",
        "mask_path": mask_rel.as_posix(),
        "longest_diameter_mm": longest_axial_diameter_mm(mask, (PIXEL_SPACING_MM,) * 2),
    }


def _series_template(row: dict, seed: int, study_uid: str, series_uid: str) -> Dataset:
    """The attributes shared by every slice of a series (CT Image Storage)."""
    scan_date = _as_date(row["scan_date"]).strftime("%Y%m%d")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = scan_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "090000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "pmed synthetic demo"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = f"CT chest {row['timepoint']}"
    ds.PatientName = str(row["patient_name"])
    ds.PatientID = str(row["patient_mrn"])
    ds.PatientBirthDate = _as_date(row["birth_date"]).strftime("%Y%m%d")
    ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = SLICE_THICKNESS_MM
    ds.KVP = 120
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1 + _TIMEPOINT_CODE[row["timepoint"]]
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = _uid(seed, row, "frame")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = N_ROWS
    ds.Columns = N_COLS
    ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter = -600
    ds.WindowWidth = 1600
    ds.RescaleIntercept = RESCALE_INTERCEPT
    ds.RescaleSlope = RESCALE_SLOPE
    ds.RescaleType = "HU"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _write_dicom_series(
    series_dir: Path, hu: np.ndarray, row: dict, seed: int, study_uid: str, series_uid: str
) -> None:
    """One file per slice, ``NNNN.dcm`` by InstanceNumber (1 = most superior slice)."""
    stored = np.clip(np.rint((hu - RESCALE_INTERCEPT) / RESCALE_SLOPE), 0, 4095).astype("<u2")
    ds = _series_template(row, seed, study_uid, series_uid)
    for instance, k in enumerate(range(N_SLICES - 1, -1, -1), start=1):
        z = ORIGIN_MM[2] + SLICE_THICKNESS_MM * k
        sop_uid = _uid(seed, row, f"slice {k}")
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = instance
        ds.ImagePositionPatient = [ORIGIN_MM[0], ORIGIN_MM[1], z]
        ds.SliceLocation = z
        ds.PixelData = stored[k].tobytes()
        ds.save_as(series_dir / f"{instance:04d}.dcm", enforce_file_format=True)


def _write_mask(path: Path, mask: np.ndarray) -> None:
    """Mask as uint8 NIfTI with the DICOM series' geometry (origin, spacing, identity axes)."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing((PIXEL_SPACING_MM, PIXEL_SPACING_MM, SLICE_THICKNESS_MM))
    image.SetOrigin(ORIGIN_MM)
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(path), useCompression=True)
