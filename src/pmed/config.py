"""Project paths and parameters, anchored on the package location (never the cwd).

The study's folders are declared once, in params.yaml ``paths:`` (dvc.yaml reads the same
keys), relative to the *workspace*: the repository root by default. Set the environment
variable ``PMED_WORKSPACE`` to run the whole study in another folder (the test suite runs the
notebooks on the small CI data set that way, leaving ``data/`` and ``reports/`` alone).
params.yaml itself is always read from the repository root; ``PMED_PARAMS_OVERLAY`` names a
YAML file (relative to the repository root, e.g. ``tests/params_ci.yaml``) whose values
replace params.yaml's, key by key: CI runs the study's own configuration at a smaller size.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = ROOT / "params.yaml"
NOTEBOOKS = ROOT / "notebooks"


def load_params(file: Path | None = None) -> dict:
    """The parsed params.yaml (the study's single source of truth), with the overlay of
    ``$PMED_PARAMS_OVERLAY`` applied when it is set."""
    with open(file or PARAMS_FILE) as fh:
        params = yaml.safe_load(fh)
    overlay = os.environ.get("PMED_PARAMS_OVERLAY")
    if overlay:
        path = ROOT / overlay
        if not path.is_file():
            raise FileNotFoundError(f"PMED_PARAMS_OVERLAY: no file {path}")
        params = merge_overlay(params, yaml.safe_load(path.read_text()) or {}, overlay)
    return params


def merge_overlay(params: dict, overlay: dict, name: str, prefix: str = "") -> dict:
    """``params`` with ``overlay``'s values; every overlay key must exist in params.yaml."""
    out = dict(params)
    for key, value in overlay.items():
        where = f"{prefix}{key}"
        if key not in params:
            raise KeyError(f"{name}: key {where!r} is not in params.yaml")
        if isinstance(value, dict) and isinstance(params[key], dict):
            out[key] = merge_overlay(params[key], value, name, f"{where}.")
        else:
            out[key] = value
    return out


def stage_params(stage: str) -> dict:
    """The params.yaml keys that dvc.yaml lists for ``stage``: {section: values}.

    What a notebook reads, so DVC reruns the stage exactly when one of them changes.
    """
    from pmed import runner

    return runner.stage_parameters(runner.stage_spec(stage), load_params())


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
