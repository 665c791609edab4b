"""ICC against Shrout & Fleiss (1979) and the perturbations."""

from __future__ import annotations

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest
import SimpleITK as sitk

from pmed.imaging import stability as st

# Shrout PE, Fleiss JL. Intraclass correlations: uses in assessing rater reliability.
# Psychol Bull 1979;86:420-428, Table 2: 6 targets (rows) rated by 4 judges (columns).
SHROUT_FLEISS = np.array([
    [9, 2, 5, 8],
    [6, 1, 3, 2],
    [8, 4, 6, 8],
    [7, 1, 2, 6],
    [10, 5, 6, 9],
    [6, 2, 4, 7],
])


def test_mean_squares_shrout_fleiss_table3():
    """Table 3 of Shrout & Fleiss: BMS 11.24, JMS 32.49, EMS 1.02."""
    npt.assert_allclose(st.mean_squares(SHROUT_FLEISS.astype(float)), [11.24, 32.49, 1.02], atol=0.005)


def test_icc_shrout_fleiss_table4():
    """Table 4: ICC(3,1) = .71, ICC(2,1) = .29.

    R: psych::ICC(matrix(c(9,6,8,7,10,6, 2,1,4,1,5,2, 5,3,6,2,6,4, 8,2,8,6,9,7), ncol = 4))
    gives ICC3 (single fixed raters) 0.71 and ICC2 (single random raters) 0.29; exact
    values from the unrounded mean squares BMS = 1349/120, JMS = 2339/72, EMS = 367/360:
    (BMS - EMS) / (BMS + 3 EMS) = 0.714841 and
    (BMS - EMS) / (BMS + 3 EMS + 4 (JMS - EMS) / 6) = 0.289764.
    """
    bms, jms, ems = 1349 / 120, 2339 / 72, 367 / 360
    npt.assert_allclose(st.mean_squares(SHROUT_FLEISS.astype(float)), [bms, jms, ems], rtol=1e-12)
    assert st.icc(SHROUT_FLEISS, "3,1") == pytest.approx(0.714841, abs=1e-6)
    assert st.icc(SHROUT_FLEISS, "2,1") == pytest.approx(0.289764, abs=1e-6)
    assert round(st.icc(SHROUT_FLEISS, "3,1"), 2) == 0.71
    assert round(st.icc(SHROUT_FLEISS, "2,1"), 2) == 0.29


def test_icc_edge_cases():
    perfect = np.array([[1.0, 1.0], [2.0, 2.0], [5.0, 5.0]])
    assert st.icc(perfect) == pytest.approx(1.0)
    shifted = perfect + np.array([0.0, 3.0])  # constant rater offset
    assert st.icc(shifted, "3,1") == pytest.approx(1.0)
    assert st.icc(shifted, "2,1") < 1.0
    assert np.isnan(st.icc(np.ones((4, 3))))
    with pytest.raises(ValueError, match="kind"):
        st.icc(perfect, "1,1")
    with pytest.raises(ValueError, match="n >= 2 targets"):
        st.icc(np.ones((1, 3)))


def test_stability_table_flags_threshold():
    rows = []
    for i, target in enumerate(SHROUT_FLEISS):
        for j, value in enumerate(target):
            rows.append({"image_occurrence_id": i, "perturbation": f"p{j}",
                         "sf": float(value), "exact": float(i), "flat": 1.0})
    table = st.stability_table(pd.DataFrame(rows), threshold=0.75).set_index("feature")
    assert table.loc["sf", "icc"] == pytest.approx(0.714841, abs=1e-6)
    assert not table.loc["sf", "stable"]
    assert table.loc["exact", "stable"]
    assert np.isnan(table.loc["flat", "icc"]) and not table.loc["flat", "stable"]
    assert table.loc["sf", "n_images"] == 6 and table.loc["sf", "n_perturbations"] == 4
    assert st.stability_table(pd.DataFrame(rows), threshold=0.7).set_index("feature").loc["sf", "stable"]


def _sphere() -> tuple[sitk.Image, sitk.Image]:
    z, y, x = np.mgrid[:20, :20, :20]
    inside = (z - 10) ** 2 + (y - 10) ** 2 + (x - 10) ** 2 <= 25
    image = sitk.GetImageFromArray(np.where(inside, 40.0, -800.0).astype(np.float32))
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    for im in (image, mask):
        im.SetSpacing((1.0, 1.0, 2.0))
    return image, mask


def test_perturbations():
    image, mask = _sphere()
    rng = np.random.default_rng(0)
    n = int(sitk.GetArrayFromImage(mask).sum())
    count = {k: int(sitk.GetArrayFromImage(st.perturb(image, mask, k, rng)[1]).sum())
             for k in st.PERTURBATIONS}
    assert count["original"] == n
    assert count["erode"] < n < count["dilate"]
    assert count["noise"] == n
    noisy = sitk.GetArrayFromImage(st.perturb(image, mask, "noise", rng, noise_sd_hu=10.0)[0])
    assert abs((noisy - sitk.GetArrayFromImage(image)).std() - 10.0) < 0.5
    moved_image, moved_mask = st.perturb(image, mask, "translate", rng, shift_voxels=0.5)
    assert moved_image.GetSize() == image.GetSize()
    assert abs(int(sitk.GetArrayFromImage(moved_mask).sum()) - n) < 0.3 * n
    with pytest.raises(ValueError, match="kind"):
        st.perturb(image, mask, "rotate", rng)
