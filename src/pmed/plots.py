"""Shared report figures: KM curves with a numbers-at-risk table, forest plot, calibration
plot, decision curve, scaled Schoenfeld residual plots.

Every count printed on a figure goes through :func:`pmed.privacy.format_count`, so counts in
(0, min_cell) appear as "<min_cell". Figures show aggregates only (no per-person points).
Each function returns the matplotlib ``Figure``; saving is left to the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter
from statsmodels.nonparametric.smoothers_lowess import lowess

from pmed import config
from pmed.privacy import format_count, release_km
from pmed.report import arm_name, fmt_est_ci

#: Candidate tick positions of ratio (HR / OR) axes on a log scale.
_RATIO_TICKS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)

#: Model terms (cohort columns, see data/processed/cohort_dictionary.csv) -> (clinical name,
#: unit of one step of the term). Binary terms read "yes vs no"; "arm_<label>" terms are named
#: from params.yaml's arms (:func:`pmed.report.arm_name`).
TERM_LABELS = {
    "age_years": ("Age", "per year"),
    "sex_female": ("Female sex", "vs male"),
    "smoking_current": ("Current smoker", "vs never"),
    "smoking_former": ("Former smoker", "vs never"),
    "ecog": ("ECOG performance status", "per point"),
    "stage_iv": ("Stage IV", "vs stage III"),
    "copd": ("COPD", "yes vs no"),
    "diabetes": ("Diabetes", "yes vs no"),
    "heart_failure": ("Heart failure", "yes vs no"),
    "ckd": ("Chronic kidney disease", "yes vs no"),
    "albumin_g_dl": ("Albumin", "per 1 g/dL"),
    "ldh_u_l": ("LDH", "per 1 U/L"),
    "neutrophils_10e9_l": ("Neutrophils", "per 10^9/L"),
    "lymphocytes_10e9_l": ("Lymphocytes", "per 10^9/L"),
    "hemoglobin_g_dl": ("Haemoglobin", "per 1 g/dL"),
    "creatinine_mg_dl": ("Creatinine", "per 1 mg/dL"),
    "weight_kg": ("Weight", "per kg"),
    "bmi_kg_m2": ("BMI", "per 1 kg/m2"),
    "pdl1_pct": ("PD-L1", "per 1%"),
    "driver_positive": ("EGFR/ALK driver positive", "vs negative"),
    "t0_year": ("Calendar year of treatment start", "per year"),
    "days_dx_to_treatment": ("Days from diagnosis to treatment", "per day"),
}
#: Reference point of a term when it interacts with an arm ("at PD-L1 0%").
TERM_REFERENCE = {"pdl1_pct": "PD-L1 0%", "driver_positive": "driver negative",
                  "age_years": "age 0", "ecog": "ECOG 0"}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _split_term(term: str) -> list[str]:
    """``"arm_io:pdl1_pct"`` or ``"arm_io x pdl1_pct"`` -> ``["arm_io", "pdl1_pct"]``."""
    return [p.strip() for p in str(term).replace(" x ", ":").split(":")]


def term_label(term: str, terms: Sequence[str] = (), arms: Mapping | None = None) -> str:
    """A model term as a clinical label with its unit.

    ``"pdl1_pct"`` -> ``"PD-L1 (per 1%)"``; ``"arm_io:pdl1_pct"`` -> ``"Immunotherapy alone x
    PD-L1 (per 1%)"``; an arm term that interacts with others in ``terms`` (the model's terms)
    names their reference point: ``"Immunotherapy alone vs chemotherapy alone (at PD-L1 0%,
    driver negative)"``; a contrast ``"io vs chemo"`` reads ``"Immunotherapy alone vs
    chemotherapy alone"``. ``arms`` is params.yaml's ``cohort.treatment_strategies`` (read from
    params.yaml when None). Unknown terms are returned unchanged.
    """
    if arms is None:
        arms = config.load_params()["cohort"]["treatment_strategies"]
    sides = [p.strip() for p in str(term).split(" vs ")]
    if len(sides) == 2 and all(p in arms.get("arms", {}) for p in sides):  # "io vs chemo"
        return f"{_cap(arm_name(sides[0], arms))} vs {arm_name(sides[1], arms)}"
    parts = _split_term(term)
    names = []
    for p in parts:
        if p.startswith("arm_"):
            names.append(_cap(arm_name(p.removeprefix("arm_"), arms)))
        elif p in TERM_LABELS:
            names.append(TERM_LABELS[p][0])
        else:
            return str(term)
    if len(parts) > 1:
        unit = TERM_LABELS.get(parts[-1], ("", ""))[1]
        return " x ".join(names) + (f" ({unit})" if unit else "")
    p = parts[0]
    if p.startswith("arm_"):
        partners = [q for t in terms for q in _split_term(t)[1:] if _split_term(t)[0] == p]
        refs = [TERM_REFERENCE.get(q, f"{TERM_LABELS.get(q, (q,))[0]} 0") for q in dict.fromkeys(partners)]
        ref_arm = arm_name(None, arms)
        return f"{names[0]} vs {ref_arm}" + (f" (at {', '.join(refs)})" if refs else "")
    return f"{names[0]} ({TERM_LABELS[p][1]})"


__all__ = [
    "term_label", "km_plot", "forest_plot", "calibration_plot", "decision_curve_plot", "schoenfeld_plot",
    "importance_plot", "ps_overlap_plot", "love_plot", "trajectory_band_plot", "policy_value_plot",
]


def km_plot(
    curves: Mapping[str, pd.DataFrame],
    at_risk: pd.DataFrame,
    min_cell: int,
    time_label: str = "Days since start of first-line treatment",
    title: str = "",
    ci: bool = True,
):
    """Kaplan-Meier curves with the numbers at risk in a table under the time axis.

    Parameters
    ----------
    curves : mapping label -> DataFrame
        Output of :func:`pmed.survival.kaplan_meier` per group (``time``, ``survival``,
        ``ci_low``, ``ci_high``, and the unweighted ``n_at_risk``, also for weighted curves).
        Each curve is cut where fewer than ``min_cell`` remain at risk
        (:func:`pmed.privacy.release_km`); a group smaller than that is not drawn.
    at_risk : DataFrame
        Output of :func:`pmed.survival.numbers_at_risk`: index = the same labels, columns =
        the times at which the counts are shown.
    min_cell : int
        Minimum cell size; smaller positive counts are shown as "<min_cell".
    """
    missing = [lab for lab in curves if lab not in at_risk.index]
    if missing:
        raise KeyError(f"km_plot: groups {missing} have curves but no numbers-at-risk row")
    n_rows = len(curves)
    fig, ax, tab = risk_table_figure(n_rows)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    times = [float(c) for c in at_risk.columns]
    for i, (label, km) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        km = release_km(km, min_cell)
        shown = label if len(km) else f"{label} (n < {min_cell}: not drawn)"
        ax.step(km["time"], km["survival"], where="post", color=colour, label=shown)
        if ci and len(km):
            ax.fill_between(km["time"], km["ci_low"], km["ci_high"], step="post", color=colour, alpha=0.15, lw=0)
        for t, n in zip(times, at_risk.loc[label], strict=True):
            tab.text(t, n_rows - 1 - i, format_count(n, min_cell), ha="center", va="center", color=colour, fontsize=8)
    ax.set_ylim(0, 1.02)
    if times:  # margin on the left so the first column of counts clears the group labels
        ax.set_xlim(-0.06 * max(times), max(times) * 1.04)
    ax.set_ylabel("Survival probability")
    ax.legend(loc="upper right", frameon=False)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    plt.setp(ax.get_xticklabels(), visible=False)
    ax.set_xticks(times)
    style_risk_table(tab, list(curves), n_rows, time_label)
    return fig


def risk_table_figure(n_rows: int):
    """Figure with a curve panel above a numbers-at-risk panel for ``n_rows`` groups.

    Returns (fig, ax, tab): ``tab`` shares the x axis of ``ax``.
    """
    fig = plt.figure(figsize=(7.5, 5.0 + 0.28 * n_rows))
    grid = fig.add_gridspec(2, 1, height_ratios=[5.0, 0.45 + 0.3 * n_rows], hspace=0.22)
    ax = fig.add_subplot(grid[0])
    tab = fig.add_subplot(grid[1], sharex=ax)
    return fig, ax, tab


def style_risk_table(tab, labels: Sequence[str], n_rows: int, time_label: str) -> None:
    """Row labels (first group on top), x label and frame of a numbers-at-risk panel."""
    tab.set_ylim(-0.6, n_rows - 0.4)
    tab.set_yticks(range(len(labels)))
    tab.set_yticklabels(list(labels)[::-1], fontsize=8)
    tab.set_xlabel(time_label)
    tab.set_title("Number at risk", fontsize=8, loc="left", pad=3)
    for side in ("top", "right", "left"):
        tab.spines[side].set_visible(False)
    tab.tick_params(axis="y", length=0)


def _spaced(ticks: Sequence[float], min_log_gap: float) -> list[float]:
    """Ratio ticks at least ``min_log_gap`` apart on the log axis, kept outwards from 1."""
    kept = [1.0] if 1.0 in ticks else ticks[:1]
    for side in (sorted(t for t in ticks if t > kept[0]), sorted((t for t in ticks if t < kept[0]), reverse=True)):
        last = kept[0]
        for t in side:
            if abs(np.log(t / last)) >= min_log_gap:
                kept.append(t)
                last = t
    return sorted(kept)


def forest_plot(table: pd.DataFrame, label_col: str = "term", title: str = "", xlabel: str = "Hazard ratio (95% CI, log scale)",
                arms: Mapping | None = None):
    """Forest plot of ratios with CIs on a log axis; needs ``hr``, ``hr_ci_low``, ``hr_ci_high``.

    Terms that are cohort columns or their interactions are shown with clinical labels and
    units (:func:`term_label`; ``arms`` as there), others as given; each row's ratio and CI
    is printed at the right ("0.82 (0.73 to 0.93)")."""
    need = [label_col, "hr", "hr_ci_low", "hr_ci_high"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise KeyError(f"forest_plot: table lacks column(s) {missing}")
    n = len(table)
    terms = [str(t) for t in table[label_col]]
    labels = [term_label(t, terms, arms) for t in terms]
    # margins in inches from the text they hold (~0.08 in per character at 10 pt), so long
    # labels never squeeze the plot; the estimates column on the right is ~1.9 in
    left, plot, right = 0.3 + 0.078 * max(map(len, labels), default=4), 3.6, 1.9
    bottom, top, height = 0.6, 0.45 if title else 0.2, 0.3 * n + 0.2
    fig, ax = plt.subplots(figsize=(left + plot + right, bottom + height + top))
    fig.subplots_adjust(left=left / fig.get_figwidth(), right=1 - right / fig.get_figwidth(),
                        bottom=bottom / fig.get_figheight(), top=1 - top / fig.get_figheight())
    y = np.arange(n)[::-1]
    ax.set_ylim(-0.6, n - 0.4)
    hr, lo, hi = (table[c].to_numpy(dtype=float) for c in ("hr", "hr_ci_low", "hr_ci_high"))
    ax.errorbar(
        hr, y,
        xerr=np.vstack([hr - lo, hi - hr]),
        fmt="s", color="black", ecolor="0.3", capsize=2, ms=4,
    )
    ax.axvline(1.0, color="0.5", ls="--", lw=1)
    ax.set_xscale("log")
    lo_all, hi_all = float(table["hr_ci_low"].min()), float(table["hr_ci_high"].max())
    lo_all, hi_all = min(lo_all, 1.0), max(hi_all, 1.0)  # the axis always shows no effect (1)
    ticks = _spaced([v for v in _RATIO_TICKS if lo_all / 1.1 <= v <= hi_all * 1.1],
                    0.07 * np.log(hi_all / lo_all))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y)
    ax.set_yticklabels(labels)
    for yi, (h, lo, hi) in zip(y, table[["hr", "hr_ci_low", "hr_ci_high"]].to_numpy(), strict=True):
        ax.annotate(fmt_est_ci(h, lo, hi), xy=(1.02, yi), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


def calibration_plot(curves: Mapping[str, pd.DataFrame], horizon_label: str = "365 days", title: str = ""):
    """Observed vs predicted risk per bin (output of :func:`pmed.calibration.calibration_curve`)."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="Ideal")
    for label, cal in curves.items():
        ax.errorbar(
            cal["predicted"], cal["observed"],
            yerr=[cal["observed"] - cal["ci_low"], cal["ci_high"] - cal["observed"]],
            fmt="o-", ms=4, capsize=2, label=label,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"Predicted risk of death by {horizon_label}")
    ax.set_ylabel(f"Observed risk of death by {horizon_label} (IPCW)")
    ax.legend(frameon=False, loc="upper left")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def decision_curve_plot(curves: Mapping[str, pd.DataFrame], title: str = ""):
    """Net benefit vs threshold for each model, with treat-all and treat-none references.

    Each DataFrame is an output of :func:`pmed.calibration.decision_curve`.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    first = next(iter(curves.values()))
    ax.plot(first["threshold"], first["treat_all"], color="0.4", lw=1, label="Treat all")
    ax.plot(first["threshold"], first["treat_none"], color="0.2", lw=1, ls=":", label="Treat none")
    for label, dc in curves.items():
        ax.plot(dc["threshold"], dc["model"], lw=1.5, label=label)
    top = max(float(np.nanmax(dc["model"])) for dc in curves.values())
    top = max(top, float(np.nanmax(first["treat_all"])))
    ax.set_ylim(-0.05, top * 1.1 + 0.01)
    ax.set_xlabel("Threshold probability")
    ax.set_ylabel("Net benefit (true positives per person)")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def schoenfeld_plot(
    residuals: pd.DataFrame,
    terms: Sequence[str],
    p_values: Mapping[str, float] | None = None,
    n_bins: int = 20,
    time_label: str = "Days since start of first-line treatment",
):
    """Scaled Schoenfeld residuals against time: binned means +- 2 SE and a LOWESS smooth.

    The residuals estimate beta(t) - beta (lifelines' scaled Schoenfeld residuals).

    ``residuals`` is the output of :func:`pmed.survival.scaled_schoenfeld` (one row per event
    with a ``time`` column). Per-event points are not drawn (aggregates only); a flat smooth
    around 0 supports proportional hazards for that term.
    """
    n = len(terms)
    ncol = min(3, n)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.0 * ncol, 2.8 * nrow), squeeze=False)
    t = residuals["time"].to_numpy(dtype=float)
    edges = np.unique(np.quantile(t, np.linspace(0, 1, n_bins + 1)))
    bins = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    for ax, term in zip(axes.ravel(), terms, strict=False):  # spare axes are hidden below
        r = residuals[term].to_numpy(dtype=float)
        centre = residuals["time"].groupby(bins).median()
        mean = pd.Series(r).groupby(bins).mean()
        se = pd.Series(r).groupby(bins).std() / np.sqrt(pd.Series(r).groupby(bins).size())
        ax.errorbar(centre, mean, yerr=2 * se, fmt="o", ms=3, color="0.35", capsize=1.5)
        # it=0: a local mean (robustness iterations would discount the skewed residuals of
        # rare binary covariates); drawn only over the span of the bin centres (aggregates).
        smooth = lowess(r, t, frac=0.5, it=0, return_sorted=True)
        inside = (smooth[:, 0] >= centre.min()) & (smooth[:, 0] <= centre.max())
        ax.plot(smooth[inside, 0], smooth[inside, 1], color="C3", lw=1.5)
        ax.axhline(0, color="0.5", ls="--", lw=1)
        name = term if p_values is None else f"{term} (p = {p_values.get(term, float('nan')):.3f})"
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(time_label, fontsize=8)
        ax.set_ylabel("beta(t) - beta", fontsize=8)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def importance_plot(table: pd.DataFrame, xlabel: str = "Decrease in AUROC when permuted", title: str = ""):
    """Horizontal bars of ``importance`` (+- ``sd``) per ``feature``, largest on top."""
    missing = [c for c in ("feature", "importance", "sd") if c not in table.columns]
    if missing:
        raise KeyError(f"importance_plot: table lacks column(s) {missing}")
    tab = table.sort_values("importance")
    fig, ax = plt.subplots(figsize=(6.5, 0.8 + 0.28 * len(tab)))
    ax.barh(tab["feature"], tab["importance"], xerr=tab["sd"], color="C0", ecolor="0.3", capsize=2)
    ax.axvline(0, color="0.5", lw=1)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def ps_overlap_plot(ps: np.ndarray, arm: np.ndarray, labels: Sequence[str], n_bins: int = 40):
    """Generalised propensity overlap: one panel per arm ``a``, histograms of ``P(A = a | X)``
    by the arm actually received (density; every arm must reach every region for IPTW).

    Parameters
    ----------
    ps : (n, k) generalised propensity scores; arm : (n,) codes 0..k-1; labels : arm labels.
    """
    ps = np.asarray(ps, dtype=float)
    arm = np.asarray(arm)
    if ps.ndim != 2 or ps.shape != (arm.size, len(labels)):
        raise ValueError(f"ps_overlap_plot: ps must be (n, k) = ({arm.size}, {len(labels)}), got {ps.shape}")
    k = len(labels)
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 3.4), sharey=False, squeeze=False)
    bins = np.linspace(0, 1, n_bins + 1)
    for a, ax in enumerate(axes[0]):
        for b, label in enumerate(labels):
            ax.hist(ps[arm == b, a], bins=bins, alpha=0.45, density=True, label=f"received {label}")
        ax.set_xlabel(f"P({labels[a]} | covariates)")
        ax.set_title(f"Propensity of {labels[a]}")
    axes[0][0].set_ylabel("Density")
    axes[0][0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


def policy_value_plot(values: pd.DataFrame, oracle: float | None = None):
    """Held-out value (survival at the horizon) of the policy and of treating all with each arm.

    ``values``: :func:`pmed.policy.policy_value` output (``policy``, ``estimate``, ``ci_low``,
    ``ci_high``); the gain row is drawn in its own panel around 0. ``oracle``: the true value
    of the oracle policy (demo only), dashed.
    """
    missing = [c for c in ("policy", "estimate", "ci_low", "ci_high") if c not in values.columns]
    if missing:
        raise KeyError(f"policy_value_plot: values lack column(s) {missing}")
    gain = values["policy"].str.startswith("gain")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 0.5 * len(values) + 1.5),
                                   gridspec_kw={"width_ratios": [3, 2]})
    for ax, part in ((ax1, values[~gain]), (ax2, values[gain])):
        y = np.arange(len(part))[::-1]
        ax.errorbar(part["estimate"], y, xerr=[part["estimate"] - part["ci_low"], part["ci_high"] - part["estimate"]],
                    fmt="o", color="black", capsize=3)
        ax.set_yticks(y)
        ax.set_yticklabels(part["policy"])
    if oracle is not None:
        ax1.axvline(oracle, ls="--", color="C3", label="oracle (true value)")
        ax1.legend(frameon=False, fontsize=8)
    ax2.axvline(0, color="0.5", lw=1)
    ax1.set_xlabel("Survival at the horizon (held-out DR value, 95% CI)")
    ax2.set_xlabel("Difference (95% CI)")
    ax1.set_title("Value of each policy")
    ax2.set_title("Policy minus best single arm")
    fig.tight_layout()
    return fig


def love_plot(balance: pd.DataFrame, threshold: float, analyses: Sequence[str] = ("crude", "iptw", "matched")):
    """|SMD| per covariate for each analysis (love plot), sorted by the first analysis.

    ``balance`` is the output of :func:`pmed.causal.balance_table` (``covariate`` and
    ``smd_<analysis>`` columns); ``threshold`` (|SMD|) is drawn as a dashed line.
    """
    cols = [f"smd_{a}" for a in analyses]
    missing = [c for c in ["covariate", *cols] if c not in balance.columns]
    if missing:
        raise KeyError(f"love_plot: balance table lacks column(s) {missing}")
    fig, ax = plt.subplots(figsize=(6.5, 0.25 * len(balance) + 1.2))
    order = balance.sort_values(cols[0], key=np.abs)
    y = np.arange(len(order))
    for col, marker in zip(cols, ("o", "s", "^", "D", "v"), strict=False):
        ax.scatter(order[col].abs(), y, marker=marker, label=col.removeprefix("smd_"), s=18)
    ax.axvline(threshold, ls="--", color="0.5")
    ax.set_yticks(y)
    ax.set_yticklabels(order["covariate"], fontsize=7)
    ax.set_xlabel("|Standardised mean difference|")
    ax.legend(frameon=False, loc="lower right")
    ax.set_title("Covariate balance (love plot)")
    return fig


def trajectory_band_plot(bands: pd.DataFrame, means: pd.DataFrame, ylabel: str, log_scale: bool = True):
    """Lab trajectories as aggregates: median and interquartile band by arm, with fitted means.

    Parameters
    ----------
    bands : output of :func:`pmed.longitudinal.trajectory_bands` (``treatment``, ``months``,
        ``median``, ``q25``, ``q75``; small cells already dropped). No person-level data.
    means : output of :func:`pmed.longitudinal.fitted_means` (``treatment``, ``months``,
        ``fitted``), drawn dashed.
    ylabel : lab name and unit. log_scale : log y axis (the scale of the mixed model).
    """
    missing = [c for c in ("treatment", "months", "median", "q25", "q75") if c not in bands.columns]
    if missing:
        raise KeyError(f"trajectory_band_plot: bands lack column(s) {missing}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (arm, b) in enumerate(bands.groupby("treatment", sort=False)):
        color = f"C{i}"
        ax.fill_between(b["months"], b["q25"], b["q75"], color=color, alpha=0.2)
        ax.plot(b["months"], b["median"], "o-", color=color, ms=3, label=f"{arm}: median (IQR band)")
        m = means[means["treatment"] == arm]
        ax.plot(m["months"], m["fitted"], "--", color=color, lw=1.5, label=f"{arm}: fitted geometric mean")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("Months since start of treatment")
    ax.set_ylabel(ylabel)
    ax.set_title("Lab trajectories by arm (patients alive and followed at each month)")
    ax.legend(frameon=False, fontsize=7)
    return fig
