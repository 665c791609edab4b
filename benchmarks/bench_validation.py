"""Benchmark: the outcomes stage's validation hotspots (pmed.validation) at a given cohort size.

Usage::

    python benchmarks/bench_validation.py --persons 3847 770000 [--boot 20]

Synthetic data (exponential survival, three models' risks, no model fitting: the CV refits
are benchmarked by benchmarks/bench_stages.py). Per size, in this process with one thread
(``n_jobs = 1``, so CPU time = the work): CPU seconds of :func:`pmed.validation.performance`
on all people (three models, two paired differences; done once per CV repeat), of ``--boot``
bootstrap replicates at params.yaml's ``outcomes.bootstrap_max_rows`` scaled to
``outcomes.n_bootstrap``, and of the subgroup bootstrap (3 groups of one variable) scaled
likewise. Printed figures are CPU seconds (less sensitive than wall time to other work on a
shared machine); wall time on 2 idle cores is about CPU / 2 for the bootstraps.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pmed import config
from pmed import validation as va


def _data(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    rate = 0.5 * np.exp(0.8 * x) / 365.0
    t_event = rng.exponential(1 / rate)
    t_cens = rng.uniform(30, 1500, n)
    time_ = np.minimum(t_event, t_cens)
    event = (t_event <= t_cens).astype(int)
    p = 1 - np.exp(-rate * 365)
    risks = {"cox": p, "logistic": np.clip(p + rng.normal(0, 0.05, n), 0.001, 0.999),
             "gbm": np.clip(0.5 * p + 0.2, 0.001, 0.999)}
    group = rng.choice(np.array(["a", "b", "c"], dtype=object), n)
    return time_, event, risks, group


def _cpu(func, *args, **kwargs) -> float:
    """CPU seconds of ``func(*args, **kwargs)`` in this process."""
    start = time.process_time()
    func(*args, **kwargs)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, nargs="+", default=[3847, 770000])
    parser.add_argument("--boot", type=int, default=20, help="replicates timed (scaled to outcomes.n_bootstrap)")
    args = parser.parse_args()
    out = config.load_params()["outcomes"]
    n_boot, max_rows, horizon = out["n_bootstrap"], out["bootstrap_max_rows"], float(out["horizon_days"])
    pairs = [("gbm", "cox"), ("logistic", "cox")]
    print(f"outcomes.n_bootstrap = {n_boot}, outcomes.bootstrap_max_rows = {max_rows}; CPU seconds, one thread")
    for n in args.persons:
        time_, event, risks, group = _data(n)
        point = _cpu(va.performance, time_, event, risks, horizon, pairs=pairs, threshold=0.7)
        boot = _cpu(va.bootstrap_performance, time_, event, {k: v[None] for k, v in risks.items()}, horizon,
                    args.boot, seed=2, pairs=pairs, max_rows=max_rows, threshold=0.7)
        sub = _cpu(va.subgroup_performance, time_, event, risks["cox"], {"g": group}, horizon, args.boot,
                   seed=3, min_cell=11, max_rows=max_rows)
        scale = n_boot / args.boot
        print(f"n = {n:>8,}: performance (all people, 3 models) {point:7.1f} s; bootstrap "
              f"{point + max(boot - point, 0.0) * scale:7.1f} s for {n_boot} replicates + the full-data pass "
              f"(timed {args.boot}); "
              f"subgroup bootstrap, 3 groups {sub * scale:7.1f} s for {n_boot}")


if __name__ == "__main__":
    main()
