"""Deterministic metrics writing and the report index."""

import json

from pmed import report, report_index


def test_write_metrics_is_deterministic_and_rounded(tmp_path, monkeypatch):
    monkeypatch.setenv("PMED_WORKSPACE", str(tmp_path))
    import numpy as np

    m = {"b": np.float64(1 / 3), "a": {"n": np.int64(5), "nan": float("nan")}}
    out = report.write_metrics("x", m)
    first = out.read_bytes()
    report.write_metrics("x", dict(reversed(list(m.items()))))
    assert out.read_bytes() == first
    assert json.loads(first) == {"a": {"n": "<11", "nan": None}, "b": 0.333333}


def test_write_metrics_suppresses_small_counts_and_their_complement(tmp_path, monkeypatch):
    monkeypatch.setenv("PMED_WORKSPACE", str(tmp_path))
    out = report.write_metrics("x", {"n_persons": 21, "n_io": 10, "n_chemo": 11, "hr": 0.7})
    assert json.loads(out.read_text()) == {"n_persons": 21, "n_io": "<11",
                                           "n_chemo": "suppressed", "hr": 0.7}


def test_flatten_nested_metrics():
    assert report_index.flatten({"a": {"b": 1, "c": {"d": 2}}, "e": [1]}) == {
        "a.b": 1, "a.c.d": 2, "e": [1]}


def test_index_lists_metrics_and_escapes(tmp_path, monkeypatch):
    monkeypatch.setenv("PMED_WORKSPACE", str(tmp_path))
    report.write_metrics("cohort", {"n<persons>": 12})
    page = report_index.build_index()
    assert "n&lt;persons&gt;" in page and "Package versions" in page
