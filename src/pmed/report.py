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
