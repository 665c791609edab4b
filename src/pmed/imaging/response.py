"""Tumour size and response: longest axial diameter, delta-radiomics, RECIST-like categories."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial.distance import pdist


def longest_axial_diameter_mm(mask: np.ndarray, pixel_spacing_mm: tuple[float, float]) -> float:
    """Longest in-plane diameter of a mask over all axial slices (RECIST-style), in mm.

    The diameter of a slice is the largest distance between the centres of two mask pixels
    of that slice (pixels on the region's edge suffice); the result is the maximum over
    slices. A single-pixel region has diameter 0; an empty mask gives NaN.

    Parameters
    ----------
    mask : ndarray of shape (n_slices, n_rows, n_cols)
        Binary tumour mask, axial slices first (numpy order z, y, x).
    pixel_spacing_mm : (row_spacing, col_spacing)
        In-plane spacing in mm: distance between rows (y) and between columns (x).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D (z, y, x); got shape {mask.shape}")
    dy, dx = (float(s) for s in pixel_spacing_mm)
    best = np.nan
    for plane in mask:
        if not plane.any():
            continue
        # edge pixels: in the mask with at least one 4-neighbour outside it
        padded = np.pad(plane, 1)
        interior = (
            padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        )
        rows, cols = np.nonzero(plane & ~interior)
        points = np.column_stack([rows * dy, cols * dx])
        diameter = float(pdist(points).max()) if len(points) > 1 else 0.0
        best = diameter if np.isnan(best) else max(best, diameter)
    return best


RESPONSE_CATEGORIES = ("PR", "SD", "PD")


def recist_category(
    baseline_mm: np.ndarray, followup_mm: np.ndarray, pr_pct: float = -30.0,
    pd_pct: float = 20.0, pd_min_increase_mm: float = 5.0,
) -> np.ndarray:
    """RECIST-like response of a single target lesion from its longest diameter.

    PR (partial response): change <= ``pr_pct`` % of baseline; PD (progressive disease):
    change >= ``pd_pct`` % and an absolute increase >= ``pd_min_increase_mm`` mm (RECIST 1.1
    uses 5 mm); SD (stable disease) otherwise. CR (complete response) needs a vanished
    lesion, i.e. an empty follow-up mask, which the imaging stage excludes, so it does not
    occur here; new lesions and non-target lesions are not assessed. NaN input -> None.

    Parameters
    ----------
    baseline_mm, followup_mm : array of shape (n,)
        Longest axial diameters (mm), baseline > 0.
    """
    base = np.asarray(baseline_mm, dtype=float)
    follow = np.asarray(followup_mm, dtype=float)
    if base.shape != follow.shape:
        raise ValueError(f"recist_category: shapes differ {base.shape} vs {follow.shape}")
    if np.any(base[~np.isnan(base)] <= 0):
        raise ValueError("recist_category: baseline diameters must be > 0 mm")
    change_pct = 100.0 * (follow - base) / base
    category = np.where(
        change_pct <= pr_pct, "PR",
        np.where((change_pct >= pd_pct) & (follow - base >= pd_min_increase_mm), "PD", "SD"),
    ).astype(object)
    category[np.isnan(change_pct)] = None
    return category


def delta_table(
    features: pd.DataFrame, key_features: list[str], pr_pct: float = -30.0,
    pd_pct: float = 20.0, pd_min_increase_mm: float = 5.0,
) -> pd.DataFrame:
    """Baseline-to-follow-up change per person with both scans (delta-radiomics).

    Parameters
    ----------
    features : DataFrame, one row per analysed scan
        Columns person_id, image_occurrence_id, timepoint ("baseline" | "followup"),
        days_from_t0, longest_diameter_mm, volume_ml and every name in ``key_features``.
    key_features : feature columns whose change is reported.

    Returns
    -------
    DataFrame, one row per person: person_id, baseline/followup image_occurrence_id,
    days_between (follow-up minus baseline scan day), volume_baseline_ml,
    volume_followup_ml, delta_volume_pct, diameter_baseline_mm, diameter_followup_mm,
    delta_diameter_pct, response (PR | SD | PD, :func:`recist_category`), and for each key
    feature ``delta_<feature>`` (follow-up minus baseline).
    """
    needed = ["person_id", "image_occurrence_id", "timepoint", "days_from_t0",
              "longest_diameter_mm", "volume_ml", *key_features]
    missing = [c for c in needed if c not in features.columns]
    if missing:
        raise KeyError(f"image features: missing columns {missing} for delta-radiomics")
    base = features[features["timepoint"] == "baseline"].set_index("person_id")
    follow = features[features["timepoint"] == "followup"].set_index("person_id")
    for name, part in (("baseline", base), ("followup", follow)):
        if part.index.duplicated().any():
            raise ValueError(f"image features: more than one {name} scan for a person")
    persons = base.index.intersection(follow.index).sort_values()
    b, f = base.loc[persons], follow.loc[persons]
    out = pd.DataFrame({
        "person_id": persons.to_numpy(),
        "baseline_image_occurrence_id": b["image_occurrence_id"].to_numpy(),
        "followup_image_occurrence_id": f["image_occurrence_id"].to_numpy(),
        "days_between": (f["days_from_t0"] - b["days_from_t0"]).to_numpy(),
        "volume_baseline_ml": b["volume_ml"].to_numpy(),
        "volume_followup_ml": f["volume_ml"].to_numpy(),
        "delta_volume_pct": (100.0 * (f["volume_ml"] / b["volume_ml"] - 1.0)).to_numpy(),
        "diameter_baseline_mm": b["longest_diameter_mm"].to_numpy(),
        "diameter_followup_mm": f["longest_diameter_mm"].to_numpy(),
    })
    out["delta_diameter_pct"] = 100.0 * (out["diameter_followup_mm"] / out["diameter_baseline_mm"] - 1.0)
    out["response"] = recist_category(out["diameter_baseline_mm"], out["diameter_followup_mm"],
                                      pr_pct, pd_pct, pd_min_increase_mm)
    for name in key_features:
        out[f"delta_{name}"] = (f[name] - b[name]).to_numpy()
    return out


CATEGORIES = ("PR", "SD", "PD")


def released_response_counts(
    response: pd.DataFrame, arm_of: pd.Series, n_cohort: int, min_cell: int,
) -> tuple[dict[str, str], pd.DataFrame]:
    """Report text for the response counts, protected together against small counts.

    ``response``: :func:`delta_table` output (person_id, response); ``arm_of``: treatment
    arm per person_id; ``n_cohort``: cohort size. Published: the cohort, the persons with
    both scans, the PR/SD/PD totals and the arm x category table. A reader also knows the
    persons without both scans (cohort minus with both: derived, never hidden as a
    complement) and that each category total is the sum of its column, so small counts
    are hidden with complements (:func:`pmed.privacy.release_counts`) on all of these
    relations at once. Returns ({"cohort", "with_both", "PR", "SD", "PD"}: text) and the
    arm x category table as text.
    """
    from pmed.privacy import release_counts

    arms = sorted(arm_of.dropna().unique())
    table = (response.assign(arm=response["person_id"].map(arm_of))
             .groupby(["arm", "response"]).size().unstack(fill_value=0)
             .reindex(index=arms, columns=list(CATEGORIES), fill_value=0))
    totals = [int((response["response"] == c).sum()) for c in CATEGORIES]
    n_both = len(response)
    cells = table.to_numpy().ravel().tolist()  # arm-major
    values = [n_cohort, n_both, *totals, n_cohort - n_both, *cells]
    first_cell = 6
    lines = [[0, 1, 5], [1, 2, 3, 4]]
    lines += [[2 + j, *(first_cell + a * 3 + j for a in range(len(arms)))] for j in range(3)]
    cost = [float(v) for v in values]
    cost[5] = np.inf
    text = release_counts(values, lines, min_cell, cost)
    summary = dict(zip(["cohort", "with_both", *CATEGORIES], text[:5], strict=True))
    shown = pd.DataFrame(np.array(text[first_cell:], dtype=object).reshape(len(arms), 3),
                         index=pd.Index(arms, name="treatment"), columns=list(CATEGORIES))
    return summary, shown
