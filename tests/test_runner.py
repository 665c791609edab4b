"""The stage runner passes exactly the params a stage lists in dvc.yaml."""

import pytest
import yaml

from pmed import config, runner

PARAMS = {"common": {"seed": 1, "min_cell_size": 11}, "survival": {"horizon_days": 365}}


def test_stage_parameters_whole_section_and_single_keys():
    spec = {"params": ["common.seed", "survival"]}
    assert runner.stage_parameters(spec, PARAMS) == {
        "common": {"seed": 1}, "survival": {"horizon_days": 365}}


def test_stage_parameters_unknown_key_names_it():
    with pytest.raises(KeyError, match="common.nope"):
        runner.stage_parameters({"params": ["common.nope"]}, PARAMS)


def test_stage_notebook_needs_exactly_one_ipynb():
    spec = {"deps": ["notebooks/01_cohort.ipynb", "src/pmed/cohort"]}
    assert runner.stage_notebook(spec) == config.ROOT / "notebooks/01_cohort.ipynb"
    with pytest.raises(ValueError, match="exactly one"):
        runner.stage_notebook({"deps": ["src/pmed"]})


def test_every_dvc_stage_lists_existing_deps_and_known_params():
    """dvc.yaml and params.yaml agree: every listed dep exists and every param key resolves."""
    dvc = yaml.safe_load((config.ROOT / "dvc.yaml").read_text())
    params = config.load_params()
    for name, spec in dvc["stages"].items():
        for dep in spec.get("deps", []):
            if "${" in dep or dep.startswith("data/") or dep.startswith("reports/"):
                continue  # outputs of earlier stages / interpolated paths
            assert (config.ROOT / dep).exists(), f"stage {name}: dep {dep} missing"
        if any(str(d).endswith(".ipynb") for d in spec.get("deps", [])):
            runner.stage_parameters(spec, params)
