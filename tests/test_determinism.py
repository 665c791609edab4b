"""Bit-for-bit reproduction from a fresh clone, and the README's commands from a plain shell.

Slow (several minutes; `make test` runs it through `make repro-check`): the committed HEAD is
cloned twice and the pipeline runs at CI size (CI demo data, params.yaml with the CI overlay
tests/params_ci.yaml merged in and committed) with `.venv/bin/dvc` from a shell whose PATH does not hold the venv:

- clone A: `make repro`'s steps (demo data, `dvc commit data.dvc`, `dvc repro`), then the
  CI-size `dvc.lock`, `data.dvc` and metrics JSON (git-tracked, as DVC metrics are) are committed in A (the repository's own lock is for the
  default demo, so like is compared with like);
- clone B, a fresh clone of A: the same steps with a hostile environment (2 BLAS/OpenMP
  threads, another hash seed, OpenBLAS's AVX-512 kernels where the CPU has them) must leave `git status --porcelain` empty, i.e. the demo data and
  every output declared in dvc.yaml (outs, metrics, plots) byte-identical;
- B again with other worker counts (serial imaging extraction, serial/parallel bootstraps):
  every output still identical to A's (executed notebooks up to the injected parameters that
  record the counts; index.html, which prints params.yaml, is left out);
- the README's stage and experiment commands, as written, succeed.

The clones share this checkout's `.venv` (each clone gets a `.venv` folder of symlinks to it
and `PYTHONPATH=<clone>/src`, so the clone's own code runs); CI (`.ci/run`) additionally builds
a real `.venv` from scratch in its own fresh clone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pmed import config, runner

pytestmark = pytest.mark.slow

ROOT = config.ROOT
VENV = ROOT / ".venv"

CI_OVERLAY = "tests/params_ci.yaml"  # CI sizes of the study's configuration (as `make nbval`)
# the same run with other worker counts (keys absent from params.yaml are skipped)
OTHER_WORKERS = {"outcomes.n_jobs": 2, "treatment.n_jobs": 1, "imaging_features.workers": 1}
HOSTILE = {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
           "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "2", "PYTHONHASHSEED": "12345"}
if "avx512f" in (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""):
    HOSTILE["OPENBLAS_CORETYPE"] = "SkylakeX"  # what OpenBLAS picks on many AVX-512 machines
# the README's commands (section "Reproducibility"), run as written from a plain shell
README_COMMANDS = [
    ".venv/bin/dvc repro",
    ".venv/bin/dvc repro survival outcomes treatment",
    ".venv/bin/dvc exp run -S outcomes.horizon_days=730",
    ".venv/bin/dvc exp show --no-pager",
    ".venv/bin/dvc metrics diff",
    "git checkout -- params.yaml dvc.lock reports/metrics",
    ".venv/bin/dvc checkout",
    ".venv/bin/dvc repro",
]


def plain_env(clone: Path, **extra: str) -> dict[str, str]:
    """A shell environment without the project's venv on PATH (nor any pmed/thread setting),
    importing the clone's own code."""
    drop = {"VIRTUAL_ENV", "PMED_WORKSPACE", "PYTHONPATH", *runner.KERNEL_ENV, *runner.BLAS_CORE}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not Path(p).resolve().is_relative_to(ROOT))
    env.update(PYTHONPATH=str(clone / "src"), DVC_NO_ANALYTICS="1", **extra)
    return env


def sh(clone: Path, command: str, **extra: str) -> str:
    """Run ``command`` in a plain shell in ``clone``; its output (AssertionError if it fails)."""
    proc = subprocess.run(command, shell=True, cwd=clone, env=plain_env(clone, **extra),
                          capture_output=True, text=True)
    assert proc.returncode == 0, (f"`{command}` failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def fresh_clone(source: Path, dest: Path, rev: str = "HEAD") -> Path:
    """``git clone`` of ``source`` at ``rev`` into ``dest`` with a symlinked .venv."""
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(source), str(dest)],
                   check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "--quiet", "-B", "check", rev],
                   check=True)
    (dest / ".venv").mkdir()
    for entry in VENV.iterdir():
        (dest / ".venv" / entry.name).symlink_to(entry)
    return dest


def set_params(params_file: Path, values: dict[str, object]) -> None:
    """Set dotted keys of params.yaml (only those present)."""
    params = yaml.safe_load(params_file.read_text())
    for key, value in values.items():
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            node[last] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def make_repro(clone: Path, **extra: str) -> None:
    """`make repro`'s steps at CI size: demo data, `dvc commit data.dvc`, `dvc repro`."""
    sh(clone, ".venv/bin/python -m pmed.demo --size ci", **extra)
    sh(clone, ".venv/bin/dvc commit --force --quiet data.dvc", **extra)
    sh(clone, ".venv/bin/dvc repro", **extra)


def declared_outputs(clone: Path) -> list[Path]:
    """Every output of every stage in the clone's dvc.yaml, relative to the clone."""
    params = yaml.safe_load((clone / "params.yaml").read_text())
    stages = yaml.safe_load((clone / "dvc.yaml").read_text())["stages"]
    return sorted({p for spec in stages.values()
                   for p in runner.stage_outputs(spec, params)})


def digest(path: Path) -> str:
    """md5 over a file, or over a folder's relative file names and contents."""
    h = hashlib.md5()
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(path)).encode() if path.is_dir() else b"")
            h.update(f.read_bytes())
    return h.hexdigest()


def output_digests(clone: Path, skip: set[Path] = frozenset()) -> dict[str, str]:
    return {str(p): digest(clone / p) if (clone / p).exists() else "missing"
            for p in declared_outputs(clone) if p not in skip}


@pytest.fixture(scope="module")
def clones(tmp_path_factory):
    base = tmp_path_factory.mktemp("repro")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    a = fresh_clone(ROOT, base / "a", head)
    params = yaml.safe_load((a / "params.yaml").read_text())
    overlay = yaml.safe_load((a / CI_OVERLAY).read_text())
    (a / "params.yaml").write_text(yaml.safe_dump(
        config.merge_overlay(params, overlay, CI_OVERLAY), sort_keys=False))
    make_repro(a)
    sh(a, "git add params.yaml dvc.lock data.dvc reports/metrics && git -c user.name=ci"
          " -c user.email=ci@localhost"
          " commit --quiet -m 'CI-size lock'")
    b = fresh_clone(a, base / "b")
    make_repro(b, **HOSTILE)
    return a, b


def persistent(clone: Path) -> set[Path]:
    params = yaml.safe_load((clone / "params.yaml").read_text())
    stages = yaml.safe_load((clone / "dvc.yaml").read_text())["stages"]
    return {p for spec in stages.values()
            for p, keep in runner.stage_outputs(spec, params).items() if keep}


def test_fresh_clone_repro_leaves_git_status_clean(clones):
    a, b = clones
    expected = output_digests(a)
    differing = sorted(k for k, v in output_digests(b).items() if expected.get(k) != v)
    assert differing == [], f"outputs differ between the two clones: {differing}"
    assert sh(b, "git status --porcelain") == ""


def without_parameters(path: Path) -> str:
    """md5 of an executed notebook without papermill's injected parameters (which record the
    worker counts)."""
    nb = json.loads(path.read_text())
    nb["cells"] = [c for c in nb["cells"]
                   if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    nb["metadata"].pop("papermill", None)
    return hashlib.md5(json.dumps(nb, sort_keys=True).encode()).hexdigest()


def test_worker_counts_do_not_change_any_output(clones):
    a, b = clones
    caches = persistent(a)
    for cache in caches:  # cold caches as in A: the imaging report counts cached scans
        shutil.rmtree(b / cache, ignore_errors=True)
    set_params(b / "params.yaml", OTHER_WORKERS)
    sh(b, ".venv/bin/dvc repro")
    index = Path(yaml.safe_load((a / "params.yaml").read_text())["paths"]["reports"]) / "index.html"
    expected, got = output_digests(a, caches | {index}), output_digests(b, caches | {index})
    assert expected.keys() == got.keys() and len(expected) > 20
    differing = sorted(k for k in expected if expected[k] != got[k]
                       and not (k.endswith(".ipynb") and without_parameters(a / k)
                                == without_parameters(b / k)))
    assert differing == [], f"outputs depend on worker counts: {differing}"
    sh(b, "git checkout --quiet params.yaml dvc.lock")


def test_readme_commands_work_from_a_plain_shell(clones):
    _, b = clones
    assert ".venv" not in sh(b, "command -v python python3 || true")  # not the venv's python
    for command in README_COMMANDS:
        sh(b, command)
    assert "730" in sh(b, ".venv/bin/dvc exp show --csv")  # the experiment is still listed
    assert sh(b, "git status --porcelain") == ""  # and the workspace is HEAD's again
