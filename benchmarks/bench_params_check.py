"""Time to fail on a bad params key: ``python -m pmed.runner <stage>`` with a wrong type.

Runs the runner ``--runs`` times with an overlay setting ``outcomes.n_bootstrap: "100"`` (an
empty scratch workspace, so nothing can be written) and prints the wall-clock time to exit,
median and max, the CPU time (what an idle machine would take, roughly), plus the in-process cost of one :func:`pmed.config.load_params` (YAML parse +
schema check) and of the schema check alone. Figures depend on the machine's load: say so.

Usage: python benchmarks/bench_params_check.py [--runs 5] [--stage outcomes]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pmed import config, params_schema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stage", default="outcomes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overlay = Path(tmp) / "overlay.yaml"
        overlay.write_text('outcomes:\n  n_bootstrap: "100"\n')
        env = {**os.environ, "PMED_WORKSPACE": tmp, "PMED_PARAMS_OVERLAY": str(overlay)}
        times, cpu, first = [], [], ""
        for _ in range(args.runs):
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "pmed.runner", args.stage],
                                 capture_output=True, text=True, env=env)
            times.append(time.perf_counter() - start)
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime)
            first = run.stderr.splitlines()[0] if run.stderr else ""
    print(f"runner exit {run.returncode}; first stderr line: {first}")
    print(f"time to fail: median {statistics.median(times):.2f} s, max {max(times):.2f} s "
          f"over {args.runs} runs (load average {os.getloadavg()[0]:.1f}); CPU time "
          f"median {statistics.median(cpu):.2f} s")
    params = config.load_params()
    start = time.perf_counter()
    for _ in range(20):
        config.load_params()
    load = (time.perf_counter() - start) / 20
    start = time.perf_counter()
    for _ in range(20):
        params_schema.check(params)
    check = (time.perf_counter() - start) / 20
    print(f"load_params: {1000 * load:.1f} ms per call, of which the schema check "
          f"{1000 * check:.1f} ms")


if __name__ == "__main__":
    main()
