"""A small k-arm survival simulator with known per-person truth (tests and benchmarks).

Three arms (code 0 = ``chemo``, the reference; 1 = ``io``; 2 = ``chemo_io``), confounded
assignment (multinomial logistic in ECOG, PD-L1, driver status, age), Weibull proportional
hazards for death, and censoring that is either covariate-dependent (ECOG, age and arm drive
loss to follow-up, plus uniform administrative censoring) or independent of covariates.

Log-HR of each arm vs chemo (``heterogeneity="qualitative"``): io ``-0.7`` if PD-L1 >= 50 %
else ``-0.05``, plus ``+1.0`` if driver-positive (harm); chemo_io ``-0.35`` plus ``+0.15`` if
driver-positive. With ``"none"`` both arms have the constant log-HR ``-0.2``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ARMS = ("chemo", "io", "chemo_io")
COVARIATES = ("age_years", "ecog", "pdl1_pct", "driver_positive", "albumin_g_dl", "log_ldh")
WEIBULL_SHAPE = 1.1
WEIBULL_SCALE = 600.0  # days


def log_hr(df: pd.DataFrame, heterogeneity: str) -> np.ndarray:
    """(n, 3) true log-HR of each arm vs chemo (column 0 is 0)."""
    n = len(df)
    out = np.zeros((n, 3))
    if heterogeneity == "none":
        out[:, 1:] = -0.2
    elif heterogeneity == "qualitative":
        high = df["pdl1_pct"].to_numpy() >= 50
        drv = df["driver_positive"].to_numpy() == 1
        out[:, 1] = np.where(high, -0.7, -0.05) + 1.0 * drv
        out[:, 2] = -0.35 + 0.15 * drv
    else:
        raise ValueError(f"heterogeneity must be 'qualitative' or 'none', got {heterogeneity!r}")
    return out


def simulate(
    n: int, seed: int, heterogeneity: str = "qualitative", censoring: str = "covariate",
    horizon: float = 365.0, missing_modifier_share: float = 0.0,
) -> tuple[pd.DataFrame, dict]:
    """Simulated cohort and its truth.

    Returns
    -------
    (df, truth): ``df`` has the :data:`COVARIATES`, ``treatment`` (arm label), ``arm`` (code),
    ``time_days``, ``event``, and ``pdl1_obs`` / ``driver_obs`` (the modifiers with a share
    ``missing_modifier_share`` set missing completely at random). ``truth``: ``survival``
    (n, 3) true ``S_a(horizon | x)``, ``best`` (n,) oracle arm code, ``oracle_value``,
    ``arm_values`` (3,) value of treating everyone with each arm.
    """
    if censoring not in ("covariate", "independent"):
        raise ValueError(f"censoring must be 'covariate' or 'independent', got {censoring!r}")
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "age_years": rng.normal(67, 9, n),
        "ecog": rng.choice([0.0, 1.0, 2.0], n, p=[0.35, 0.45, 0.20]),
        "pdl1_pct": np.round(100 * rng.beta(0.6, 0.9, n)),
        "driver_positive": (rng.random(n) < 0.15).astype(float),
        "albumin_g_dl": rng.normal(3.8, 0.5, n),
        "log_ldh": rng.normal(np.log(220), 0.35, n),
    })
    z = (df["pdl1_pct"] - 30) / 30
    logits = np.column_stack([
        np.zeros(n),
        -0.3 + 0.9 * z - 0.5 * df["ecog"] - 0.6 * df["driver_positive"],
        0.5 + 0.3 * z - 0.3 * df["ecog"] - 0.5 * df["driver_positive"] - 0.02 * (df["age_years"] - 67),
    ])
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    arm = (rng.random(n)[:, None] > np.cumsum(prob, 1)).sum(1)
    prog = (0.03 * (df["age_years"] - 67) + 0.45 * df["ecog"] - 0.5 * (df["albumin_g_dl"] - 3.8)
            + 0.5 * (df["log_ldh"] - np.log(220))).to_numpy()
    lhr = log_hr(df, heterogeneity)
    lp = prog + lhr[np.arange(n), arm]
    t_death = WEIBULL_SCALE * (rng.exponential(size=n) / np.exp(lp)) ** (1 / WEIBULL_SHAPE)
    admin = rng.uniform(500, 1500, n)
    if censoring == "covariate":
        rate = (1 / 1500) * np.exp(0.8 * df["ecog"].to_numpy() + 0.04 * (df["age_years"].to_numpy() - 67)
                                   + 0.7 * (arm == 1))
    else:
        rate = np.full(n, 1 / 1000)
    t_cens = np.minimum(rng.exponential(1 / rate), admin)
    df["treatment"] = np.asarray(ARMS, dtype=object)[arm]
    df["arm"] = arm
    df["time_days"] = np.maximum(np.minimum(t_death, t_cens), 1.0)
    df["event"] = (t_death <= t_cens).astype(int)
    for col, obs in (("pdl1_pct", "pdl1_obs"), ("driver_positive", "driver_obs")):
        df[obs] = df[col].where(rng.random(n) >= missing_modifier_share)
    h0 = (horizon / WEIBULL_SCALE) ** WEIBULL_SHAPE
    surv = np.exp(-h0 * np.exp(prog[:, None] + lhr))
    best = surv.argmax(1)
    return df, {"survival": surv, "best": best, "oracle_value": float(surv.max(1).mean()),
                "arm_values": surv.mean(0)}
