"""The tiny-cohort checker (tests/published_counts.py) finds what it looks for: hand-made
report files with each kind of disclosure, and their protected versions."""

from __future__ import annotations

import json

import published_counts as pc

K = 11


def _html(tables: list[list[list[str]]], text: str = "") -> str:
    body = "".join("<table>" + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
                                       for r in t) + "</table>" for t in tables)
    return f"<html><body>{body}<pre>{text}</pre></body></html>"


def test_json_direct_remainder_and_survivors(tmp_path):
    f = tmp_path / "cohort.json"
    f.write_text(json.dumps({"persons": 21, "events": 15, "n_bootstrap": 3,
                             "groups": {"a": {"persons": "<11"}, "b": {"persons": 13}},
                             "attrition": {"x": {"excluded": 4, "remaining": 21}}}))
    found = pc.json_findings(f, K, {"n_bootstrap"})
    assert any("groups.*.persons: derivable" in x for x in found)  # 21 - 13 = 8
    assert any("persons - events small" in x for x in found)  # 6 survivors
    assert any("small exclusion" in x for x in found)
    assert not any("n_bootstrap" in x for x in found)  # a setting, not a count
    f.write_text(json.dumps({"persons": "suppressed", "events": 15,
                             "groups": {"a": {"persons": "<11"}, "b": {"persons": "suppressed"}}}))
    assert pc.json_findings(f, K, set()) == []


def test_table_rows_flow_and_printed_blocks(tmp_path):
    f = tmp_path / "r.html"
    table1 = [["", "Overall", "a", "b"], ["n", "21", "<11", "13"], ["CKD, n (%)", "3 (14.3)", "", ""]]
    flow = [["criterion", "remaining", "excluded"], ["all", "25", "0"], ["x", "21", "<11"]]
    text = "Persons with scans: 13\n  PR: <11\n  SD: 12\n  PD: 0\nchemo: 30 persons, 25 deaths"
    f.write_text(_html([table1, flow], text))
    found = pc.html_findings(f, K)
    assert any("table 0: row 'n': a group count derivable" in x for x in found)
    assert any("table 0: row 'CKD, n (%)'" in x and "small count" in x for x in found)
    assert any("table 1: consecutive 'remaining'" in x for x in found)
    assert any("hidden part = total - shown parts" in x for x in found)
    assert any("persons - deaths small" in x for x in found)
    table1[1][1], table1[2][1] = "suppressed", "<11"
    flow[2][1] = "suppressed"
    f.write_text(_html([table1, flow], "Persons with scans: 30\n  PR: <11\n  SD: suppressed"))
    assert pc.html_findings(f, K) == []


def test_group_size_shown_in_one_table_hidden_in_another(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "cohort.json").write_text(json.dumps(
        {"persons": "suppressed", "groups": {"a": {"persons": "<11"}, "b": {"persons": 13}}}))
    (tmp_path / "01.html").write_text(_html([[["", "Overall", "a", "b"],
                                              ["n", "21", "<11", "suppressed"]]]))
    found = pc.group_size_findings(tmp_path)
    assert len(found) == 2  # Overall 21 vs hidden total; b hidden vs 13
