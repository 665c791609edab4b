"""Radiomics features with pyradiomics, corrected and named against IBSI 1.

pyradiomics (the ``pyradiomics-bhklab`` build, ``import radiomics``) computes the features.
MIRP would follow IBSI more closely but needs pandas >= 3, which lifelines' pandas < 3 pin
rules out in this environment.

Every reported feature is either mapped to its IBSI 1 tag in :data:`IBSI_TAGS` (verified on
the IBSI digital phantom by tests/test_imaging_radiomics.py) or listed with the reason in
:data:`NON_IBSI`. Two pyradiomics definitions differ from IBSI and are corrected here:

* kurtosis: pyradiomics reports m4 / m2^2; IBSI ``stat_kurt`` is the excess kurtosis
  m4 / m2^2 - 3. Reported as ``<image>_firstorder_ExcessKurtosis``.
* PCA axis lengths: pyradiomics takes eigenvalues of the covariance divided by N; IBSI
  uses N - 1 (the phantom values agree only after the change), so Major/Minor/Least axis
  lengths are multiplied by sqrt(N / (N - 1)), N the number of mask voxels.

pyradiomics averages GLCM and GLRLM features over the 13 3-D directions (IBSI ``_3D_avg``)
and builds one 3-D GLSZM, GLDM (IBSI NGLDM, alpha = 0, Chebyshev distance 1) and NGTDM
matrix (IBSI ``_3D``). Only features of the unfiltered (``original``) image are called
IBSI-verified: filters are IBSI 2 and not checked here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import radiomics
import SimpleITK as sitk
from radiomics import featureextractor

radiomics.setVerbosity(logging.ERROR)

FEATURE_CLASSES = ("firstorder", "shape", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
INTERPOLATORS = ("sitkNearestNeighbor", "sitkLinear", "sitkBSpline")

# pyradiomics "<class>_<feature>" -> IBSI 1 tag (with the texture aggregation suffix)
IBSI_TAGS: dict[str, str] = {
    # morphology
    "shape_MeshVolume": "morph_volume",
    "shape_VoxelVolume": "morph_vol_approx",
    "shape_SurfaceArea": "morph_area_mesh",
    "shape_SurfaceVolumeRatio": "morph_av",
    "shape_Sphericity": "morph_sphericity",
    "shape_Maximum3DDiameter": "morph_diam",
    "shape_MajorAxisLength": "morph_pca_maj_axis",  # corrected: sqrt(N / (N - 1))
    "shape_MinorAxisLength": "morph_pca_min_axis",  # corrected
    "shape_LeastAxisLength": "morph_pca_least_axis",  # corrected
    "shape_Elongation": "morph_pca_elongation",
    "shape_Flatness": "morph_pca_flatness",
    # intensity statistics (original intensities)
    "firstorder_Energy": "stat_energy",
    "firstorder_Minimum": "stat_min",
    "firstorder_10Percentile": "stat_p10",
    "firstorder_90Percentile": "stat_p90",
    "firstorder_Maximum": "stat_max",
    "firstorder_Mean": "stat_mean",
    "firstorder_Median": "stat_median",
    "firstorder_InterquartileRange": "stat_iqr",
    "firstorder_Range": "stat_range",
    "firstorder_MeanAbsoluteDeviation": "stat_mad",
    "firstorder_RobustMeanAbsoluteDeviation": "stat_rmad",
    "firstorder_RootMeanSquared": "stat_rms",
    "firstorder_Skewness": "stat_skew",
    "firstorder_ExcessKurtosis": "stat_kurt",  # corrected: pyradiomics Kurtosis - 3
    "firstorder_Variance": "stat_var",
    # intensity histogram (discretised intensities)
    "firstorder_Entropy": "ih_entropy",
    "firstorder_Uniformity": "ih_uniformity",
    # grey level co-occurrence matrix, averaged over 13 directions
    "glcm_Autocorrelation": "cm_auto_corr_3D_avg",
    "glcm_JointAverage": "cm_joint_avg_3D_avg",
    "glcm_ClusterProminence": "cm_clust_prom_3D_avg",
    "glcm_ClusterShade": "cm_clust_shade_3D_avg",
    "glcm_ClusterTendency": "cm_clust_tend_3D_avg",
    "glcm_Contrast": "cm_contrast_3D_avg",
    "glcm_Correlation": "cm_corr_3D_avg",
    "glcm_DifferenceAverage": "cm_diff_avg_3D_avg",
    "glcm_DifferenceEntropy": "cm_diff_entr_3D_avg",
    "glcm_DifferenceVariance": "cm_diff_var_3D_avg",
    "glcm_JointEnergy": "cm_energy_3D_avg",
    "glcm_JointEntropy": "cm_joint_entr_3D_avg",
    "glcm_Imc1": "cm_info_corr1_3D_avg",
    "glcm_Imc2": "cm_info_corr2_3D_avg",
    "glcm_Idm": "cm_inv_diff_mom_3D_avg",
    "glcm_Idmn": "cm_inv_diff_mom_norm_3D_avg",
    "glcm_Id": "cm_inv_diff_3D_avg",
    "glcm_Idn": "cm_inv_diff_norm_3D_avg",
    "glcm_InverseVariance": "cm_inv_var_3D_avg",
    "glcm_MaximumProbability": "cm_joint_max_3D_avg",
    "glcm_SumAverage": "cm_sum_avg_3D_avg",
    "glcm_SumEntropy": "cm_sum_entr_3D_avg",
    "glcm_SumSquares": "cm_joint_var_3D_avg",
    # grey level run length matrix, averaged over 13 directions
    "glrlm_ShortRunEmphasis": "rlm_sre_3D_avg",
    "glrlm_LongRunEmphasis": "rlm_lre_3D_avg",
    "glrlm_LowGrayLevelRunEmphasis": "rlm_lgre_3D_avg",
    "glrlm_HighGrayLevelRunEmphasis": "rlm_hgre_3D_avg",
    "glrlm_ShortRunLowGrayLevelEmphasis": "rlm_srlge_3D_avg",
    "glrlm_ShortRunHighGrayLevelEmphasis": "rlm_srhge_3D_avg",
    "glrlm_LongRunLowGrayLevelEmphasis": "rlm_lrlge_3D_avg",
    "glrlm_LongRunHighGrayLevelEmphasis": "rlm_lrhge_3D_avg",
    "glrlm_GrayLevelNonUniformity": "rlm_glnu_3D_avg",
    "glrlm_GrayLevelNonUniformityNormalized": "rlm_glnu_norm_3D_avg",
    "glrlm_RunLengthNonUniformity": "rlm_rlnu_3D_avg",
    "glrlm_RunLengthNonUniformityNormalized": "rlm_rlnu_norm_3D_avg",
    "glrlm_RunPercentage": "rlm_r_perc_3D_avg",
    "glrlm_GrayLevelVariance": "rlm_gl_var_3D_avg",
    "glrlm_RunVariance": "rlm_rl_var_3D_avg",
    "glrlm_RunEntropy": "rlm_rl_entr_3D_avg",
    # grey level size zone matrix (26-connected zones)
    "glszm_SmallAreaEmphasis": "szm_sze_3D",
    "glszm_LargeAreaEmphasis": "szm_lze_3D",
    "glszm_LowGrayLevelZoneEmphasis": "szm_lgze_3D",
    "glszm_HighGrayLevelZoneEmphasis": "szm_hgze_3D",
    "glszm_SmallAreaLowGrayLevelEmphasis": "szm_szlge_3D",
    "glszm_SmallAreaHighGrayLevelEmphasis": "szm_szhge_3D",
    "glszm_LargeAreaLowGrayLevelEmphasis": "szm_lzlge_3D",
    "glszm_LargeAreaHighGrayLevelEmphasis": "szm_lzhge_3D",
    "glszm_GrayLevelNonUniformity": "szm_glnu_3D",
    "glszm_GrayLevelNonUniformityNormalized": "szm_glnu_norm_3D",
    "glszm_SizeZoneNonUniformity": "szm_zsnu_3D",
    "glszm_SizeZoneNonUniformityNormalized": "szm_zsnu_norm_3D",
    "glszm_ZonePercentage": "szm_z_perc_3D",
    "glszm_GrayLevelVariance": "szm_gl_var_3D",
    "glszm_ZoneVariance": "szm_zs_var_3D",
    "glszm_ZoneEntropy": "szm_zs_entr_3D",
    # grey level dependence matrix = IBSI NGLDM (alpha 0, distance 1)
    "gldm_SmallDependenceEmphasis": "ngl_lde_3D",
    "gldm_LargeDependenceEmphasis": "ngl_hde_3D",
    "gldm_LowGrayLevelEmphasis": "ngl_lgce_3D",
    "gldm_HighGrayLevelEmphasis": "ngl_hgce_3D",
    "gldm_SmallDependenceLowGrayLevelEmphasis": "ngl_ldlge_3D",
    "gldm_SmallDependenceHighGrayLevelEmphasis": "ngl_ldhge_3D",
    "gldm_LargeDependenceLowGrayLevelEmphasis": "ngl_hdlge_3D",
    "gldm_LargeDependenceHighGrayLevelEmphasis": "ngl_hdhge_3D",
    "gldm_GrayLevelNonUniformity": "ngl_glnu_3D",
    "gldm_DependenceNonUniformity": "ngl_dcnu_3D",
    "gldm_DependenceNonUniformityNormalized": "ngl_dcnu_norm_3D",
    "gldm_GrayLevelVariance": "ngl_gl_var_3D",
    "gldm_DependenceVariance": "ngl_dc_var_3D",
    "gldm_DependenceEntropy": "ngl_dc_entr_3D",
    # neighbourhood grey tone difference matrix
    "ngtdm_Coarseness": "ngt_coarseness_3D",
    "ngtdm_Contrast": "ngt_contrast_3D",
    "ngtdm_Busyness": "ngt_busyness_3D",
    "ngtdm_Complexity": "ngt_complexity_3D",
    "ngtdm_Strength": "ngt_strength_3D",
}

# reported features without an IBSI 1 counterpart, with the reason
NON_IBSI: dict[str, str] = {
    "shape_Maximum2DDiameterSlice": "no IBSI 2-D diameter",
    "shape_Maximum2DDiameterColumn": "no IBSI 2-D diameter",
    "shape_Maximum2DDiameterRow": "no IBSI 2-D diameter",
    "firstorder_TotalEnergy": "pyradiomics only: energy times voxel volume",
    "glcm_MCC": "pyradiomics only: maximal correlation coefficient",
}

CROP_MARGIN_VOXELS = 6  # margin kept around the mask for interpolation and texture
_AXIS_LENGTHS = ("shape_MajorAxisLength", "shape_MinorAxisLength", "shape_LeastAxisLength")


def pyradiomics_settings(settings: Mapping) -> dict:
    """pyradiomics extractor settings from the params.yaml ``imaging_features.radiomics``.

    Keys read: ``resampled_spacing_mm`` ([x, y, z] or null), ``interpolator``,
    ``resegment_range_hu`` ([low, high] or null), ``bin_width`` (grey levels; HU for CT),
    optional ``bin_count`` (a fixed number of bins instead of the bin width: for images
    without a physical unit, e.g. z-scored MR, :mod:`pmed.imaging.preprocess`).
    Resampling is done by :func:`resample_to_grid` before pyradiomics (whose own grid
    depends on where the image starts), so no ``resampledPixelSpacing`` is passed.
    """
    for key in ("resampled_spacing_mm", "interpolator", "resegment_range_hu", "bin_width"):
        if key not in settings:
            raise KeyError(f"imaging_features.radiomics: missing key {key!r}")
    if settings["interpolator"] not in INTERPOLATORS:
        raise ValueError(f"imaging_features.radiomics.interpolator: expected one of "
                         f"{INTERPOLATORS}, got {settings['interpolator']!r}")
    out = {
        "binWidth": float(settings["bin_width"]),
        "interpolator": settings["interpolator"],
        "label": 1,
        "additionalInfo": False,  # diagnostics (image hashes etc.) take longer than features
    }
    if settings.get("bin_count") is not None:
        out["binCount"] = int(settings["bin_count"])
        del out["binWidth"]
    if settings["resegment_range_hu"] is not None:
        low, high = (float(v) for v in settings["resegment_range_hu"])
        out["resegmentRange"] = [low, high]
    return out


@dataclass
class Extractor:
    """A configured pyradiomics extractor plus the resampling done before it."""

    pyradiomics: featureextractor.RadiomicsFeatureExtractor
    spacing_mm: tuple[float, float, float] | None  # isotropic target (x, y, z); None = keep
    interpolator: int  # SimpleITK interpolator for the image (the mask uses nearest neighbour)


def make_extractor(settings: Mapping) -> Extractor:
    """An :class:`Extractor` with the feature classes and image types of ``settings``.

    ``settings['feature_classes']`` lists pyradiomics classes (default features of each);
    ``settings['image_types']`` maps pyradiomics image types to their options,
    e.g. ``{"Original": {}, "LoG": {"sigma": [2.0]}}``.
    """
    unknown = sorted(set(settings["feature_classes"]) - set(FEATURE_CLASSES))
    if unknown:
        raise ValueError(f"imaging_features.radiomics.feature_classes: unknown {unknown}; "
                         f"expected a subset of {FEATURE_CLASSES}")
    extractor = featureextractor.RadiomicsFeatureExtractor(**pyradiomics_settings(settings))
    extractor.disableAllFeatures()
    for name in settings["feature_classes"]:
        extractor.enableFeatureClassByName(name)
    extractor.disableAllImageTypes()
    for image_type, options in settings["image_types"].items():
        extractor.enableImageTypeByName(image_type, customArgs=dict(options or {}))
    spacing = settings["resampled_spacing_mm"]
    return Extractor(
        extractor,
        None if spacing is None else tuple(float(v) for v in spacing),
        getattr(sitk, settings["interpolator"]),
    )


def extract_features(extractor: Extractor, image: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    """IBSI-corrected features of one image and mask, keyed ``<image>_<class>_<feature>``.

    ``image`` in HU, ``mask`` binary (1 = tumour) with the image geometry. The pair is
    cropped around the mask and, if configured, resampled (:func:`resample_to_grid`).
    Kurtosis is returned as excess kurtosis (``..._firstorder_ExcessKurtosis``), PCA axis
    lengths with the N - 1 covariance (module docstring).
    """
    anchor = image.GetOrigin()
    image, mask = crop_to_mask(image, mask, CROP_MARGIN_VOXELS)
    if extractor.spacing_mm is not None:
        image, mask = resample_to_grid(image, mask, extractor.spacing_mm,
                                       extractor.interpolator, anchor)
    result = extractor.pyradiomics.execute(image, mask, label=1)
    n_voxels = _shape_voxel_count(result, image.GetSpacing())
    features: dict[str, float] = {}
    for key, value in result.items():
        if key.startswith("diagnostics_"):
            continue
        image_type, cls, name = key.split("_", 2)
        value = float(value)
        if cls == "firstorder" and name == "Kurtosis":
            key, value = f"{image_type}_firstorder_ExcessKurtosis", value - 3.0
        elif f"{cls}_{name}" in _AXIS_LENGTHS:
            value *= np.sqrt(n_voxels / (n_voxels - 1.0)) if n_voxels > 1 else np.nan
        features[key] = value
    return features


def resample_to_grid(
    image: sitk.Image, mask: sitk.Image, spacing_mm, interpolator: int, anchor_mm,
) -> tuple[sitk.Image, sitk.Image]:
    """Image and mask resampled to ``spacing_mm`` on a grid anchored at ``anchor_mm``.

    The new voxel centres are ``anchor + direction @ (k * spacing)`` for integer k (the
    anchor is the uncropped image's origin), covering the physical extent of ``image``;
    so a crop never shifts the grid and features do not depend on it. Image: the given
    interpolator; mask: nearest neighbour (as pyradiomics does).
    """
    direction = np.array(image.GetDirection()).reshape(3, 3)
    old = np.array(image.GetSpacing())
    new = np.array(spacing_mm, dtype=float)
    start = direction.T @ (np.array(image.GetOrigin()) - np.array(anchor_mm))
    low = start - 0.5 * old  # outer voxel edges along the image axes, mm from the anchor
    high = start + (np.array(image.GetSize()) - 0.5) * old
    k_low = np.ceil(low / new - 1e-6)
    k_high = np.floor(high / new + 1e-6)
    reference = sitk.Image([int(n) for n in k_high - k_low + 1], sitk.sitkUInt8)
    reference.SetSpacing(tuple(new))
    reference.SetDirection(image.GetDirection())
    reference.SetOrigin(tuple(np.array(anchor_mm) + direction @ (k_low * new)))
    identity = sitk.Transform()
    resampled = sitk.Resample(image, reference, identity, interpolator, -1024.0, sitk.sitkFloat32)
    resampled_mask = sitk.Resample(mask, reference, identity, sitk.sitkNearestNeighbor, 0)
    return resampled, resampled_mask


def _shape_voxel_count(result: Mapping, spacing) -> float:
    """Voxels of the mask the shape class used: VoxelVolume / voxel volume (pyradiomics
    VoxelVolume is exactly N times the voxel volume, after any resampling)."""
    key = next((k for k in result if k.endswith("_shape_VoxelVolume")), None)
    if key is None:
        return float("nan")
    return float(np.round(float(result[key]) / float(np.prod(spacing))))


def crop_to_mask(image: sitk.Image, mask: sitk.Image, margin: int) -> tuple[sitk.Image, sitk.Image]:
    """Image and mask cropped to the mask's bounding box plus ``margin`` voxels per side.

    pyradiomics crops likewise; cropping first lets resampling work on far fewer voxels.
    """
    array = sitk.GetArrayViewFromImage(mask)
    nonzero = np.nonzero(array)
    if not nonzero[0].size:
        return image, mask
    size = image.GetSize()
    lower = [max(0, int(nonzero[2 - d].min()) - margin) for d in range(3)]
    upper = [min(size[d], int(nonzero[2 - d].max()) + margin + 1) for d in range(3)]
    extent = [u - lo for u, lo in zip(upper, lower, strict=True)]
    return (sitk.RegionOfInterest(image, extent, lower), sitk.RegionOfInterest(mask, extent, lower))


def feature_catalog(features: list[str]) -> pd.DataFrame:
    """One row per reported feature: its class, IBSI tag and whether it is IBSI-verified.

    Columns: feature, image_type, feature_class, ibsi_tag (empty if none), ibsi_verified
    (bool: mapped in :data:`IBSI_TAGS` and computed on the unfiltered image), note.
    """
    rows = []
    for feature in features:
        image_type, cls, name = feature.split("_", 2)
        key = f"{cls}_{name}"
        tag = IBSI_TAGS.get(key, "")
        if key in NON_IBSI:
            note = NON_IBSI[key]
        elif not tag:
            raise KeyError(f"feature {feature!r} is neither in IBSI_TAGS nor in NON_IBSI")
        elif image_type != "original":
            note = "filtered image: IBSI 2, not verified"
        elif key == "firstorder_ExcessKurtosis":
            note = "pyradiomics Kurtosis - 3"
        elif key in _AXIS_LENGTHS:
            note = "pyradiomics value x sqrt(N / (N - 1))"
        else:
            note = ""
        rows.append({
            "feature": feature, "image_type": image_type, "feature_class": cls,
            "ibsi_tag": tag, "ibsi_verified": bool(tag) and image_type == "original",
            "note": note,
        })
    return pd.DataFrame(rows, columns=["feature", "image_type", "feature_class", "ibsi_tag",
                                       "ibsi_verified", "note"])


def settings_hash(settings: Mapping) -> str:
    """First 12 hex digits of SHA-256 over the canonical JSON of ``settings`` and the
    pyradiomics version: the cache key part that changes when results would change."""
    payload = json.dumps({"settings": settings, "pyradiomics": radiomics.__version__},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]
