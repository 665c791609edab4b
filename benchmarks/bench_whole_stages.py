"""Benchmark: whole pipeline stages (the real notebooks through ``python -m pmed.runner``) at scale.

Usage::

    python benchmarks/bench_whole_stages.py --persons 200000 1000000 \
        [--stages survival outcomes treatment] [--overlay build/whole/researcher.yaml] \
        [--parallel] [--timeout 1500] [--workdir build/whole]

For each ``--persons N`` a workspace ``<workdir>/p<N>`` is made once: the demo's EHR-only
``benchmark`` size with ``demo.sizes.benchmark.n_persons = N`` (``python -m pmed.demo``
under a params overlay written to ``<workdir>``), then the ``cdm_fingerprint`` and ``cohort``
stages (dvc.yaml's order). Then every stage in ``--stages`` runs as
``python -m pmed.runner <stage>`` with ``PMED_WORKSPACE=<workdir>/p<N>`` and params.yaml
(plus ``--overlay``, a params overlay file, when given: e.g. the settings a researcher would
change at 10^6 patients), each in its own measuring subprocess, so that:

- wall s: the stage's elapsed time;
- CPU s: user + system time of the runner and every descendant (the notebook kernel, its
  worker processes), from ``getrusage(RUSAGE_CHILDREN)`` of the measuring process;
- peak RSS GB: the largest sum of RSS over the runner's process tree (psutil, sampled every
  0.5 s; shared pages of forked workers are counted once per process, so an upper bound);
- load: the machine's 1-minute load average, mean and max over the run (2 cores are shared).
- cells: the stage's slowest notebook cells (papermill's durations in the staging copy).

CPU s counts processes once they have been waited for (the kernel by the runner, worker
processes by their pool), or, if larger, the sum of the last sampled CPU times of every
process seen in the tree (a killed stage: its processes up to the kill, within 0.5 s).

A stage still running after ``--timeout`` seconds is killed (its process tree, by pid) and
reported as exceeding. ``--parallel`` runs the stages of one size at the same time (less wall
time for the benchmark, more load per stage: compare CPU s, not wall s). The table ends with
the cohort-to-treatment chain of each size (total wall time, largest peak RSS) and, with two
or more sizes, the growth exponents log(CPU ratio) / log(n-eligible ratio) of every stage
between successive sizes (runs with the same params only).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SAMPLE_S = 0.5


def measure(cmd: list[str], env: dict, timeout: float, log: Path) -> dict:
    """Run ``cmd``; wall/CPU seconds, peak tree RSS (GB), load average and return code."""
    start, rusage0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    peak, loads, done, cpu_seen = [0.0], [], threading.Event(), {}

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            rss = 0
            for p in tree:
                try:
                    rss += p.memory_info().rss
                    times = p.cpu_times()
                    cpu_seen[p.pid] = times.user + times.system
                except psutil.NoSuchProcess:
                    pass
            peak[0] = max(peak[0], rss / 1e9)
            loads.append(os.getloadavg()[0])
            done.wait(SAMPLE_S)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait()
        rc = "timeout"
    done.set()
    thread.join()
    rusage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (rusage.ru_utime - rusage0.ru_utime) + (rusage.ru_stime - rusage0.ru_stime)
    cpu = max(cpu, sum(cpu_seen.values()))  # processes killed before being waited for
    return {"wall_s": time.perf_counter() - start, "cpu_s": cpu, "peak_rss_gb": peak[0],
            "max_single_rss_gb": rusage.ru_maxrss / 1e6, "rc": rc,
            "load_mean": sum(loads) / len(loads) if loads else float("nan"),
            "load_max": max(loads) if loads else float("nan")}


def kill_tree(pid: int) -> None:
    """Kill the process ``pid`` and all its descendants (kernels run in their own session)."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def stage_env(ws: Path, overlay: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PMED_PARAMS_OVERLAY"}
    env["PMED_WORKSPACE"] = str(ws)
    if overlay:
        env["PMED_PARAMS_OVERLAY"] = str(Path(overlay).resolve())
    return env


def n_eligible(ws: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(ws / "data" / "processed" / "cohort.parquet").metadata.num_rows


def prepare(n_persons: int, workdir: Path, timeout: float) -> tuple[Path, list[dict]]:
    """Workspace with the demo data and the cohort stage's outputs (made once); the rows
    measured on the way (demo, cdm_fingerprint, cohort)."""
    ws = (workdir / f"p{n_persons}").resolve()
    raw, rows = ws / "data" / "raw", []
    if not (raw / "truth" / "ground_truth.json").exists():
        overlay = workdir.resolve() / f"overlay_demo_p{n_persons}.yaml"
        overlay.parent.mkdir(parents=True, exist_ok=True)
        overlay.write_text(f"demo:\n  sizes:\n    benchmark: {{n_persons: {n_persons}}}\n")
        env = stage_env(ws, None) | {"PMED_PARAMS_OVERLAY": str(overlay)}
        rows.append({"stage": "demo", "n": n_persons, **measure(
            [PYTHON, "-m", "pmed.demo", "--size", "benchmark", "--out", str(raw)], env, timeout,
            ws.parent / f"p{n_persons}_demo.log")})
    if not (ws / "data" / "processed" / "cohort.parquet").exists():
        env = stage_env(ws, None)
        for stage, cmd in [("cdm_fingerprint", [PYTHON, "-m", "pmed.cohort.fingerprint"]),
                           ("cohort", [PYTHON, "-m", "pmed.runner", "cohort"])]:
            row = measure(cmd, env, timeout, ws.parent / f"p{n_persons}_{stage}.log")
            rows.append({"stage": stage, "n": n_persons, **row})
            if row["rc"] != 0:
                raise SystemExit(f"{stage} failed for {n_persons} persons: see {ws.parent}")
    return ws, rows


def cell_times(nb_file: Path) -> dict[int, list]:
    """{code cell index: [seconds, first source line]} from papermill's metadata in a notebook
    being executed: durations of finished cells, time so far (now - start) of the running one."""
    try:
        cells = [c for c in json.loads(nb_file.read_text())["cells"] if c["cell_type"] == "code"]
    except (OSError, ValueError):
        return {}
    out = {}
    for i, c in enumerate(cells):
        pm = c.get("metadata", {}).get("papermill", {})
        line = next((x.strip() for x in "".join(c["source"]).splitlines() if x.strip()), "")[:70]
        if pm.get("status") == "running" and pm.get("start_time"):
            started = datetime.fromisoformat(pm["start_time"])
            out[i] = [(datetime.now(UTC) - started).total_seconds(), "(running) " + line]
        elif pm.get("status") == "completed" and pm.get("duration") is not None:
            out[i] = [pm["duration"], line]
    return out


def watch_cells(nb_file: Path, seen: dict, done: threading.Event, every: float = 5.0) -> None:
    """Merge :func:`cell_times` snapshots of the staging notebook into ``seen`` until ``done``
    (the runner scrubs durations from the final copy and papermill saves the staging one only
    now and then, so the last seconds of the stage may be missing)."""
    while not done.wait(every):
        seen.update(cell_times(nb_file))


def run_one(args) -> None:
    """Measuring subprocess of one stage: prints its row as JSON, with its slowest cells."""
    sys.path.insert(0, str(ROOT / "src"))
    from pmed import runner

    ws = Path(args.workspace)
    name = runner.stage_notebook(runner.stage_spec(args.one)).name
    staging_nb = ws / runner.STAGING / args.one / "reports" / "executed" / name
    seen, done = {}, threading.Event()
    watcher = threading.Thread(target=watch_cells, args=(staging_nb, seen, done), daemon=True)
    watcher.start()
    log = ws.parent / f"{ws.name}_{args.one}{'_overlay' if args.overlay else ''}.log"
    row = measure([PYTHON, "-m", "pmed.runner", args.one], stage_env(ws, args.overlay),
                  args.timeout, log)
    done.set()
    watcher.join()
    row["cells"] = sorted(seen.values(), key=lambda x: -x[0])[:4]
    row["overlay"] = args.overlay
    print(json.dumps({"stage": args.one, **row}), flush=True)


def run_stages(ws: Path, stages: list[str], overlay: str | None, timeout: float,
               parallel: bool) -> list[dict]:
    def launch(stage):
        cmd = [PYTHON, __file__, "--one", stage, "--workspace", str(ws), "--timeout", str(timeout)]
        return subprocess.Popen(cmd + (["--overlay", overlay] if overlay else []), cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)

    rows = []
    if parallel:
        procs = [launch(s) for s in stages]
        outputs = [p.communicate()[0] for p in procs]
    else:
        outputs = [launch(s).communicate()[0] for s in stages]
    for text in outputs:
        rows.append(json.loads(text.strip().splitlines()[-1]))
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'stage':<16}{'persons':>10}{'eligible':>10}{'wall s':>9}{'CPU s':>9}"
          f"{'peak RSS GB':>12}{'load mean/max':>15}  status")
    for r in rows:
        status = "ok" if r["rc"] == 0 else ("EXCEEDED timeout (killed)" if r["rc"] == "timeout"
                                            else f"FAILED rc={r['rc']}")
        stage = r["stage"] + (" *" if r.get("overlay") else "")
        print(f"{stage:<16}{r['n']:>10,d}{r.get('eligible', 0):>10,d}{r['wall_s']:>9.0f}"
              f"{r['cpu_s']:>9.0f}{r['peak_rss_gb']:>12.2f}"
              f"{r['load_mean']:>9.1f}/{r['load_max']:<5.1f}  {status}"
              + (f" (overlay {r['overlay']})" if r.get("overlay") else ""))
        for seconds, line in r.get("cells", []):
            shown = "running" if math.isinf(seconds) else f"{seconds:7.0f} s"
            print(f"{'':<18}cell {shown:>9}  {line}")
    for n in sorted({r["n"] for r in rows}):
        chain = [r for r in rows if r["n"] == n and r["stage"] not in ("demo", "cdm_fingerprint")]
        if len(chain) > 1 and all(r["rc"] == 0 for r in chain):
            print(f"\n{n:,d} persons, {' + '.join(r['stage'] for r in chain)} one after the other: "
                  f"{sum(r['wall_s'] for r in chain) / 60:.1f} min wall, {sum(r['cpu_s'] for r in chain):.0f} CPU s, "
                  f"largest peak RSS {max(r['peak_rss_gb'] for r in chain):.2f} GB")
    print("\ngrowth exponent log(CPU ratio) / log(eligible ratio) between successive sizes, same params (ok runs):")
    for stage in dict.fromkeys(r["stage"] for r in rows):
        for overlay in dict.fromkeys(r.get("overlay") for r in rows if r["stage"] == stage):
            runs = sorted((r for r in rows if r["stage"] == stage and r.get("overlay") == overlay
                           and r["rc"] == 0 and r.get("eligible")), key=lambda r: r["eligible"])
            steps = [f"{a['eligible']:,d} -> {b['eligible']:,d}: "
                     f"{math.log(b['cpu_s'] / a['cpu_s']) / math.log(b['eligible'] / a['eligible']):.2f}"
                     for a, b in itertools.pairwise(runs) if b["eligible"] > a["eligible"]]
            if steps:
                print(f"  {stage + (' *' if overlay else ''):<18}" + "; ".join(steps))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--persons", type=int, nargs="+", default=[200_000])
    parser.add_argument("--stages", nargs="+", default=["survival", "outcomes", "treatment"])
    parser.add_argument("--overlay", help="params overlay file for the measured stages")
    parser.add_argument("--parallel", action="store_true", help="run the stages of a size together")
    parser.add_argument("--timeout", type=float, default=1500.0, help="seconds per stage (default 25 min)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "whole")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--from-json", type=Path, nargs="+", metavar="FILE",
                        help="print the table of rows saved by earlier runs (--json) and exit")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--workspace", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args)
        return 0
    if args.from_json:
        print_table([r for f in args.from_json for r in json.loads(f.read_text())])
        return 0
    print(f"{os.cpu_count()} CPUs; load average at start {os.getloadavg()}", flush=True)
    rows = []
    for n in args.persons:
        ws, prep = prepare(n, args.workdir, args.timeout)
        stage_rows = run_stages(ws, args.stages, args.overlay, args.timeout, args.parallel)
        eligible = n_eligible(ws)
        for r in prep + stage_rows:
            rows.append({**r, "n": n, "eligible": eligible})
        print_table(rows)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
