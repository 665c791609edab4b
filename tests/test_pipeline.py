"""dvc.yaml stays in step with the code: every stage lists what its notebook imports."""

import ast
import json
from pathlib import Path

import pytest
import yaml

from pmed import config, runner

SRC = config.ROOT / "src"
STAGES = yaml.safe_load((config.ROOT / "dvc.yaml").read_text())["stages"]
NOTEBOOK_STAGES = {n: s for n, s in STAGES.items()
                   if any(str(d).endswith(".ipynb") for d in s.get("deps", []))}


def imported_modules(code: str) -> set[str]:
    """Names of the pmed modules (and imported pmed attributes) in ``code``."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "pmed"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pmed"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def module_file(name: str) -> Path | None:
    path = SRC.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def import_closure(code: str) -> set[Path]:
    """Every src/pmed file ``code`` imports, directly or through other pmed modules."""
    seen: set[Path] = set()
    stack = list(imported_modules(code))
    while stack:
        name = stack.pop()
        file = module_file(name)
        if file is None or file in seen:
            continue
        seen.add(file)
        parts = name.split(".")
        stack += [".".join(parts[:i]) for i in range(1, len(parts))]
        stack += list(imported_modules(file.read_text()))
    return seen


def notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    lines = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return "\n".join(ln for ln in lines.splitlines() if not ln.lstrip().startswith(("%", "!")))


@pytest.mark.parametrize("stage", sorted(NOTEBOOK_STAGES))
def test_stage_deps_cover_imported_modules(stage):
    spec = NOTEBOOK_STAGES[stage]
    deps = [config.ROOT / str(d) for d in spec["deps"] if "${" not in str(d)]
    needed = import_closure(notebook_code(runner.stage_notebook(spec)))
    needed.discard(SRC / "pmed" / "__init__.py")
    missing = [f for f in needed if not any(f == d or d in f.parents for d in deps)]
    assert not missing, f"{stage}: add to deps in dvc.yaml: {sorted(map(str, missing))}"


@pytest.mark.parametrize("stage", sorted(NOTEBOOK_STAGES))
def test_stage_params_resolve(stage):
    runner.stage_parameters(NOTEBOOK_STAGES[stage], config.load_params())


def test_every_notebook_is_a_stage():
    staged = {runner.stage_notebook(s).name for s in NOTEBOOK_STAGES.values()}
    assert staged == {p.name for p in config.NOTEBOOKS.glob("*.ipynb")}


def test_import_closure_follows_modules():
    files = import_closure("from pmed.report import write_metrics")
    assert SRC / "pmed" / "report.py" in files and SRC / "pmed" / "config.py" in files
