"""Small-cell suppression and the identifier audit of report files."""

import pandas as pd
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset

from pmed import privacy


def test_format_count_suppresses_only_small_positive_counts():
    assert [privacy.format_count(n, 11) for n in [0, 1, 10, 11, 250]] == [
        "0", "<11", "<11", "11", "250"]
    assert privacy.format_count(float("nan"), 11) == ""


def test_suppress_counts_integer_columns_by_default():
    df = pd.DataFrame({"group": ["a", "b"], "n": [5, 40], "pct": [0.1, 0.9]})
    out = privacy.suppress_counts(df, 11)
    assert out["n"].tolist() == ["<11", "40"] and out["pct"].tolist() == [0.1, 0.9]


def _write_dicom(path, name, mrn, **tags):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[name])
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName, ds.PatientID = name, mrn
    for tag, value in tags.items():
        setattr(ds, tag, value)
    ds.save_as(path, enforce_file_format=True)


def test_audit_finds_planted_identifiers(tmp_path):
    omop, raw = tmp_path / "raw" / "omop", tmp_path / "raw"
    omop.mkdir(parents=True)
    (raw / "imaging" / "s1").mkdir(parents=True)
    pd.DataFrame({"person_id": [1], "person_source_value": ["MRN0001"]}).to_parquet(
        omop / "person.parquet")
    pd.DataFrame({"image_study_uid": ["1.2.3.4"], "image_series_uid": ["1.2.3.5"],
                  "local_path": ["imaging/s1"]}).to_csv(omop / "image_occurrence.csv", index=False)
    _write_dicom(raw / "imaging" / "s1" / "0001.dcm", "DOE^JANE", "PID777",
                 AccessionNumber="ACC4242", OtherPatientIDs=["OLD0001", "OLD0002"])
    ids = privacy.raw_identifiers(omop, raw)
    assert {"MRN0001", "1.2.3.4", "1.2.3.5", "DOE^JANE", "PID777", "ACC4242", "OLD0001",
            "OLD0002"} <= ids
    clean, leaky = tmp_path / "clean.html", tmp_path / "leaky.html"
    clean.write_text("<p>n = 42, HR 0.71 (0.65-0.78), MRN00012</p>")
    leaky.write_text("<td>DOE^JANE</td><td>x</td>")
    assert privacy.find_leaks([clean, leaky], ids) == {str(leaky): ["DOE^JANE"]}


def test_report_audit_covers_executed_notebooks_figures_and_tables(tmp_path, monkeypatch):
    from pmed import config, report_index

    monkeypatch.setenv("PMED_WORKSPACE", str(tmp_path))
    omop = config.path("omop")
    omop.mkdir(parents=True)
    pd.DataFrame({"person_id": [1], "person_source_value": ["MRN0001"]}).to_parquet(
        omop / "person.parquet")
    for name in ("executed", "figures", "processed"):
        config.path(name).mkdir(parents=True, exist_ok=True)
    (config.path("figures") / "01_cohort").mkdir()
    planted = {config.path("executed") / "01_cohort.ipynb": '{"text": "row MRN0001 1950-01-01"}',
               config.path("figures") / "01_cohort" / "flow.svg": "<text>MRN0001</text>",
               config.path("processed") / "attrition.csv": "criterion,n\nMRN0001,3\n"}
    for file, text in planted.items():
        file.write_text(text)
        assert file in report_index.audit_files()
        with pytest.raises(SystemExit, match=f"{file.name}: 1") as err:
            report_index.audit_reports()
        assert "MRN0001" not in str(err.value)
        file.unlink()
    report_index.audit_reports()  # clean again
