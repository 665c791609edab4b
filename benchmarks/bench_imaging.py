"""Benchmark the imaging feature stage: seconds per image, total, features per second.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_imaging.py                    # default demo, 1 and 2 workers
    .venv/bin/python benchmarks/bench_imaging.py --source /path/ws  # reuse a workspace's data

Without ``--source`` the demo data of ``--size`` (params.yaml ``demo.sizes``) are generated
into a temporary workspace (the CT writing time is reported too) and the cohort is built
with the cohort stage's code. Each run uses a fresh scratch workspace whose ``data/raw`` is
a link to the source data, so the radiomics cache starts empty and nothing of the source is
changed. The stage runs with the params.yaml ``imaging_features`` settings; ``--workers``
lists the worker counts to time; ``--ct-writer`` also times the synthetic CT writer
(pmed.demo.ct) re-rendering the same scans.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from pmed import config


def build_source(folder: Path, size: str, seed: int, params: dict) -> float:
    """Generate demo data and the cohort into ``folder``; return the data-writing seconds."""
    from pmed.cohort.definition import parse_definition
    from pmed.cohort.extract import extract_cohort
    from pmed.demo.generate import generate

    raw = folder / "data" / "raw"
    start = time.perf_counter()
    generate(raw, size, seed, params["demo"], workers=int(params["demo"]["imaging_workers"]))
    seconds = time.perf_counter() - start
    cohort = extract_cohort(raw / "omop", parse_definition(params["cohort"]), check_quality=False)
    processed = folder / "data" / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    cohort.cohort.to_parquet(processed / "cohort.parquet", index=False)
    return seconds


def scratch_workspace(source: Path, root: Path) -> Path:
    """A workspace linking ``source``'s raw data and copying its cohort; empty interim."""
    ws = Path(tempfile.mkdtemp(dir=root))
    (ws / "data" / "processed").mkdir(parents=True)
    (ws / "data" / "raw").symlink_to(source / "data" / "raw", target_is_directory=True)
    shutil.copy(source / "data" / "processed" / "cohort.parquet", ws / "data" / "processed")
    return ws


def time_stage(source: Path, root: Path, workers: int, params: dict) -> dict:
    """Run the stage once from an empty cache and once cached; return timings."""
    from pmed.imaging import stage

    imaging = dict(params["imaging_features"], workers=workers, progress=False)
    os.environ["PMED_WORKSPACE"] = str(scratch_workspace(source, root))
    start, cpu = time.perf_counter(), _cpu_seconds()
    result = stage.run_stage(params["common"], imaging)
    total, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    start = time.perf_counter()
    stage.run_stage(params["common"], imaging)
    cached = time.perf_counter() - start
    n_images = result.timing["n_computed"]  # CT (the MR series are timed in mr_*)
    seconds = result.timing["seconds"]
    return {
        "workers": workers,
        "images": n_images,
        "excluded": len(result.exclusions),
        "features": len(result.feature_names),
        "extract_s": seconds,
        "s_per_image": seconds / n_images,
        "features_per_s": n_images * len(result.feature_names) / seconds,
        "stage_total_s": total,
        "stage_cpu_s": cpu,  # this process + its finished worker processes (independent of load)
        "stage_cached_s": cached,
        "stability_images": int(result.stability["n_images"].max()),
        "mr_images": result.mr.timing["n_computed"] if result.mr is not None else 0,  # MR apart from CT
        "mr_extract_s": result.mr.timing["seconds"] if result.mr is not None else 0.0,
    }


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_ct_writer(source: Path, root: Path, workers: int, seed: int) -> dict:
    """Re-render the source's CTs (traits from ground_truth_tumours.csv) with ``workers``."""
    import datetime as dt

    from pmed.demo import ct

    truth = pd.read_csv(source / "data" / "raw" / "truth" / "ground_truth_tumours.csv")
    scans = truth[["person_id", "timepoint", "volume_ml", "heterogeneity", "irregularity"]].assign(
        scan_date=pd.to_datetime(truth["scan_date"]).dt.date,
        patient_name="BENCH^MARK", patient_mrn="BENCH", birth_date=dt.date(1950, 1, 1),
    )
    out = Path(tempfile.mkdtemp(dir=root))
    start = time.perf_counter()
    ct.write_imaging_study(out, scans, seed, workers=workers)
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return {"workers": workers, "series": len(scans), "write_s": seconds,
            "s_per_series": seconds / len(scans)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="workspace with data/raw and cohort.parquet")
    parser.add_argument("--size", default="default", help="demo size to generate (no --source)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ct-writer", action="store_true",
                        help="also time pmed.demo.ct writing the source's CT series")
    args = parser.parse_args(argv)
    params = config.load_params()
    with tempfile.TemporaryDirectory(prefix="bench_imaging_") as tmp:
        root = Path(tmp)
        source = args.source
        if source is None:
            source = root / "source"
            seconds = build_source(source, args.size, int(params["common"]["seed"]), params)
            n_series = len(pd.read_parquet(source / "data" / "raw" / "omop" / "image_occurrence.parquet"))
            print(f"demo '{args.size}': wrote EHR + {n_series} CT/MR series in {seconds:.1f} s")
        if args.ct_writer:
            seed = int(params["common"]["seed"])
            writes = [time_ct_writer(Path(source), root, w, seed) for w in args.workers]
            print(pd.DataFrame(writes).set_index("workers").to_string(float_format="{:.3f}".format))
        rows = [time_stage(Path(source).resolve(), root, w, params) for w in args.workers]
    table = pd.DataFrame(rows).set_index("workers")
    print(table.to_string(float_format="{:.3f}".format))
    print(f"load average during the run (1/5/15 min): {os.getloadavg()} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
