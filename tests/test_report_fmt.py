"""Clinical number formatting (pmed.report fmt_* functions): hand-checked cases."""

import math

import numpy as np
import pytest

from pmed import report


@pytest.mark.parametrize("p, text", [
    (0.0, "p < 0.001"), (2.4e-15, "p < 0.001"), (0.000999, "p < 0.001"), (0.001, "p = 0.001"),
    (0.0042, "p = 0.004"), (0.0099, "p = 0.010"), (0.01, "p = 0.01"), (0.0449, "p = 0.04"),
    (0.21, "p = 0.21"), (0.98, "p = 0.98"), (0.994, "p > 0.99"), (0.999, "p > 0.99"), (1.0, "p > 0.99"),
    (np.float64(0.5), "p = 0.50"), (None, "n/a"), (float("nan"), "n/a"), (1.5, "n/a"),
    (-0.1, "n/a"),
])
def test_fmt_p(p, text):
    assert report.fmt_p(p) == text


def test_fmt_p_without_prefix():
    assert report.fmt_p(0.0001, prefix=False) == "< 0.001"
    assert report.fmt_p(0.21, prefix=False) == "0.21"


@pytest.mark.parametrize("x, d", [(2097, 0), (100, 0), (99.9, 1), (38.43, 1), (10, 1),
                                  (9.99, 2), (0.82, 2), (0.1, 2), (0, 2), (-0.82, 2),
                                  (0.0264, 3), (0.0043, 4), (1e-7, 4), (-0.06, 3)])
def test_decimals(x, d):
    assert report.decimals(x) == d


def test_fmt_num_separators_and_no_negative_zero():
    assert report.fmt_num(3847.0) == "3,847"
    assert report.fmt_num(-0.0004, 2) == "0.00"
    assert report.fmt_num(-0.004, 2) == "0.00"
    assert report.fmt_num(-0.006, 2) == "-0.01"
    assert report.fmt_num(None) == "n/a" and report.fmt_num(float("nan")) == "n/a"
    assert report.fmt_num("<11") == "<11"


def test_fmt_est_ci():
    assert report.fmt_est_ci(0.820881, 0.725879, 0.928317) == "0.82 (0.73 to 0.93)"
    assert report.fmt_est_ci(332.0, 302.0, 362.0, unit="days") == "332 days (302 to 362)"
    assert report.fmt_est_ci(0.0264423, 0.0143231, 0.0403412) == "0.026 (0.014 to 0.040)"
    # the "-0.000 (-0.070-0.062)"
    assert report.fmt_est_ci(-0.0004, -0.070, 0.062) == "-0.0004 (-0.0700 to 0.0620)"
    assert report.fmt_est_ci(-0.0004, -0.070, 0.062, digits=2) == "0.00 (-0.07 to 0.06)"
    # bounds that would print alike get more decimals, up to 4
    assert report.fmt_est_ci(0.999948, 0.999941, 0.999955) == "0.9999 (0.9999 to 1.0000)"
    assert report.fmt_est_ci(0.7, 0.68, 0.72) == "0.70 (0.68 to 0.72)"
    assert report.fmt_est_ci(0.5, None, 0.6) == "0.50"
    assert report.fmt_est_ci(None, 0.1, 0.2) == "n/a"


def test_fmt_metric_and_ratio():
    m = {"estimate": 0.742371, "ci_low": 0.672475, "ci_high": 0.819532}
    assert report.fmt_metric(m) == "0.74 (0.67 to 0.82)"
    assert report.fmt_ratio(m) == "0.74 (0.67 to 0.82)"
    log = {k: math.log(v) for k, v in m.items()}
    assert report.fmt_ratio(log, log=True) == "0.74 (0.67 to 0.82)"
    assert report.fmt_ratio({"estimate": 1.388, "ci_low": 1.0485, "ci_high": 1.838}) == \
        "1.39 (1.05 to 1.84)"
    assert report.fmt_metric(None) == "n/a" and report.fmt_ratio("x") == "n/a"


def test_fmt_pct_and_count():
    assert report.fmt_pct(0.1234) == "12.3%"
    assert report.fmt_pct(0.05, digits=0) == "5%"
    assert report.fmt_pct_ci({"estimate": 0.0380, "ci_low": -0.0219, "ci_high": 0.0979}) == \
        "3.8% (-2.2% to 9.8%)"
    assert report.fmt_pct_ci({"estimate": 0.5}) == "50.0%"
    assert report.fmt_count(3847) == "3,847" and report.fmt_count(np.int64(12)) == "12"
    assert report.fmt_count("<11") == "<11" and report.fmt_count("suppressed") == "suppressed"
    assert report.fmt_count(None) == "n/a"


def test_fmt_est_ci_shows_an_hr_per_unit_near_1():
    assert report.fmt_est_ci(0.9957, 0.9928, 0.9987) == "0.996 (0.993 to 0.999)"
    assert report.fmt_est_ci(1.0, 1.0, 1.0) == "1.00 (1.00 to 1.00)"
