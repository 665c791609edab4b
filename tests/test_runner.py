"""The stage runner passes exactly the params a stage lists in dvc.yaml."""

import pytest

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


def test_missing_kernel_names_the_fix():
    with pytest.raises(SystemExit, match="make venv"):
        runner.require_kernel("no-such-kernel-pmed")
