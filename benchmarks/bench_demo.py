"""Benchmark of the demo generator: wall time, size on disk and peak RSS.

Usage: ``python benchmarks/bench_demo.py [--size benchmark|default|ci] [--out DIR]``
(the default writes the 1,000,000-person EHR-only benchmark to a temporary folder and deletes
it afterwards). Peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of this process plus
its children (the CT renderer workers).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from pmed import config
from pmed.demo.generate import generate


def disk_bytes(folder: Path) -> int:
    """Total size in bytes of the files below ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    params = config.load_params()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="benchmark", choices=sorted(params["demo"]["sizes"]))
    parser.add_argument("--out", type=Path, default=None, help="keep the output here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="pmed_bench_demo_"))
    start = time.perf_counter()
    gt = generate(out, args.size, params["common"]["seed"], params["demo"],
                  workers=params["demo"]["imaging_workers"])
    elapsed = time.perf_counter() - start
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    size_mb = disk_bytes(out) / 1e6
    print(f"size={args.size} persons={gt['n_persons']} eligible={gt['n_eligible']}")
    print(f"wall_time_s={elapsed:.1f} disk_mb={size_mb:.1f} "
          f"peak_rss_mb={self_kb / 1024:.0f} peak_rss_children_mb={child_kb / 1024:.0f}")
    for table, rows in sorted(gt["table_rows"].items()):
        print(f"  {table}: {rows} rows")
    if args.out is None:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
