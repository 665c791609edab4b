"""Tumour size and response: longest axial diameter, delta-radiomics, RECIST-like categories."""

from __future__ import annotations

import numpy as np
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
