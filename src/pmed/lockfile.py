"""Keep environment.yml (conda/mamba) pinned to exactly the versions in requirements.lock (pip).

``python -m pmed.lockfile`` rewrites environment.yml from requirements.lock; ``make lock``
calls it after re-resolving requirements.in. tests/test_lockfile.py fails if the two disagree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from pmed import config

LOCK = config.ROOT / "requirements.lock"
ENVIRONMENT = config.ROOT / "environment.yml"
PYTHON = "3.11"
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)$")


def normalise(name: str) -> str:
    """PEP 503 normalised package name (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(lines: list[str], source: str) -> dict[str, str]:
    """{normalised name: version} from ``name==version`` lines; anything else is an error."""
    pins = {}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        if not match:
            raise ValueError(f"{source}: expected 'name==version', got {line!r}")
        pins[normalise(match[1])] = match[2]
    return pins


def lock_pins(lock: Path = LOCK) -> dict[str, str]:
    """Pins of requirements.lock."""
    return parse_pins(lock.read_text().splitlines(), lock.name)


def environment_pins(environment: Path = ENVIRONMENT) -> tuple[str, dict[str, str]]:
    """(python version, pip pins) of environment.yml."""
    env = yaml.safe_load(environment.read_text())
    deps = env["dependencies"]
    python = next(d.split("=", 1)[1] for d in deps if isinstance(d, str) and d.startswith("python="))
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    return python, parse_pins([d for d in pip if not d.startswith("-e")], environment.name)


def render_environment(pins: dict[str, str]) -> str:
    """environment.yml text: conda's python + pip, then every locked package via pip."""
    env = {
        "name": "pmed",
        "channels": ["conda-forge"],
        "dependencies": [f"python={PYTHON}", "pip",
                         {"pip": [f"{n}=={v}" for n, v in sorted(pins.items())] + ["-e ."]}],
    }
    header = ("# Generated from requirements.lock by `python -m pmed.lockfile` (make lock).\n"
              "# conda env create -f environment.yml && conda activate pmed\n")
    return header + yaml.safe_dump(env, sort_keys=False)


def main() -> int:
    ENVIRONMENT.write_text(render_environment(lock_pins()))
    print(f"wrote {ENVIRONMENT.name} with {len(lock_pins())} pinned packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
