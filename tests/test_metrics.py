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
