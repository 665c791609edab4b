"""Benchmark: the modelling stages' hotspots (survival, outcomes, treatment) at scale.

Usage::

    python benchmarks/bench_stages.py --persons 200000 1000000 [--workdir /tmp/bench_stages]
    python benchmarks/bench_stages.py --cohort PATH/cohort.parquet

``--persons N`` generates the demo's EHR-only ``benchmark`` size with N persons (as
benchmarks/bench_cohort.py: :func:`pmed.demo.generate.generate` with
``demo.sizes.benchmark.n_persons = N``) into ``<workdir>/p<N>/raw`` and extracts the cohort
(DuckDB, params.yaml ``cohort:``) into ``<workdir>/p<N>/cohort.parquet``, each once.

Every hotspot runs in its own subprocess (peak RSS is its own) on the cohort, with the
stage helpers the notebooks call and params.yaml's settings: Harrell's C, its bootstrap,
``risk_metrics``, the weighted Cox model with robust SE, matching, the IPTW bootstrap with
propensity refits, and the cross-validated risk models (HistGradientBoosting). Printed per
hotspot: wall time and CPU time (this process + its worker processes) of the hotspot call
alone, peak RSS of the process (data and set-up included) and of its largest worker, and,
with two or more sizes, the growth exponent log(CPU ratio) / log(size ratio) (CPU time:
less sensitive than wall time to other work on a shared machine).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import inspect
import json
import math
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pmed import config


def prepare(n_persons: int, workdir: Path) -> Path:
    """Cohort parquet of an EHR-only demo data set with ``n_persons`` (generated once)."""
    folder = workdir / f"p{n_persons}"
    cohort_file = folder / "cohort.parquet"
    if cohort_file.exists():
        return cohort_file
    raw = folder / "raw"
    params = config.load_params()
    if not (raw / "truth" / "ground_truth.json").exists():
        from pmed.demo.generate import generate

        demo = copy.deepcopy(params["demo"])
        demo["sizes"]["benchmark"]["n_persons"] = n_persons
        start = time.perf_counter()
        generate(raw, "benchmark", params["common"]["seed"], demo)
        print(f"generated {n_persons:,d} persons in {time.perf_counter() - start:.0f} s", flush=True)
    from pmed.cohort import extract_cohort, parse_definition

    start = time.perf_counter()
    cohort = extract_cohort(raw / "omop", parse_definition(params["cohort"]), check_quality=False).cohort
    cohort.to_parquet(cohort_file, index=False)
    print(f"extracted {len(cohort):,d} eligible of {n_persons:,d} in {time.perf_counter() - start:.0f} s",
          flush=True)
    return cohort_file


class _Clock:
    """Wall and CPU seconds of this process from creation to :meth:`stop` (the CPU of worker
    processes is added by the caller once they have exited)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


# --- inputs shared by the hotspots ------------------------------------------------------

def _params() -> dict:
    return config.load_params()


def _cohort(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def _design(cohort: pd.DataFrame, params: dict):
    """Median/mode-imputed treatment design and a binary exposure (the causal helpers' input)."""
    from pmed import causal

    X = causal.design_matrix(cohort, params["treatment"]["covariates"])
    if "treated" in cohort:  # cohorts extracted before the multi-arm contract
        return X, cohort["treated"].to_numpy(int)
    reference = params["cohort"]["treatment_strategies"]["reference"]
    return X, (cohort["treatment"] != reference).to_numpy(int)  # any non-reference arm vs reference


def _linear_predictor(cohort: pd.DataFrame, params: dict) -> np.ndarray:
    """Cox linear predictor of the survival covariates (median-imputed; stands in for the
    MI model's predictor whose C-index the survival stage bootstraps)."""
    from pmed import causal
    from pmed import survival as sv

    X = causal.design_matrix(cohort, params["survival"]["covariates"])[list(params["survival"]["covariates"])]
    model = sv.fit_cox(X.assign(time_days=cohort["time_days"].to_numpy(), event=cohort["event"].to_numpy()),
                       "time_days", "event", list(X.columns))
    return X.to_numpy(float) @ model.params_.loc[list(X.columns)].to_numpy()


def _kwargs(func, **kw):
    """The keyword arguments ``func`` accepts (older versions of a helper lack n_jobs)."""
    accepted = inspect.signature(func).parameters
    return {k: v for k, v in kw.items() if k in accepted}


# --- the hotspots -------------------------------------------------------------------------

def hot_concordance(cohort, params, n_boot):
    """Harrell's C of a Cox linear predictor, one call (survival and outcomes stages)."""
    from pmed import metrics

    lp = _linear_predictor(cohort, params)
    t, e = cohort["time_days"].to_numpy(float), cohort["event"].to_numpy(int)
    clock = _Clock()
    metrics.harrell_c(t, e, lp)
    return clock.stop()


def hot_bootstrap_c(cohort, params, n_boot):
    """The survival stage's bootstrap of Harrell's C (survival.n_bootstrap resamples)."""
    from pmed import metrics

    lp = _linear_predictor(cohort, params)
    t, e = cohort["time_days"].to_numpy(float), cohort["event"].to_numpy(int)
    n_boot = n_boot or params["survival"]["n_bootstrap"]
    clock = _Clock()
    metrics.bootstrap(lambda i: {"harrell_c": metrics.harrell_c(t[i], e[i], lp[i])}, len(t), n_boot,
                      params["common"]["seed"] + 202, **_kwargs(metrics.bootstrap, n_jobs=params["outcomes"]["n_jobs"]))
    return clock.stop()


def _cv_inputs(cohort, params):
    from pmed import causal, metrics
    from pmed import survival as sv

    out = params["outcomes"]
    data = causal.design_matrix(cohort, out["covariates"])[list(out["covariates"])]
    data = sv.add_interactions(data.assign(time_days=cohort["time_days"].to_numpy(float),
                                           event=cohort["event"].to_numpy(int)), out["interactions"])
    endpoint = metrics.horizon_outcome(data["time_days"], data["event"], float(out["horizon_days"]))
    return data, endpoint["y"].to_numpy(), endpoint["ipcw"].to_numpy()


def _brier_times(out) -> list[float]:
    """The integrated-Brier grid of the outcomes notebook (ends at the horizon)."""
    if "brier_times_days" in out:
        return [float(x) for x in out["brier_times_days"]]
    h, k = float(out["horizon_days"]), int(out["brier_grid_points"])
    return [h * (i + 1) / k for i in range(k)]


def _cv(cohort, params, cache: Path | None = None):
    """Out-of-fold predictions (:func:`pmed.prediction.cross_validated_predictions`) and
    their wall time; with ``cache`` (a pickle file) computed once and then read from it."""
    from pmed import prediction

    out = params["outcomes"]
    data, y, w = _cv_inputs(cohort, params)
    if cache is not None and cache.exists():
        return pickle.loads(cache.read_bytes()), data, (float("nan"), float("nan"))
    settings = prediction.ModelSettings.from_params(out)
    times = _brier_times(out)
    clock = _Clock()
    cv = prediction.cross_validated_predictions(
        data, "time_days", "event", y, w, times, settings, n_folds=out["cv_folds"],
        seed_cv=params["common"]["seed"] + 302, seed_gb=params["common"]["seed"] + 303,
        **_kwargs(prediction.cross_validated_predictions, n_jobs=out["n_jobs"]))
    seconds = clock.stop()
    if cache is not None:
        cache.write_bytes(pickle.dumps(cv))
    return cv, data, seconds


def _cv_cache(cohort_path: Path) -> Path:
    tag = hashlib.sha1(os.environ.get("PYTHONPATH", "").encode()).hexdigest()[:8]
    return cohort_path.with_name(f"{cohort_path.stem}.cv_{tag}.pkl")


def hot_cv_models(cohort, params, n_boot):
    """Outcomes: the k-fold CV of penalised Cox, IPCW logistic and gradient boosting (with
    permutation importance) on median-imputed predictors."""
    return _cv(cohort, params, CV_CACHE)[2]


def hot_risk_metrics(cohort, params, n_boot):
    """Outcomes: every accuracy measure of the three models' out-of-fold risks, once."""
    from pmed import prediction

    out = params["outcomes"]
    cv, data, _ = _cv(cohort, params, CV_CACHE)
    times = _brier_times(out)
    clock = _Clock()
    prediction.out_of_fold_metrics(data["time_days"].to_numpy(), data["event"].to_numpy(), cv,
                                   float(out["horizon_days"]), out["high_risk_threshold"], times, n_boot=1,
                                   seed=1, n_jobs=1)
    wall, cpu = clock.stop()
    return wall / 2, cpu / 2  # the point estimate and one replicate


def hot_metrics_bootstrap(cohort, params, n_boot):
    """Outcomes: bootstrap CIs of all metrics of the three models (outcomes.n_bootstrap)."""
    from pmed import prediction

    out = params["outcomes"]
    cv, data, _ = _cv(cohort, params, CV_CACHE)
    times = _brier_times(out)
    clock = _Clock()
    prediction.out_of_fold_metrics(data["time_days"].to_numpy(), data["event"].to_numpy(), cv,
                                   float(out["horizon_days"]), out["high_risk_threshold"], times,
                                   n_boot=n_boot or out["n_bootstrap"], seed=params["common"]["seed"] + 304,
                                   n_jobs=out["n_jobs"])
    return clock.stop()


def hot_propensity_matching(cohort, params, n_boot):
    """Treatment: propensity model, IPTW weights and greedy caliper matching."""
    from pmed import causal

    tr = params["treatment"]
    X, treated = _design(cohort, params)
    clock = _Clock()
    ps = causal.fit_propensity(X, treated)
    causal.iptw_weights(treated, ps, trim=tr.get("ps_trim", 0.0), truncate_quantile=tr["weight_truncation_quantile"])
    causal.match_nearest(causal.logit(ps), treated, tr.get("caliper_sd", 0.2), params["common"]["seed"] + 401)
    return clock.stop()


def hot_effects_robust_cox(cohort, params, n_boot):
    """Treatment: weighted KM differences and Cox HRs with robust / pair-clustered SE
    (crude, IPTW, matched), as ``causal.effects_table``."""
    from pmed import causal

    tr = params["treatment"]
    X, treated = _design(cohort, params)
    ps = causal.fit_propensity(X, treated)
    w = causal.iptw_weights(treated, ps, trim=tr.get("ps_trim", 0.0), truncate_quantile=tr["weight_truncation_quantile"])
    pairs = causal.match_nearest(causal.logit(ps), treated, tr.get("caliper_sd", 0.2), params["common"]["seed"] + 401)
    t, e = cohort["time_days"].to_numpy(float), cohort["event"].to_numpy(int)
    clock = _Clock()
    causal.effects_table(t, e, treated, {"crude": None, "iptw": w, "matched": causal.matching_weights(pairs, len(t))},
                         float(tr["horizon_days"]), clusters={"matched": causal.pair_ids(pairs, len(t))})
    return clock.stop()


def hot_iptw_bootstrap(cohort, params, n_boot):
    """Treatment: bootstrap of the IPTW survival difference, propensity refitted per replicate."""
    from pmed import causal

    tr = params["treatment"]
    X, treated = _design(cohort, params)
    t, e = cohort["time_days"].to_numpy(float), cohort["event"].to_numpy(int)
    clock = _Clock()
    causal.bootstrap_iptw_difference(
        X, t, e, treated, float(tr["horizon_days"]), n_boot or tr["n_bootstrap"], params["common"]["seed"] + 402,
        trim=tr.get("ps_trim", 0.0), truncate_quantile=tr["weight_truncation_quantile"],
        **_kwargs(causal.bootstrap_iptw_difference, n_jobs=params["outcomes"]["n_jobs"]))
    return clock.stop()


HOTSPOTS = {
    "survival": ["concordance", "bootstrap_c"],
    "outcomes": ["cv_models", "risk_metrics", "metrics_bootstrap"],
    "treatment": ["propensity_matching", "effects_robust_cox", "iptw_bootstrap"],
}


# --- running -----------------------------------------------------------------------------

CV_CACHE: Path | None = None  # set in the child: out-of-fold predictions shared by the outcomes hotspots


def _child(name: str, cohort_path: Path, n_boot: int | None) -> None:
    global CV_CACHE
    CV_CACHE = _cv_cache(cohort_path)
    if name == "cv_models":
        CV_CACHE.unlink(missing_ok=True)
    cohort, params = _cohort(cohort_path), _params()
    seconds, cpu = globals()[f"hot_{name}"](cohort, params, n_boot)
    try:  # stop the worker processes so that their CPU time and peak RSS are counted below
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    except ImportError:
        pass
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers start only inside the hotspots
    print(json.dumps({"hotspot": name, "n": len(cohort), "seconds": seconds,
                      "cpu_s": cpu + kids.ru_utime + kids.ru_stime,
                      "rss_gb": own.ru_maxrss / 1024**2, "worker_rss_gb": kids.ru_maxrss / 1024**2}))


def run(name: str, cohort_path: Path, n_boot: int | None, src: Path | None) -> dict:
    """One hotspot in a fresh interpreter (``src``: another checkout's src/ folder, e.g. the
    code before this change, for a before/after comparison)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    cmd = [sys.executable, __file__, "--child", name, "--cohort", str(cohort_path)]
    if n_boot:
        cmd += ["--n-boot", str(n_boot)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--persons", type=int, nargs="+", help="generate demo data of these sizes")
    src.add_argument("--cohort", type=Path, nargs="+", help="cohort parquet file(s)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench_stages")
    ap.add_argument("--only", nargs="+", help="hotspots to run (default: all)")
    ap.add_argument("--n-boot", type=int, help="bootstrap replicates instead of the params' (quick runs)")
    ap.add_argument("--src", type=Path, help="run against this src/ folder (e.g. an older checkout)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.cohort[0], args.n_boot)
        return
    cohorts = args.cohort or [prepare(n, args.workdir) for n in args.persons]
    names = args.only or [h for hs in HOTSPOTS.values() for h in hs]
    results: dict[str, list[dict]] = {}
    for path in cohorts:
        for name in names:
            r = run(name, path, args.n_boot, args.src)
            results.setdefault(name, []).append(r)
            stage = next(s for s, hs in HOTSPOTS.items() if name in hs)
            print(f"{stage:9s} {name:20s} n={r['n']:>8,d} time={r['seconds']:8.1f} s cpu={r['cpu_s']:8.1f} s "
                  f"peak RSS main={r['rss_gb']:5.2f} GB workers={r['worker_rss_gb']:5.2f} GB", flush=True)
    for name, rs in results.items():
        if len(rs) >= 2 and rs[0]["cpu_s"] > 0:
            a, b = rs[0], rs[-1]
            slope = math.log(b["cpu_s"] / a["cpu_s"]) / math.log(b["n"] / a["n"])
            print(f"growth exponent {name:20s} {slope:5.2f}  (CPU time ~ n^k between n={a['n']:,d} and {b['n']:,d})")


if __name__ == "__main__":
    main()
