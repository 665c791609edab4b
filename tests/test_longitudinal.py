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
    cohort = pd.DataFrame({"person_id": [1, 2], "t0_date": [T0, T0], "treatment": ["io", "chemo"],
                           "time_days": [400.0, 150.0]})
    traj = lg.load_trajectories(tmp_path, cohort, [100], {8713: 1.0, 8636: 0.1}, 30, 365, (0.5, 7.0))
    assert traj[["person_id", "day"]].values.tolist() == [[1, -10], [1, 30], [2, 0]]
    np.testing.assert_allclose(traj["value"], [3.5, 4.0, 3.0])
    np.testing.assert_allclose(traj["months"], [0.0, 1.0, 0.0])


ARMS = ["chemo", "io", "chemo_io"]
TRUE_DIFF = {"io": -0.08, "chemo_io": -0.04}  # log(lab) per 30 days vs chemo


def _simulate_trajectories(n_persons, seed, confounded=False):
    """Log-normal lab; slope of log(lab) 0.03/month on chemo plus TRUE_DIFF; baseline z raises
    the slope by 0.05 per unit and (when ``confounded``) makes io more likely."""
    rng = np.random.default_rng(seed)
    rows, base = [], {}
    for pid in range(1, n_persons + 1):
        z = rng.normal()
        p_io = 1 / (1 + np.exp(-1.5 * z)) if confounded else 0.5
        arm = "io" if rng.random() < p_io else rng.choice(["chemo", "chemo_io"])
        base[pid] = z
        b0 = np.log(250) + rng.normal(0, 0.2)
        b1 = 0.03 + TRUE_DIFF.get(arm, 0.0) + 0.05 * z + rng.normal(0, 0.02)
        months = np.r_[0.0, np.sort(rng.uniform(0.5, 12, 4))]
        for m in months:
            rows.append((pid, arm, int(m * 30), m, np.exp(b0 + b1 * m + rng.normal(0, 0.05))))
    traj = pd.DataFrame(rows, columns=["person_id", "treatment", "day", "months", "value"])
    return traj, pd.DataFrame({"z": base}).rename_axis("person_id")


def test_mixed_model_recovers_adjusted_log_slope_differences():
    """Confounding by z: the z-adjusted model covers the true differences; unadjusted is biased."""
    traj, base = _simulate_trajectories(250, seed=4, confounded=True)
    summary, res = lg.fit_slope_model(traj, ARMS, base)
    for a, true in TRUE_DIFF.items():
        d = summary[f"slope_difference_{a}"]
        assert d["ci_low"] < true < d["ci_high"], (a, d)
    assert summary["scale"] == "log" and summary["converged"] and summary["n_persons"] == 250
    crude, _ = lg.fit_slope_model(traj, ARMS)
    assert abs(crude["slope_difference_io"]["estimate"] - TRUE_DIFF["io"]) > 0.02
    means = lg.fitted_means(res, ARMS, 12)
    assert set(means["treatment"]) == set(ARMS) and (means["fitted"] > 0).all()
    with pytest.raises(ValueError, match="reference"):
        lg.fit_slope_model(traj[traj["treatment"] != "chemo"], ARMS)


def test_trajectory_bands_are_aggregates_with_small_cells_dropped():
    traj = pd.DataFrame({
        "person_id": [1, 1, 2, 2, 3, 3, 3],
        "treatment": ["io", "io", "io", "io", "io", "io", "io"],
        "day": [0, 35, 0, 40, 0, 45, 50],
        "months": [0, 35 / 30, 0, 40 / 30, 0, 1.5, 50 / 30],
        "value": [100.0, 80.0, 200.0, 150.0, 300.0, 10.0, 120.0],
    })
    bands = lg.trajectory_bands(traj, min_cell_size=3)
    # month 0: 100, 200, 300; month 1 bin: 80, 150, 120 (person 3's last value in the bin)
    assert bands["months"].tolist() == [0.0, 1.5]
    np.testing.assert_allclose(bands["median"], [200.0, 120.0])
    np.testing.assert_allclose(bands["q25"], [150.0, 100.0])
    assert "person_id" not in bands.columns
    assert lg.trajectory_bands(traj, min_cell_size=4).empty


def test_early_response_hand_example():
    traj = pd.DataFrame({
        "person_id": [1, 1, 1, 2, 2, 3, 4, 4],
        "treatment": ["io", "io", "io", "chemo", "chemo", "io", "chemo", "chemo"],
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
    arm_io = rng.binomial(1, 0.5, n)
    time = rng.exponential(300 / np.exp(-0.7 * resp + 0.3 * arm_io), n)
    cohort = pd.DataFrame({"person_id": np.arange(n), "time_days": time,
                           "event": np.ones(n, int), "arm_io": arm_io})
    response = pd.DataFrame({"person_id": np.arange(n), "responder": resp})
    summary, data = lg.landmark_analysis(cohort, response, landmark_days=90)
    assert (data["time_lm"] > 0).all()
    assert summary["n"] == int((time > 90).sum())
    np.testing.assert_allclose(data["time_lm"], data["time_days"] - 90)
    assert summary["hr_responder"]["ci_low"] < np.exp(-0.7) < summary["hr_responder"]["ci_high"]


def test_sample_persons_keeps_whole_trajectories_and_group_shares():
    traj, _ = _simulate_trajectories(100, seed=1)
    sub = lg.sample_persons(traj, 40, seed=3)
    per = sub.groupby("person_id").size()
    assert per.size == 40 and (per == 5).all()
    full = traj.groupby("person_id")["treatment"].first().value_counts()
    kept = sub.groupby("person_id")["treatment"].first().value_counts()
    assert (kept - (0.4 * full).round()).abs().max() == 0
    assert lg.sample_persons(traj, None, seed=3) is traj
