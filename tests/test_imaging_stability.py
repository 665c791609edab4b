"""ICC and its CI against Shrout & Fleiss (1979) and R psych::ICC, coverage, perturbations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest
import SimpleITK as sitk

from pmed.imaging import stability as st

R_REFERENCE = Path(__file__).parent / "data" / "r_reference" / "icc"  # tests/r/icc_reference.R

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


def test_icc_ci_shrout_fleiss_psych():
    """psych::ICC on the Shrout & Fleiss table: ICC2 0.29 (0.019, 0.76), ICC3 0.71 (0.34, 0.95)."""
    npt.assert_allclose(st.icc_ci(SHROUT_FLEISS, "2,1"), [0.018787, 0.761084], atol=1e-6)
    npt.assert_allclose(st.icc_ci(SHROUT_FLEISS, "3,1"), [0.342465, 0.945858], atol=1e-6)
    # psych::ICC(sf, alpha = 0.1): 90% intervals
    npt.assert_allclose(st.icc_ci(SHROUT_FLEISS, "3,1", level=0.9), [0.41183413, 0.9258328], atol=1e-7)
    npt.assert_allclose(st.icc_ci(SHROUT_FLEISS, "2,1", level=0.9), [0.04290119, 0.6910706], atol=1e-7)


def test_icc_and_ci_equal_r_psych():
    """Every data set of tests/r/icc_reference.R: ICC and 95% CI equal psych::ICC to 1e-9."""
    data = pd.read_csv(R_REFERENCE / "icc_data.csv")
    reference = pd.read_csv(R_REFERENCE / "icc_psych.csv", dtype={"kind": str})
    assert set(reference["dataset"]) == set(data["dataset"]) and len(reference) == 8
    for _, ref in reference.iterrows():
        x = data[data["dataset"] == ref["dataset"]].pivot(index="target", columns="rater", values="value")
        assert st.icc(x.to_numpy(), ref["kind"]) == pytest.approx(ref["icc"], abs=1e-9)
        npt.assert_allclose(st.icc_ci(x.to_numpy(), ref["kind"]), [ref["lower"], ref["upper"]], atol=1e-9)


@pytest.mark.parametrize("kind", ["3,1", "2,1"])
def test_icc_ci_coverage_over_draws(kind):
    """2,000 simulated 30 images x 5 perturbations (target SD 1, rater SD 0.3, error SD 0.4):
    the ICC(3,1) interval is exact under normality (coverage 95% +- 3.5 MC SE); the ICC(2,1)
    interval is Satterthwaite's approximation (at least 92%)."""
    rng = np.random.default_rng(20261129)
    n, k, sd_t, sd_r, sd_e = 30, 5, 1.0, 0.3, 0.4
    truth = sd_t**2 / (sd_t**2 + sd_e**2) if kind == "3,1" else sd_t**2 / (sd_t**2 + sd_r**2 + sd_e**2)
    draws = 2000
    hits = 0
    for _ in range(draws):
        x = rng.normal(0, sd_t, (n, 1)) + rng.normal(0, sd_r, (1, k)) + rng.normal(0, sd_e, (n, k))
        low, high = st.icc_ci(x, kind)
        hits += low <= truth <= high
    coverage, mc_se = hits / draws, np.sqrt(0.95 * 0.05 / draws)
    if kind == "3,1":
        assert abs(coverage - 0.95) < 3.5 * mc_se, coverage
    else:
        assert coverage > 0.92, coverage


def test_reliability_classes_koo_li():
    assert [st.reliability_class(v) for v in (0.2, 0.5, 0.74, 0.75, 0.89, 0.9, 0.99)] == [
        "poor", "moderate", "moderate", "good", "good", "excellent", "excellent"]
    assert st.reliability_class(float("nan")) == "undefined"


def test_icc_edge_cases():
    perfect = np.array([[1.0, 1.0], [2.0, 2.0], [5.0, 5.0]])
    assert st.icc(perfect) == pytest.approx(1.0)
    shifted = perfect + np.array([0.0, 3.0])  # constant rater offset
    assert st.icc(shifted, "3,1") == pytest.approx(1.0)
    assert st.icc(shifted, "2,1") < 1.0
    assert np.isnan(st.icc(np.ones((4, 3))))
    assert all(np.isnan(st.icc_ci(np.ones((4, 3)))))
    assert st.icc_ci(shifted, "3,1") == (1.0, 1.0)  # no error: the interval is the point
    with pytest.raises(ValueError, match="level"):
        st.icc_ci(SHROUT_FLEISS, level=95)
    with pytest.raises(ValueError, match="kind"):
        st.icc(perfect, "1,1")
    with pytest.raises(ValueError, match="n >= 2 targets"):
        st.icc(np.ones((1, 3)))


def test_stability_table_judges_the_lower_bound():
    rows = []
    for i, target in enumerate(SHROUT_FLEISS):
        for j, value in enumerate(target):
            rows.append({"image_occurrence_id": i, "perturbation": f"p{j}",
                         "sf": float(value), "exact": float(i), "flat": 1.0})
    table = st.stability_table(pd.DataFrame(rows), threshold=0.75).set_index("feature")
    assert table.loc["sf", "icc"] == pytest.approx(0.714841, abs=1e-6)
    npt.assert_allclose(table.loc["sf", ["icc_ci_low", "icc_ci_high"]].astype(float), [0.342465, 0.945858], atol=1e-6)
    assert table.loc["sf", "reliability"] == "poor"  # lower bound 0.34, point estimate 0.71
    assert not table.loc["sf", "stable"]
    assert table.loc["exact", "stable"] and table.loc["exact", "reliability"] == "excellent"
    assert np.isnan(table.loc["flat", "icc"]) and not table.loc["flat", "stable"]
    assert table.loc["flat", "reliability"] == "undefined"
    assert table.loc["sf", "n_images"] == 6 and table.loc["sf", "n_perturbations"] == 4
    # a point estimate above the threshold is not enough: the lower bound 0.34 decides
    assert not st.stability_table(pd.DataFrame(rows), threshold=0.7).set_index("feature").loc["sf", "stable"]
    assert st.stability_table(pd.DataFrame(rows), threshold=0.3).set_index("feature").loc["sf", "stable"]


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
