"""Intensity preprocessing for images without a physical unit (MR) before radiomics.

CT values are Hounsfield units, so CT radiomics uses a fixed bin width in HU. MR values
are arbitrary and vary between scanners, coils and sessions; features are comparable only
after (i) optional bias-field correction (:func:`n4_correct`, N4 of Tustison et al. 2010 via
SimpleITK), (ii) normalisation (:func:`normalise`: z-score within the ROI or within the
body) and (iii) discretisation by a fixed bin *count* (``bin_count`` in the radiomics
settings, :func:`pmed.imaging.radiomics.pyradiomics_settings`). With z-score
normalisation and a bin count, features do not change under a linear rescaling of the
intensities (tests/test_imaging_preprocess.py).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from pmed.imaging.io import ImagingError

NORMALISATIONS = ("none", "zscore_roi", "zscore_body")


def body_mask(image: sitk.Image) -> sitk.Image:
    """The body: Otsu foreground, largest connected component, holes filled slice by slice
    (uint8, image geometry)."""
    foreground = sitk.OtsuThreshold(sitk.Cast(image, sitk.sitkFloat32), 0, 1)
    largest = sitk.RelabelComponent(sitk.ConnectedComponent(foreground), sortByObjectSize=True) == 1
    array = sitk.GetArrayFromImage(largest).astype(np.uint8)
    filled = np.stack([sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(s)))
                       for s in array])
    body = sitk.GetImageFromArray(filled.astype(np.uint8))
    body.CopyInformation(image)
    return body


def normalise(image: sitk.Image, mask: sitk.Image, method: str) -> sitk.Image:
    """``image`` as z-scores (float32) over the ROI (``zscore_roi``: voxels of ``mask``) or the
    body (``zscore_body``: :func:`body_mask`); ``none`` returns it unchanged."""
    if method not in NORMALISATIONS:
        raise ValueError(f"imaging_features.preprocessing.normalisation: expected one of "
                         f"{NORMALISATIONS}, got {method!r}")
    if method == "none":
        return image
    region = mask if method == "zscore_roi" else body_mask(image)
    values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(region) > 0]
    sd = float(values.std()) if values.size else 0.0
    if sd == 0.0:
        raise ImagingError(f"normalisation {method}: the region has {values.size} voxel(s) with "
                           f"no intensity spread; expected a region with varying intensities")
    out = (sitk.Cast(image, sitk.sitkFloat32) - float(values.mean())) / sd
    out.CopyInformation(image)
    return out


def n4_correct(image: sitk.Image, shrink: int = 2, iterations: tuple[int, ...] = (20, 20)) -> sitk.Image:
    """Bias-field corrected ``image`` (float32): N4 fitted on a ``shrink``-times
    downsampled copy within the body, the field applied at full resolution."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    body = body_mask(image)
    small = sitk.Shrink(image, [shrink] * image.GetDimension())
    small_body = sitk.Shrink(body, [shrink] * image.GetDimension())
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(iterations))
    n4.Execute(small, small_body)
    log_bias = n4.GetLogBiasFieldAsImage(image)
    return image / sitk.Exp(log_bias)
