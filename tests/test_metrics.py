"""Tests of pmed.metrics. The survival metrics wrap scikit-survival, so they are checked
against hand cases and independent computations (no censoring: Uno's C = Harrell's C,
td-AUC = plain AUROC; Brier score by hand with a hand-computed censoring KM)."""

import numpy as np
import numpy.testing as npt
import pytest
from sklearn.metrics import roc_auc_score

from pmed import metrics as mt
from pmed.survival import kaplan_meier


def test_harrell_c_hand_case():
    """Pairs (i earlier event, j later): 6 comparable, 5 concordant -> 5/6."""
    c = mt.harrell_c([1, 2, 3, 4], [1, 1, 1, 0], [4, 3, 1, 2])
    npt.assert_allclose(c, 5 / 6)
    # A tie in risk counts 1/2: risks 4,3,3,2 -> pairs (2,3) tied -> 5.5/6.
    npt.assert_allclose(mt.harrell_c([1, 2, 3, 4], [1, 1, 1, 0], [4, 3, 3, 2]), 5.5 / 6)


def _uncensored(seed=3, n=200):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = rng.exponential(np.exp(-risk))
    return time, np.ones(n, dtype=int), risk


def test_harrell_c_equals_scikit_survival_with_ties_and_censoring():
    """Independent implementation: sksurv.metrics.concordance_index_censored."""
    from sksurv.metrics import concordance_index_censored

    rng = np.random.default_rng(8)
    t = rng.integers(1, 60, 500).astype(float)  # many tied times
    e = rng.integers(0, 2, 500)
    r = rng.integers(0, 10, 500).astype(float)  # many tied risks
    expected = concordance_index_censored(e.astype(bool), t, r)[0]
    npt.assert_allclose(mt.harrell_c(t, e, r), expected, rtol=1e-12)


def test_uno_c_equals_scikit_survival_with_ties_and_censoring():
    """Independent implementation: sksurv.metrics.concordance_index_ipcw (train = test and
    a separate training sample)."""
    from sksurv.metrics import concordance_index_ipcw
    from sksurv.util import Surv

    rng = np.random.default_rng(9)
    t = rng.integers(1, 60, 700).astype(float)
    e = (rng.random(700) < 0.6).astype(int)
    r = rng.integers(0, 15, 700).astype(float) + 0.1 * (t < 20)
    surv = Surv.from_arrays(e.astype(bool), t)
    expected = concordance_index_ipcw(surv, surv, r, tau=40)[0]
    npt.assert_allclose(mt.uno_c(t, e, r, tau=40), expected, rtol=1e-12)
    tt = rng.integers(1, 70, 900).astype(float)
    ee = (rng.random(900) < 0.6).astype(int)
    train = Surv.from_arrays(ee.astype(bool), tt)
    expected = concordance_index_ipcw(train, surv, r, tau=40)[0]
    npt.assert_allclose(mt.uno_c(t, e, r, tau=40, train_time=tt, train_event=ee), expected, rtol=1e-12)


def _random_survival(rng, n):
    """Small data with many tied times, tied risks and censorings at event times."""
    t = rng.integers(1, rng.integers(2, 25), n).astype(float)
    e = rng.integers(0, 2, n)
    r = rng.integers(0, rng.integers(1, 10), n).astype(float)
    if rng.random() < 0.3:
        r = r + rng.normal(size=n)  # continuous risks
    return t, e, r


def test_concordance_hand_case_ties_in_time_and_censoring_at_event_time():
    """Times 2 (event, risk 5), 2 (event, risk 1), 2 (censored, risk 3), 4 (event, risk 3),
    5 (censored, risk 3). Comparable pairs of the first event: the censoring at 2 and times
    4, 5 (not the other event at 2): risks 3, 3, 3 all lower -> 3 concordant of 3. Second
    event (risk 1): 0 of 3. Event at 4: vs time 5, tied risk -> 0.5 of 1. C = 3.5 / 7."""
    t, e, r = [2, 2, 2, 4, 5], [1, 1, 0, 1, 0], [5, 1, 3, 3, 3]
    npt.assert_allclose(mt.harrell_c(t, e, r), 3.5 / 7, rtol=1e-15)
    less, equal, total = mt._concordance_counts(np.array(t, float), np.array(e), np.array(r, float))
    npt.assert_array_equal(less, [3, 0, 0, 0, 0])
    npt.assert_array_equal(equal, [0, 0, 0, 1, 0])
    npt.assert_array_equal(total, [3, 3, 0, 1, 0])


def test_harrell_c_equals_lifelines_and_sksurv_over_random_draws():
    """400 random data sets (sizes 2-120, ties everywhere): lifelines' concordance_index
    (higher score = longer survival, so minus the risk) and sksurv's
    concordance_index_censored with exact risk ties (tied_tol=0)."""
    from lifelines.utils import concordance_index
    from sksurv.metrics import concordance_index_censored

    rng = np.random.default_rng(20261129)
    n_checked = 0
    for _ in range(400):
        t, e, r = _random_survival(rng, int(rng.integers(2, 120)))
        try:
            expected = concordance_index_censored(e.astype(bool), t, r, tied_tol=0)[0]
        except Exception:  # no comparable pair: ours must refuse as well
            with pytest.raises(ValueError, match="no comparable pairs"):
                mt.harrell_c(t, e, r)
            continue
        got = mt.harrell_c(t, e, r)
        assert abs(got - expected) <= 1e-12
        assert abs(got - concordance_index(t, -r, e)) <= 1e-12
        n_checked += 1
    assert n_checked > 300


def test_uno_c_equals_sksurv_ipcw_over_random_draws():
    """Uno's C against sksurv's concordance_index_ipcw (tied_tol=0), tau inside follow-up,
    training sample = test sample and a separate one."""
    from sksurv.metrics import concordance_index_ipcw
    from sksurv.util import Surv

    rng = np.random.default_rng(20261130)
    n_checked = 0
    for _ in range(200):
        n = int(rng.integers(20, 150))
        t, e, r = _random_survival(rng, n)
        e[t == t.max()] = 0  # no event at the last time, where the censoring KM drops to 0
        tau = float(rng.choice(t))
        test = Surv.from_arrays(e.astype(bool), t)
        train_t = np.r_[t, rng.integers(1, int(t.max()) + 1, n).astype(float)]
        train_e = np.r_[e, rng.integers(0, 2, n)]
        train_e[train_t == train_t.max()] = 0
        for tt, ee in ((None, None), (train_t, train_e)):
            train = test if tt is None else Surv.from_arrays(ee.astype(bool), tt)
            try:
                expected = concordance_index_ipcw(train, test, r, tau=tau, tied_tol=0)[0]
            except Exception:
                continue
            if not np.isfinite(expected):
                continue
            got = mt.uno_c(t, e, r, tau=tau, train_time=tt, train_event=ee)
            assert abs(got - expected) <= 1e-12
            n_checked += 1
    assert n_checked > 200


def test_td_auc_brier_ibs_equal_sksurv_over_random_draws():
    """td-AUC (1-D and 2-D risks, tied risks), Brier score and integrated Brier score
    against scikit-survival's cumulative_dynamic_auc, brier_score, integrated_brier_score."""
    from sksurv.metrics import brier_score, cumulative_dynamic_auc, integrated_brier_score
    from sksurv.util import Surv

    rng = np.random.default_rng(20261131)
    for _ in range(100):
        n = int(rng.integers(30, 200))
        t, e, r = _random_survival(rng, n)
        e[t == t.max()] = 0  # no event at the last time, where the censoring KM drops to 0
        inside = np.unique(t[(t >= t.min()) & (t < t.max())])
        if inside.size < 3:
            continue
        times = np.sort(rng.choice(inside, 3, replace=False))
        y = Surv.from_arrays(e.astype(bool), t)
        r2 = r[:, None] + rng.integers(0, 3, (n, 3))
        surv = rng.uniform(0, 1, (n, 3))
        for risk in (r, r2):
            expected = cumulative_dynamic_auc(y, y, risk, times)[0]
            npt.assert_allclose(mt.td_auc(t, e, risk, times), expected, rtol=1e-12, atol=1e-14)
        npt.assert_allclose(mt.brier_score(t, e, surv, times), brier_score(y, y, surv, times)[1], rtol=1e-12)
        npt.assert_allclose(mt.integrated_brier_score(t, e, surv, times),
                            integrated_brier_score(y, y, surv, times), rtol=1e-12)


def test_risk_metrics_by_model_equals_single_calls():
    rng = np.random.default_rng(13)
    n = 300
    lp = rng.normal(size=n)
    t_ev = rng.exponential(np.exp(-lp) * 300)
    cens = rng.uniform(50, 900, n)
    t, e = np.round(np.minimum(t_ev, cens)) + 1, (t_ev <= cens).astype(int)
    risks = {"a": 1 / (1 + np.exp(-lp)), "b": 1 / (1 + np.exp(-lp - rng.normal(size=n)))}
    times = [100.0, 200.0]
    curves = {"a": np.column_stack([1 - risks["a"] / 2, 1 - risks["a"]])}
    both = mt.risk_metrics_by_model(t, e, risks, 200.0, 0.5, curves, times)
    assert list(both) == ["a", "b"] and "ibs" in both["a"] and "ibs" not in both["b"]
    assert both["a"] == mt.risk_metrics(t, e, risks["a"], 200.0, 0.5, survival=curves["a"], times=times)
    assert both["b"] == mt.risk_metrics(t, e, risks["b"], 200.0, 0.5)


def test_uno_c_without_censoring_equals_harrell():
    t, e, r = _uncensored()
    npt.assert_allclose(mt.uno_c(t, e, r, tau=t.max() + 1), mt.harrell_c(t, e, r), rtol=1e-10)


def test_td_auc_without_censoring_equals_auroc():
    t, e, r = _uncensored()
    times = np.quantile(t, [0.25, 0.5, 0.75])
    expected = [roc_auc_score(t <= s, r) for s in times]
    npt.assert_allclose(mt.td_auc(t, e, r, times), expected, rtol=1e-10)


def test_brier_hand_case_with_censoring():
    """times 1..5, censored at 2 only -> G = 1 before 2, 3/4 from 2 on; horizon 3.5.

    Cases (event <= 3.5): T=1 (weight 1/G(1)=1), T=3 (1/0.75); controls T=4, 5 (1/G(3.5)).
    """
    t = np.array([1, 2, 3, 4, 5.0])
    e = np.array([1, 0, 1, 1, 1])
    s = np.array([0.2, 0.5, 0.4, 0.9, 0.7])
    expected = (s[0] ** 2 + s[2] ** 2 / 0.75 + (1 - s[3]) ** 2 / 0.75 + (1 - s[4]) ** 2 / 0.75) / 5
    npt.assert_allclose(mt.brier_score(t, e, s[:, None], [3.5]), [expected], rtol=1e-10)


def test_integrated_brier_without_censoring_is_trapezoid_of_brier():
    t, e, r = _uncensored()
    times = np.quantile(t, np.linspace(0.1, 0.8, 8))
    surv = np.exp(-np.exp(r)[:, None] * times[None, :])
    bs = [np.mean(((t > s).astype(float) - surv[:, k]) ** 2) for k, s in enumerate(times)]
    npt.assert_allclose(mt.brier_score(t, e, surv, times), bs, rtol=1e-10)
    ibs = np.sum(np.diff(times) * (np.array(bs[1:]) + np.array(bs[:-1])) / 2) / (times[-1] - times[0])
    npt.assert_allclose(mt.integrated_brier_score(t, e, surv, times), ibs, rtol=1e-10)


def test_horizon_outcome_ipcw_reproduces_km():
    """The IPCW-weighted event proportion by h equals 1 - KM(h) (Satten & Datta 2001)."""
    rng = np.random.default_rng(7)
    n = 400
    t_event = rng.exponential(2.0, n)
    cens = rng.exponential(3.0, n)
    t = np.minimum(t_event, cens)
    e = (t_event <= cens).astype(int)
    h = 1.5
    out = mt.horizon_outcome(t, e, h)
    km = kaplan_meier(t, e)
    s_h = km.loc[km["time"] <= h, "survival"].iloc[-1]
    risk = np.nansum(out["y"] * out["ipcw"]) / len(t)
    npt.assert_allclose(risk, 1 - s_h, rtol=1e-10)
    assert out["known"].sum() == np.sum((t > h) | (e == 1) & (t <= h))
    assert np.all(out.loc[~out["known"], "ipcw"] == 0) and out["y"][~out["known"]].isna().all()


def test_weighted_binary_metrics():
    y = np.array([1, 0, 1, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    w = np.array([2, 1, 1, 3, 1, 1])
    rep_y = np.repeat(y, w)
    rep_s = np.repeat(s, w)
    npt.assert_allclose(mt.auroc(y, s, w), roc_auc_score(rep_y, rep_s))
    # Zero weight drops a row (even with a NaN outcome).
    y_nan = np.append(y, np.nan).astype(float)
    npt.assert_allclose(mt.auroc(y_nan, np.append(s, 0.5), np.append(w, 0)), mt.auroc(y, s, w))
    # sensitivity / PPV by hand: flag = s >= 0.5 -> rows 0,1,2.
    res = mt.sensitivity_ppv(y, s >= 0.5, w)
    npt.assert_allclose(res["sensitivity"], 3 / 4)  # TP 2+1 of positives 2+1+1
    npt.assert_allclose(res["ppv"], 3 / 4)  # TP 3 of flagged 2+1+1
    npt.assert_allclose(res["specificity"], 4 / 5)
    with pytest.raises(ValueError, match="y must be 0/1"):
        mt.auroc([1, 2], [0.1, 0.2])


def test_bootstrap_and_ci_table():
    x = np.arange(100.0)

    def stat(idx):
        if idx[0] == 0:
            raise ValueError("degenerate")
        return {"mean": float(x[idx].mean())}

    reps = mt.bootstrap(stat, len(x), 200, seed=11)
    assert len(reps) == 200
    again = mt.bootstrap(stat, len(x), 200, seed=11)
    npt.assert_array_equal(reps["mean"].to_numpy(), again["mean"].to_numpy())
    ci = mt.ci_table({"mean": x.mean()}, reps)["mean"]
    assert ci["n_boot"] == reps["mean"].notna().sum() <= 200
    # Percentile CI of the mean is close to mean +- 1.96 sd / sqrt(n).
    half = 1.96 * x.std() / np.sqrt(len(x))
    assert abs(ci["ci_low"] - (x.mean() - half)) < 2.5 and abs(ci["ci_high"] - (x.mean() + half)) < 2.5


def test_bootstrap_same_result_in_parallel():
    x = np.arange(50.0)
    stat = lambda idx: {"mean": float(x[idx].mean())}  # noqa: E731
    serial = mt.bootstrap(stat, 50, 8, seed=2)
    parallel = mt.bootstrap(stat, 50, 8, seed=2, n_jobs=2)
    npt.assert_array_equal(serial["mean"], parallel["mean"])


def test_risk_metrics_combines_the_single_metrics():
    rng = np.random.default_rng(12)
    n = 400
    lp = rng.normal(size=n)
    t_ev = rng.exponential(np.exp(-lp) * 300)
    cens = rng.uniform(50, 900, n)
    t = np.round(np.minimum(t_ev, cens))
    e = (t_ev <= cens).astype(int)
    risk = 1 / (1 + np.exp(-lp))
    res = mt.risk_metrics(t, e, risk, horizon=200, threshold=0.5)
    out = mt.horizon_outcome(t, e, 200)
    npt.assert_allclose(res["harrell_c"], mt.harrell_c(t, e, risk))
    npt.assert_allclose(res["uno_c"], mt.uno_c(t, e, risk, tau=200))
    npt.assert_allclose(res["auroc"], mt.auroc(out["y"], risk, out["ipcw"]))
    npt.assert_allclose(res["td_auc"], mt.td_auc(t, e, risk, [200])[0])
    assert "ibs" not in res and 0.5 < res["harrell_c"] < 0.9


def test_horizon_outcome_when_nobody_is_censored():
    """No censoring: every weight is 1 (G = 1), the outcome is known for everyone."""
    time = np.array([1.0, 2.0, 5.0, 9.0])
    event = np.array([1, 1, 1, 1])
    out = mt.horizon_outcome(time, event, horizon=4.0)
    npt.assert_array_equal(out["y"], [1, 1, 0, 0])
    npt.assert_array_equal(out["ipcw"], [1.0, 1.0, 1.0, 1.0])
