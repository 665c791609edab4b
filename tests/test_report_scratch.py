"""Interactive notebook runs (pmed.runner.scratch_workspace) write to a scratch workspace,
never over the study's outputs."""

import os

import pytest

from pmed import config, runner


def test_not_interactive_outside_a_kernel(monkeypatch):
    monkeypatch.delenv("PMED_WORKSPACE", raising=False)
    assert not runner.interactive()
    assert runner.scratch_workspace("survival") is None
    assert "PMED_WORKSPACE" not in os.environ


def test_interactive_run_reads_the_study_and_writes_to_scratch(tmp_path, monkeypatch):
    monkeypatch.delenv("PMED_WORKSPACE", raising=False)
    study = tmp_path / "study"
    (study / "data" / "processed").mkdir(parents=True)
    (study / "data" / "processed" / "cohort.parquet").write_text("cohort")
    metrics = study / "reports" / "metrics"
    metrics.mkdir(parents=True)
    (metrics / "survival.json").write_text("study's")
    (metrics / "cohort.json").write_text("cohort's")
    scratch = runner.scratch_workspace("survival", study)
    assert scratch == study / "build" / "scratch" / "survival"
    assert os.environ["PMED_WORKSPACE"] == str(scratch)
    monkeypatch.setenv("PMED_WORKSPACE", str(scratch))  # restored after the test
    # inputs and other stages' outputs are the study's; the stage's own outputs are fresh
    assert (config.path("processed") / "cohort.parquet").read_text() == "cohort"
    assert (config.path("metrics") / "cohort.json").read_text() == "cohort's"
    assert not (config.path("metrics") / "survival.json").exists()
    (config.path("metrics") / "survival.json").write_text("interactive")
    (config.path("figures") / "02_survival").mkdir(parents=True, exist_ok=True)
    (config.path("figures") / "02_survival" / "x.png").write_text("png")
    assert (metrics / "survival.json").read_text() == "study's"
    assert not (study / "reports" / "figures" / "02_survival").exists()
    # a new interactive session starts from a fresh scratch
    assert runner.scratch_workspace("survival", study) == scratch
    assert not (scratch / "reports" / "metrics" / "survival.json").exists()


def test_unknown_stage_is_named(tmp_path):
    with pytest.raises(KeyError, match="nope"):
        runner.scratch_workspace("nope", tmp_path)


def test_a_stage_run_in_another_copy_of_the_project_stops(tmp_path):
    copy = tmp_path / "exps" / "tmp123"
    (copy / "src" / "pmed").mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(SystemExit, match="dvc exp run --temp/--queue. is not supported"):
        runner.require_own_checkout(copy)
    runner.require_own_checkout(config.ROOT)  # the checkout itself
    runner.require_own_checkout(tmp_path)  # not a project copy (e.g. a test's folder)
