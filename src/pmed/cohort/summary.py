"""Summary figures of the cohort: median follow-up (reverse Kaplan-Meier) and stage metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.utils import median_survival_times

from pmed.privacy import format_count, is_small, merge_small_steps, release_counts


def median_followup(time_days: np.ndarray, event: np.ndarray) -> dict[str, float]:
    """Median potential follow-up by the reverse Kaplan-Meier method (Schemper & Smith 1996).

    Censoring is the "event" and deaths are censored. Returns {estimate, ci_low, ci_high}
    in days (95% CI of lifelines' exponential Greenwood interval; NaN when not reached).
    """
    time_days = np.asarray(time_days, dtype=float)
    event = np.asarray(event)
    km = KaplanMeierFitter().fit(time_days, event_observed=1 - event)
    ci = median_survival_times(km.confidence_interval_)
    values = (km.median_survival_time_, ci.iloc[0, 0], ci.iloc[0, 1])
    return {key: float(v) if np.isfinite(v) else float("nan")
            for key, v in zip(("estimate", "ci_low", "ci_high"), values, strict=True)}


def safe_count(n: int, min_cell: int) -> int | str:
    """A count for metrics files: the integer, or ``"<k"`` when 0 < n < k."""
    return f"<{min_cell}" if is_small(n, min_cell) else int(n)


def release_cohort_counts(cohort: pd.DataFrame, attrition: pd.DataFrame, min_cell: int,
                          hide=()) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """The attrition flow and persons/deaths per arm as report text, as one protected system.

    ``attrition``: columns criterion, remaining, excluded (+ optional step, reason). Small
    exclusions are merged into neighbouring steps (:func:`pmed.privacy.merge_small_steps`);
    then every published count (remaining, excluded, persons and deaths per arm and in total)
    and every count derivable from them (survivors per arm and in total) is protected
    together by complementary suppression, so no small count follows from any subtraction
    across the flow and the arm table. ``hide``: group labels (``"total"`` = the cohort)
    whose persons count is hidden whatever its size (see :func:`hidden_group_sizes`).
    Returns (flow with text counts, {arm: {persons, events}} plus key ``"total"``).
    """
    flow = merge_small_steps(attrition, min_cell).reset_index(drop=True)
    arms = list(cohort["treatment"].value_counts().sort_index().index)
    n = cohort["treatment"].value_counts().reindex(arms).astype(float).tolist()
    d = cohort.groupby("treatment")["event"].sum().reindex(arms).astype(float).tolist()
    m, k = len(flow), len(arms)
    rem, exc = flow["remaining"].astype(float).tolist(), flow["excluded"].astype(float).tolist()
    # cells: remaining 0..m-1 | excluded of steps 1..m-1 | n_g | d_g | alive_g | D | A
    i_exc, i_n, i_d = m, 2 * m - 1, 2 * m - 1 + k
    i_a, i_tot_d = i_d + k, i_d + 2 * k
    values = [*rem, *exc[1:], *n, *d, *(a - b for a, b in zip(n, d, strict=True)),
              sum(d), sum(n) - sum(d)]
    lines = [[i - 1, i, i_exc + i - 1] for i in range(1, m)]
    lines += [[m - 1, *range(i_n, i_n + k)], [i_tot_d, *range(i_d, i_d + k)],
              [i_tot_d + 1, *range(i_a, i_a + k)], [m - 1, i_tot_d, i_tot_d + 1]]
    lines += [[i_n + g, i_d + g, i_a + g] for g in range(k)]
    cost = [*values[:i_a], *([np.inf] * k), values[i_tot_d], np.inf]  # survivors: derived
    force = np.zeros(len(values), dtype=bool)
    force[[m - 1] * ("total" in hide) + [i_n + g for g, a in enumerate(arms) if a in hide]] = True
    text = [int(t) if t.isdigit() else t
            for t in release_counts(values, lines, min_cell, cost, force)]
    out = flow.copy()
    out["remaining"] = text[:m]
    out["excluded"] = [0 if exc[0] == 0 else format_count(exc[0], min_cell), *text[m:2 * m - 1]]
    groups = {a: {"persons": text[i_n + g], "events": text[i_d + g]} for g, a in enumerate(arms)}
    groups["total"] = {"persons": text[m - 1], "events": text[i_tot_d]}
    return out, groups


def hidden_group_sizes(cohort: pd.DataFrame, attrition: pd.DataFrame, min_cell: int
                       ) -> frozenset[str]:
    """Group labels (``"total"`` = the whole cohort) whose persons count no cohort table may
    show: the union of the sizes hidden by the flow/arm system (:func:`release_cohort_counts`)
    and by Table 1 (:func:`pmed.cohort.table1.make_table1`), grown until both agree.

    The two tables share the group sizes: a size one of them hides and the other prints
    would give back what the first protected (e.g. Table 1 printing the cohort total the
    flow hid, so the total minus a shown arm reveals the small sum of the others).
    """
    from pmed.cohort.table1 import protect_counts, tableone_table

    raw = tableone_table(cohort)
    hide: frozenset[str] = frozenset()
    while True:
        _, released = release_cohort_counts(cohort, attrition, min_cell, hide)
        table = protect_counts(raw, min_cell, hide)
        n_row = table.loc[next(i for i in table.index if i[0] == "n")]
        now = hide | {g for g, v in released.items() if not str(v["persons"]).isdigit()} \
            | {"total" if c == "Overall" else c for c in n_row.index
               if c not in ("Missing",) and not c.startswith("SMD") and n_row[c] != ""
               and not str(n_row[c]).isdigit()}
        if now == hide:
            return hide
        hide = frozenset(now)


def cohort_metrics(cohort: pd.DataFrame, attrition: pd.DataFrame, steps: list[str],
                   min_cell: int, hide=()) -> dict:
    """Metrics of the stage (reports/metrics/cohort.json): counts per step and arm, deaths,
    events and competing deaths of every other outcome (``<name>_status`` columns), median
    follow-up (days, reverse KM, with 95% CI).

    Counts are the report's (:func:`release_cohort_counts`: attrition keyed by the possibly
    merged step names, arms); other outcomes publish events and competing deaths only (their
    censored counts are not published, so those two need no complement).
    """
    flow, released = release_cohort_counts(cohort, attrition.assign(step=list(steps)), min_cell,
                                           hide)
    groups = {}
    for label, g in cohort.groupby("treatment"):
        groups[label] = {**released[label], "median_followup_days":
                         None if is_small(len(g), min_cell) else median_followup(g["time_days"], g["event"])}
    outcomes = {}
    for col in (c for c in cohort.columns if c.endswith("_status")):
        status = cohort[col]
        outcomes[col.removesuffix("_status")] = {
            "events": safe_count(int((status == 1).sum()), min_cell),
            "competing_deaths": safe_count(int((status == 2).sum()), min_cell)}
    return {
        "persons": released["total"]["persons"],
        "outcomes": outcomes,
        "events": released["total"]["events"],
        "median_followup_days": median_followup(cohort["time_days"], cohort["event"]),
        "attrition": {r["step"]: {"remaining": r["remaining"], "excluded": r["excluded"]}
                      for r in flow.to_dict("records")},
        "groups": groups,
    }
