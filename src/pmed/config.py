"""Project paths and parameters, anchored on the package location (never the cwd).

The study's folders are declared once, in params.yaml ``paths:`` (dvc.yaml reads the same
keys), relative to the *workspace*: the repository root by default. Set the environment
variable ``PMED_WORKSPACE`` to run the whole study in another folder (the test suite runs the
notebooks on the small CI data set that way, leaving ``data/`` and ``reports/`` alone).
params.yaml itself is always read from the repository root.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = ROOT / "params.yaml"
NOTEBOOKS = ROOT / "notebooks"


def load_params(file: Path | None = None) -> dict:
    """The parsed params.yaml (the study's single source of truth)."""
    with open(file or PARAMS_FILE) as fh:
        return yaml.safe_load(fh)


def workspace() -> Path:
    """Folder holding data/ and reports/: $PMED_WORKSPACE if set, else the repo root."""
    env = os.environ.get("PMED_WORKSPACE")
    return Path(env).resolve() if env else ROOT


def paths() -> dict[str, Path]:
    """Every data and report folder of the study (params.yaml ``paths:``), absolute."""
    ws = workspace()
    return {name: ws / rel for name, rel in load_params()["paths"].items()}


def path(name: str) -> Path:
    """One folder from :func:`paths`, e.g. ``path("processed") / "cohort.parquet"``."""
    known = paths()
    if name not in known:
        raise KeyError(f"unknown path {name!r}; params.yaml paths: has {sorted(known)}")
    return known[name]
