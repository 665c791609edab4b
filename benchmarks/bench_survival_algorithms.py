"""Benchmark: log-rank, Cox fit and PH test of pmed.survival at large n (issue 19 items 2-3).

Usage::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_survival_algorithms.py [--n 150000 770000] [--covariates 20]

Synthetic cohort per n: follow-up in whole days (0-3650, so ~3,600 distinct event times with
many ties, as the demo cohort), ``--covariates`` covariates (half binary, half normal) with
proportional effects, 3 treatment groups. Prints, per step, wall time, CPU time and the peak of
memory allocated during the step (tracemalloc, numpy arrays included), next to the size the
former dense (event times x n) float matrices of ``logrank`` would have needed. Numbers only
(no assertion): speed is measured here, never in tests.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import pandas as pd

from pmed import survival as sv


def synthetic(n: int, p: int, rng: np.random.Generator) -> pd.DataFrame:
    """n rows: ``time`` (days), ``event``, ``group`` (3 arms), covariates ``x0``..``x{p-1}``."""
    X = np.column_stack([rng.integers(0, 2, n) if j % 2 == 0 else rng.normal(size=n) for j in range(p)])
    group = rng.integers(0, 3, n)
    lp = X @ rng.normal(0, 0.15, p) + 0.2 * (group == 1) - 0.1 * (group == 2)
    t = rng.exponential(900 * np.exp(-lp))
    c = rng.uniform(30, 3650, n)
    df = pd.DataFrame(X, columns=[f"x{j}" for j in range(p)])
    df["time"] = np.ceil(np.minimum(t, c))
    df["event"] = (t <= c).astype(int)
    df["group"] = group
    return df


def measure(label: str, fn, *args, **kwargs):
    tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"  {label:<28} wall {wall:7.2f} s   cpu {cpu:7.2f} s   peak alloc {peak / 2**20:8.1f} MiB")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[150_000, 770_000])
    ap.add_argument("--covariates", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    for child, n in zip(np.random.SeedSequence(args.seed).spawn(len(args.n)), args.n, strict=True):
        df = synthetic(n, args.covariates, np.random.default_rng(child))
        cov = [c for c in df.columns if c.startswith("x")]
        n_times = np.unique(df.loc[df["event"] == 1, "time"]).size
        print(f"n = {n:,}: {int(df['event'].sum()):,} events at {n_times:,} distinct times, {len(cov)} covariates;"
              f" a dense event-times x n float matrix would be {n_times * n * 8 / 2**30:.1f} GiB")
        lr = measure("logrank (3 groups)", sv.logrank, df["time"], df["event"], df["group"])
        fit = measure("fit_cox_counting (Efron)", sv.fit_cox_counting, df, "time", "event", cov)
        ph = measure("ph_test (km, per term)", sv.ph_test, fit, df, include_global=True)
        measure("scaled_schoenfeld", sv.scaled_schoenfeld, fit, df)
        flagged = sv.ph_violations(ph, alpha=0.01, min_hr_ratio=1.25)
        print(f"  logrank chi2 {lr['statistic']:.1f}; global PH p {ph['p_value'].iloc[-1]:.3f}; "
              f"flagged at p < 0.01 alone: {int((ph['p_value'].iloc[:-1] < 0.01).sum())}, with ratio >= 1.25: {len(flagged)}")


if __name__ == "__main__":
    main()
