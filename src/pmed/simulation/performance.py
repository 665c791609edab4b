"""Performance measures and their Monte-Carlo standard errors (Morris, White & Crowther 2019,
Table 6), from the replicate table.

With R replicates, estimates theta_hat_r, truths theta_r (fixed, or data-adaptive such as the
value of the policy learnt on replicate r), errors e_r = theta_hat_r - theta_r, model SEs s_r
and 95% CIs [l_r, u_r]:

- bias = mean(e); MC SE = SD(e) / sqrt(R)
- empirical SE = SD(e) (= SD(theta_hat) for a fixed truth; SD(theta_hat) when there is no
  truth); MC SE = EmpSE / sqrt(2 (R - 1))
- model SE = sqrt(mean(s^2)); MC SE = sqrt(Var(s^2) / (4 R ModSE^2))
- relative error of the model SE, % = 100 (ModSE / EmpSE - 1);
  MC SE = 100 (ModSE / EmpSE) sqrt(Var(s^2) / (4 R ModSE^4) + 1 / (2 (R - 1)))
- coverage = mean(l <= theta <= u); MC SE = sqrt(C (1 - C) / R)
- rejection rate = mean(reject); MC SE = sqrt(P (1 - P) / R)

SD and Var with R - 1 denominators. A coverage is flagged when it lies outside
0.95 +- 2 sqrt(0.95 x 0.05 / R) (the Monte-Carlo band of a correct 95% interval).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NOMINAL = 0.95
KEYS = ("scenario", "group", "estimand")


def coverage_band(n_rep: int, nominal: float = NOMINAL) -> tuple[float, float]:
    """Nominal coverage +- 2 Monte-Carlo SE of a correct interval over ``n_rep`` replicates."""
    half = 2 * np.sqrt(nominal * (1 - nominal) / n_rep)
    return nominal - half, nominal + half


def measures(rows: pd.DataFrame) -> dict:
    """All measures of one estimand (rows = its replicates; columns of the replicate table)."""
    ok = rows[np.isfinite(rows["estimate"].to_numpy(float))]
    R = len(ok)
    est, true = ok["estimate"].to_numpy(float), ok["true"].to_numpy(float)
    has_truth = R > 0 and bool(np.isfinite(true).all())
    out = {"n_rep": R, "true_mean": float(np.mean(true)) if has_truth else np.nan,
           "truth_varies": bool(has_truth and np.ptp(true) > 0), "mean_estimate": float(np.mean(est)) if R else np.nan}
    nan = {k: np.nan for k in ("bias", "bias_mcse", "emp_se", "emp_se_mcse", "model_se", "model_se_mcse",
                               "rel_error_se_pct", "rel_error_se_mcse", "coverage", "coverage_mcse")}
    out.update(nan)
    is_test = (ok["ci_kind"] == "test").all() if R else True
    if R >= 2 and not is_test:
        err = est - true if has_truth else est
        emp = float(np.std(err, ddof=1))
        out["emp_se"], out["emp_se_mcse"] = emp, emp / np.sqrt(2 * (R - 1))
        s2 = ok["se"].to_numpy(float) ** 2
        mod = float(np.sqrt(np.mean(s2)))
        var_s2 = float(np.var(s2, ddof=1))
        out["model_se"] = mod
        if mod > 0:  # 0 when every CI has width 0 (e.g. a policy equal to the best arm in every resample)
            out["model_se_mcse"] = float(np.sqrt(var_s2 / (4 * R * mod**2)))
        if emp > 0 and mod > 0:
            ratio = mod / emp
            out["rel_error_se_pct"] = 100 * (ratio - 1)
            out["rel_error_se_mcse"] = float(100 * ratio * np.sqrt(var_s2 / (4 * R * mod**4) + 1 / (2 * (R - 1))))
        if has_truth:
            out["bias"], out["bias_mcse"] = float(np.mean(err)), emp / np.sqrt(R)
            cover = (ok["ci_low"].to_numpy(float) <= true) & (true <= ok["ci_high"].to_numpy(float))
            c = float(cover.mean())
            out["coverage"], out["coverage_mcse"] = c, float(np.sqrt(c * (1 - c) / R))
    lo, hi = coverage_band(max(R, 1))
    out["coverage_flag"] = bool(np.isfinite(out["coverage"]) and not lo <= out["coverage"] <= hi)
    decided = ok["reject"].astype(float).dropna()  # NaN: no test reported for this estimand
    p = float(decided.mean()) if len(decided) else np.nan
    out["reject_rate"], out["reject_mcse"] = p, float(np.sqrt(p * (1 - p) / len(decided))) if len(decided) else np.nan
    null = ok["null_true"].astype(bool)
    out["null_true"] = bool(null.all()) if R else False
    out["ci_kind"] = str(ok["ci_kind"].iloc[0]) if R else ""
    return out


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """One row of :func:`measures` per (scenario, group, estimand), in first-appearance order."""
    order = table[list(KEYS)].drop_duplicates()
    rows = []
    for key in order.itertuples(index=False):
        sel = (table["scenario"] == key[0]) & (table["group"] == key[1]) & (table["estimand"] == key[2])
        rows.append({**dict(zip(KEYS, key, strict=True)), **measures(table[sel])})
    return pd.DataFrame(rows)
