"""Whole-pipeline privacy checks (slow; `make privacy-check`, part of `make test`).

1. Canary run: the CI-size demo with identifiers planted in every free-text column of every
   OMOP table and in the patient/study tags of every DICOM file (tests/canary_plant.py) goes
   through every stage of dvc.yaml as the study runs it (each stage's ``cmd``, then the
   report stage). No published file the run wrote (all of reports/: HTML, executed
   notebooks, figures incl. PNG text chunks and embedded images, metrics, plot data; the
   CSV/JSON tables in data/processed; the captured console output of every stage) may hold a
   canary, a DICOM UID or a person's birth date; the person-level working files
   (data/processed/*.parquet, data/interim) hold no canary and no birth date either.
2. Tiny cohort: the same pipeline on a CI-type demo of 25 persons (about 20 eligible).
   Every stage either succeeds or stops with a named error; no published count (metrics JSON,
   plot CSVs, HTML tables, index.html) is in 1..min_cell_size-1, directly or as the
   difference of a total and its shown parts.

Both runs use tests/params_ci.yaml (as `make nbval`). Failures name the file and the kind of
canary, never the text around it.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import canary_plant as cp  # tests/ is on sys.path under pytest
import pytest
import yaml

from pmed import config

pytestmark = pytest.mark.slow

ROOT = config.ROOT
PYTHON = ROOT / ".venv" / "bin" / "python"
CI_OVERLAY = "tests/params_ci.yaml"


def stage_commands() -> list[tuple[str, str]]:
    """(stage, cmd) of every stage in dvc.yaml order."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [(name, spec["cmd"]) for name, spec in stages.items()]


def run_pipeline(ws: Path, overlay: str = CI_OVERLAY) -> dict[str, int]:
    """Run every stage's cmd in order in workspace ``ws``; {stage: exit code}. Console output
    of each stage goes to ``ws/logs/<stage>.log``. A failed stage does not stop the others
    (they then meet missing inputs, as a user running them one by one would)."""
    env = {**os.environ, "PMED_WORKSPACE": str(ws), "PMED_PARAMS_OVERLAY": overlay,
           "DVC_NO_ANALYTICS": "1"}
    logs = ws / "logs"
    logs.mkdir(exist_ok=True)
    codes = {}
    for stage, cmd in stage_commands():
        start = time.perf_counter()
        with open(logs / f"{stage}.log", "w") as log:
            codes[stage] = subprocess.run(cmd, shell=True, cwd=ROOT, env=env, stdout=log,
                                          stderr=subprocess.STDOUT).returncode
        print(f"{stage}: exit {codes[stage]} in {time.perf_counter() - start:.0f} s")
    return codes


def make_demo(raw: Path, overlay: str = CI_OVERLAY) -> None:
    """The CI-size demo (``--size ci``, sizes from params.yaml or ``overlay``) in ``raw``."""
    subprocess.run([str(PYTHON), "-m", "pmed.demo", "--size", "ci", "--out", str(raw)],
                   cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "PMED_PARAMS_OVERLAY": overlay})


def written_files(ws: Path) -> list[Path]:
    """Every file of the workspace except the raw extract (the run's outputs and logs)."""
    raw = ws / "data" / "raw"
    return sorted(f for f in ws.rglob("*") if f.is_file() and not f.is_symlink()
                  and raw not in f.parents)


# --- 1. canary run -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def canary_run(tmp_path_factory):
    ws = tmp_path_factory.mktemp("canary")
    raw = ws / "data" / "raw"
    make_demo(raw)
    planted = cp.plant_omop(raw / "omop")
    n_dicom = cp.plant_dicom(raw / "imaging", raw / "omop")
    codes = run_pipeline(ws)
    return ws, planted, n_dicom, codes


def test_canaries_were_planted(canary_run):
    ws, planted, n_dicom, _ = canary_run
    assert "person_source_value" in planted["person"]
    assert {"value_source_value", "unit_source_value"} <= set(planted["measurement"])
    assert n_dicom > 0


def test_scanner_finds_what_was_planted(canary_run):
    """Positive control: the raw extract itself is full of hits of every kind."""
    ws, *_ = canary_run
    raw = ws / "data" / "raw"
    dicom = next((raw / "imaging").rglob("*.dcm"))
    hits = {what for _, what in cp.scan_outputs(
        [dicom, raw / "omop" / "measurement.parquet"], cp.dicom_identifiers(raw / "imaging"),
        set(cp.birth_dates(raw / "omop").values()))}
    assert hits == {"canary", "identifier", "birth date"}


def test_pipeline_succeeds_on_planted_data(canary_run):
    *_, codes = canary_run
    assert codes == {stage: 0 for stage, _ in stage_commands()}


def test_no_canary_in_any_output(canary_run):
    ws, *_ = canary_run
    raw = ws / "data" / "raw"
    identifiers = cp.dicom_identifiers(raw / "imaging")
    dates = set(cp.birth_dates(raw / "omop").values())
    files = written_files(ws)
    working = [f for f in files if f.suffix == ".parquet" or ws / "data" / "interim" in f.parents]
    published = [f for f in files if f not in working]
    assert len(published) > 50 and any(f.suffix == ".ipynb" for f in published)
    hits = cp.scan_outputs(published, identifiers, dates)
    # working files may key rows by series UID (they never leave the project)
    hits += [h for h in cp.scan_outputs(working, set(), dates) if h[1] != "identifier"]
    assert hits == [], "identifiers in outputs: " + "; ".join(
        f"{Path(f).relative_to(ws)}: {what}" for f, what in hits)


def test_report_audit_stops_a_planted_leak(canary_run):
    """The report stage's own audit, on the planted extract: a DICOM patient name or an MRN
    copied into an executed notebook or a figure folder fails the stage, naming the file
    only."""
    ws, *_ = canary_run
    env = {**os.environ, "PMED_WORKSPACE": str(ws), "PMED_PARAMS_OVERLAY": CI_OVERLAY}
    name = cp.dicom_value("PatientName", "PN", f"{first_imaged(ws):07d}", "")
    for rel, text in [("reports/executed/01_cohort.ipynb", name),
                      ("reports/figures/01_cohort/note.svg", cp.person_canary(first_imaged(ws)))]:
        target = ws / rel
        before = target.read_bytes() if target.exists() else None
        target.write_text((before or b"").decode() + f"<text>{text}</text>")
        try:
            proc = subprocess.run([str(PYTHON), "-m", "pmed.report_index"], cwd=ROOT, env=env,
                                  capture_output=True, text=True)
        finally:
            target.write_bytes(before) if before is not None else target.unlink()
        assert proc.returncode != 0 and target.name in proc.stderr, rel
        assert cp.MARK not in proc.stdout + proc.stderr


def first_imaged(ws: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_table(ws / "data" / "raw" / "omop" / "image_occurrence.parquet",
                         columns=["person_id"])["person_id"][0].as_py()

# --- 2. tiny cohort ----------------------------------------------------------------------

TINY_PERSONS = 25  # simulated persons: about 20 meet the cohort criteria


def param_keys(node) -> set[str]:
    """Every key name of params.yaml (metrics may echo settings such as n_bootstrap)."""
    if not isinstance(node, dict):
        return set()
    return set(node) | {k for v in node.values() for k in param_keys(v)}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    ws = tmp_path_factory.mktemp("tiny")
    overlay = ws / "demo_overlay.yaml"
    overlay.write_text(yaml.safe_dump({"demo": {"sizes": {"ci": {
        "n_persons": TINY_PERSONS, "n_imaged": TINY_PERSONS, "followup_share": 0.4}}}}))
    make_demo(ws / "data" / "raw", str(overlay))
    codes = run_pipeline(ws)
    return ws, codes


def test_tiny_cohort_is_tiny(tiny_run):
    ws, codes = tiny_run
    assert codes["cohort"] == 0
    import pandas as pd

    n = len(pd.read_parquet(ws / "data" / "processed" / "cohort.parquet"))
    assert 11 <= n <= 30


def test_tiny_cohort_every_stage_succeeds_or_names_its_error(tiny_run):
    """A notebook stage that cannot run on ~20 persons stops with the runner's one-line error
    (no traceback on the console); the report stage (index + privacy audit) succeeds."""
    ws, codes = tiny_run
    assert codes["report"] == 0
    for stage, code in codes.items():
        log = (ws / "logs" / f"{stage}.log").read_text()
        assert "Traceback" not in log, f"{stage}: a traceback on the console"
        if code != 0:
            last = log.strip().splitlines()[-1]
            assert last.startswith(f"[pmed] ERROR: stage {stage!r} failed ("), f"{stage}: exit {code} unnamed"
            # a model that cannot be fitted says so (events per term), never a bare solver error
            assert "too few" in last or "could not be fitted" in last, f"{stage}: {last[:200]}"


def tiny_findings(ws: Path) -> list[str]:
    import published_counts as pcounts

    params = config.merge_overlay(yaml.safe_load((ROOT / "params.yaml").read_text()),
                                  yaml.safe_load((ROOT / CI_OVERLAY).read_text()), CI_OVERLAY)
    k = int(params["common"]["min_cell_size"])
    reports = ws / params["paths"]["reports"]
    assert (reports / "metrics" / "cohort.json").exists()
    return pcounts.published_findings(reports, k, param_keys(params))


def test_tiny_cohort_publishes_no_small_count(tiny_run):
    ws, _ = tiny_run
    found = tiny_findings(ws)
    assert found == [], "small counts published:\n" + "\n".join(found)
