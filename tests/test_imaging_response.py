"""Longest diameter, RECIST-like categories at the thresholds, delta-radiomics table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pmed.imaging.response import delta_table, longest_axial_diameter_mm, recist_category


def test_longest_diameter_rectangle_and_disc():
    mask = np.zeros((3, 20, 20), bool)
    mask[1, 2:7, 3:6] = True  # 5 rows x 3 cols: centres 4 rows and 2 cols apart
    assert longest_axial_diameter_mm(mask, (2.0, 1.0)) == pytest.approx(np.hypot(8.0, 2.0))
    yy, xx = np.mgrid[:20, :20]
    mask[2] = (yy - 10) ** 2 + (xx - 10) ** 2 <= 36  # radius 6 pixels, wins
    assert longest_axial_diameter_mm(mask, (1.0, 1.0)) == pytest.approx(12.0)
    single = np.zeros((1, 4, 4), bool)
    single[0, 1, 1] = True
    assert longest_axial_diameter_mm(single, (1.0, 1.0)) == 0.0
    assert np.isnan(longest_axial_diameter_mm(np.zeros((2, 3, 3), bool), (1.0, 1.0)))


def test_recist_thresholds():
    """PR <= -30 %, PD >= +20 % and >= 5 mm, else SD; exactly at a threshold counts."""
    base = np.array([50.0, 50.0, 50.0, 50.0, 50.0, 10.0, 50.0, np.nan])
    follow = np.array([35.0, 35.1, 60.0, 59.9, 80.0, 12.0, 50.0, 40.0])
    assert recist_category(base, follow).tolist() == [
        "PR", "SD", "PD", "SD", "PD", "SD", "SD", None]
    # the 5 mm rule: +20 % of 10 mm is only 2 mm -> SD; without it -> PD
    assert recist_category(base[5:6], follow[5:6], pd_min_increase_mm=0.0).tolist() == ["PD"]
    with pytest.raises(ValueError, match="> 0 mm"):
        recist_category(np.array([0.0]), np.array([1.0]))


def test_delta_table():
    feats = pd.DataFrame({
        "person_id": [1, 1, 2, 3, 3],
        "image_occurrence_id": [10, 11, 20, 30, 31],
        "timepoint": ["baseline", "followup", "baseline", "baseline", "followup"],
        "days_from_t0": [-5, 60, -3, -10, 70],
        "longest_diameter_mm": [40.0, 20.0, 30.0, 30.0, 40.0],
        "volume_ml": [10.0, 5.0, 8.0, 6.0, 9.0],
        "feat": [1.0, 3.0, 2.0, 5.0, 4.0],
    })
    out = delta_table(feats, ["feat"])
    assert out["person_id"].tolist() == [1, 3]
    assert out["response"].tolist() == ["PR", "PD"]
    assert out["delta_volume_pct"].tolist() == pytest.approx([-50.0, 50.0])
    assert out["delta_diameter_pct"].tolist() == pytest.approx([-50.0, 100.0 / 3])
    assert out["days_between"].tolist() == [65, 80]
    assert out["delta_feat"].tolist() == [2.0, -1.0]
    with pytest.raises(KeyError, match="missing columns"):
        delta_table(feats.drop(columns="volume_ml"), ["feat"])


def test_released_response_counts_protect_small_cells():
    """A small PR count in one arm is hidden together with a complement in its column, so
    it cannot be recovered from the PR total; with min_cell 1 every count is shown."""
    from pmed.imaging.response import released_response_counts

    arms = {**{i: "chemo" for i in range(40)}, **{i: "io" for i in range(40, 80)}}
    labels = ["PR"] * 3 + ["SD"] * 20 + ["PD"] * 17 + ["PR"] * 15 + ["SD"] * 15 + ["PD"] * 10
    resp = pd.DataFrame({"person_id": range(80), "response": labels})
    summary, table = released_response_counts(resp, pd.Series(arms), 100, min_cell=1)
    assert summary == {"cohort": "100", "with_both": "80", "PR": "18", "SD": "35", "PD": "27"}
    assert table.loc["chemo"].tolist() == ["3", "20", "17"]
    summary, table = released_response_counts(resp, pd.Series(arms), 100, min_cell=11)
    assert table.loc["chemo", "PR"] == "<11"
    pr_column = [table.loc["io", "PR"], summary["PR"]]
    assert not all(v.isdigit() for v in pr_column)  # 3 = 18 - 15 is not derivable
