"""Benchmark: the imaging added-value analysis under a feature-level null, over many draws.

Usage::

    PMED_WORKSPACE=<workspace> python benchmarks/bench_imaging_added_value.py \
        [--draws 40] [--permutations 19] [--repeats 1] [--jobs 2] [--out draws.csv]

Reads the processed data of the imaging stages (cohort.parquet, image_features.parquet,
feature_stability.csv) from the workspace (the default demo after ``make repro``). Draw d
permutes the rows of the image features (seed from ``common.seed``, draw-specific): the
images are then independent of the clinical data and the outcome, the null hypothesis of
the permutation test, with the real features' distributions and correlations. Each draw
runs :func:`pmed.radiomics_model.added_value` with params.yaml's ``imaging_analysis``
settings (``--permutations`` and ``--repeats`` override n_permutations and n_repeats to keep
the run short). The unpermuted data are analysed once more first ("observed").

Printed: for the observed data, delta C with its CI and the permutation p; over the null
draws, the rejection rate at alpha of the permutation p and of the naive chi-square p of
the same LR statistic (with Monte-Carlo SE), mean and SD of delta C (combined - clinical),
how often its CI covers 0, the mean per-fold C of the imaging-only model, and wall time
per draw (on a shared machine: read it as an upper bound).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pmed import config, survival
from pmed import radiomics_model as rm

SEED_OFFSET = 650  # common.seed + offset seeds the draws


def load(settings: dict) -> tuple[pd.DataFrame, list[str], list[str], list[str]]:
    """Analysis data (cohort x baseline features), clinical terms, radiomic and unstable features."""
    processed = config.path("processed")
    features = pd.read_parquet(processed / "image_features.parquet")
    clinical = list(settings["clinical_terms"])
    cohort = survival.add_interactions(pd.read_parquet(processed / "cohort.parquet"),
                                       [t for t in clinical if ":" in t])
    radiomic = rm.radiomic_columns(features)
    unstable = rm.unstable_features(pd.read_csv(processed / "feature_stability.csv"))
    return rm.join_baseline_features(cohort, features), clinical, radiomic, unstable


def analyse(data: pd.DataFrame, templates: dict, settings: dict, seed: int, jobs: int) -> dict:
    res = rm.added_value(data, data["time_days"], data["event"], templates, settings, seed=seed, n_jobs=jobs)
    dc, lr = res["comparison"]["delta_c"]["combined"], res["lr_test"]
    return {"delta_c": dc["estimate"], "dc_low": dc["ci_low"], "dc_high": dc["ci_high"],
            "c_imaging": res["comparison"]["c_index"]["imaging"]["estimate"],
            "lr": lr["lr"], "p_perm": lr["p"], "p_chi2": lr["p_chi2"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--permutations", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    params = config.load_params()
    settings = {**params["imaging_analysis"], "n_permutations": args.permutations, "n_repeats": args.repeats}
    data, clinical, radiomic, unstable = load(settings)
    templates = rm.model_templates(clinical, radiomic, unstable, settings)
    master = params["common"]["seed"] + SEED_OFFSET
    print(f"{len(data)} persons with a baseline CT, {int(data['event'].sum())} deaths, {len(radiomic)} features "
          f"({len(unstable)} unstable); K = {settings['n_folds']}, repeats = {args.repeats}, "
          f"B = {args.permutations}, {args.jobs} processes")

    start = time.perf_counter()
    obs = analyse(data, templates, settings, master, args.jobs)
    print(f"observed: delta C {obs['delta_c']:+.4f} ({obs['dc_low']:+.4f} to {obs['dc_high']:+.4f}), "
          f"LR {obs['lr']:.2f}, permutation p {obs['p_perm']:.3g}, naive chi-square p {obs['p_chi2']:.2g} "
          f"[{time.perf_counter() - start:.0f} s]", flush=True)

    rows = []
    for d in range(args.draws):
        rng = np.random.default_rng([master, d])
        null = data.copy()
        null[radiomic] = data[radiomic].to_numpy()[rng.permutation(len(data))]
        start = time.perf_counter()
        rows.append({"draw": d, **analyse(null, templates, settings, master + 1 + 2 * d, args.jobs),
                     "seconds": time.perf_counter() - start})
        print(f"draw {d}: " + ", ".join(f"{k} {v:.4g}" for k, v in rows[-1].items() if k != "draw"), flush=True)
    res = pd.DataFrame(rows)
    if args.out:
        res.to_csv(args.out, index=False)
    alpha, n = float(settings["alpha"]), len(res)
    mc = np.sqrt(alpha * (1 - alpha) / n)
    print(f"\nfeature-level null, {n} draws (expected rejection rate <= {alpha}, MC SE {mc:.3f}):")
    print(f"  permutation p <= {alpha}: {np.mean(res['p_perm'] <= alpha + 1e-12):.3f}; "
          f"naive chi-square p <= {alpha}: {np.mean(res['p_chi2'] <= alpha):.3f}; mean permutation p "
          f"{res['p_perm'].mean():.3f}")
    print(f"  delta C: mean {res['delta_c'].mean():+.4f} (SE {res['delta_c'].std(ddof=1) / np.sqrt(n):.4f}), "
          f"SD {res['delta_c'].std(ddof=1):.4f}; CI covers 0 in {np.mean((res['dc_low'] <= 0) & (0 <= res['dc_high'])):.3f}")
    print(f"  imaging-only per-fold C: mean {res['c_imaging'].mean():.4f} "
          f"(SE {res['c_imaging'].std(ddof=1) / np.sqrt(n):.4f})")
    print(f"  wall time per draw: median {res['seconds'].median():.0f} s")


if __name__ == "__main__":
    main()
