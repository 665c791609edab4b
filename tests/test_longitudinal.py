"""Tests for pmed.longitudinal: OMOP extraction by hand, MixedLM slope recovery, landmarks."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from pmed import longitudinal as lg

T0 = dt.date(2020, 1, 1)


def _day(n):
    return T0 + dt.timedelta(days=n)


def _write_omop(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    m = pd.DataFrame(rows, columns=["person_id", "measurement_concept_id", "measurement_date",
                                    "value_as_number", "unit_concept_id"])
    m.insert(0, "measurement_id", np.arange(1, len(m) + 1))
    m["value_as_concept_id"] = 0
    m.to_parquet(folder / "measurement.parquet", index=False)
    pd.DataFrame({"ancestor_concept_id": [100, 100], "descendant_concept_id": [100, 101]}).to_parquet(
        folder / "concept_ancestor.parquet", index=False)


def test_load_trajectories_hand_example(tmp_path):
    """Unit conversion (g/L x 0.1), descendant concept, window, duplicates, plausibility."""
    rows = [
        (1, 100, _day(-10), 3.5, 8713),   # baseline, g/dL
        (1, 101, _day(30), 40.0, 8636),   # descendant concept, g/L -> 4.0
        (1, 101, _day(30), 40.0, 8636),   # exact duplicate: counted once
        (1, 100, _day(-40), 3.0, 8713),   # before the baseline window
        (1, 100, _day(60), -1.0, 8713),   # implausible
        (1, 100, _day(90), 3.9, 9999),    # unknown unit
        (1, 200, _day(20), 3.9, 8713),    # other lab
        (2, 100, _day(0), 3.0, 8713),
        (2, 100, _day(200), 3.3, 8713),   # after end of follow-up (time_days 150)
        (3, 100, _day(10), 3.0, 8713),    # person not in the cohort
    ]
    _write_omop(tmp_path, rows)
    cohort = pd.DataFrame({"person_id": [1, 2], "t0_date": [T0, T0], "treated": [1, 0],
                           "time_days": [400.0, 150.0]})
    traj = lg.load_trajectories(tmp_path, cohort, [100], {8713: 1.0, 8636: 0.1}, 30, 365, (0.5, 7.0))
    assert traj[["person_id", "day"]].values.tolist() == [[1, -10], [1, 30], [2, 0]]
    np.testing.assert_allclose(traj["value"], [3.5, 4.0, 3.0])
    np.testing.assert_allclose(traj["months"], [0.0, 1.0, 0.0])


def _simulate_trajectories(n_persons, seed, slope_diff=-8.0):
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(1, n_persons + 1):
        a = pid % 2
        b0 = 250 + rng.normal(0, 30)
        b1 = 4.0 + slope_diff * a + rng.normal(0, 3)
        months = np.r_[0.0, np.sort(rng.uniform(0.5, 12, 4))]
        for m in months:
            rows.append((pid, a, int(m * 30), m, b0 + b1 * m + rng.normal(0, 10)))
    return pd.DataFrame(rows, columns=["person_id", "treated", "day", "months", "value"])


def test_mixed_model_recovers_slope_difference():
    traj = _simulate_trajectories(300, seed=4)
    summary, res = lg.fit_slope_model(traj)
    d = summary["slope_difference"]
    assert d["ci_low"] < -8.0 < d["ci_high"]
    assert d["estimate"] == pytest.approx(-8.0, abs=1.0)
    c = summary["slope_chemotherapy"]
    assert c["ci_low"] < 4.0 < c["ci_high"]
    i = summary["slope_immunotherapy"]
    assert i["ci_low"] < -4.0 < i["ci_high"]
    assert summary["n_persons"] == 300 and summary["converged"]
    lines, means = lg.spaghetti_data(traj, res, n_per_group=10, seed=1)
    assert lines["trajectory"].nunique() == 20
    assert "person_id" not in lines.columns
    assert set(means["treated"]) == {0, 1}


def test_early_response_hand_example():
    traj = pd.DataFrame({
        "person_id": [1, 1, 1, 2, 2, 3, 4, 4],
        "treated": [1, 1, 1, 0, 0, 1, 0, 0],
        "day": [-5, 40, 85, 0, 80, 0, 0, 200],
        "months": 0.0,
        "value": [200.0, 190.0, 170.0, 100.0, 95.0, 300.0, 100.0, 50.0],
    })
    r = lg.early_response(traj, landmark_days=90, window_days=60, threshold_pct=10,
                          direction="decrease")
    # person 1: 170 vs 200 = -15% -> responder; 2: -5% -> not; 3: no landmark value;
    # 4: only a value after the landmark
    assert r["person_id"].tolist() == [1, 2]
    np.testing.assert_allclose(r["change_pct"], [-15.0, -5.0])
    assert r["responder"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="direction"):
        lg.early_response(traj, 90, 60, 10, "down")


def test_landmark_excludes_early_exits_and_resets_time():
    rng = np.random.default_rng(2)
    n = 400
    resp = rng.binomial(1, 0.5, n)
    treated = rng.binomial(1, 0.5, n)
    time = rng.exponential(300 / np.exp(-0.7 * resp), n)
    cohort = pd.DataFrame({"person_id": np.arange(n), "time_days": time,
                           "event": np.ones(n, int), "treated": treated})
    response = pd.DataFrame({"person_id": np.arange(n), "treated": treated, "responder": resp})
    summary, data = lg.landmark_analysis(cohort, response, landmark_days=90)
    assert (data["time_lm"] > 0).all()
    assert summary["n"] == int((time > 90).sum())
    np.testing.assert_allclose(data["time_lm"], data["time_days"] - 90)
    assert summary["hr_responder"]["ci_low"] < np.exp(-0.7) < summary["hr_responder"]["ci_high"]


def test_sample_persons_keeps_whole_trajectories_and_group_shares():
    traj = _simulate_trajectories(100, seed=1)
    sub = lg.sample_persons(traj, 40, seed=3)
    per = sub.groupby("person_id").size()
    assert per.size == 40 and (per == 5).all()
    assert sub.groupby("person_id")["treated"].first().sum() == 20
    assert lg.sample_persons(traj, None, seed=3) is traj
