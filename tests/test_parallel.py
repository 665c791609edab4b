"""Tests of pmed.parallel: order, one BLAS/OpenMP thread per task, results independent of
the number of worker processes, lazily drawn bootstrap resamples."""

import numpy as np
import numpy.testing as npt
import pytest

from pmed import parallel


def _threads(_):
    from threadpoolctl import threadpool_info

    return max((lib["num_threads"] for lib in threadpool_info()), default=1)


def test_every_task_runs_with_one_blas_thread():
    for n_jobs in (1, 2):
        assert parallel.run_tasks(_threads, range(4), n_jobs) == [1, 1, 1, 1]


def test_results_in_order_and_independent_of_worker_count():
    """A BLAS-heavy task (matrix products and solves) gives bit-identical results."""
    rng = np.random.default_rng(3)
    mats = [rng.normal(size=(300, 300)) for _ in range(5)]

    def task(a):
        return np.linalg.solve(a @ a.T + np.eye(len(a)), a.sum(1))

    one = parallel.run_tasks(task, mats, 1)
    two = parallel.run_tasks(task, (m for m in mats), 2)
    for a, b in zip(one, two, strict=True):
        npt.assert_array_equal(a, b)
    assert parallel.run_tasks(lambda x: x * 2, range(7), 2) == [0, 2, 4, 6, 8, 10, 12]
    with pytest.raises(ValueError, match="n_jobs"):
        parallel.run_tasks(task, mats, 0)


def test_resamples_are_the_draws_of_one_generator_in_turn():
    rng = np.random.default_rng(11)
    expected = [rng.integers(0, 50, size=50) for _ in range(4)]
    got = list(parallel.resamples(50, 4, 11))
    for a, b in zip(got, expected, strict=True):
        npt.assert_array_equal(a, b)


def test_iter_tasks_streams_results_in_order():
    drawn = []

    def items():
        for i in range(20):
            drawn.append(i)
            yield i

    stream = parallel.iter_tasks(lambda x: x * x, items(), 1)
    assert next(stream) == 0 and drawn == [0]  # one process: items drawn one at a time
    assert list(stream) == [i * i for i in range(1, 20)]
    assert list(parallel.iter_tasks(lambda x: x * x, items(), 2)) == [i * i for i in range(20)]
