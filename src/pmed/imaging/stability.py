"""Feature stability: image/mask perturbations and the intraclass correlation with its CI.

Each image of a subset is re-analysed under small perturbations (Zwanenburg et al., Sci Rep
2019;9:614): mask eroded and dilated by one voxel, added Gaussian noise, and a sub-voxel
translation of image and mask together. The conditions play the role of the k "raters" of
Shrout & Fleiss (1979), the images the n "targets". A feature is stable when the LOWER bound
of the 95% CI of its ICC is at least the threshold in params, and its reliability class
(Koo & Li 2016: < 0.5 poor, 0.5-0.75 moderate, 0.75-0.9 good, > 0.9 excellent) is read
off the lower bound too: a point estimate from 30 images cannot show more than its CI.

ICC(3,1), two-way mixed effects, consistency, single measurement (Shrout & Fleiss 1979):

    ICC(3,1) = (BMS - EMS) / (BMS + (k - 1) EMS)

ICC(2,1), two-way random effects, absolute agreement, single measurement:

    ICC(2,1) = (BMS - EMS) / (BMS + (k - 1) EMS + k (JMS - EMS) / n)

with BMS the between-targets mean square (df n - 1), JMS the between-raters mean square
(df k - 1) and EMS the residual mean square (df (n - 1)(k - 1)) of the two-way ANOVA.
ICC(3,1) is the default: perturbations such as dilation shift every image alike (a fixed
"rater" effect) and models standardise features, so consistency is what matters.

Confidence intervals are the F-distribution intervals of Shrout & Fleiss (1979) and McGraw &
Wong (1996, Table 7; as R's ``psych::ICC`` and ``irr::icc``), with F0 = BMS / EMS,
df1 = n - 1, df2 = (n - 1)(k - 1) and F_q(a, b) the q quantile of F(a, b):

* ICC(3,1) = McGraw-Wong ICC(C,1): FL = F0 / F_{1-a/2}(df1, df2), FU = F0 F_{1-a/2}(df2, df1),
  bounds (FL - 1) / (FL + k - 1) and (FU - 1) / (FU + k - 1).
* ICC(2,1) = McGraw-Wong ICC(A,1): Satterthwaite degrees of freedom
  v = (a JMS + b EMS)^2 / ((a JMS)^2 / (k - 1) + (b EMS)^2 / df2) with
  a = k r / (n (1 - r)), b = 1 + k r (n - 1) / (n (1 - r)), r = ICC(2,1); F* = F_{1-a/2}(df1, v),
  F_* = F_{1-a/2}(v, df1); lower n (BMS - F* EMS) / (F* (k JMS + (k n - k - n) EMS) + n BMS),
  upper n (F_* BMS - EMS) / (k JMS + (k n - k - n) EMS + n F_* BMS).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import stats

ICC_TYPES = ("3,1", "2,1")
PERTURBATIONS = ("original", "erode", "dilate", "noise", "translate")
# Koo & Li (2016), J Chiropr Med 15:155: reliability classes by ICC (applied to the CI's lower bound)
KOO_LI = ((0.5, "poor"), (0.75, "moderate"), (0.9, "good"), (np.inf, "excellent"))


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


def icc_ci(ratings: np.ndarray, kind: str = "3,1", level: float = 0.95) -> tuple[float, float]:
    """``level`` confidence interval (lower, upper) of :func:`icc` (formulas: module docstring).

    NaN bounds when the ICC is NaN (no variation at all); an error-free table (EMS = 0,
    between-target variation) has the interval (1, 1).
    """
    value = icc(ratings, kind)
    if not 0 < level < 1:
        raise ValueError(f"icc_ci: level must be in (0, 1), got {level!r}")
    if np.isnan(value):
        return float("nan"), float("nan")
    x = np.asarray(ratings, dtype=float)
    n, k = x.shape
    bms, jms, ems = mean_squares(x)
    if ems <= 0:
        return 1.0, 1.0
    q = 1 - (1 - level) / 2
    df1, df2 = n - 1, (n - 1) * (k - 1)
    if kind == "3,1":
        f0 = bms / ems
        f_low = f0 / stats.f.ppf(q, df1, df2)
        f_up = f0 * stats.f.ppf(q, df2, df1)
        return float((f_low - 1) / (f_low + k - 1)), float((f_up - 1) / (f_up + k - 1))
    a = k * value / (n * (1 - value))
    b = 1 + k * value * (n - 1) / (n * (1 - value))
    v = (a * jms + b * ems) ** 2 / ((a * jms) ** 2 / (k - 1) + (b * ems) ** 2 / df2)
    f_star, f_star_up = stats.f.ppf(q, df1, v), stats.f.ppf(q, v, df1)
    rest = k * jms + (k * n - k - n) * ems
    lower = n * (bms - f_star * ems) / (f_star * rest + n * bms)
    upper = n * (f_star_up * bms - ems) / (rest + n * f_star_up * bms)
    return float(lower), float(upper)


def reliability_class(value: float) -> str:
    """Koo & Li (2016) class of an ICC value ("poor" ... "excellent"; "undefined" for NaN)."""
    if np.isnan(value):
        return "undefined"
    return next(label for bound, label in KOO_LI if value < bound)


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
    features: pd.DataFrame, threshold: float, kind: str = "3,1", level: float = 0.95
) -> pd.DataFrame:
    """ICC with its CI per feature from a long table of perturbed feature values.

    Parameters
    ----------
    features : DataFrame
        One row per (image, perturbation): columns ``image_occurrence_id``,
        ``perturbation`` and one numeric column per feature.
    threshold : float
        Features whose ICC CI lower bound is >= threshold are ``stable``; NaN ICC
        (constant feature) is not.
    kind : "3,1" or "2,1"
    level : float, confidence level of the interval.

    Returns
    -------
    DataFrame: feature, icc, icc_ci_low, icc_ci_high, reliability (Koo & Li class of the
    lower bound), stable (bool), n_images, n_perturbations, icc_type.
    """
    for col in ("image_occurrence_id", "perturbation"):
        if col not in features.columns:
            raise KeyError(f"perturbed features: missing column {col!r}")
    names = [c for c in features.columns if c not in ("image_occurrence_id", "perturbation")]
    rows = []
    for name in names:
        wide = features.pivot(index="image_occurrence_id", columns="perturbation", values=name)
        wide = wide.dropna()
        value, low, high = float("nan"), float("nan"), float("nan")
        if len(wide) >= 2:
            value = icc(wide.to_numpy(), kind)
            low, high = icc_ci(wide.to_numpy(), kind, level)
        rows.append({
            "feature": name, "icc": value, "icc_ci_low": low, "icc_ci_high": high,
            "reliability": reliability_class(low), "stable": bool(low >= threshold),
            "n_images": len(wide), "n_perturbations": wide.shape[1], "icc_type": f"ICC({kind})",
        })
    return pd.DataFrame(rows)
