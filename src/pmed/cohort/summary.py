"""Summary figures of the cohort: median follow-up (reverse Kaplan-Meier) and stage metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.utils import median_survival_times

from pmed.privacy import is_small


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


def cohort_metrics(cohort: pd.DataFrame, attrition: pd.DataFrame, steps: list[str],
                   min_cell: int) -> dict:
    """Metrics of the stage (reports/metrics/cohort.json): counts per step and arm, deaths,
    events and competing deaths of every other outcome (``<name>_status`` columns), median
    follow-up (days, reverse KM, with 95% CI)."""
    groups = {}
    for label, g in cohort.groupby("treatment"):
        groups[label] = {"persons": safe_count(len(g), min_cell),
                         "events": safe_count(int(g["event"].sum()), min_cell),
                         "median_followup_days": median_followup(g["time_days"], g["event"])}
    outcomes = {}
    for col in (c for c in cohort.columns if c.endswith("_status")):
        status = cohort[col]
        outcomes[col.removesuffix("_status")] = {
            "events": safe_count(int((status == 1).sum()), min_cell),
            "competing_deaths": safe_count(int((status == 2).sum()), min_cell)}
    return {
        "persons": safe_count(len(cohort), min_cell),
        "outcomes": outcomes,
        "events": safe_count(int(cohort["event"].sum()), min_cell),
        "median_followup_days": median_followup(cohort["time_days"], cohort["event"]),
        "attrition": {step: {"remaining": safe_count(r["remaining"], min_cell),
                             "excluded": safe_count(r["excluded"], min_cell)}
                      for step, (_, r) in zip(steps, attrition.iterrows(), strict=True)},
        "groups": groups,
    }
