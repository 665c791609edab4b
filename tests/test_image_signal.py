"""The imaging added value is found exactly when the demo generator puts image signal in.

Issue 8: delta C (clinical + imaging minus clinical, Harrell's C per test fold, paired) must
have a 95% CI excluding 0 on data whose tumour traits affect the hazard, and including 0 on
data regenerated with ``image_signal=False`` (trait log-HRs 0: no false discovery); with
signal the permutation LR test (19 permutations here) gives its smallest p, 1/20. These are
single draws (the level over many draws is tested in tests/test_radiomics_added_value.py). Each case
regenerates a demo of the default size's 5,000 persons and 600 baseline CTs (no follow-up
CTs: the comparison uses baseline scans only) into tmp_path and runs the cohort extraction,
the imaging feature stage and the model comparison through the functions notebooks 01, 05
and 06 call, with the params.yaml settings unchanged (no reduced bootstrap or repeat counts).
About 1 minute per case on 2 cores; run with ``pytest -m slow``.
"""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

from pmed import config, survival
from pmed import radiomics_model as rm
from pmed.cohort import extract_cohort, parse_definition, write_outputs
from pmed.demo.generate import generate
from pmed.imaging import stage

pytestmark = pytest.mark.slow

SIZE = {"n_persons": 5000, "n_imaged": 600, "followup_share": 0.0}  # default size minus follow-up CTs
SEED_CV_OFFSET = 600  # as notebooks/06_imaging_analysis.ipynb
N_PERMUTATIONS = 19  # (params: 99)


def _delta_c(workspace, monkeypatch, image_signal: bool) -> tuple[dict, int, dict, float]:
    """Generate, extract, run the imaging stage, compare models; (delta C, n analysed, truth, p)."""
    monkeypatch.setenv("PMED_WORKSPACE", str(workspace))
    params = config.load_params()
    common = params["common"]
    demo = copy.deepcopy(params["demo"])
    demo["sizes"]["image_signal_test"] = SIZE
    generate(config.path("raw"), "image_signal_test", common["seed"], demo,
             workers=demo["imaging_workers"], image_signal=image_signal)
    truth = json.loads(config.path("ground_truth").read_text())["image_traits"]

    definition = parse_definition(params["cohort"])  # notebook 01
    result = extract_cohort(config.path("omop"), definition)
    write_outputs(result, definition, config.path("processed"))

    imaging = {**params["imaging_features"], "progress": False}  # notebook 05
    stage.write_outputs(stage.run_stage(common, imaging, result.cohort))

    settings = params["imaging_analysis"]  # notebook 06
    processed = config.path("processed")
    features = pd.read_parquet(processed / "image_features.parquet")
    radiomic = rm.radiomic_columns(features)
    unstable = rm.unstable_features(pd.read_csv(processed / "feature_stability.csv"))
    clinical = list(settings["clinical_terms"])
    cohort = survival.add_interactions(pd.read_parquet(processed / "cohort.parquet"),
                                       [t for t in clinical if ":" in t])
    data = rm.join_baseline_features(cohort, features)
    time, event = data["time_days"].to_numpy(float), data["event"].to_numpy(int)
    templates = rm.model_templates(clinical, radiomic, unstable, settings)
    res = rm.added_value(data, time, event, templates, {**settings, "n_permutations": N_PERMUTATIONS},
                         seed=common["seed"] + SEED_CV_OFFSET, n_jobs=settings["n_jobs"])
    return res["comparison"]["delta_c"]["combined"], len(data), truth, res["lr_test"]["p"]


def test_no_image_signal_no_false_discovery(tmp_path, monkeypatch):
    """Trait log-HRs 0: the CI of delta C includes 0."""
    delta, n_imaged, truth, _ = _delta_c(tmp_path, monkeypatch, image_signal=False)
    assert truth["image_signal"] is False
    assert truth["log_hr_per_unit"] == {"heterogeneity": 0.0, "log_tumour_volume_ml": 0.0}
    assert n_imaged == SIZE["n_imaged"]
    assert delta["ci_low"] <= 0.0 <= delta["ci_high"], delta


def test_image_signal_detected(tmp_path, monkeypatch):
    """Default generator (traits 0.3 log-HR per SD each): the CI of delta C excludes 0 and
    the permutation p is 1 / (1 + 19)."""
    delta, n_imaged, truth, p = _delta_c(tmp_path, monkeypatch, image_signal=True)
    assert "image_signal" not in truth and truth["log_hr_per_unit"]["heterogeneity"] == 1.5
    assert n_imaged == SIZE["n_imaged"]
    assert delta["ci_low"] > 0.0, delta
    assert p == 1 / (1 + N_PERMUTATIONS), p
