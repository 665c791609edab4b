"""Project paths and parameters, anchored on the package location (never the cwd).

The study's folders are declared once, in params.yaml ``paths:`` (dvc.yaml reads the same
keys), relative to the *workspace*: the repository root by default. Set the environment
variable ``PMED_WORKSPACE`` to run the whole study in another folder (the test suite runs the
notebooks on the small CI data set that way, leaving ``data/`` and ``reports/`` alone).
params.yaml itself is always read from the repository root; ``PMED_PARAMS_OVERLAY`` names a
YAML file (relative to the repository root, e.g. ``tests/params_ci.yaml``) whose values
replace params.yaml's, key by key: CI runs the study's own configuration at a smaller size.

Every load is checked against :mod:`pmed.params_schema` (unknown keys, wrong types, impossible
values) before anything else happens: a bad key raises :class:`ParamsError`, one line per
problem, e.g. ``params.yaml: outcomes.n_bootstrap: expected an integer >= 1, got a string``.
``python -m pmed.config check [FILE]`` checks a params file alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# libyaml's safe loader when PyYAML has it: the same result as yaml.safe_load, ~10x faster
# (params.yaml is read on every config.path() call)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
PARAMS_FILE = ROOT / "params.yaml"
NOTEBOOKS = ROOT / "notebooks"


class ParamsError(ValueError):
    """A params file breaks the schema or cannot be read; one line per problem, each
    ``<file>: <key path>: <what was expected>, got <what>``."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def _report_bad_params(kind, error, tb, previous=sys.excepthook) -> None:
    """An uncaught :class:`ParamsError` in a command line (``python -m pmed.demo``,
    ``python -m pmed.cohort``, ...) prints its lines alone, no traceback; anything else goes
    to the previous hook."""
    if issubclass(kind, ParamsError):
        print(error, file=sys.stderr)
    else:
        previous(kind, error, tb)


sys.excepthook = _report_bad_params


def _read_yaml(path: Path, name: str):
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ParamsError([f"{name}: not valid YAML ({where}{getattr(err, 'problem', err)})"]) \
            from None
    except UnicodeDecodeError as err:
        raise ParamsError([f"{name}: not UTF-8 text (byte {err.start})"]) from None


def load_params(file: Path | None = None) -> dict:
    """The parsed params.yaml (the study's single source of truth), with the overlay of
    ``$PMED_PARAMS_OVERLAY`` applied when it is set, checked against the schema
    (:class:`ParamsError` naming file and key path otherwise)."""
    file = Path(file or PARAMS_FILE)
    name = "params.yaml" if file == PARAMS_FILE else str(file)
    if not file.is_file():
        raise ParamsError([f"{name}: no such file"])
    params = _read_yaml(file, name)
    overlay_name, overlay = os.environ.get("PMED_PARAMS_OVERLAY"), None
    if overlay_name:
        path = ROOT / overlay_name
        if not path.is_file():
            raise FileNotFoundError(f"PMED_PARAMS_OVERLAY: no file {path}")
        overlay = _read_yaml(path, overlay_name) or {}
        if not isinstance(params, dict) or not isinstance(overlay, dict):
            raise ParamsError([f"{name if not isinstance(params, dict) else overlay_name}: "
                               "expected a mapping of sections"])
        params = merge_overlay(params, overlay, overlay_name)
    check_params(params, name, overlay, overlay_name)
    return params


def check_params(params, name: str = "params.yaml", overlay: dict | None = None,
                 overlay_name: str = "") -> None:
    """:class:`ParamsError` listing every schema problem of ``params``; a key the overlay
    sets is blamed on the overlay file."""
    from pmed import params_schema

    found = params_schema.problems(params)
    if found:
        raise ParamsError([f"{overlay_name if overlay and _sets(overlay, path) else name}: "
                           f"{path + ': ' if path else ''}{msg}" for path, msg in found])


def _sets(overlay: dict, path: str) -> bool:
    """True if ``overlay`` sets the key ``path`` (``a.b[2]`` style) or one above it."""
    value = overlay
    for part in path.replace("[", ".[").split("."):
        if part.startswith("[") or not isinstance(value, dict):
            return True
        if part not in value:
            return False
        value = value[part]
    return True


def merge_overlay(params: dict, overlay: dict, name: str, prefix: str = "") -> dict:
    """``params`` with ``overlay``'s values; every overlay key must exist in params.yaml."""
    out = dict(params)
    for key, value in overlay.items():
        where = f"{prefix}{key}"
        if key not in params:
            raise ParamsError([f"{name}: {where}: unknown key (not in params.yaml)"])
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

    runner.scratch_workspace(stage)  # a notebook run by hand writes to build/scratch/<stage>/
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


def main(argv: list[str] | None = None) -> int:
    """``python -m pmed.config check [FILE]``: check a params file (default params.yaml, with
    ``$PMED_PARAMS_OVERLAY``) against the schema; exit 1 listing the problems."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pmed.config",
                                     description="check a params file against the schema")
    parser.add_argument("command", choices=["check"])
    parser.add_argument("file", nargs="?", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    try:
        load_params(args.file.resolve())
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 1
    overlay = os.environ.get("PMED_PARAMS_OVERLAY")
    print(f"{args.file}: OK" + (f" (with the overlay {overlay})" if overlay else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
