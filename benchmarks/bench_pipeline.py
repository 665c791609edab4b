"""Wall time of the pipeline, and what pinning the kernels' threads costs.

Run from the repository root (data/raw must exist, e.g. after `make repro`):

    .venv/bin/python benchmarks/bench_pipeline.py            # dvc repro --force, no-op repro
    .venv/bin/python benchmarks/bench_pipeline.py --threads  # pinned vs free threads

``--threads`` runs every notebook stage with the runner twice in scratch workspaces under
build/bench-threads/ (reading data/raw): once as the pipeline does (one BLAS/OpenMP/SimpleITK
thread per kernel, ``runner.KERNEL_ENV``), once with the thread variables left to the
libraries (all cores); it prints each stage's wall time and which outputs differ.
Prints one line per measurement; the README quotes them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARS = {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS",
               "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"}


def timed(cmd: list[str]) -> float:
    """Seconds taken by ``cmd`` (run in the repo root, output discarded; error if it fails)."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def digest(path: Path) -> str:
    h = hashlib.md5()
    for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def run_all(workspace: Path, pinned: bool) -> tuple[dict[str, float], dict[str, str]]:
    """Run every notebook stage in ``workspace``; (seconds per stage, md5 per output)."""
    from pmed import config, runner

    if workspace.exists():
        shutil.rmtree(workspace)
    (workspace / "data").mkdir(parents=True)
    (workspace / "data" / "raw").symlink_to(config.path("raw"))
    saved_env, saved_kernel = dict(os.environ), dict(runner.KERNEL_ENV)
    if not pinned:
        for var in THREAD_VARS:
            runner.KERNEL_ENV.pop(var)
            os.environ.pop(var, None)
    os.environ["PMED_WORKSPACE"] = str(workspace)
    params = config.load_params()
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    seconds, hashes = {}, {}
    try:
        for name, spec in stages.items():
            if not any(str(d).endswith(".ipynb") for d in spec.get("deps", [])):
                continue
            start = time.perf_counter()
            runner.run_stage(name)
            seconds[name] = time.perf_counter() - start
            for out, persist in runner.stage_outputs(spec, params).items():
                if not persist:
                    hashes[str(out)] = digest(workspace / out)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        runner.KERNEL_ENV.clear()
        runner.KERNEL_ENV.update(saved_kernel)
    return seconds, hashes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", action="store_true", help="pinned vs free kernel threads")
    if parser.parse_args().threads:
        base = ROOT / "build" / "bench-threads"
        pinned, h_pinned = run_all(base / "pinned", pinned=True)
        free, h_free = run_all(base / "free", pinned=False)
        for stage in pinned:
            print(f"{stage}: {pinned[stage]:.1f} s with 1 thread, {free[stage]:.1f} s with "
                  f"library defaults ({os.cpu_count()} cores)")
        print(f"all notebook stages: {sum(pinned.values()):.1f} s pinned, "
              f"{sum(free.values()):.1f} s free")
        differ = sorted(k for k in h_pinned if h_pinned[k] != h_free.get(k))
        print(f"outputs differing between pinned and free threads: {differ or 'none'}")
        return 0
    dvc = str(ROOT / ".venv" / "bin" / "dvc")
    full = timed([dvc, "repro", "--force"])
    print(f"dvc repro --force (all stages): {full:.1f} s")
    noop = timed([dvc, "repro"])
    print(f"dvc repro (no-op, nothing changed): {noop:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
