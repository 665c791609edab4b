"""Deterministic writers for stage metrics (DVC metrics) and curve data (DVC plots)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pmed import config
from pmed.privacy import suppress_metric_counts

SIGNIFICANT_DIGITS = 6


def json_ready(value):
    """JSON-ready copy of ``value``: numpy scalars to Python, floats to 6 significant digits,
    NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            return None
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    return value


def write_metrics(stage: str, metrics: dict) -> Path:
    """Write ``reports/metrics/<stage>.json`` (sorted keys, rounded floats; NaN -> null).

    Counts pass :func:`pmed.privacy.suppress_metric_counts` with params.yaml's
    ``common.min_cell_size``: a small count, and the count beside it that would reveal it,
    are written as text.
    """
    min_cell = int(config.load_params()["common"]["min_cell_size"])
    out = config.path("metrics") / f"{stage}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    released = suppress_metric_counts(json_ready(metrics), min_cell)
    tmp.write_text(json.dumps(released, indent=2, sort_keys=True) + "\n")
    tmp.replace(out)
    return out


def write_plot_data(name: str, df: pd.DataFrame) -> Path:
    """Write ``reports/plots/<name>.csv`` (the data behind a DVC plot), floats to 6 digits."""
    out = config.path("plots") / f"{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format=f"%.{SIGNIFICANT_DIGITS}g")
    return out


# --- numbers as a clinical report prints them -------------------------------------------
# Estimates and CIs: "0.82 (0.73 to 0.93)" (a dash reads as a minus sign next to negative
# bounds), p values "p < 0.001" / "p = 0.004" / "p = 0.21", counts "3,847", shares "12.3%".
# Missing values (None, NaN) print as "n/a"; suppressed counts (text such as "<11") as given.

MISSING = "n/a"


def _number(x) -> float | None:
    """``x`` as a finite float, or None (None, NaN, inf, text)."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def decimals(x: float, significant: int = 2) -> int:
    """Decimals that print ``x`` sensibly: 0 from 100 up, 1 from 10, 2 from 0.1 (and for 0),
    below that enough for ``significant`` digits (at most 4)."""
    a = abs(float(x))
    if a >= 100:
        return 0
    if a >= 10:
        return 1
    if a >= 0.1 or a == 0:
        return 2
    return min(4, significant - 1 - math.floor(math.log10(a)))


def fmt_num(x, digits: int | None = None) -> str:
    """A number with ``digits`` decimals (default :func:`decimals`), thousands separated,
    never "-0.00"."""
    v = _number(x)
    if v is None:
        return MISSING if x is None or isinstance(x, float) else str(x)
    d = decimals(v) if digits is None else digits
    text = f"{v:,.{d}f}"
    return text[1:] if text.startswith("-") and float(text[1:].replace(",", "")) == 0 else text


def fmt_ci(low, high, digits: int) -> str:
    """A confidence interval: ``"0.73 to 0.93"``."""
    return f"{fmt_num(low, digits)} to {fmt_num(high, digits)}"


def fmt_est_ci(estimate, low, high, digits: int | None = None, unit: str = "") -> str:
    """Estimate and CI: ``"0.82 (0.73 to 0.93)"``; ``unit`` after the estimate
    (``"332 days (302 to 362)"``). Decimals follow the estimate (:func:`decimals`), with more
    (up to 4) while that would print two of the three numbers alike (an HR per unit near 1:
    ``"0.996 (0.993 to 0.999)"``, not ``"1.00 (0.99 to 1.00)"``)."""
    est = _number(estimate)
    if est is None:
        return MISSING
    if digits is None:
        digits = decimals(est)
        values = [v for v in (est, _number(low), _number(high)) if v is not None]
        while digits < 4 and len({fmt_num(v, digits) for v in values}) < len(set(values)):
            digits += 1
    unit = f" {unit}" if unit else ""
    if _number(low) is None or _number(high) is None:
        return f"{fmt_num(est, digits)}{unit}"
    return f"{fmt_num(est, digits)}{unit} ({fmt_ci(low, high, digits)})"


def fmt_metric(m: dict | None, digits: int | None = None, unit: str = "") -> str:
    """:func:`fmt_est_ci` of a metrics entry ``{"estimate", "ci_low", "ci_high"}`` (for log
    ratios use :func:`fmt_ratio`, for shares :func:`fmt_pct_ci`)."""
    if not isinstance(m, dict):
        return MISSING
    return fmt_est_ci(m.get("estimate"), m.get("ci_low"), m.get("ci_high"), digits, unit)


def fmt_ratio(m: dict | None, log: bool = False) -> str:
    """A ratio (HR, OR) with CI, 2 decimals: ``"0.82 (0.73 to 0.93)"``; ``log=True`` for a
    metrics entry holding the log ratio."""
    if not isinstance(m, dict):
        return MISSING
    values = [_number(m.get(k)) for k in ("estimate", "ci_low", "ci_high")]
    if log:
        values = [None if v is None else math.exp(v) for v in values]
    return fmt_est_ci(*values, digits=2)


def fmt_p(p, prefix: bool = True) -> str:
    """A p value: ``"p < 0.001"``, 3 decimals below 0.01 (``"p = 0.004"``), else 2
    (``"p = 0.21"``), ``"p > 0.99"``; ``prefix=False`` leaves out ``"p "``."""
    v = _number(p)
    if v is None or not 0 <= v <= 1:
        return MISSING
    if v < 0.001:
        text = "< 0.001"
    elif v > 0.99:
        text = "> 0.99"
    elif v < 0.01:
        text = f"= {v:.3f}"
    else:
        text = f"= {v:.2f}"
    return f"p {text}" if prefix else text.removeprefix("= ")


def fmt_pct(share, digits: int = 1) -> str:
    """A share (0..1) as a percentage: ``0.1234 -> "12.3%"``."""
    v = _number(share)
    return MISSING if v is None else f"{fmt_num(100 * v, digits)}%"


def fmt_pct_ci(m: dict | None, digits: int = 1) -> str:
    """A metrics entry of shares as percentages: ``"12.3% (10.1% to 14.6%)"``."""
    if not isinstance(m, dict):
        return MISSING
    values = [_number(m.get(k)) for k in ("estimate", "ci_low", "ci_high")]
    if values[0] is None:
        return MISSING
    if values[1] is None or values[2] is None:
        return fmt_pct(values[0], digits)
    return f"{fmt_pct(values[0], digits)} ({fmt_pct(values[1], digits)} to {fmt_pct(values[2], digits)})"


def fmt_count(n) -> str:
    """A count with thousands separated (``3,847``); released text (``"<11"``,
    ``"suppressed"``) unchanged."""
    v = _number(n)
    if v is None:
        return MISSING if n is None else str(n)
    return f"{round(v):,d}"


def arm_name(label: str | None, strategies: dict | None = None) -> str:
    """A treatment arm in words, from its regimen in params.yaml
    ``cohort.treatment_strategies`` (``strategies``; read from params.yaml when None):
    ``{all_of: [chemotherapy], none_of: [immunotherapy]}`` -> ``"chemotherapy alone"``,
    ``{all_of: [chemotherapy, immunotherapy]}`` -> ``"chemotherapy plus immunotherapy"``.
    ``label=None``: the reference arm. An unknown label is returned unchanged."""
    if strategies is None:
        strategies = config.load_params()["cohort"]["treatment_strategies"]
    label = strategies["reference"] if label is None else label
    rule = strategies.get("arms", {}).get(label)
    if not isinstance(rule, dict) or not rule.get("all_of"):
        return str(label)
    name = " plus ".join(str(s).replace("_", " ") for s in rule["all_of"])
    return f"{name} alone" if rule.get("none_of") else name
