"""Benchmark: the cohort stage's extraction on DuckDB (files), PostgreSQL and Spark.

Usage::

    python benchmarks/bench_engines.py --persons 100000 [--engines duckdb postgres spark]
    python benchmarks/bench_engines.py --omop DIR      # an existing OMOP folder (Parquet)
    python benchmarks/bench_engines.py --persons 100000 --engines spark --quality-plans
        # the data-quality checks one by one vs in one UNION ALL statement

``--persons N`` generates the demo's EHR-only data with N persons into
``<workdir>/p<N>/raw`` unless it is there (:func:`bench_cohort.generate_demo`). PostgreSQL
(Debian's server, benchmarks/local_engines.py) is started once and loaded with the tables
(OMOP v5.4 DDL types; load time printed, not counted); the stage runs as a read-only role.
Spark: a local session (2 cores, external Parquet tables; session start and table
registration printed as ``setup``, not counted).

Each engine runs ``extract_cohort`` (with the data-quality checks, as the stage does) in its
own subprocess; a sampler (every 0.25 s) records the process tree's peak memory (PSS, so
shared pages are not counted twice: client + JVM for Spark, client + the server's processes
for PostgreSQL) and its CPU time (user + system). Cohorts, attrition and quality counts are
compared across engines (exact). The machine's load average is printed before and after:
the figures are only comparable within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

from pmed import config
from pmed.cohort import extract_cohort, parse_definition
from pmed.cohort.engine import SourceSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
import local_engines  # noqa: E402
from bench_cohort import generate_demo  # noqa: E402


class TreeSampler:
    """Peak PSS (GB) and CPU seconds of a set of process trees, sampled in a thread."""

    def __init__(self, roots: list[int], interval: float = 0.25):
        self.roots, self.interval = roots, interval
        self.base: dict[int, float] = {}  # cpu of processes alive at start
        self.last: dict[int, float] = {}
        self.peak_gb = 0.0
        self._stop = threading.Event()
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                self.base[p.pid] = t.user + t.system
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _procs(self) -> list[psutil.Process]:
        out = []
        for pid in self.roots:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                out += [root, *root.children(recursive=True)]
        return out

    def sample(self) -> None:
        total = 0
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                total += p.memory_full_info().pss
                t = p.cpu_times()
                self.last[p.pid] = t.user + t.system
        self.peak_gb = max(self.peak_gb, total / 1024**3)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.sample()
        self._stop.set()
        self._thread.join()

    @property
    def cpu_s(self) -> float:
        return sum(v - self.base.get(pid, 0.0) for pid, v in self.last.items())


def _postmaster_pid(pidfile: str) -> int:
    return int(Path(pidfile).read_text().split()[0])


def run_child(engine: str, omop: Path, out: Path, pg: dict | None,
              spark_memory: str = "4g") -> dict:
    """One extraction in this process; returns the figures, writes the results to ``out``."""
    d = parse_definition(config.load_params()["cohort"])
    roots, setup, spark = [os.getpid()], 0.0, None
    if engine == "postgres":
        os.environ.update({k: v for k, v in pg.items() if k.startswith("PG")})
        roots.append(_postmaster_pid(pg["pidfile"]))
        d = dataclasses.replace(d, source=SourceSpec(engine="postgres", cdm_schema="cdm"))
    elif engine == "spark":
        start = time.perf_counter()
        spark = local_engines.spark_session(out.parent / "spark", memory=spark_memory)
        local_engines.load_spark(spark, omop)
        setup = time.perf_counter() - start
        d = dataclasses.replace(d, source=SourceSpec(engine="spark", cdm_schema="cdm"))
    with TreeSampler(roots) as sampler:
        start = time.perf_counter()
        res = extract_cohort(omop, d, threads=2, spark=spark)
        wall = time.perf_counter() - start
    res.cohort.to_parquet(out.with_suffix(".cohort.parquet"), index=False)
    res.attrition.to_csv(out.with_suffix(".attrition.csv"), index=False)
    res.quality.to_csv(out.with_suffix(".quality.csv"), index=False)
    if spark is not None:
        spark.stop()
    return {"engine": engine, "wall_s": wall, "cpu_s": sampler.cpu_s,
            "peak_gb": sampler.peak_gb, "setup_s": setup, "persons": int(len(res.cohort))}


def compare(omop: Path, engines: list[str], pg: dict | None, spark_memory: str = "4g"
            ) -> list[dict]:
    """Each engine in a subprocess on ``omop``; prints figures and ratios to the first."""
    outdir = Path(tempfile.mkdtemp(prefix="bench_engines_"))
    results = []
    try:
        for engine in engines:
            out = outdir / engine
            proc = subprocess.run(
                [sys.executable, __file__, "--omop", str(omop), "--child", engine, "--out",
                 str(out), "--pg", json.dumps(pg or {}), "--spark-memory", spark_memory],
                capture_output=True, text=True,
                check=False)
            if proc.returncode:
                raise SystemExit(f"{engine} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(res)
            print(f"{engine:9s} persons={res['persons']:>8,d} wall={res['wall_s']:8.1f} s "
                  f"cpu={res['cpu_s']:8.1f} s peak_pss={res['peak_gb']:5.2f} GB"
                  + (f" (setup {res['setup_s']:.0f} s not counted)" if res["setup_s"] else ""),
                  flush=True)
        first = engines[0]
        for kind in ("cohort.parquet", "attrition.csv", "quality.csv"):
            read = pd.read_parquet if kind.endswith("parquet") else pd.read_csv
            ref = read(outdir / f"{first}.{kind}")
            for engine in engines[1:]:
                pd.testing.assert_frame_equal(read(outdir / f"{engine}.{kind}"), ref,
                                              check_exact=True)
        if len(engines) > 1:
            print(f"cohort, attrition and quality identical across {', '.join(engines)}")
        base = results[0]
        for r in results[1:]:
            print(f"{r['engine']} / {base['engine']}: wall x{r['wall_s'] / base['wall_s']:.1f}, "
                  f"cpu x{r['cpu_s'] / base['cpu_s']:.1f}, "
                  f"peak x{r['peak_gb'] / base['peak_gb']:.1f}")
    finally:
        shutil.rmtree(outdir, ignore_errors=True)
    return results


def quality_plans(omop: Path, engine: str, repeats: int = 2) -> None:
    """The data-quality checks one statement each (as the stage runs them) against all in one
    UNION ALL statement, alternately in one session: wall seconds and the load average."""
    from pmed.cohort import extract, quality

    d = parse_definition(config.load_params()["cohort"])
    spark = None
    if engine == "spark":
        spark = local_engines.spark_session(Path(tempfile.mkdtemp(prefix="bench_q_")), memory="4g")
        local_engines.load_spark(spark, omop)
        d = dataclasses.replace(d, source=SourceSpec(engine="spark", cdm_schema="cdm"))
    eng = extract.open_cdm(omop, d, threads=2, spark=spark)
    try:
        extract.load_rule_tables(eng, d)
        checks = quality.quality_queries(d, quality.content_columns(eng), quality.date_columns(eng))
        union = " UNION ALL ".join(f"SELECT {i} AS check_no, q{i}.* FROM ({c['sql']}) AS q{i}"
                                   for i, c in enumerate(checks))
        for _ in range(repeats):
            start = time.perf_counter()
            separate = sorted((i, *r) for i, c in enumerate(checks) for r in eng.rows(c["sql"]))
            mid = time.perf_counter()
            together = sorted(tuple(r) for r in eng.rows(union))
            end = time.perf_counter()
            assert separate == together
            print(f"{engine}: {len(checks)} checks one by one {mid - start:6.1f} s, in one UNION "
                  f"ALL {end - mid:6.1f} s ({_load()})", flush=True)
    finally:
        eng.close()
        if spark is not None:
            spark.stop()


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--omop", type=Path, help="folder of OMOP tables (Parquet)")
    src.add_argument("--persons", type=int, nargs="+", help="generate demo data of these sizes")
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "bench_engines")
    ap.add_argument("--engines", nargs="+", default=["duckdb", "postgres", "spark"],
                    choices=["duckdb", "postgres", "spark"])
    ap.add_argument("--quality-plans", action="store_true",
                    help="only time the quality checks one by one vs in one UNION ALL")
    ap.add_argument("--spark-memory", default="4g", help="Spark driver memory (local mode)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--pg", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args.omop, args.out, json.loads(args.pg),
                                   args.spark_memory)))
        return
    folders = [args.omop] if args.omop else [generate_demo(n, args.workdir) for n in args.persons]
    if args.quality_plans:
        for omop in folders:
            for engine in args.engines:
                if engine != "postgres":  # needs the server: not part of this comparison
                    quality_plans(omop, "spark" if engine == "spark" else "duckdb")
        return
    for omop in folders:
        print(f"--- {omop}\nbefore: {_load()}", flush=True)
        with contextlib.ExitStack() as stack:
            pg = None
            if "postgres" in args.engines:
                start = time.perf_counter()
                pg = stack.enter_context(local_engines.postgres_server(omop))
                print(f"postgres: server started and CDM loaded in "
                      f"{time.perf_counter() - start:.0f} s (not counted)", flush=True)
            compare(omop, args.engines, pg, args.spark_memory)
        print(f"after: {_load()}", flush=True)


if __name__ == "__main__":
    main()
