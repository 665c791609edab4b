"""The study summary page (pmed.report_index): headline sentences, verdicts, cohort flow,
checklists honest about what the rendered reports hold."""

import html
import json
import re
import shutil

import pytest

from pmed import config, report_index

METRICS = config.ROOT / "reports" / "metrics"  # the committed metrics of the default demo run


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("PMED_WORKSPACE", str(tmp_path))
    shutil.copytree(METRICS, tmp_path / "reports" / "metrics")
    return tmp_path


def test_verdict_reads_the_whole_ci():
    assert report_index.verdict({"ci_low": 0.01, "ci_high": 0.04}, 0.0)[0] == "yes"
    assert report_index.verdict({"ci_low": -0.01, "ci_high": 0.04}, 0.0) == \
        ("no", "does not beat the baseline (95% CI includes it)")
    assert report_index.verdict({"ci_low": -0.09, "ci_high": -0.02}, 0.0)[1] == "worse than the baseline"
    # lower is better (e.g. Brier score): a CI wholly below the baseline beats it
    assert report_index.verdict({"ci_low": 0.20, "ci_high": 0.21}, 0.25, higher_is_better=False)[0] == "yes"


def test_treatment_headlines_state_estimates_and_evidence():
    params = config.load_params()
    m = {"hazard_ratio_iptw": {"io": {"estimate": 0.820881, "ci_low": 0.725879, "ci_high": 0.928317}},
         "survival_difference_iptw": {"io": {"estimate": 0.038, "ci_low": -0.0219, "ci_high": 0.0979}},
         "heterogeneity_p_holm": {"io vs chemo": 0.3},
         "best_single_arm": "io", "policy_value": {"estimate": 0.6, "ci_low": 0.57, "ci_high": 0.62},
         "policy_gain_vs_best_single": {"estimate": 0.01, "ci_low": -0.01, "ci_high": 0.03}}
    lines = report_index.headlines_treatment(m, params)
    assert lines[0][0].startswith("Immunotherapy alone vs chemotherapy alone: HR 0.82 (0.73 to 0.93) "
                                  "after IPTW; difference in survival at 365 days +3.8 percentage "
                                  "points (-2.2 to 9.8)")
    assert lines[0][1][1] == "95% CI of the HR excludes 1"
    assert "p = 0.30" in lines[1][0] and lines[1][1] == ("no", "no evidence of heterogeneity")
    assert lines[2][1][0] == "no" and "does not beat giving everyone immunotherapy alone" in lines[2][1][1]


def test_missing_or_changed_metrics_give_a_sentence_not_an_error():
    params = config.load_params()
    assert report_index.stage_headlines("treatment", None, params)[0][0].startswith("Not run yet")
    text = report_index.stage_headlines("treatment", {"other": 1}, params)[0][0]
    assert "not available" in text and "hazard_ratio_iptw" in text


def test_index_from_the_committed_metrics(workspace):
    (workspace / "reports" / "01_cohort.html").write_text(
        '<h2 id="Participant-flow">Participant flow</h2>')
    page = report_index.build_index()
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    for stage in ("cohort", "survival", "outcomes", "treatment", "imaging_features", "imaging_analysis"):
        assert f"id='stage-{stage}'" in page
    assert "not available" not in text  # every sentence finds its metrics
    assert "3,847 patients met all eligibility criteria" in text
    assert "p < 0.001" in text and " to " in text
    # the reference arm and the question come from params.yaml
    assert "rather than chemotherapy alone" in text
    # the full metric table is in the appendix, after the checklists
    assert page.index("id='checklists'") < page.index("id='appendix'") < page.index("harrell_c")


def test_checklist_item_reported_only_where_the_anchor_exists(workspace):
    reports = workspace / "reports"
    (reports / "01_cohort.html").write_text('<h3 id="Participant-flow">Participant flow</h3>')
    page = report_index.build_index()
    strobe = page[page.index("id='checklist-strobe'"):page.index("id='checklist-target'")]
    rows = dict(re.findall(r"<tr><td>(\w+)</td><td>[^<]*</td><td>(.*?)</td></tr>", strobe))
    assert 'href="01_cohort.html#Participant-flow"' in rows["13"]
    assert "not reported" in rows["16"]  # its anchor is in 02_survival.html, absent here
    assert 'href="#question"' in rows["3"]  # this page's own section
    n_items = len(report_index.load_checklists()["strobe"]["items"])
    reported = sum("not reported" not in v for v in rows.values())
    assert f"{reported} of {n_items} items reported" in strobe


def test_every_checklist_item_is_well_formed():
    for key, cl in report_index.load_checklists().items():
        assert cl["title"] and cl["reference"], key
        ids = [i["id"] for i in cl["items"]]
        assert len(ids) == len(set(ids)), key
        for item in cl["items"]:
            where = item.get("at", [])
            for ref in [where] if isinstance(where, str) else where:
                stem, sep, anchor = ref.partition("#")
                assert sep and anchor, ref
                assert stem == "index" and anchor in report_index.INDEX_IDS or \
                    (config.NOTEBOOKS / f"{stem}.ipynb").exists(), ref


def test_cohort_flow_orders_steps_and_keeps_suppressed_text(workspace):
    params = config.load_params()
    m = json.loads((METRICS / "cohort.json").read_text())
    m["attrition"] = {"qualifying_dx": {"remaining": 100, "excluded": 0},
                      "adult or no_prior_cancer": {"remaining": 80, "excluded": "suppressed"},
                      "prior_obs": {"remaining": 90, "excluded": 10}}
    html = report_index.cohort_flow(m, params)
    cells = re.findall(r"<td>([^<]*)</td>", html)
    assert cells[0].startswith("First qualifying diagnosis")
    assert cells[1].startswith("Prior observation") and cells[2].startswith("Age at index")
    assert " or No other cancer" in cells[2] and "suppressed" in html


def test_imaging_gain_needs_the_permutation_test_too():
    params = config.load_params()
    ci = {"estimate": 0.03, "ci_low": 0.01, "ci_high": 0.05}
    m = {"c_index": {"combined": ci, "clinical": ci}, "delta_c": {"combined": ci},
         "lr_test": {"p_permutation": 0.3, "n_permutations": 99}}
    text, (mark, why) = report_index.headlines_imaging_analysis(m, params)[0]
    assert "p = 0.3" in text and mark == "no" and "does not reject" in why
    m["lr_test"]["p_permutation"] = 0.01
    assert report_index.headlines_imaging_analysis(m, params)[0][1][0] == "yes"
