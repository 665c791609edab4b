"""Outputs of the simulation study: replicate table, performance table, metrics JSON, HTML report.

Everything written is an aggregate (estimates per replicate data set, and summaries of them);
no person-level value leaves a replicate.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pmed.report import json_ready  # noqa: E402
from pmed.simulation.performance import NOMINAL, coverage_band, summarise  # noqa: E402

SHOWN = {  # summary column -> heading in the HTML tables
    "estimand": "estimand", "n_rep": "R", "true_mean": "true", "mean_estimate": "mean estimate",
    "bias": "bias", "bias_mcse": "(MC SE)", "emp_se": "emp. SE", "model_se": "model SE",
    "rel_error_se_pct": "rel. error SE %", "rel_error_se_mcse": "(MC SE) ", "coverage": "coverage",
    "coverage_mcse": "(MC SE)  ", "reject_rate": "rejection", "reject_mcse": "(MC SE)   ", "ci_kind": "CI",
}


def coverage_plot(summary: pd.DataFrame) -> plt.Figure:
    """Coverage per estimand with +- 2 Monte-Carlo SE bars; shaded: 0.95 +- 2 MC SE of a correct
    interval (for the median R); red: outside that band."""
    cov = summary[np.isfinite(summary["coverage"].to_numpy(float))].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7.5, 0.24 * len(cov) + 1.4))
    if len(cov) == 0:
        ax.text(0.5, 0.5, "no estimand with a coverage", ha="center")
        return fig
    y = np.arange(len(cov))[::-1]
    lo, hi = coverage_band(int(cov["n_rep"].median()))
    ax.axvspan(lo, hi, color="0.88", label=f"{NOMINAL:.0%} +- 2 MC SE (R = {int(cov['n_rep'].median())})")
    ax.axvline(NOMINAL, color="0.4", lw=1)
    colour = np.where(cov["coverage_flag"], "C3", "C0")
    ax.errorbar(cov["coverage"], y, xerr=2 * cov["coverage_mcse"], fmt="none", ecolor="0.5", lw=1)
    ax.scatter(cov["coverage"], y, c=colour, s=16, zorder=3)
    ax.set_yticks(y, [f"{s}: {e}" for s, e in zip(cov["scenario"], cov["estimand"], strict=True)], fontsize=7)
    ax.set_xlabel("coverage of the 95% CI (bars: +- 2 Monte-Carlo SE)")
    ax.set_xlim(min(0.5, float(cov["coverage"].min()) - 0.05), 1.01)
    ax.legend(loc="lower left", fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _table(df: pd.DataFrame) -> str:
    shown = df[[c for c in SHOWN if c in df.columns]].rename(columns=SHOWN)
    styled = shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0)
    return styled


def html_report(result: dict, settings_text: dict) -> str:
    """The HTML page: design, runtime, failures, one performance table per scenario and group,
    flagged coverages, the coverage plot."""
    summary, failures, runtime = result["summary"], result["failures"], result["runtime"]
    parts = ["<html><head><meta charset='utf-8'><title>pmed simulation study</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:auto} table{border-collapse:collapse;font-size:12px}"
             "td,th{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right} td:first-child{text-align:left}"
             "</style></head><body><h1>Simulation study of the pmed estimators (ADEMP)</h1>"]
    parts.append("<h2>Design</h2><ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>"
                                                 for k, v in settings_text.items()) + "</ul>")
    parts.append(f"<p>Runtime: {runtime['wall_s']:.0f} s wall on {runtime['workers']} workers; "
                 f"{runtime['task_cpu_s']:.0f} CPU s in the tasks; load average (1, 5, 15 min) at the end "
                 f"{', '.join(f'{x:.1f}' for x in runtime['load_average_1_5_15'])} on {runtime['cpu_count']} "
                 f"cores; mean cohort size {runtime['mean_cohort_size']:.0f}; tasks (scenario x replicate) "
                 f"done {runtime.get('tasks_done', '?')} of {runtime.get('tasks_planned', '?')}; CPU s per group: "
                 + ", ".join(f"{g} {sec:.0f}" for g, sec in runtime.get("group_cpu_s", {}).items()) + ".</p>")
    if len(summary):
        flagged = summary[summary["coverage_flag"]]
        parts.append("<h2>Coverage outside 95% +- 2 MC SE</h2>")
        parts.append(_table(flagged.assign(estimand=flagged["scenario"] + ": " + flagged["estimand"]))
                     if len(flagged) else "<p>none</p>")
        parts.append(f"<h2>Coverage</h2><img src='data:image/png;base64,{_png(coverage_plot(summary))}'/>")
        parts.append("<h2>Performance by scenario and estimand group</h2>"
                     "<p>true: mean truth over replicates (data-adaptive truths vary); bias, empirical SE "
                     "and coverage against each replicate's truth; model SE: root mean squared SE (for "
                     "percentile CIs: width / 3.92); rejection: share of replicates whose CI excludes 0 "
                     "(tests: the stated rule), a type I error rate where the null holds.</p>")
        for (sc, grp), part in summary.groupby(["scenario", "group"], sort=False):
            null = " (null true)" if part["null_true"].all() else ""
            parts.append(f"<h3>{html.escape(sc)}: {html.escape(grp)}{null}</h3>" + _table(part))
    parts.append(f"<h2>Failures</h2><p>{len(failures)} estimand-group runs raised.</p>")
    if len(failures):
        counts = failures.groupby(["scenario", "group", "error"]).size().rename("n").reset_index()
        parts.append(counts.to_html(index=False, border=0))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_outputs(result: dict, out_dir: Path, settings_text: dict) -> dict[str, Path]:
    """replicates.csv, performance.csv, failures.csv, metrics.json, coverage.png, report.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / n for k, n in (("replicates", "replicates.csv"), ("performance", "performance.csv"),
                                          ("failures", "failures.csv"), ("metrics", "metrics.json"),
                                          ("plot", "coverage.png"), ("report", "report.html"))}
    result["table"].to_csv(paths["replicates"], index=False)
    result["summary"].to_csv(paths["performance"], index=False)
    result["failures"].to_csv(paths["failures"], index=False)
    if len(result["summary"]):
        coverage_plot(result["summary"]).savefig(paths["plot"], dpi=110, bbox_inches="tight")
        plt.close("all")
    summary = result["summary"]
    metrics = {
        "design": settings_text,
        "runtime": result["runtime"],
        "population_truths": result["truths"],
        "n_failures": len(result["failures"]),
        "flagged_coverage": [] if not len(summary) else
        [f"{r.scenario}: {r.estimand}" for r in summary[summary["coverage_flag"]].itertuples()],
        "performance": summary.to_dict(orient="records"),
    }
    paths["metrics"].write_text(json.dumps(json_ready(metrics), indent=1, sort_keys=True) + "\n")
    paths["report"].write_text(html_report(result, settings_text))
    return paths


def read_run(folder: Path) -> tuple[dict, dict]:
    """(result, design text) of an earlier run's folder, its summary recomputed from replicates.csv."""
    table = pd.read_csv(folder / "replicates.csv")
    metrics = json.loads((folder / "metrics.json").read_text())
    result = {"table": table, "summary": summarise(table) if len(table) else pd.DataFrame(),
              "failures": pd.read_csv(folder / "failures.csv"), "runtime": metrics["runtime"],
              "truths": metrics["population_truths"]}
    return result, metrics["design"]
