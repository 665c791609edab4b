"""Feature stability: image/mask perturbations and the intraclass correlation ICC(3,1).

Each image of a subset is re-analysed under small perturbations (Zwanenburg et al., Sci Rep
2019;9:614): mask eroded and dilated by one voxel, added Gaussian noise, and a sub-voxel
translation of image and mask together. The conditions play the role of the k "raters" of
Shrout & Fleiss (1979), the images the n "targets"; a feature is stable when its ICC is at
least the threshold in params.

ICC(3,1), two-way mixed effects, consistency, single measurement (Shrout & Fleiss 1979):

    ICC(3,1) = (BMS - EMS) / (BMS + (k - 1) EMS)

ICC(2,1), two-way random effects, absolute agreement, single measurement:

    ICC(2,1) = (BMS - EMS) / (BMS + (k - 1) EMS + k (JMS - EMS) / n)

with BMS the between-targets mean square (df n - 1), JMS the between-raters mean square
(df k - 1) and EMS the residual mean square (df (n - 1)(k - 1)) of the two-way ANOVA.
ICC(3,1) is the default: perturbations such as dilation shift every image alike (a fixed
"rater" effect) and models standardise features, so consistency is what matters.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import SimpleITK as sitk

ICC_TYPES = ("3,1", "2,1")
PERTURBATIONS = ("original", "erode", "dilate", "noise", "translate")


def icc(ratings: np.ndarray, kind: str = "3,1") -> float:
    """Intraclass correlation of an (n targets, k raters) array (formulas: module docstring).

    Returns NaN when there is no between-target variation and no error (0 / 0).
    """
    x = np.asarray(ratings, dtype=float)
    if kind not in ICC_TYPES:
        raise ValueError(f"icc: kind must be one of {ICC_TYPES}, got {kind!r}")
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"icc: ratings must be (n >= 2 targets, k >= 2 raters); got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("icc: ratings must be finite")
    n, k = x.shape
    bms, jms, ems = mean_squares(x)
    if kind == "3,1":
        denominator = bms + (k - 1) * ems
    else:
        denominator = bms + (k - 1) * ems + k * (jms - ems) / n
    if denominator == 0:
        return float("nan")
    return float((bms - ems) / denominator)


def mean_squares(x: np.ndarray) -> tuple[float, float, float]:
    """Two-way ANOVA mean squares (BMS targets, JMS raters, EMS residual) of (n, k) data."""
    n, k = x.shape
    grand = x.mean()
    ss_targets = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_raters = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_error = ((x - grand) ** 2).sum() - ss_targets - ss_raters
    return (ss_targets / (n - 1), ss_raters / (k - 1), ss_error / ((n - 1) * (k - 1)))


def perturb(
    image: sitk.Image, mask: sitk.Image, kind: str, rng: np.random.Generator,
    noise_sd_hu: float = 10.0, shift_voxels: float = 0.5,
) -> tuple[sitk.Image, sitk.Image]:
    """One perturbed copy of (image in HU, binary mask); ``kind`` in :data:`PERTURBATIONS`.

    erode / dilate: mask by one voxel (3x3x3 ball); an erosion that would empty the mask
    returns the mask unchanged. noise: image + N(0, noise_sd_hu^2) per voxel. translate:
    image (B-spline) and mask (linear, then >= 0.5) resampled on their own grid shifted by
    ``shift_voxels`` of a voxel along every axis.
    """
    if kind == "original":
        return image, mask
    if kind in ("erode", "dilate"):
        op = sitk.BinaryErode if kind == "erode" else sitk.BinaryDilate
        changed = op(mask, [1, 1, 1], sitk.sitkBall, 0, 1)
        if not sitk.GetArrayViewFromImage(changed).any():
            return image, mask
        return image, changed
    if kind == "noise":
        noise = rng.normal(0.0, noise_sd_hu, size=sitk.GetArrayViewFromImage(image).shape)
        noisy = sitk.GetImageFromArray(sitk.GetArrayFromImage(image) + noise.astype(np.float32))
        noisy.CopyInformation(image)
        return noisy, mask
    if kind == "translate":
        offset = [shift_voxels * s for s in image.GetSpacing()]
        transform = sitk.TranslationTransform(3, offset)
        moved = sitk.Resample(image, image, transform, sitk.sitkBSpline, -1024.0, sitk.sitkFloat32)
        mask_f = sitk.Resample(sitk.Cast(mask, sitk.sitkFloat32), mask, transform, sitk.sitkLinear, 0.0)
        moved_mask = sitk.Cast(mask_f >= 0.5, sitk.sitkUInt8)
        if not sitk.GetArrayViewFromImage(moved_mask).any():
            return image, mask
        return moved, moved_mask
    raise ValueError(f"perturb: kind must be one of {PERTURBATIONS}, got {kind!r}")


def stability_table(
    features: pd.DataFrame, threshold: float, kind: str = "3,1"
) -> pd.DataFrame:
    """ICC per feature from a long table of perturbed feature values.

    Parameters
    ----------
    features : DataFrame
        One row per (image, perturbation): columns ``image_occurrence_id``,
        ``perturbation`` and one numeric column per feature.
    threshold : float
        Features with ICC >= threshold are ``stable``; NaN ICC (constant feature) is not.
    kind : "3,1" or "2,1"

    Returns
    -------
    DataFrame: feature, icc, stable (bool), n_images, n_perturbations, icc_type.
    """
    for col in ("image_occurrence_id", "perturbation"):
        if col not in features.columns:
            raise KeyError(f"perturbed features: missing column {col!r}")
    names = [c for c in features.columns if c not in ("image_occurrence_id", "perturbation")]
    rows = []
    for name in names:
        wide = features.pivot(index="image_occurrence_id", columns="perturbation", values=name)
        wide = wide.dropna()
        value = icc(wide.to_numpy(), kind) if len(wide) >= 2 else float("nan")
        rows.append({
            "feature": name, "icc": value, "stable": bool(value >= threshold),
            "n_images": len(wide), "n_perturbations": wide.shape[1], "icc_type": f"ICC({kind})",
        })
    return pd.DataFrame(rows)
