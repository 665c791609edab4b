"""The `report` stage: reports/index.html, the study summary a clinician reads first.

The page opens with the study question (the target trial of params.yaml ``cohort``: population,
treatment strategies, outcomes, causal contrast), the cohort flow (counts as released by the
cohort stage: small counts suppressed), each stage's 2-3 headline results as sentences with
estimates and 95% CIs read from the stage metrics (reports/metrics/*.json; numbers formatted by
``pmed.report.fmt_*``), each saying whether the held-out evidence beats its baseline, key
figures as thumbnails linking to the stage reports, links to every stage report, and the
reporting checklists (STROBE, TARGET, TRIPOD+AI; items in ``checklists.yaml``) with each item
linked to the report section that answers it or marked "not reported". An appendix holds
every metric, the params, the data version and the package versions.

Aggregates only: the metrics files are already small-cell suppressed by the stages. Before
writing, it audits every report, metrics and plot file for the raw extract's direct
identifiers (MRNs, DICOM patient names/IDs, study/series UIDs) and fails the stage if it finds
any.
"""

from __future__ import annotations

import html
import json
import os
import re
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import yaml

from pmed import config, privacy, runner
from pmed.plots import term_label
from pmed.report import (
    MISSING,
    arm_name,
    fmt_count,
    fmt_metric,
    fmt_num,
    fmt_p,
    fmt_pct,
    fmt_pct_ci,
    fmt_ratio,
)

KEY_PACKAGES = ["pmed", "pandas", "numpy", "duckdb", "lifelines", "statsmodels",
                "scikit-learn", "scikit-survival", "pyradiomics-bhklab", "pydicom",
                "SimpleITK", "papermill", "dvc"]


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1} (lists kept as values)."""
    out: dict[str, object] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def data_version(dvc_file: Path = config.ROOT / "data.dvc") -> str:
    """The md5 data.dvc records for data/raw, or a note that it is not committed yet."""
    if not dvc_file.exists():
        return "data.dvc missing"
    outs = yaml.safe_load(dvc_file.read_text()).get("outs", [])
    return ", ".join(f"{o['path']}: md5 {o.get('md5', 'not committed')}" for o in outs)


def package_versions() -> dict[str, str]:
    """Installed versions of the key packages."""
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions




CHECKLISTS = Path(__file__).with_name("checklists.yaml")

#: Key figures per stage report: (file in figures/<report>/, caption, anchor in the report).
KEY_FIGURES = {
    "01_cohort": [("cohort_flow.png", "Participant flow", "Participant-flow")],
    "02_survival": [("02_km_treatment.png", "Overall survival by first-line regimen",
                     "Kaplan-Meier-by-treatment"),
                    ("02_forest_cox.png", "Adjusted hazard ratios",
                     "Multiple-imputation-and-the-Cox-model")],
    "03_outcomes": [("03_calibration.png", "Calibration at the horizon", "Calibration-at-the-horizon"),
                    ("03_decision_curve.png", "Decision curve", "Decision-curve")],
    "04_treatment": [("04_forest_ate.png", "Effect of each regimen (IPTW)",
                      "Average-effect-of-each-arm-vs-the-reference"),
                     ("04_km_iptw.png", "Weighted survival curves",
                      "Average-effect-of-each-arm-vs-the-reference"),
                     ("04_policy_value.png", "Held-out value of personalised recommendations",
                      "Policy-value-on-held-out-data,-stability-and-recommendations")],
    "05_imaging_features": [("05_feature_icc.png", "Feature stability (ICC)",
                             "IBSI-compliance-and-stability-by-feature-class")],
    "06_imaging_analysis": [("06_imaging_decision_curve.png", "Clinical vs imaging vs combined: decision curve",
                             "Calibration-and-clinical-usefulness"),
                            ("06_imaging_km_risk_groups.png", "Survival by radiomics risk group",
                             "Signature-risk-groups")],
}

#: What each stage answers, in a clinician's words (the section titles of the summary).
STAGE_TITLES = {"cohort": "who was studied", "survival": "overall survival by first-line regimen",
                "outcomes": "predicting death within the horizon",
                "treatment": "effect of each regimen, and personalised recommendations",
                "imaging_features": "radiomic features of the chest CT",
                "imaging_analysis": "does the CT add to the clinical prognosis?"}

MODEL_NAMES = {"cox": "penalised Cox model", "logistic": "logistic regression",
               "gbm": "gradient boosting", "clinical": "clinical model",
               "imaging": "imaging-only model", "combined": "clinical + imaging model"}


# --- small helpers -----------------------------------------------------------------------

def esc(x) -> str:
    return html.escape(str(x))


def anchor_ids(page: Path) -> set[str]:
    """The element ids of an HTML file (empty if it does not exist)."""
    if not page.is_file():
        return set()
    return {html.unescape(m) for m in re.findall(r'\sid="([^"]*)"', page.read_text(encoding="utf-8"))}


def verdict(m: dict, null: float, higher_is_better: bool = True,
            better: str = "beats", worse: str = "worse than", baseline: str = "the baseline") -> tuple[str, str]:
    """Whether a held-out estimate beats ``baseline`` (value ``null``): the whole 95% CI on
    the better side -> (``"yes"``, text), on the worse side -> (``"no"``, text), else the CI
    includes the baseline -> (``"no"``, "does not beat ...")."""
    lo, hi = float(m["ci_low"]), float(m["ci_high"])
    if not higher_is_better:
        lo, hi, null = -hi, -lo, -null
    if lo > null:
        return "yes", f"{better} {baseline}"
    if hi < null:
        return "no", f"{worse} {baseline}"
    return "no", f"does not beat {baseline} (95% CI includes it)"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# --- the study question and the cohort flow --------------------------------------------------

def study_question(params: dict) -> str:
    """HTML: the question in one sentence and the target trial's components (params.yaml
    ``cohort.protocol`` specification and emulation, arms from ``treatment_strategies``)."""
    cohort = params["cohort"]
    strategies = cohort["treatment_strategies"]
    ref = strategies["reference"]
    others = [a for a in strategies["arms"] if a != ref]
    protocol = cohort.get("protocol", {})
    outcomes = ", ".join(o.replace("_", " ") for o in cohort.get("outcomes", {})) or "death"
    sentence = (f"In patients eligible for first-line treatment, does starting "
                f"{' or '.join(arm_name(a, strategies) for a in others)}, rather than "
                f"{arm_name(ref, strategies)}, change the outcomes ({outcomes})?")
    rows = [("Treatment strategies",
             "; ".join(f"{_cap(arm_name(a, strategies))}" + (" (reference)" if a == ref else "")
                       for a in strategies["arms"]))]
    names = {"eligibility": "Population", "outcomes": "Outcomes", "time_zero": "Time zero",
             "causal_contrast": "Causal contrast", "assignment": "Assignment"}
    for key, name in names.items():
        part = protocol.get(key) or {}
        spec, emu = part.get("specification", ""), part.get("emulation", "")
        if spec:
            rows.append((name, spec + (f" <em>Emulation:</em> {esc(emu)}" if emu else "")))
    table = "".join(f"<tr><th>{esc(k)}</th><td>{v if '<em>' in v else esc(v)}</td></tr>"
                    for k, v in rows)
    return (f'<section id="question"><h2>Study question</h2><p class="question">{esc(sentence)}</p>'
            f'<table class="protocol">{table}</table></section>')


def attrition_labels(params: dict) -> dict[str, str]:
    """Attrition step -> criterion text, in the cohort stage's order."""
    from pmed.cohort import queries

    c = params["cohort"]
    values = {"prior_observation_days": c.get("prior_observation_days"),
              "min_age_years": c.get("min_age_years") or 0,
              "max_days_to_treatment": c["treatment_strategies"].get("max_days_after_index"),
              "grace_days": c["treatment_strategies"].get("grace_days")}
    return {step: text.format(**values) for step, text in queries.ATTRITION_STEPS.items()}


def cohort_flow(metrics: dict, params: dict) -> str:
    """HTML: the attrition flow and the persons and deaths per arm, as the cohort stage
    released them (merged small steps, suppressed counts)."""
    labels = attrition_labels(params)
    order = list(labels)
    steps = metrics.get("attrition", {})

    def position(step: str) -> int:
        last = step.split(" or ")[-1]
        return order.index(last) if last in order else len(order)
    rows = []
    for step in sorted(steps, key=position):
        text = " or ".join(labels.get(s, s) for s in step.split(" or "))
        counts = steps[step]
        rows.append(f"<tr><td>{esc(text)}</td><td class=num>{esc(fmt_count(counts.get('remaining')))}"
                    f"</td><td class=num>{esc(fmt_count(counts.get('excluded')))}</td></tr>")
    strategies = params["cohort"]["treatment_strategies"]
    groups = metrics.get("groups", {})
    arms = "".join(
        f"<tr><td>{esc(_cap(arm_name(a, strategies)))}</td><td class=num>{esc(fmt_count(g.get('persons')))}</td>"
        f"<td class=num>{esc(fmt_count(g.get('events')))}</td>"
        f"<td>{esc(fmt_metric(g.get('median_followup_days'), unit='days'))}</td></tr>"
        for a, g in groups.items())
    min_cell = params["common"]["min_cell_size"]
    return ("<section id='cohort-flow'><h2>Cohort flow</h2>"
            "<table><thead><tr><th>Criterion</th><th>Remaining</th><th>Excluded</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
            "<table><thead><tr><th>First-line regimen</th><th>Patients</th><th>Deaths</th>"
            f"<th>Median follow-up (95% CI)</th></tr></thead><tbody>{arms}</tbody></table>"
            f"<p class=note>Counts from 1 to {min_cell - 1} are shown as &lt;{min_cell}; a count that "
            "would reveal one reads “suppressed”. Median follow-up: reverse Kaplan-Meier.</p></section>")


# --- headline results: 2-3 sentences per stage ------------------------------------------------
# Each function returns [(sentence, (status, verdict) or None)]; status "yes" = the held-out
# evidence beats its baseline, "no" = it does not, "na" = no held-out comparison applies.

Headline = tuple[str, tuple[str, str] | None]


def _arms(params):
    return params["cohort"]["treatment_strategies"]


def headlines_cohort(m: dict, params: dict) -> list[Headline]:
    s = _arms(params)
    first = next(iter(sorted(m.get("attrition", {}).values(), key=lambda c: -_num(c.get("remaining")))), {})
    per_arm = ", ".join(f"{arm_name(a, s)} {fmt_count(g['persons'])}" for a, g in m["groups"].items())
    out = [(f"{fmt_count(m['persons'])} patients met all eligibility criteria (of "
            f"{fmt_count(first.get('remaining'))} with a qualifying diagnosis): {per_arm}.", None),
           (f"{fmt_count(m['events'])} died during a median follow-up of "
            f"{fmt_metric(m['median_followup_days'], unit='days')}.", None)]
    for name, o in m.get("outcomes", {}).items():
        out.append((f"{_cap(name.replace('_', ' '))}: {fmt_count(o.get('events'))} events; "
                    f"{fmt_count(o.get('competing_deaths'))} patients died first (competing event).", None))
    return out


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("-inf")


def headlines_survival(m: dict, params: dict) -> list[Headline]:
    s = _arms(params)
    medians = "; ".join(f"{arm_name(a, s)} {fmt_metric(v, unit='days')}"
                        for a, v in m["median_os_days"].items())
    out = [(f"Median overall survival (Kaplan-Meier, unadjusted): {medians}; log-rank "
            f"{fmt_p(m['logrank']['p_value'])}.", None)]
    cox = m.get("cox_mi_log_hr", {})
    terms = list(cox)
    arms = [t for t in terms if t.startswith("arm_") and ":" not in t]
    if arms:
        hrs = "; ".join(f"{term_label(t, terms, s)}: HR {fmt_ratio(cox[t], log=True)}" for t in arms)
        out.append((f"Adjusted Cox model (multiple imputation, {fmt_count(m.get('n_persons'))} patients): "
                    f"{hrs}.", ("na", "fitted and assessed on the same patients: not held-out evidence")))
    for name, c in m.get("competing", {}).items():
        fg = c.get("fine_gray_log_shr", {})
        shr = "; ".join(f"{term_label(t, list(fg), s)}: subdistribution HR {fmt_ratio(v, log=True)}"
                        for t, v in fg.items())
        out.append((f"{_cap(name.replace('_', ' '))} (death as a competing event): {shr}; "
                    f"Gray's test {fmt_p(c.get('gray', {}).get('p_value'))}.", None))
    return out


def headlines_outcomes(m: dict, params: dict) -> list[Headline]:
    """Cross-validated discrimination vs chance, the paired comparison of the models,
    calibration (slope, ICI) and net benefit vs treating all or none."""
    models = m["models"]
    best = max(models, key=lambda k: _num(models[k].get("harrell_c", {}).get("estimate")))
    b, name = models[best], MODEL_NAMES.get(best, best)
    horizon = fmt_num(m["horizon_days"], 0)
    out = [(f"Predicting death within {horizon} days, validated by "
            f"{m.get('validation', 'held-out predictions')}: best Harrell's C "
            f"{fmt_metric(b['harrell_c'])} ({name}).",
            verdict(b["harrell_c"], 0.5, baseline="chance (C 0.5)"))]
    pairs = [(k, d["harrell_c"]) for k, d in m.get("paired_differences", {}).items()
             if "harrell_c" in d]
    if pairs:
        text = "; ".join(f"{' minus '.join(MODEL_NAMES.get(x, x) for x in k.split('-'))} "
                         f"{fmt_metric(d)}" for k, d in pairs)
        out.append((f"Paired differences in C on the same resamples: {text}.", None))
    out.append((f"Calibration of the {name}: slope {fmt_metric(b.get('calibration_slope'))} "
                f"(ideal 1), ICI {fmt_metric(b.get('ici'))} (ideal 0).", None))
    nb = m.get("net_benefit_at_threshold", {}).get(best) or b.get("net_benefit")
    treat_all = m.get("treat_all_net_benefit_at_threshold")
    if nb:
        base = max(0.0, _num(treat_all))
        out.append((f"Acting on a predicted risk of {fmt_pct(m.get('high_risk_threshold'), 0)} or more: "
                    f"net benefit {fmt_metric(nb)} with the {name}, vs {fmt_num(treat_all)} treating all "
                    "and 0 treating none.",
                    verdict(nb, base, baseline="treating all or none")))
    return out


def headlines_treatment(m: dict, params: dict) -> list[Headline]:
    s = _arms(params)
    ref = arm_name(None, s)
    horizon = fmt_num(params.get("treatment", {}).get("horizon_days", float("nan")), 0)
    out = []
    for arm, hr in m["hazard_ratio_iptw"].items():
        diff = m.get("survival_difference_iptw", {}).get(arm)
        extra = (f"; difference in survival at {horizon} days {_points(diff)}" if diff else "")
        out.append((f"{_cap(arm_name(arm, s))} vs {ref}: HR {fmt_ratio(hr)} after IPTW{extra}.",
                    ("na", "95% CI of the HR excludes 1" if not (hr["ci_low"] <= 1 <= hr["ci_high"])
                     else "95% CI of the HR includes 1")))
    het = m.get("heterogeneity_p_holm", {})
    if het:
        ps = "; ".join(f"{_contrast(k, s)} {fmt_p(p)}" for k, p in het.items())
        found = any(_num(p) < 0.05 and _num(p) >= 0 for p in het.values())
        out.append((f"Does the effect differ between patients? Held-out test (Holm-adjusted): {ps}.",
                    ("yes" if found else "no",
                     "evidence of heterogeneity" if found else "no evidence of heterogeneity")))
    gain = m.get("policy_gain_vs_best_single")
    if gain:
        best = arm_name(m.get("best_single_arm"), s)
        out.append((f"Personalised recommendations (policy tree), held out: survival at {horizon} days "
                    f"{fmt_pct_ci(m.get('policy_value'))}; gain {_points(gain)} over giving everyone "
                    f"{best}.", verdict(gain, 0.0, baseline=f"giving everyone {best}")))
    return out


def _points(m: dict) -> str:
    """A difference of shares in percentage points: "+3.8 points (-2.2 to 9.8)"."""
    est, lo, hi = (100 * float(m[k]) for k in ("estimate", "ci_low", "ci_high"))
    sign = "+" if est > 0 else ""
    return f"{sign}{fmt_num(est, 1)} percentage points ({fmt_num(lo, 1)} to {fmt_num(hi, 1)})"


def _contrast(key: str, strategies: dict) -> str:
    """``"io vs chemo"`` -> ``"immunotherapy alone vs chemotherapy alone"``."""
    return " vs ".join(arm_name(p.strip(), strategies) for p in key.split(" vs "))


def headlines_imaging_features(m: dict, params: dict) -> list[Headline]:
    return [(f"{fmt_count(m['n_features'])} radiomic features from {fmt_count(m['n_images'])} CT images; "
             f"{fmt_count(m.get('n_ibsi_verified'))} checked against IBSI reference values.", None),
            (f"{fmt_count(m.get('n_stable'))} features were stable (ICC) on "
             f"{fmt_count(m.get('n_stability_images'))} test-retest images.", None)]


def headlines_imaging_analysis(m: dict, params: dict) -> list[Headline]:
    c, d = m["c_index"], m["delta_c"]
    out = [(f"Adding baseline-CT radiomics to the clinical model (out-of-fold, "
            f"{fmt_count(m.get('n_baseline_ct'))} patients with a baseline CT): C index "
            f"{fmt_metric(c['combined'])} vs {fmt_metric(c['clinical'])}; gain {fmt_metric(d['combined'])}.",
            verdict(d["combined"], 0.0, baseline="the clinical model"))]
    if "imaging" in d:
        out.append((f"Radiomics alone: C index {fmt_metric(c['imaging'])}; difference to the clinical "
                    f"model {fmt_metric(d['imaging'])}.", verdict(d["imaging"], 0.0, baseline="the clinical model")))
    lm = m.get("landmark", {})
    if lm.get("hr_per_volume_doubling"):
        out.append((f"Early response: HR of death per doubling of tumour volume at the follow-up CT "
                    f"{fmt_ratio(lm['hr_per_volume_doubling'])}, {fmt_p(lm.get('p'))} "
                    f"({fmt_count(lm.get('n'))} patients, landmark analysis).", None))
    return out


HEADLINES: dict[str, Callable[[dict, dict], list[Headline]]] = {
    "cohort": headlines_cohort, "survival": headlines_survival, "outcomes": headlines_outcomes,
    "treatment": headlines_treatment, "imaging_features": headlines_imaging_features,
    "imaging_analysis": headlines_imaging_analysis,
}


def stage_headlines(stage: str, metrics: dict | None, params: dict) -> list[Headline]:
    """The stage's headline sentences; one explaining sentence if its metrics are absent or
    lack a key the sentences need (the page never fails on a changed metrics file)."""
    if metrics is None:
        return [("Not run yet: no metrics file.", None)]
    make = HEADLINES.get(stage)
    if make is None:
        return []
    try:
        return make(metrics, params)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        return [(f"Headline results not available: the metrics file lacks or changed {err} "
                 "(see the stage report and the appendix).", None)]


def _render_headlines(items: list[Headline]) -> str:
    lis = []
    for text, v in items:
        badge = ""
        if v is not None:
            status, words = v
            badge = f' <span class="verdict {status}">{esc(words)}</span>'
        lis.append(f"<li>{esc(text)}{badge}</li>")
    return f"<ul class=headlines>{''.join(lis)}</ul>"


# --- stage sections, figures, checklists -------------------------------------------------------

def notebook_stages() -> dict[str, str]:
    """{stage: report stem} of the notebook stages, in dvc.yaml's order."""
    stages = yaml.safe_load((config.ROOT / "dvc.yaml").read_text())["stages"]
    return {name: runner.stage_notebook(spec).stem for name, spec in stages.items()
            if any(str(d).endswith(".ipynb") for d in spec.get("deps", []))}


def _rel(path: Path) -> str:
    return Path(os.path.relpath(path, config.path("reports"))).as_posix()


def figure_links(stem: str) -> str:
    """Thumbnails of the stage's key figures that exist, each linking to its report section."""
    figs = []
    page = config.path("reports") / f"{stem}.html"
    ids = anchor_ids(page)
    for file, caption, anchor in KEY_FIGURES.get(stem, []):
        img = config.path("figures") / stem / file
        if not img.is_file():
            continue
        href = f"{page.name}#{anchor}" if anchor in ids else page.name
        figs.append(f'<figure><a href="{esc(href)}"><img src="{esc(_rel(img))}" alt="{esc(caption)}" '
                    f'loading="lazy"></a><figcaption>{esc(caption)}</figcaption></figure>')
    return f"<div class=thumbs>{''.join(figs)}</div>" if figs else ""


def stage_results(params: dict, metrics: dict[str, dict]) -> str:
    """HTML: per notebook stage, its headline sentences, thumbnails and report link."""
    stages = yaml.safe_load((config.ROOT / "dvc.yaml").read_text())["stages"]
    parts = ["<section id='results'><h2>Headline results</h2>"
             "<p class=note>95% confidence intervals in brackets. A green mark: the held-out "
             "evidence beats the stated baseline; a grey one: it does not (or no held-out "
             "comparison applies).</p>"]
    for stage, stem in notebook_stages().items():
        page = config.path("reports") / f"{stem}.html"
        title = esc(STAGE_TITLES.get(stage, stages[stage].get("desc", "")))
        link = f'<a href="{page.name}">{esc(stem)} report</a>' if page.exists() else "report not built"
        parts.append(f"<h3 id='stage-{esc(stage)}'>{esc(stage.replace('_', ' ').capitalize())}: "
                     f"<small>{title}</small> <span class=link>({link})</span></h3>")
        parts.append(_render_headlines(stage_headlines(stage, metrics.get(stage), params)))
        parts.append(figure_links(stem))
    parts.append("</section>")
    return "".join(parts)


def load_checklists(file: Path = CHECKLISTS) -> dict:
    """The checklist items (checklists.yaml)."""
    return yaml.safe_load(file.read_text())


def checklist_status(item: dict, ids: dict[str, set[str]]) -> list[str]:
    """The item's links (``report#anchor``) whose anchor exists in the rendered page; empty =
    not reported. ``ids``: {report stem: its element ids}."""
    where = item.get("at") or []
    where = [where] if isinstance(where, str) else where
    found = []
    for ref in where:
        stem, _, anchor = ref.partition("#")
        if anchor in ids.get(stem, set()):
            found.append(ref)
    return found


INDEX_IDS = {"question", "cohort-flow", "results", "reports", "checklists", "appendix"}


def checklists_html() -> str:
    """HTML: every checklist, each item linked to the report sections that answer it."""
    reports = config.path("reports")
    ids = {stem: anchor_ids(reports / f"{stem}.html") for stem in notebook_stages().values()}
    ids["index"] = INDEX_IDS
    parts = ["<section id='checklists'><h2>Reporting checklists</h2><p class=note>Each item links to "
             "the section of this run's reports that answers it; “not reported” means no report "
             "section does. Item wording is abridged: use the published checklists.</p>"]
    for key, cl in load_checklists().items():
        rows, n_ok = [], 0
        for item in cl["items"]:
            found = checklist_status(item, ids)
            n_ok += bool(found)
            links = ", ".join(
                f'<a href="{esc(("" if r.startswith("index#") else r.partition("#")[0] + ".html") + "#" + r.partition("#")[2])}">'
                f'{esc(r.partition("#")[0])}: {esc(r.partition("#")[2].replace("-", " ")[:60])}</a>'
                for r in found) or '<span class="verdict no">not reported</span>'
            rows.append(f"<tr><td>{esc(item['id'])}</td><td>{esc(item['item'])}</td><td>{links}</td></tr>")
        parts.append(f"<details id='checklist-{esc(key)}'><summary><b>{esc(cl['title'])}</b>: "
                     f"{n_ok} of {len(cl['items'])} items reported <small>({esc(cl['reference'])})</small>"
                     "</summary><table class=checklist><thead><tr><th>Item</th><th>Topic</th>"
                     f"<th>Where reported</th></tr></thead><tbody>{''.join(rows)}</tbody></table></details>")
    parts.append("</section>")
    return "".join(parts)


def _metric_rows(metrics: dict) -> str:
    """Flattened metrics as table rows; {estimate, ci_low, ci_high} entries on one row."""
    rows = []

    def walk(d: dict, prefix: str):
        for k, v in d.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict) and "estimate" in v:
                rows.append((name, fmt_metric(v)))
            elif isinstance(v, dict):
                walk(v, name + ".")
            elif isinstance(v, float):
                rows.append((name, fmt_p(v) if name.split(".")[-1].startswith("p") and
                             name.split(".")[-1] in ("p", "p_value", "logrank_p") else fmt_num(v)))
            else:
                rows.append((name, MISSING if v is None else v))
    walk(metrics, "")
    return "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows)


def _pairs(rows: list[tuple[str, object]], head: tuple[str, str]) -> str:
    body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows)
    return (f"<table><thead><tr><th>{head[0]}</th><th>{head[1]}</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


STYLE = """<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:16px;line-height:1.5;
max-width:62em;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;margin-top:1.6em}
h3{margin:1.2em 0 .3em}h3 small{font-weight:normal;color:#555}.link{font-size:.8em;font-weight:normal}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top;text-align:left}
td.num{text-align:right}.protocol th{width:11em;background:#f6f6f6}
.question{font-size:1.15em;font-weight:600}.note{color:#555;font-size:.9em}
.headlines li{margin:.3em 0}.verdict{font-size:.8em;padding:1px 6px;border-radius:3px;white-space:nowrap}
.verdict.yes{background:#d8f0d8;color:#155d15}.verdict.no{background:#eee;color:#444}
.verdict.na{background:#f3efe0;color:#5a4a10}
.thumbs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:220px}
figure img{width:220px;height:150px;object-fit:contain;border:1px solid #ccc;background:#fff}
figcaption{font-size:.85em;color:#444}details{margin:.6em 0}summary{cursor:pointer}
.checklist td:first-child{white-space:nowrap}pre{background:#f6f6f6;padding:1em;overflow:auto}
nav a{margin-right:1em}
</style>"""


def build_index() -> str:
    """The index page as HTML text."""
    params = config.load_params()
    metrics = {f.stem: json.loads(f.read_text()) for f in sorted(config.path("metrics").glob("*.json"))}
    reports = config.path("reports")
    stages = yaml.safe_load((config.ROOT / "dvc.yaml").read_text())["stages"]
    parts = ["<h1>Study summary</h1>",
             "<nav><a href='#question'>Question</a><a href='#cohort-flow'>Cohort</a>"
             "<a href='#results'>Results</a><a href='#reports'>Reports</a>"
             "<a href='#checklists'>Checklists</a><a href='#appendix'>Appendix</a></nav>",
             study_question(params)]
    parts.append(cohort_flow(metrics.get("cohort", {}), params))
    parts.append(stage_results(params, metrics))
    parts.append("<section id='reports'><h2>Stage reports</h2><ol>")
    for name, stem in notebook_stages().items():
        page = reports / f"{stem}.html"
        desc = esc(stages[name].get("desc", ""))
        link = f'<a href="{page.name}">{esc(name)}</a>' if page.exists() else f"{esc(name)} (not run)"
        parts.append(f"<li>{link}: {desc}</li>")
    parts.append("</ol></section>")
    parts.append(checklists_html())
    parts.append("<section id='appendix'><h2>Appendix</h2><h3>All metrics</h3>")
    for stage, m in metrics.items():
        parts.append(f"<details><summary>{esc(stage)} ({esc(stage)}.json)</summary><table><thead><tr>"
                     f"<th>metric</th><th>value (95% CI)</th></tr></thead><tbody>{_metric_rows(m)}"
                     "</tbody></table></details>")
    parts.append("<h3>Data version</h3>")
    parts.append(f"<p><code>{esc(data_version())}</code></p>")
    parts.append("<h3>Parameters (params.yaml)</h3>")
    parts.append(f"<details><summary>params.yaml</summary><pre>{esc(config.PARAMS_FILE.read_text())}</pre></details>")
    parts.append("<h3>Package versions</h3>")
    parts.append(_pairs(sorted(package_versions().items()), ("package", "version")))
    parts.append("</section>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>Study summary</title>{STYLE}</head><body>{''.join(parts)}</body></html>\n")


def audit_files() -> list[Path]:
    """Every file the pipeline publishes: all of reports/ (HTML, executed notebooks, metrics,
    plot data, figures), the aggregate tables in data/processed (CSV) and metrics/plots kept
    outside reports/ if params.yaml moves them."""
    roots = [config.path(name) for name in ("reports", "metrics", "plots", "figures", "executed")]
    files = {f for root in roots if root.is_dir() for f in root.rglob("*") if f.is_file()}
    files |= set(config.path("processed").glob("*.csv"))
    return sorted(files)


def audit_reports() -> None:
    """Stop with an error if any published file holds a raw-data identifier.

    Checks :func:`audit_files` (executed notebooks and figure files included). The error
    names the files and how many identifiers each holds, never the identifiers.
    """
    files = audit_files()
    leaks = privacy.find_leaks(files, privacy.raw_identifiers(config.path("omop"),
                                                             config.path("raw")))
    if leaks:
        where = "; ".join(f"{Path(f).name}: {len(ids)}" for f, ids in sorted(leaks.items()))
        raise SystemExit(f"privacy audit failed, raw-data identifiers found in: {where}")
    print(f"[pmed] report: privacy audit passed on {len(files)} report files")


def main() -> int:
    runner.require_own_checkout()
    audit_reports()
    out = config.path("reports") / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".html.tmp")  # all or nothing, as the notebook stages
    tmp.write_text(build_index(), encoding="utf-8")
    tmp.replace(out)
    print(f"[pmed] report: wrote {out.relative_to(config.workspace())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
