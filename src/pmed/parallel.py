"""Independent tasks (bootstrap replicates, cross-validation folds) over worker processes.

:func:`run_tasks` evaluates ``func`` on each item in joblib's loky processes. Every task runs
with one BLAS/OpenMP thread (``inner_max_num_threads=1`` sets OMP_NUM_THREADS etc. in the
workers, and threadpoolctl limits the already loaded libraries), also when ``n_jobs == 1``
in the calling process: with one thread per task, floating-point reductions do not depend
on how many threads a library happens to use, so the results do not depend on ``n_jobs``
and the 2 cores are not oversubscribed (n_jobs processes x 1 thread).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from joblib import Parallel, delayed, parallel_config
from threadpoolctl import threadpool_limits


def _one_thread(func: Callable[[Any], Any], item: Any) -> Any:
    with threadpool_limits(limits=1):
        return func(item)


def run_tasks(func: Callable[[Any], Any], items: Iterable[Any], n_jobs: int = 1) -> list:
    """``[func(x) for x in items]`` with one BLAS/OpenMP thread per task, in ``n_jobs`` processes.

    ``items`` may be a generator: it is consumed lazily (at most about 2 x ``n_jobs`` items
    waiting), so large items such as bootstrap index arrays need not all be in memory.
    Results come back in the order of ``items``. ``func`` is pickled with cloudpickle
    (closures and lambdas work). ``n_jobs`` must be >= 1.
    """
    return list(iter_tasks(func, items, n_jobs))


def iter_tasks(func: Callable[[Any], Any], items: Iterable[Any], n_jobs: int = 1) -> Iterator[Any]:
    """As :func:`run_tasks`, but yields each result (in the order of ``items``) as soon as it
    and those before it are done, while the workers go on with the next items (no barrier
    between batches: long and short tasks mixed keep every process busy)."""
    if int(n_jobs) != n_jobs or n_jobs < 1:
        raise ValueError(f"run_tasks: n_jobs must be an integer >= 1, got {n_jobs!r}")
    if n_jobs == 1:
        for x in items:
            with threadpool_limits(limits=1):
                result = func(x)
            yield result
        return
    with parallel_config(backend="loky", inner_max_num_threads=1):
        yield from Parallel(n_jobs=int(n_jobs), pre_dispatch="2*n_jobs", return_as="generator")(
            delayed(_one_thread)(func, x) for x in items)


def resamples(n: int, n_boot: int, seed: int):
    """Generator of ``n_boot`` bootstrap index arrays (n,), drawn in turn from ``seed``.

    One array at a time (memory O(n), not O(n_boot x n)); the draws are those of
    ``rng = np.random.default_rng(seed)`` then ``rng.integers(0, n, size=n)`` per replicate.
    """
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n, size=n)
