"""Wall time of the pipeline: a full `dvc repro --force` and a no-op `dvc repro`.

Run from the repository root with the project's .venv on PATH (data/raw must exist, e.g.
after `make repro`):  .venv/bin/python benchmarks/bench_pipeline.py
Prints one line per measurement; the README quotes them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> float:
    """Seconds taken by ``cmd`` (run in the repo root, output discarded; error if it fails)."""
    env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    dvc = str(ROOT / ".venv" / "bin" / "dvc")
    full = timed([dvc, "repro", "--force"])
    print(f"dvc repro --force (all stages): {full:.1f} s")
    noop = timed([dvc, "repro"])
    print(f"dvc repro (no-op, nothing changed): {noop:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
