"""Synthetic T2-weighted chest MR series (DICOM MR Image Storage) for a share of the imaged persons.

A person drawn for MR (probability ``share``, params ``demo.mr_share``, from a random stream of
the person's own, so no CT voxel, OMOP row or other draw changes) gets one axial T2-weighted
series on the day of the baseline CT. The series uses the CT grid (:mod:`pmed.demo.ct`: 96 x 96
x 40 voxels of 2 x 2 x 2.5 mm) and the same tumour mask as the baseline CT (same voxels, so the
same true volume), with T2-like contrast:

- tissue signal (arbitrary units, before the scanner scale): air 0, lung 40, fat 900, soft
  tissue 350, vertebral marrow 250, cortical bone 40 (:data:`T2_SIGNAL`), blurred like the CT;
- tumour 600 plus a smooth Gaussian random field of SD ``150 * heterogeneity``;
- white noise of SD :data:`NOISE_SD`;
- a smooth multiplicative bias field ``exp(a . p)`` (p: voxel position scaled to [-1, 1] per
  axis, |a| uniform in [0.05, 0.25] in a random direction) and a random scanner scale:
  stored = gain * signal + offset, gain log-uniform in [0.5, 4], offset uniform in [0, 300].

So MR intensities have no unit and differ between series: radiomics needs the normalisation of
:mod:`pmed.imaging.preprocess`. Stored as uint16 without RescaleSlope/Intercept (as MR
scanners write); the mask is NIfTI. Byte-identical output for the same seed and rows.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from scipy import ndimage

from pmed.demo import ct
from pmed.imaging.response import longest_axial_diameter_mm

T2_SIGNAL = {-1000.0: 0.0, -850.0: 40.0, -100.0: 900.0, 40.0: 350.0, 350.0: 250.0, 800.0: 40.0}  # CT class (HU) -> T2 signal
TUMOUR_SIGNAL = 600.0  # mean tumour T2 signal
TEXTURE_SD = 150.0  # tumour texture SD at heterogeneity 1
NOISE_SD = 15.0  # white noise SD (signal units, before the scanner scale)
GAIN_RANGE = (0.5, 4.0)  # scanner gain, log-uniform
OFFSET_RANGE = (0.0, 300.0)  # scanner offset, uniform
BIAS_RANGE = (0.05, 0.25)  # norm of the log bias-field gradient over the half field of view
_PERSON_STREAM = 11  # seed sequence end of the per-person MR draw
_SERIES_STREAM = 12  # seed sequence end of the per-series texture, noise and scanner draws
MR_COLUMNS = [*ct.SERIES_COLUMNS, "gain", "offset", "bias_gradient"]


def has_mr(person_id: np.ndarray, seed: int, share: float) -> np.ndarray:
    """Boolean per person: gets a baseline MR (uniform draw of the person's own stream < share)."""
    return np.array([np.random.default_rng([seed, int(p), _PERSON_STREAM]).random() < share
                     for p in np.asarray(person_id)], dtype=bool)


def write_mr_series(raw_dir: Path, scans: pd.DataFrame, seed: int, workers: int = 1) -> pd.DataFrame:
    """Write one T2-weighted MR series and its NIfTI tumour mask per row of ``scans``.

    ``scans``: baseline rows with :data:`pmed.demo.ct.SCAN_COLUMNS` (the persons' baseline CT
    traits and date). Series go to ``raw_dir/imaging/<series_uid>/NNNN.dcm``, masks to
    ``raw_dir/imaging/masks/<series_uid>.nii.gz``. Returns one row per series with
    :data:`MR_COLUMNS` (paths relative to ``raw_dir``; gain, offset and bias_gradient are the
    true scanner scale and bias-field strength).
    """
    ct._check_scans(scans)
    if (scans["timepoint"] != "baseline").any():
        raise ValueError("scans.timepoint: MR series are written for baseline rows only")
    raw_dir = Path(raw_dir)
    (raw_dir / "imaging" / "masks").mkdir(parents=True, exist_ok=True)
    tasks = [(raw_dir, row, int(seed)) for row in scans[ct.SCAN_COLUMNS].to_dict("records")]
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(_write_one, tasks))
    else:
        rows = [_write_one(task) for task in tasks]
    return pd.DataFrame(rows, columns=MR_COLUMNS)


def scanner_draw(row: dict, seed: int) -> tuple[np.random.Generator, float, float, np.ndarray]:
    """The series' random stream and its gain, offset and log bias-field gradient (3,)."""
    rng = np.random.default_rng([seed, int(row["person_id"]), ct._as_date(row["scan_date"]).toordinal(),
                                 _SERIES_STREAM])
    gain = float(np.exp(rng.uniform(*np.log(GAIN_RANGE))))
    offset = float(rng.uniform(*OFFSET_RANGE))
    direction = rng.normal(size=3)
    gradient = rng.uniform(*BIAS_RANGE) * direction / np.linalg.norm(direction)
    return rng, gain, offset, gradient


def render(row: dict, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """T2 signal after the bias field and before the scanner scale (float, (z, y, x)), the
    tumour mask (bool, the baseline CT's) and the scanner draw {gain, offset, bias_gradient}."""
    mask = ct._tumour(row, seed)
    rng, gain, offset, gradient = scanner_draw(row, seed)
    anatomy = ct._anatomy()
    signal = np.zeros(anatomy.shape)
    for hu, value in T2_SIGNAL.items():
        signal[anatomy == hu] = value
    field = ndimage.gaussian_filter(rng.standard_normal(size=mask.shape), ct.FIELD_SIGMA_VOX)
    field /= field[mask].std() if mask.sum() > 1 else 1.0
    signal[mask] = TUMOUR_SIGNAL + TEXTURE_SD * float(row["heterogeneity"]) * field[mask]
    signal = ndimage.gaussian_filter(signal, ct.PSF_SIGMA_VOX)
    signal += NOISE_SD * rng.standard_normal(size=signal.shape)
    positions = np.stack([(g - g.mean()) / (0.5 * np.ptp(g)) for g in ct._grids()], axis=-1)
    signal *= np.exp(positions @ gradient)
    return signal, mask, {"gain": gain, "offset": offset, "bias_gradient": float(np.linalg.norm(gradient))}


def _write_one(task: tuple[Path, dict, int]) -> dict:
    """Write the MR series and mask of one baseline scan; return its MR_COLUMNS row."""
    raw_dir, row, seed = task
    signal, mask, scanner = render(row, seed)
    stored = np.clip(np.rint(scanner["gain"] * signal + scanner["offset"]), 0, 65535).astype("<u2")
    study_uid, series_uid = ct._uid(seed, row, "mr study"), ct._uid(seed, row, "mr series")
    series_dir = raw_dir / "imaging" / series_uid
    series_dir.mkdir(parents=True, exist_ok=True)
    template = _series_template(row, seed, study_uid, series_uid)
    ct.write_slices(series_dir, stored, template, [ct._uid(seed, row, f"mr slice {k}") for k in range(ct.N_SLICES)])
    mask_rel = Path("imaging") / "masks" / f"{series_uid}.nii.gz"
    ct._write_mask(raw_dir / mask_rel, mask)
    return {
        "person_id": int(row["person_id"]), "scan_date": ct._as_date(row["scan_date"]),
        "timepoint": row["timepoint"], "image_study_uid": study_uid, "image_series_uid": series_uid,
        "local_path": f"imaging/{series_uid}", "mask_path": mask_rel.as_posix(),
        "longest_diameter_mm": longest_axial_diameter_mm(mask, (ct.PIXEL_SPACING_MM,) * 2), **scanner,
    }


def _series_template(row: dict, seed: int, study_uid: str, series_uid: str) -> Dataset:
    """The attributes shared by every slice of an MR series (MR Image Storage, T2 TSE axial)."""
    date = ct._as_date(row["scan_date"]).strftime("%Y%m%d")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "110000"
    ds.AccessionNumber = ""
    ds.Modality = "MR"
    ds.Manufacturer = "pmed synthetic demo"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MR CHEST"
    ds.SeriesDescription = "T2 TSE axial"
    ds.PatientName = str(row["patient_name"])
    ds.PatientID = str(row["patient_mrn"])
    ds.PatientBirthDate = ct._as_date(row["birth_date"]).strftime("%Y%m%d")
    ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = ct.SLICE_THICKNESS_MM
    ds.RepetitionTime = 4000.0
    ds.EchoTime = 100.0
    ds.EchoTrainLength = 16
    ds.MagneticFieldStrength = 1.5
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 3
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = ct._uid(seed, row, "mr frame")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ct.N_ROWS
    ds.Columns = ct.N_COLS
    ds.PixelSpacing = [ct.PIXEL_SPACING_MM, ct.PIXEL_SPACING_MM]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds
