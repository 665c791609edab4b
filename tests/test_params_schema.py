"""The params schema as the user meets it: a params file with a typo, a wrong type or an
impossible value stops the load with one line naming the file and the key path."""

import re
import subprocess
import sys

import pytest
import yaml

from pmed import config, params_schema

TEXT = config.PARAMS_FILE.read_text()


def edited(tmp_path, old: str, new: str, text: str = TEXT):
    """A copy of params.yaml with the one line matching ``old`` (a regex) replaced."""
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if re.search(old, line)]
    assert len(hits) == 1, (old, hits)
    lines[hits[0]] = re.sub(old, new, lines[hits[0]])
    path = tmp_path / "params.yaml"
    path.write_text("".join(lines))
    return path


def problems(path) -> list[str]:
    with pytest.raises(config.ParamsError) as err:
        config.load_params(path)
    return str(err.value).splitlines()


def test_the_study_params_and_the_ci_overlay_validate(monkeypatch):
    assert params_schema.check(config.load_params()) == []
    monkeypatch.setenv("PMED_PARAMS_OVERLAY", "tests/params_ci.yaml")
    assert config.load_params()["outcomes"]["n_bootstrap"] == 20


CASES = [
    # (regex of the line, replacement, exact first line after "<file>: ")
    (r"max_age_years: null", "max_age_yeras: 90",
     "cohort.max_age_yeras: unknown key (did you mean 'max_age_years'?)"),
    (r"n_bootstrap: 1000 (?=.*every 95%)", 'n_bootstrap: "100" ',
     "outcomes.n_bootstrap: expected an integer >= 1, got a string"),
    (r"n_bootstrap: 1000 (?=.*every 95%)", "n_bootstrap: -5 ",
     "outcomes.n_bootstrap: expected an integer >= 1, got -5"),
    (r"cv_folds: 5 ", "cv_folds: true ",
     "outcomes.cv_folds: expected an integer >= 2, got a boolean"),
    (r"cv_folds: 5 ", "cv_folds: 5.0 ",
     "outcomes.cv_folds: expected an integer >= 2, got a number"),
    (r"  cv_folds: 5 .*", "",
     "outcomes.cv_folds: required key is missing"),
    (r"min_cell_size: 11", "min_cell_size: 0",
     "common.min_cell_size: expected an integer >= 1, got 0"),
    (r"loss_to_follow_up: 0.15", "loss_to_follow_up: 1.5",
     "demo.rates.loss_to_follow_up: expected a share in [0, 1], got 1.5"),
    (r"high_risk_threshold: 0.7", "high_risk_threshold: 1.2",
     "outcomes.high_risk_threshold: expected a number in (0, 1), got 1.2"),
    (r"high_risk_threshold: 0.7", "high_risk_threshold: .nan",
     "outcomes.high_risk_threshold: expected a number in (0, 1), got nan"),
    (r"dc_thresholds: \[0.05, 0.95, 0.05\]", "dc_thresholds: [0.05, 1.5, 0.05]",
     "outcomes.dc_thresholds: expected 0 < start < stop < 1 and step > 0, got [0.05, 1.5, 0.05]"),
    (r"reference: chemo ", "reference: chemotherapy ",
     "cohort.treatment_strategies.reference: expected one of the arms "
     "['chemo', 'io', 'chemo_io'], got 'chemotherapy'"),
    (r"io: \{all_of: \[immunotherapy\]", "io: {all_of: [immunotherapies]",
     "cohort.treatment_strategies.arms.io.all_of[0]: expected a concept set of "
     "cohort.concept_sets, got 'immunotherapies'"),
    (r"effect_modifiers: \[pdl1_pct, driver_positive\]", "effect_modifiers: []",
     "treatment.recommend.effect_modifiers: expected a non-empty list of column names, got []"),
    (r"censoring: aipcw", "censoring: aipw",
     "treatment.recommend.censoring: expected aipcw or km_ipcw, got 'aipw'"),
    (r"ecog(?=, stage_iv, copd, pdl1_pct\])", "ecg",
     "survival.competing_covariates[4]: expected a column of the cohort (from the cohort section), "
     "got 'ecg' (did you mean 'ecog'?)"),
    (r"competing_outcomes: \[pneumonitis\]", "competing_outcomes: [pneumonia]",
     "survival.competing_outcomes[0]: expected an event outcome of cohort.outcomes "
     "['pneumonitis'], got 'pneumonia'"),
    (r"table: condition_occurrence ", "table: condition ",
     "cohort.outcomes.pneumonitis.table: expected one of condition_occurrence, "
     "procedure_occurrence, measurement, observation, visit_occurrence, got 'condition'"),
    (r"condition_window: \[null, -1\]", "condition_window: [null, 30]",
     "cohort.covariates.condition_window: expected a window ending on or before its anchor "
     "(end <= 0), got [None, 30]"),
    (r"encoding: utf-8 ", "encoding: cp1252 ",
     "cohort.source.encoding: expected utf-8, latin-1 (also for Windows-1252) or utf-16, "
     "got 'cp1252'"),
    (r"interpolator: sitkLinear", "interpolater: sitkLinear",
     "imaging_features.radiomics.interpolater: unknown key (did you mean 'interpolator'?)"),
    (r"interpolator: sitkLinear", "interpolator: sitkLinar",
     "imaging_features.radiomics.interpolator: expected one of sitkNearestNeighbor, "
     "sitkLinear, sitkBSpline, got 'sitkLinar'"),
    (r"bin_width: 25", "bin_width: 0",
     "imaging_features.radiomics.bin_width: expected a number > 0, got 0"),
    (r"feature_classes: \[firstorder,", "feature_classes: [firstorde,",
     "imaging_features.radiomics.feature_classes: expected a non-empty list of firstorder, "
     "shape, glcm, glrlm, glszm, gldm, ngtdm, got a list"),
    (r"on_error: exclude", "on_error: skip",
     "imaging_features.on_error: expected exclude or raise, got 'skip'"),
    (r"icc_threshold: 0.75", "icc_threshold: 75",
     "imaging_features.stability.icc_threshold: expected a number in (0, 1), got 75"),
    (r"  size: default ", "  size: huge ",
     "demo.size: expected one of demo.sizes ['benchmark', 'ci', 'default'], got 'huge'"),
    (r"landmark_days: 112 ", "landmark_days: 60 ",
     "imaging_analysis.landmark_days: expected >= imaging_features.followup_window_days end "
     "(112): no follow-up scan after the landmark, got 60"),
    (r"    copd: copd", "    copd: copd\n      ecog: copd",
     "cohort.covariates: expected distinct output columns, got 'ecog' twice (covariates "
     "conditions, numeric and categorical levels name cohort columns)"),
    (r"effect_modifiers: \[pdl1_pct, driver_positive\]", "effect_modifiers: [pdl1_pct, pdl1_pct]",
     "treatment.recommend.effect_modifiers[1]: expected distinct terms, got 'pdl1_pct' twice"),
    (r"other_cancer: \[4112853, 200962\]", "other_cancer: concept_sets/other_cancer.json",
     "cohort.concept_sets.other_cancer: expected an ATLAS concept-set JSON file (relative to the "
     "project root), got 'concept_sets/other_cancer.json': no such file"),
    (r"seed: 20261127", "seed: 4294967296",
     "common.seed: expected an integer in [0, 2^31), got 4294967296"),
    (r"weight_truncation_quantile: 0.99", "weight_truncation_quantile: 1.0",
     "treatment.weight_truncation_quantile: expected a quantile in (0.5, 1) or null, got 1.0"),
    (r"  max_persons: 2500 .*", "",
     "treatment.monitoring.max_persons: required key is missing"),
    (r"^      io: \{all_of", "      Io: {all_of",
     "cohort.treatment_strategies.arms.Io: expected a lower-case name (letters, digits, _), "
     "got 'Io' (as a key)"),
    (r"^common:", "commn:",
     "commn: unknown key (did you mean 'common'?)"),
]


@pytest.mark.parametrize("old,new,expected", CASES, ids=[c[2].split(":")[0] for c in CASES])
def test_a_bad_key_is_named_on_the_first_line(tmp_path, old, new, expected):
    path = edited(tmp_path, old, new)
    assert problems(path)[0] == f"{path}: {expected}"


def test_every_problem_gets_its_own_line(tmp_path):
    first = edited(tmp_path, r"n_bootstrap: 1000 (?=.*every 95%)", 'n_bootstrap: "100" ')
    path = edited(tmp_path, r"min_cell_size: 11", "min_cell_size: -1", first.read_text())
    assert problems(path) == [
        f"{path}: common.min_cell_size: expected an integer >= 1, got -1",
        f"{path}: outcomes.n_bootstrap: expected an integer >= 1, got a string",
    ]


def test_invalid_yaml_names_the_line(tmp_path):
    path = edited(tmp_path, r"min_cell_size: 11", "min_cell_size: [11")
    assert problems(path)[0].startswith(f"{path}: not valid YAML (line ")


def test_a_section_that_is_not_a_mapping(tmp_path):
    path = edited(tmp_path, r"^common:", "common: 5\ncommon_old:")
    assert problems(path)[0] == f"{path}: common: expected a mapping, got an integer"


def test_the_overlay_is_blamed_for_its_own_keys(tmp_path, monkeypatch):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("outcomes:\n  n_bootstrap: '20'\n")
    monkeypatch.setenv("PMED_PARAMS_OVERLAY", str(overlay))
    with pytest.raises(config.ParamsError, match=re.escape(
            f"{overlay}: outcomes.n_bootstrap: expected an integer >= 1, got a string")):
        config.load_params()
    overlay.write_text("outcomes:\n  n_bootsrap: 20\n")
    with pytest.raises(config.ParamsError, match=re.escape(
            f"{overlay}: outcomes.n_bootsrap: unknown key (not in params.yaml)")):
        config.stage_params("outcomes")


def test_one_section_alone():
    imaging = yaml.safe_load(TEXT)["imaging_features"]
    assert params_schema.check_section("imaging_features", imaging) == []
    imaging["radiomics"] = {**imaging["radiomics"], "resampled_spacing_mm": [2.0, 0, 2.0]}
    assert params_schema.check_section("imaging_features", imaging) == [
        "imaging_features.radiomics.resampled_spacing_mm: expected [x, y, z] spacing in mm "
        "(numbers > 0) or null, got [2.0, 0, 2.0]"]


def test_check_command(tmp_path):
    bad = edited(tmp_path, r"min_cell_size: 11", "min_cell_size: eleven")
    run = subprocess.run([sys.executable, "-m", "pmed.config", "check", str(bad)],
                         capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"{bad}: common.min_cell_size: expected an integer >= 1, got a string"]
    good = subprocess.run([sys.executable, "-m", "pmed.config", "check"],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr


def test_allowed_values_agree_with_the_code():
    from pmed.cohort import contract, definition, omop
    from pmed.imaging import radiomics, stability

    assert params_schema.FEATURE_CLASSES == radiomics.FEATURE_CLASSES
    assert params_schema.INTERPOLATORS == radiomics.INTERPOLATORS
    assert params_schema.PERTURBATIONS == stability.PERTURBATIONS
    assert params_schema.ICC_TYPES == stability.ICC_TYPES
    assert set(params_schema.ENCODINGS) == set(omop.ENCODINGS)
    assert params_schema.OUTCOME_TABLES == tuple(definition.OUTCOME_TABLES)
    assert params_schema.VALUE_TABLES == definition.TABLES_WITH_VALUES
    assert params_schema.PROTOCOL_COMPONENTS == definition.PROTOCOL_COMPONENTS
    assert set(params_schema.COHORT_BASE_COLUMNS) == {*contract.CORE, *contract.DEMOGRAPHICS}


def test_the_schema_columns_are_the_cohort_contract():
    from pmed.cohort import contract, definition

    params = config.load_params()
    model = params_schema.Params.model_validate(params)
    produced = contract.columns(definition.parse_definition(params["cohort"]))
    assert model.cohort.columns() == set(produced)


def test_dvc_exp_run_set_param_is_checked(tmp_path):
    """`dvc exp run -S key=value` writes the value into params.yaml (dvc.utils.hydra), which
    every stage then loads: a wrong type or a misspelt new key is named like any other."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text(TEXT)
    apply_overrides(path, ["outcomes.n_bootstrap=50"])
    assert config.load_params(path)["outcomes"]["n_bootstrap"] == 50
    apply_overrides(path, ["outcomes.n_bootstrap=fifty"])
    assert problems(path) == [
        f"{path}: outcomes.n_bootstrap: expected an integer >= 1, got a string"]
    apply_overrides(path, ["outcomes.n_bootstrap=50", "+outcomes.n_bootsrap=50"])
    assert problems(path) == [
        f"{path}: outcomes.n_bootsrap: unknown key (did you mean 'n_bootstrap'?)"]


@pytest.mark.parametrize("command", [["pmed.demo", "--size", "ci", "--out"],
                                     ["pmed.cohort", "--sql", "duckdb"]])
def test_command_lines_print_the_problem_alone(tmp_path, command):
    """`python -m pmed.demo` / `python -m pmed.cohort` with a bad key: the message, no
    traceback, nothing written."""
    import os

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("demo:\n  chunk_size: 0\n")
    out = tmp_path / "raw"
    args = [*command, str(out)] if command[-1] == "--out" else command
    run = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                         env={**os.environ, "PMED_PARAMS_OVERLAY": str(overlay)})
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"{overlay}: demo.chunk_size: expected an integer >= 1, got 0"]
    assert not out.exists() and run.stdout == ""
