"""The simulation study's ``monitoring`` group (notebook 04's lab-trajectory slopes and landmark
HR): the truth's GLS step by hand, the replicate's trajectories equal the notebook's loader,
``simulate_cohort`` unchanged by default, and a 2-replicate run through ``study.run``."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pmed import config
from pmed import longitudinal as lg
from pmed.cohort import extract_cohort, parse_definition
from pmed.demo.generate import generate
from pmed.simulation import design, estimands_monitoring, study


def _traj(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exact log-linear trajectories: log value = 5 + 0.3 z + b_i + (s_arm + 0.02 z + c_i) months + e."""
    arms = rng.choice(["chemo", "io", "chemo_io"], n)
    z = rng.normal(0, 1, n)
    slope = {"chemo": 0.02, "io": -0.04, "chemo_io": -0.06}
    rows = []
    for i in range(n):
        b, c = rng.normal(0, 0.3), rng.normal(0, 0.02)
        for k in range(6):
            m = k * 0.7
            v = 5 + 0.3 * z[i] + b + (slope[arms[i]] + 0.02 * z[i] + c) * m + rng.normal(0, 0.05)
            rows.append((i + 1, arms[i], int(30 * m), m, np.exp(v)))
    traj = pd.DataFrame(rows, columns=["person_id", "treatment", "day", "months", "value"])
    return traj, pd.DataFrame({"z": z}, index=pd.Index(np.arange(1, n + 1), name="person_id"))


def test_truth_gls_step_equals_the_reml_fit_at_its_own_covariance():
    """The truth's fixed effects = MixedLM GLS at given covariance parameters: at the REML fit's
    own covariance they are the REML fixed effects (to optimiser tolerance), and the contrasts
    are the summary's slopes; on log-linear data the slopes are near the generating ones."""
    traj, z = _traj(300, np.random.default_rng())
    labels = ["chemo", "io", "chemo_io"]
    summary, res = lg.fit_slope_model(traj, labels, z)
    model = lg.slope_mixedlm(traj, labels, z)
    fe, _ = model.get_fe_params(res.cov_re.to_numpy() / res.scale, np.array([]))
    fe = pd.Series(fe, index=model.exog_names)
    np.testing.assert_allclose(fe.to_numpy(), res.fe_params.to_numpy(), atol=1e-6)
    got = estimands_monitoring.slope_contrasts(fe, labels)
    for key, v in got.items():
        assert v == pytest.approx(summary[key]["estimate"], abs=1e-6)
    # each CI half-width is about 2 SE; allow 4 SE around the generating slopes
    want = {"slope_chemo": 0.02, "slope_io": -0.04, "slope_chemo_io": -0.06,
            "slope_difference_io": -0.06, "slope_difference_chemo_io": -0.08}
    for key, w in want.items():
        half = (summary[key]["ci_high"] - summary[key]["ci_low"]) / 2
        assert abs(got[key] - w) < 2 * half


def _params(n_rep: int = 2) -> dict:
    p = copy.deepcopy(config.load_params())
    p["simulation"].update(replicates=n_rep, n_persons=1000, workers=1, scenarios={
        "small": {"heterogeneity": True, "image_signal": True, "estimands": ["monitoring"]}})
    return p


def test_simulate_cohort_default_return_unchanged_and_trajectories_as_the_notebook():
    """Default: (cohort, latent) as before; with_trajectories adds the notebook 04 loader's frame
    on the same OMOP files (regenerated here with the same seed)."""
    params = _params()
    sc = design.parse_scenarios(params["simulation"]["scenarios"])[0]
    seed = design.replicate_seed(params["simulation"]["seed"], 0)
    plain = design.simulate_cohort(seed, sc, 600, params)
    assert len(plain) == 2
    cohort, latent, traj = design.simulate_cohort(seed, sc, 600, params, with_trajectories=True)
    pd.testing.assert_frame_equal(plain[0], cohort)
    pd.testing.assert_frame_equal(plain[1], latent)
    mon = params["treatment"]["monitoring"]
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), design.SIZE_NAME, seed, design.demo_params_for(params["demo"], 600),
                 image_signal=sc.image_signal, heterogeneity=sc.heterogeneity)
        again = extract_cohort(Path(tmp) / "omop", parse_definition(params["cohort"]), threads=1,
                               check_quality=False).cohort.reset_index(drop=True)
        want = lg.load_trajectories(Path(tmp) / "omop", again, mon["concept_ids"],
                                    {int(k): float(v) for k, v in mon["units"].items()},
                                    mon["baseline_window_days"], mon["followup_days"], tuple(mon["plausible"]))
    pd.testing.assert_frame_equal(traj, want)
    assert len(traj) > 0 and set(traj["person_id"]) <= set(cohort["person_id"])


def test_two_replicates_through_study_run():
    """Rows of every replicate: 3 slopes + 2 slope differences + 2 landmark log-HRs; truths from
    the population hook; each row's CI contains its estimate and 'reject' follows the CI."""
    settings = study.Settings.from_params(_params())
    result = study.run(settings)
    assert result["failures"].empty, result["failures"].to_dict("records")
    t = result["table"]
    assert (t["group"] == "monitoring").all() and sorted(t["replicate"].unique()) == [0, 1]
    assert t.groupby("replicate").size().tolist() == [7, 7]
    truth = result["truths"]["small"]["monitoring"]
    slopes = t[t["estimand"].str.startswith("slope")]
    assert set(slopes["true"]) == set(truth["slopes"].values())
    hr = t[t["estimand"] == "landmark log-HR early responder (arm-adjusted)"]
    assert len(hr) == 2 and (hr["true"] == truth["log_hr_responder"]).all() and not hr["null_true"].any()
    null = t[t["estimand"].str.contains("null check")]
    assert len(null) == 2 and (null["true"] == 0).all() and null["null_true"].all()
    assert ((t["ci_low"] < t["estimate"]) & (t["estimate"] < t["ci_high"])).all()
    assert (t["reject"] == ((t["ci_low"] > 0) | (t["ci_high"] < 0))).all()
    diff = truth["slopes"]
    assert diff["slope_difference_io"] == pytest.approx(diff["slope_io"] - diff["slope_chemo"])
    assert result["summary"]["coverage"].notna().all()
