"""Project paths and parameters, anchored on the package location (never the cwd).

All paths hang off ``WORKSPACE``: the repository root by default. Set the environment
variable ``PMED_WORKSPACE`` to run the whole study in another folder (the test suite does
this to run the notebooks on the small CI data set without touching ``data/`` or
``reports/``). ``params.yaml`` is always read from the repository root.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = ROOT / "params.yaml"
NOTEBOOKS = ROOT / "notebooks"


def workspace() -> Path:
    """Folder holding data/ and reports/: $PMED_WORKSPACE if set, else the repo root."""
    env = os.environ.get("PMED_WORKSPACE")
    return Path(env).resolve() if env else ROOT


def paths() -> dict[str, Path]:
    """Every data and report location of the study, keyed by a short name."""
    ws = workspace()
    data = ws / "data"
    reports = ws / "reports"
    return {
        "raw": data / "raw",
        "omop": data / "raw" / "omop",
        "imaging": data / "raw" / "imaging",
        "ground_truth": data / "raw" / "ground_truth.json",
        "interim": data / "interim",
        "processed": data / "processed",
        "reports": reports,
        "executed": reports / "executed",
        "metrics": reports / "metrics",
        "plots": reports / "plots",
        "figures": reports / "figures",
    }


def path(name: str) -> Path:
    """One location from :func:`paths`, e.g. ``path("processed") / "cohort.parquet"``."""
    return paths()[name]


def load_params(file: Path | None = None) -> dict:
    """The parsed params.yaml (the study's single source of truth)."""
    with open(file or PARAMS_FILE) as fh:
        return yaml.safe_load(fh)
