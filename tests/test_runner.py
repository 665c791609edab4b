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


def test_overlay_replaces_values_and_rejects_unknown_keys(monkeypatch, tmp_path):
    from pmed import config

    params = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert config.merge_overlay(params, {"a": {"c": {"d": 5}}}, "x") == {
        "a": {"b": 1, "c": {"d": 5}}, "e": 3}
    with pytest.raises(KeyError, match="key 'a.c.typo' is not in params.yaml"):
        config.merge_overlay(params, {"a": {"c": {"typo": 1}}}, "x")


def test_ci_overlay_matches_params_yaml(monkeypatch):
    from pmed import config

    monkeypatch.setenv("PMED_PARAMS_OVERLAY", "tests/params_ci.yaml")
    params = config.stage_params("survival")
    assert params["survival"]["n_imputations"] == 3
    assert params["survival"]["covariates"] == config.load_params(config.PARAMS_FILE)["survival"]["covariates"]


def test_notebook_parameters_cells_hold_only_the_stage():
    import json

    for nb in sorted(config.NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, nb.name
        code = [line for line in "".join(tagged[0]["source"]).splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
        assert len(code) == 1 and code[0].startswith("stage = "), (nb.name, code)
