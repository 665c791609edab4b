"""STROBE-style participant flow diagram of the cohort attrition (matplotlib).

Main column: persons remaining after each criterion; side boxes: persons excluded by it;
bottom: the exposure groups. Counts given as numbers go through
:func:`pmed.privacy.format_count`; counts given as text (from :func:`pmed.cohort.summary.release_cohort_counts`,
which also protects against subtraction) are printed as they are.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from pmed.privacy import format_count


def _count(n, min_cell: int) -> str:
    return n if isinstance(n, str) else format_count(n, min_cell)


BOX = {"boxstyle": "round,pad=0.4", "facecolor": "white", "edgecolor": "black", "linewidth": 1}
SIDE = {"boxstyle": "round,pad=0.4", "facecolor": "#f2f2f2", "edgecolor": "0.4", "linewidth": 1}


def flow_diagram(attrition: pd.DataFrame, groups: dict[str, int], min_cell: int,
                 reasons: list[str] | None = None) -> Figure:
    """The flow diagram as a figure.

    Parameters
    ----------
    attrition : columns criterion, remaining, excluded (one row per step, in order); counts
        as numbers, or as report text from :func:`pmed.cohort.summary.release_cohort_counts`.
    groups : {group label: persons (number or text)} in the final cohort.
    min_cell : minimum cell size; smaller counts print as "<k".
    reasons : why persons fail each step after the first (default: "not: <criterion>").
    """
    for col in ("criterion", "remaining", "excluded"):
        if col not in attrition.columns:
            raise KeyError(f"flow_diagram: attrition table needs column {col!r}")
    steps = attrition.reset_index(drop=True)
    if reasons is None:
        reasons = [f"not: {c[0].lower()}{c[1:]}" for c in steps["criterion"].iloc[1:]]
    if len(reasons) != len(steps) - 1:
        raise ValueError(f"flow_diagram: {len(reasons)} reasons for {len(steps) - 1} steps")
    n_rows = len(steps) + 1
    fig, ax = plt.subplots(figsize=(8.5, 1.05 * n_rows + 0.6))
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, n_rows - 0.3)
    ax.axis("off")
    y_of = {i: n_rows - 1 - i for i in range(n_rows)}
    first = steps.iloc[0]
    ax.text(0.32, y_of[0], f"{first['criterion']}\nn = {_count(first['remaining'], min_cell)}",
            ha="center", va="center", fontsize=9, bbox=BOX)
    for i in range(1, len(steps)):
        step = steps.iloc[i]
        y_prev, y = y_of[i - 1], y_of[i]
        ax.annotate("", xy=(0.32, y + 0.22), xytext=(0.32, y_prev - 0.22),
                    arrowprops={"arrowstyle": "-|>", "color": "black"})
        ax.text(0.32, y, f"Remaining\nn = {_count(step['remaining'], min_cell)}",
                ha="center", va="center", fontsize=9, bbox=BOX)
        y_mid = (y_prev + y) / 2
        ax.plot([0.32, 0.6], [y_mid, y_mid], color="0.4", linewidth=1)
        ax.text(0.62, y_mid, f"Excluded: {reasons[i - 1]}\n"
                f"n = {_count(step['excluded'], min_cell)}",
                ha="left", va="center", fontsize=8, bbox=SIDE)
    y_last, y_groups = y_of[len(steps) - 1], y_of[len(steps)]
    xs = [0.15, 0.5] if len(groups) == 2 else [0.1 + 0.8 * k / max(len(groups), 1)
                                               for k in range(len(groups))]
    for x, (label, n) in zip(xs, groups.items(), strict=True):
        ax.annotate("", xy=(x, y_groups + 0.22), xytext=(0.32, y_last - 0.22),
                    arrowprops={"arrowstyle": "-|>", "color": "black"})
        ax.text(x, y_groups, f"{label.capitalize()}\nn = {_count(n, min_cell)}",
                ha="center", va="center", fontsize=9, bbox=BOX)
    fig.tight_layout()
    return fig
