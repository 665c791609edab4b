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
geometry SimpleITK reads from the DICOM series, or (``mask_formats``) as a DICOM SEG or
RTSTRUCT referencing the series (:mod:`pmed.demo.ct_masks`), chosen per series by a random
stream of its own, so the format never changes a voxel of the CT or another random draw.

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
import struct
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from pmed.imaging.response import longest_axial_diameter_mm

N_ROWS = 96  # pixels along y (anterior -> posterior)
N_COLS = 96  # pixels along x (patient right -> left)
N_SLICES = 40  # axial slices
PIXEL_SPACING_MM = 2.0  # in-plane spacing, rows and columns
SLICE_THICKNESS_MM = 2.5  # slice thickness = spacing between slice centres
VOXEL_ML = PIXEL_SPACING_MM**2 * SLICE_THICKNESS_MM / 1000.0
MAX_VOLUME_ML = 400.0  # largest tumour; beyond ~250 ml lobes may be cut by the field of view
RESCALE_INTERCEPT = -1024.0  # stored value 0 = -1024 HU
RESCALE_SLOPE = 1.0
# origin = centre of the first voxel (x, y) and of the lowest slice (z), in mm
ORIGIN_MM = (-95.0, -95.0, -50.0)
PSF_SIGMA_VOX = (0.0, 0.6, 0.6)  # in-plane Gaussian point-spread function (z, y, x voxels)
FIELD_SIGMA_VOX = (3.0 / SLICE_THICKNESS_MM, 3.0 / PIXEL_SPACING_MM, 3.0 / PIXEL_SPACING_MM)
NOISE_SD_HU = 12.0  # white quantum noise

SCAN_COLUMNS = [
    "person_id", "scan_date", "timepoint", "volume_ml", "heterogeneity", "irregularity",
    "patient_name", "patient_mrn", "birth_date",
]
SERIES_COLUMNS = [
    "person_id", "scan_date", "timepoint", "image_study_uid", "image_series_uid",
    "local_path", "mask_path", "longest_diameter_mm",
]
_TIMEPOINT_CODE = {"baseline": 0, "followup": 1}
MASK_FORMATS = {"nifti": ".nii.gz", "seg": ".seg.dcm", "rtstruct": ".rtstruct.dcm"}
_MASK_STREAM = 7  # last entry of the seed sequence of the per-series mask-format draw


def write_imaging_study(
    raw_dir: Path, scans: pd.DataFrame, seed: int, workers: int = 1,
    mask_formats: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Write one DICOM CT series and one tumour mask per row of ``scans``.

    Parameters
    ----------
    raw_dir : Path
        Raw-data folder; series go to ``raw_dir/imaging/<series_uid>/NNNN.dcm`` and masks
        to ``raw_dir/imaging/masks/<series_uid>.nii.gz``.
    scans : DataFrame, one row per CT
        Columns ``SCAN_COLUMNS``: person_id (int), scan_date (date), timepoint
        ("baseline" | "followup"), volume_ml (true tumour volume, ml, in (0, MAX_VOLUME_ML = 400]),
        heterogeneity and irregularity (0..1), patient_name, patient_mrn, birth_date
        (synthetic DICOM patient tags; birth_date a date).
    seed : int
        Master seed; with the row it fixes every voxel, UID and byte of the output.
    workers : int, default 1
        Processes writing series in parallel.
    mask_formats : dict, optional
        Share of series whose mask is written as ``seg`` (DICOM SEG) or ``rtstruct`` (DICOM
        RTSTRUCT), e.g. ``{"seg": 0.25, "rtstruct": 0.25}``; the rest are NIfTI (all when
        None). Masks go to ``raw_dir/imaging/masks/<series_uid><suffix>`` (``MASK_FORMATS``).

    Returns
    -------
    DataFrame, one row per series (same order as ``scans``)
        Columns ``SERIES_COLUMNS``; local_path and mask_path are relative to ``raw_dir``;
        longest_diameter_mm is the true longest axial diameter of the mask (mm).
    """
    _check_scans(scans)
    shares = _check_mask_formats(mask_formats)
    raw_dir = Path(raw_dir)
    (raw_dir / "imaging" / "masks").mkdir(parents=True, exist_ok=True)
    tasks = [(raw_dir, row, int(seed), shares) for row in scans[SCAN_COLUMNS].to_dict("records")]
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
    bad = vol[~((vol > 0) & (vol <= MAX_VOLUME_ML))]
    if len(bad):
        raise ValueError(f"scans.volume_ml: {len(bad)} value(s) outside (0, {MAX_VOLUME_ML}] ml, "
                         f"e.g. {bad.iloc[0]:.4g} (row {bad.index[0]})")
    for col in ("heterogeneity", "irregularity"):
        v = scans[col].astype(float)
        bad = v[~((v >= 0) & (v <= 1))]
        if len(bad):
            raise ValueError(f"scans.{col}: {len(bad)} value(s) outside [0, 1], "
                             f"e.g. {bad.iloc[0]:.4g} (row {bad.index[0]})")
    if scans.duplicated(["person_id", "scan_date", "timepoint"]).any():
        raise ValueError("scans: (person_id, scan_date, timepoint) must be unique")


def _check_mask_formats(mask_formats: dict | None) -> tuple[float, float]:
    """(seg share, rtstruct share) after checking keys and range; ValueError naming them."""
    shares = dict(mask_formats or {})
    unknown = sorted(set(shares) - {"seg", "rtstruct"})
    if unknown:
        raise ValueError(f"demo.mask_formats: unknown format(s) {unknown}; expected seg, rtstruct")
    seg, rt = float(shares.get("seg", 0.0)), float(shares.get("rtstruct", 0.0))
    if seg < 0 or rt < 0 or seg + rt > 1:
        raise ValueError(f"demo.mask_formats: shares must be >= 0 and sum to <= 1, got {shares}")
    return seg, rt


def mask_format(row: dict, seed: int, shares: tuple[float, float]) -> str:
    """"seg", "rtstruct" or "nifti" for one series: a uniform draw from the series' own
    stream (seed, person, timepoint, date, ``_MASK_STREAM``) against the shares."""
    u = np.random.default_rng(
        [seed, int(row["person_id"]), _TIMEPOINT_CODE[row["timepoint"]],
         _as_date(row["scan_date"]).toordinal(), _MASK_STREAM]
    ).random()
    return "seg" if u < shares[0] else "rtstruct" if u < shares[0] + shares[1] else "nifti"


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


@lru_cache(maxsize=1)
def _grids() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates (z, y, x) in mm, each of shape (N_SLICES, N_ROWS, N_COLS)."""
    z = ORIGIN_MM[2] + SLICE_THICKNESS_MM * np.arange(N_SLICES)
    y = ORIGIN_MM[1] + PIXEL_SPACING_MM * np.arange(N_ROWS)
    x = ORIGIN_MM[0] + PIXEL_SPACING_MM * np.arange(N_COLS)
    grids = np.meshgrid(z, y, x, indexing="ij")
    for g in grids:
        g.flags.writeable = False
    return tuple(grids)


@lru_cache(maxsize=1)
def _anatomy() -> np.ndarray:
    """Noise-free chest phantom in HU, shape (N_SLICES, N_ROWS, N_COLS), before blurring."""
    zz, yy, xx = _grids()
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
    hu.flags.writeable = False
    return hu


@lru_cache(maxsize=1)
def _blurred_anatomy() -> np.ndarray:
    """:func:`_anatomy` after the in-plane point-spread function."""
    hu = ndimage.gaussian_filter(_anatomy(), PSF_SIGMA_VOX)
    hu.flags.writeable = False
    return hu


def _tumour(row: dict, seed: int) -> np.ndarray:
    """Boolean tumour mask holding round(volume_ml / VOXEL_ML) voxels (at least one).

    Voxel v is ranked by its distance to the tumour centre divided by the lobulated radius
    factor in its direction; the ``n`` best-ranked voxels form the mask, so the volume is
    exact and the surface is a level set of the lobulated radius.
    """
    zz, yy, xx = _grids()
    person = np.random.default_rng([seed, int(row["person_id"]), 1])  # fixed per person
    centre = np.array([0.0, -5.0, -38.0]) + person.uniform(-3.0, 3.0, size=3)
    n_lobes = 6
    lobe_dirs = person.normal(size=(n_lobes, 3))
    lobe_dirs /= np.linalg.norm(lobe_dirs, axis=1, keepdims=True)
    lobe_signs = person.choice([-1.0, 1.0], size=n_lobes)
    n_voxels = max(1, int(round(float(row["volume_ml"]) / VOXEL_ML)))
    r_sphere = (3.0 * n_voxels * VOXEL_ML * 1000.0 / (4.0 * np.pi)) ** (1 / 3)
    # search a box around the centre first; the whole volume if the tumour reaches its edge
    for half in (2.0 * r_sphere + 4.0, np.inf):
        box = tuple(
            slice(int(np.searchsorted(axis, c - half)), int(np.searchsorted(axis, c + half)))
            for axis, c in zip((zz[:, 0, 0], yy[0, :, 0], xx[0, 0, :]), centre, strict=True)
        )
        dz, dy, dx = zz[box] - centre[0], yy[box] - centre[1], xx[box] - centre[2]
        dist = np.sqrt(dz**2 + dy**2 + dx**2)
        unit = np.stack([dz, dy, dx], axis=-1) / np.maximum(dist, 1e-9)[..., None]
        lobes = (np.exp(4.0 * (unit @ lobe_dirs.T - 1.0)) * lobe_signs).sum(axis=-1)
        radius_factor = np.clip(1.0 + 0.3 * float(row["irregularity"]) * lobes, 0.3, None)
        scaled = (dist / radius_factor).ravel()
        sub = np.zeros(scaled.shape, dtype=bool)
        sub[np.argpartition(scaled, n_voxels - 1)[:n_voxels]] = True
        sub = sub.reshape(dist.shape)
        if not _touches_inner_face(sub, box, zz.shape):
            break
    mask = np.zeros(zz.shape, dtype=bool)
    mask[box] = sub
    return mask


def _touches_inner_face(sub: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    """True when ``sub`` (the mask inside ``box``) reaches a box face inside the volume."""
    for axis, (sl, n) in enumerate(zip(box, shape, strict=True)):
        faces = np.moveaxis(sub, axis, 0)
        if (sl.start > 0 and faces[0].any()) or (sl.stop < n and faces[-1].any()):
            return True
    return False


def _render(row: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """HU volume (float) and tumour mask (bool) for one scan, numpy order (z, y, x)."""
    mask = _tumour(row, seed)
    scan = np.random.default_rng(
        [seed, int(row["person_id"]), _TIMEPOINT_CODE[row["timepoint"]],
         _as_date(row["scan_date"]).toordinal()]
    )
    # tumour texture and PSF only change a box around the tumour (blurring is linear:
    # blur(anatomy + tumour change) = blur(anatomy) + blur(tumour change))
    margin = 6
    box = tuple(
        slice(max(0, int(idx.min()) - margin), int(idx.max()) + margin + 1)
        for idx in np.nonzero(mask)
    )
    sub_mask = mask[box]
    field = ndimage.gaussian_filter(scan.standard_normal(size=sub_mask.shape), FIELD_SIGMA_VOX)
    field /= field[sub_mask].std() if sub_mask.sum() > 1 else 1.0
    change = np.zeros(sub_mask.shape)
    change[sub_mask] = (
        40.0 + 80.0 * float(row["heterogeneity"]) * field[sub_mask] - _anatomy()[box][sub_mask]
    )
    hu = _blurred_anatomy().copy()
    hu[box] += ndimage.gaussian_filter(change, PSF_SIGMA_VOX)
    hu += NOISE_SD_HU * scan.standard_normal(size=hu.shape, dtype=np.float32)
    return hu, mask


def _write_one(task: tuple[Path, dict, int, tuple[float, float]]) -> dict:
    """Write the DICOM series and the mask of one scan; return its SERIES_COLUMNS row."""
    from pmed.demo import ct_masks  # imports this module

    raw_dir, row, seed, shares = task
    hu, mask = _render(row, seed)
    study_uid = _uid(seed, row, "study")
    series_uid = _uid(seed, row, "series")
    series_dir = raw_dir / "imaging" / series_uid
    series_dir.mkdir(parents=True, exist_ok=True)
    _write_dicom_series(series_dir, hu, row, seed, study_uid, series_uid)
    kind = mask_format(row, seed, shares)
    mask_rel = Path("imaging") / "masks" / f"{series_uid}{MASK_FORMATS[kind]}"
    if kind == "seg":
        ct_masks.write_seg(raw_dir / mask_rel, mask, row, seed)
    elif kind == "rtstruct":
        ct_masks.write_rtstruct(raw_dir / mask_rel, mask, row, seed)
    else:
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
    """One file per slice, ``NNNN.dcm`` by InstanceNumber (1 = most superior slice).

    Writing ~60 elements per file through pydicom dominates the run time, so the elements
    shared by all slices are encoded once per series and only the per-slice elements
    (:data:`_PER_SLICE_TAGS`, MediaStorageSOPInstanceUID and the meta group length) are
    encoded per file. The bytes are identical to ``Dataset.save_as(...,
    enforce_file_format=True)`` of the full data set (tests/test_ct.py checks this).
    """
    stored = np.clip(np.rint((hu - RESCALE_INTERCEPT) / RESCALE_SLOPE), 0, 4095).astype("<u2")
    template = _series_template(row, seed, study_uid, series_uid)
    write_slices(series_dir, stored, template, [_uid(seed, row, f"slice {k}") for k in range(N_SLICES)])


def write_slices(series_dir: Path, stored: np.ndarray, template: Dataset, sop_uids: list[str]) -> None:
    """Write ``stored`` (uint16, shape (N_SLICES, N_ROWS, N_COLS), z increasing) as one file
    per slice with the shared attributes of ``template``; ``sop_uids[k]`` is slice k's UID.
    Files are ``NNNN.dcm`` by InstanceNumber (1 = most superior slice)."""
    shared = _encode_runs(template, _PER_SLICE_TAGS)
    meta_shared = _encode_runs(_file_meta(template, "1"), [Tag("MediaStorageSOPInstanceUID")])
    for instance, k in enumerate(range(N_SLICES - 1, -1, -1), start=1):
        sop_uid = sop_uids[k]
        own = _slice_elements(stored[k], instance, ORIGIN_MM[2] + SLICE_THICKNESS_MM * k, sop_uid)
        body = b"".join(run + _encode(elem) for run, elem in zip(shared[:-1], own, strict=True))
        meta_uid = Dataset()
        meta_uid.MediaStorageSOPInstanceUID = sop_uid
        meta = meta_shared[0] + _encode(meta_uid) + meta_shared[1]
        (series_dir / f"{instance:04d}.dcm").write_bytes(
            b"\x00" * 128 + b"DICM" + _GROUP_LENGTH.pack(2, 0, b"UL", 4, len(meta)) + meta
            + body + shared[-1]
        )


# elements that differ between the slices of a series, in tag order
_PER_SLICE_TAGS = [
    Tag("SOPInstanceUID"), Tag("InstanceNumber"), Tag("ImagePositionPatient"),
    Tag("SliceLocation"), Tag("PixelData"),
]
# (0002,0000) FileMetaInformationGroupLength, explicit VR little endian: group, element,
# VR, value length (4), value
_GROUP_LENGTH = struct.Struct("<HH2sHI")


def _file_meta(template: Dataset, sop_uid: str) -> FileMetaDataset:
    """The complete file meta group of a slice, as ``save_as(enforce_file_format=True)``
    writes it, without (0002,0000) FileMetaInformationGroupLength."""
    meta = FileMetaDataset(template.file_meta)
    meta.MediaStorageSOPInstanceUID = sop_uid
    validate_file_meta(meta, enforce_standard=True)  # adds version and implementation UIDs
    if "FileMetaInformationGroupLength" in meta:
        del meta.FileMetaInformationGroupLength
    return meta


def _slice_elements(pixels: np.ndarray, instance: int, z_mm: float, sop_uid: str) -> list:
    """One single-element Dataset per :data:`_PER_SLICE_TAGS` for one slice.

    ``pixels`` are the stored values of the slice, shape (rows, cols), little-endian uint16.
    """
    values = [
        ("SOPInstanceUID", sop_uid), ("InstanceNumber", instance),
        ("ImagePositionPatient", [ORIGIN_MM[0], ORIGIN_MM[1], z_mm]), ("SliceLocation", z_mm),
    ]
    elements = []
    for keyword, value in values:
        ds = Dataset()
        setattr(ds, keyword, value)
        elements.append(ds)
    pixel_ds = Dataset()
    pixel_ds.add_new("PixelData", "OW", pixels.tobytes())
    return [*elements, pixel_ds]


def _encode(ds: Dataset) -> bytes:
    """Explicit VR little endian encoding of the elements of ``ds`` (no file meta)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    return fp.getvalue()


def _encode_runs(ds: Dataset, tags: list) -> list[bytes]:
    """Encoded runs of the elements of ``ds`` before, between and after the sorted ``tags``.

    Returns ``len(tags) + 1`` byte strings; the elements ``tags`` themselves are left out.
    """
    bounds = [0, *tags, 0xFFFFFFFF]
    return [
        _encode(ds[lo + (i > 0):hi])
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    ]


def _write_mask(path: Path, mask: np.ndarray) -> None:
    """Mask as uint8 NIfTI with the DICOM series' geometry (origin, spacing, identity axes)."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing((PIXEL_SPACING_MM, PIXEL_SPACING_MM, SLICE_THICKNESS_MM))
    image.SetOrigin(ORIGIN_MM)
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(path), useCompression=True)
