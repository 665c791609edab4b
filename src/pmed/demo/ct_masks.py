"""The demo's tumour masks as DICOM SEG or DICOM RTSTRUCT, referencing their CT series.

Both are written from the same boolean tumour mask that :mod:`pmed.demo.ct` saves as NIfTI:

- SEG: one BINARY segment labelled ``SEG_LABEL`` (SNOMED CT "Neoplasm"), one frame per
  slice that holds tumour, frames on the CT grid (so the mask read back is identical).
- RTSTRUCT: one ROI named ``ROI_NAME`` (as in NSCLC-Radiomics), one closed planar contour
  per boundary of the tumour on each slice (outer boundaries and holes), traced by
  marching squares (contourpy) at level 0.5 through the edge midpoints between inside and
  outside pixel centres; rasterising the contours at pixel centres with the even-odd rule
  gives back the mask.

UIDs come from :func:`pmed.demo.ct._uid` (the CT slice UIDs are re-derived, so each object
references the exact CT instances); no wall-clock time is written, so files are
byte-identical for the same seed and row.
"""

from __future__ import annotations

from pathlib import Path

import contourpy
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
    SegmentationStorage,
)

from pmed.demo import ct

SEG_LABEL = "Tumour"
ROI_NAME = "GTV-1"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _base(row: dict, seed: int, sop_class: str, modality: str, what: str) -> Dataset:
    """Patient, study and new-series attributes shared by SEG and RTSTRUCT."""
    template = ct._series_template(row, seed, ct._uid(seed, row, "study"), ct._uid(seed, row, "series"))
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ct._uid(seed, row, f"{what} instance")
    for key in ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
                "StudyDescription", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                "StudyInstanceUID", "StudyID", "FrameOfReferenceUID"):
        setattr(ds, key, template.get(key))
    ds.ContentDate, ds.ContentTime = template.StudyDate, "100000"
    ds.Modality = modality
    ds.Manufacturer = "pmed synthetic demo"
    ds.SeriesInstanceUID = ct._uid(seed, row, f"{what} series")
    ds.SeriesNumber = 100 + ct._TIMEPOINT_CODE[row["timepoint"]]
    ds.InstanceNumber = 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _z_mm(k: int) -> float:
    return ct.ORIGIN_MM[2] + ct.SLICE_THICKNESS_MM * k


def write_seg(path: Path, mask: np.ndarray, row: dict, seed: int,
              fractional: np.ndarray | None = None) -> None:
    """``mask`` (bool, (z, y, x) on the CT grid) as a DICOM SEG file.

    ``fractional`` (float in [0, 1], same shape) writes a FRACTIONAL segmentation with
    MaximumFractionalValue 255 instead of a BINARY one (used by tests).
    """
    ds = _base(row, seed, SegmentationStorage, "SEG", "seg")
    series_uid = ct._uid(seed, row, "series")
    ds.SeriesDescription = "Tumour segmentation"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ContentLabel, ds.ContentDescription, ds.ContentCreatorName = "TUMOUR", "", ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = ct.N_ROWS, ct.N_COLS
    ds.PixelRepresentation, ds.LossyImageCompression = 0, "00"
    segment = Dataset()
    segment.SegmentNumber, segment.SegmentLabel = 1, SEG_LABEL
    segment.SegmentAlgorithmType, segment.SegmentAlgorithmName = "MANUAL", ""
    segment.SegmentedPropertyCategoryCodeSequence = Sequence(
        [_code("49755003", "SCT", "Morphologically Altered Structure")])
    segment.SegmentedPropertyTypeCodeSequence = Sequence([_code("108369006", "SCT", "Neoplasm")])
    ds.SegmentSequence = Sequence([segment])
    slices = [k for k in range(mask.shape[0]) if mask[k].any()]
    if fractional is None:
        ds.SegmentationType, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "BINARY", 1, 1, 0
        ds.PixelData = pack_bits(mask[slices].astype(np.uint8))
    else:
        ds.SegmentationType, ds.SegmentationFractionalType = "FRACTIONAL", "PROBABILITY"
        ds.MaximumFractionalValue, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 255, 8, 8, 7
        ds.PixelData = np.rint(255 * fractional[slices]).astype(np.uint8).tobytes()
    ds.NumberOfFrames = len(slices)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [ct.PIXEL_SPACING_MM, ct.PIXEL_SPACING_MM]
    measures.SliceThickness = measures.SpacingBetweenSlices = ct.SLICE_THICKNESS_MM
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([measures]), Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in slices:
        group = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [ct.ORIGIN_MM[0], ct.ORIGIN_MM[1], _z_mm(k)]
        seg_id = Dataset()
        seg_id.ReferencedSegmentNumber = 1
        content = Dataset()
        content.DimensionIndexValues = [1, k + 1]
        source = Dataset()
        source.ReferencedSOPClassUID = CTImageStorage
        source.ReferencedSOPInstanceUID = ct._uid(seed, row, f"slice {k}")
        derivation = Dataset()
        derivation.SourceImageSequence = Sequence([source])
        group.DerivationImageSequence = Sequence([derivation])
        group.FrameContentSequence = Sequence([content])
        group.PlanePositionSequence = Sequence([position])
        group.SegmentIdentificationSequence = Sequence([seg_id])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    referenced = Dataset()
    referenced.SeriesInstanceUID = series_uid
    referenced.ReferencedInstanceSequence = Sequence([_instance(seed, row, k) for k in slices])
    ds.ReferencedSeriesSequence = Sequence([referenced])
    ds.save_as(path, enforce_file_format=True)


def _instance(seed: int, row: dict, k: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = ct._uid(seed, row, f"slice {k}")
    return item


def slice_contours(mask_slice: np.ndarray) -> list[np.ndarray]:
    """Closed contours (column, row index pairs, first point not repeated) of a 2-D mask."""
    padded = np.pad(mask_slice.astype(float), 1)
    lines = contourpy.contour_generator(z=padded, line_type="Separate").lines(0.5)
    return [line[:-1] - 1.0 for line in lines if len(line) > 3]


def write_rtstruct(path: Path, mask: np.ndarray, row: dict, seed: int) -> None:
    """``mask`` (bool, (z, y, x) on the CT grid) as one ROI of a DICOM RTSTRUCT file."""
    ds = _base(row, seed, RTStructureSetStorage, "RTSTRUCT", "rtstruct")
    ds.SeriesDescription = "Tumour contours"
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "GTV", ds.ContentDate, "100000"
    frame_uid = ds.FrameOfReferenceUID
    del ds.FrameOfReferenceUID  # an RTSTRUCT references frames of reference, it has none itself
    series = Dataset()
    series.SeriesInstanceUID = ct._uid(seed, row, "series")
    series.ContourImageSequence = Sequence([_instance(seed, row, k) for k in range(mask.shape[0])])
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, customary)
    study.ReferencedSOPInstanceUID = ds.StudyInstanceUID
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = 1, frame_uid, ROI_NAME
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = Sequence([roi])
    contours = []
    for k in range(mask.shape[0]):
        for line in slice_contours(mask[k]):
            x = ct.ORIGIN_MM[0] + ct.PIXEL_SPACING_MM * line[:, 0]
            y = ct.ORIGIN_MM[1] + ct.PIXEL_SPACING_MM * line[:, 1]
            points = np.column_stack([x, y, np.full(len(line), _z_mm(k))])
            item = Dataset()
            item.ContourImageSequence = Sequence([_instance(seed, row, k)])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [f"{v:.6g}" for v in points.ravel()]
            contours.append(item)
    roi_contour = Dataset()
    roi_contour.ROIDisplayColor = [255, 0, 0]
    roi_contour.ReferencedROINumber = 1
    roi_contour.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([roi_contour])
    observation = Dataset()
    observation.ObservationNumber, observation.ReferencedROINumber = 1, 1
    observation.RTROIInterpretedType, observation.ROIInterpreter = "GTV", ""
    ds.RTROIObservationsSequence = Sequence([observation])
    ds.save_as(path, enforce_file_format=True)
