"""Treatment-response monitoring: repeated lab trajectories after the start of treatment.

Trajectories come from the OMOP ``measurement`` table (queried in DuckDB, never loaded
whole into pandas), joined to the analysis cohort's ``person_id`` / ``t0_date`` /
``treatment`` (arm label). Time is counted in months of 30 days from t0 (pre-treatment
baseline values are placed at 0).

- :func:`fit_slope_model`: linear mixed model (statsmodels MixedLM) of the lab on the LOG
  scale (skewed labs such as LDH), ``log(value) ~ months * (arm indicators) + Z + months:Z``
  with baseline covariates ``Z`` (centred) and a random intercept and slope per person. The
  ``months:arm_<a>`` coefficient is the difference in mean slope of log(lab) per 30 days,
  arm ``a`` minus the reference arm, adjusted for ``Z``; ``exp`` of it is the ratio of the
  monthly multiplicative change of the geometric mean. CIs use robust (person-clustered)
  SEs (:func:`robust_cov`).
  **Estimand (while alive):** labs are only measured in patients alive and under follow-up,
  so the contrast describes trajectories among survivors at each time (a partly
  conditional, "while alive" contrast; Kurland et al. 2009, Stat Sci 24:211), not the effect
  on the lab in a world without death, and it is causal only under the same no-unmeasured-
  confounding assumption as the survival analysis (with ``Z`` the adjustment set).
- :func:`trajectory_bands`: aggregate trajectories (median and interquartile range by arm and
  month; cells with fewer persons than the minimum cell size are dropped), replacing the
  former plot of individual patients' trajectories (person-level data).
- :func:`early_response` / :func:`landmark_analysis`: a patient is an early responder when
  the lab has changed by at least a threshold (percent of baseline, in the favourable
  direction) at the landmark, using only values measured up to the landmark; survival is
  compared from the landmark on among patients still alive and followed at the landmark
  (time reset to 0 there), which avoids immortal-time bias.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from lifelines import CoxPHFitter
from scipy.special import erfinv
from statsmodels.tools.sm_exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from pmed.cohort.omop import register_table

DAYS_PER_MONTH = 30.0


def load_trajectories(
    omop_dir: Path,
    cohort: pd.DataFrame,
    concept_ids: Sequence[int],
    unit_factors: dict[int, float],
    baseline_window_days: int,
    followup_days: int,
    plausible: tuple[float, float],
) -> pd.DataFrame:
    """Repeated values of one lab from t0 - baseline window to t0 + follow-up, per person.

    Parameters
    ----------
    omop_dir : folder with ``measurement`` and ``concept_ancestor`` (Parquet or CSV).
    cohort : one row per person with ``person_id``, ``t0_date``, ``treatment``, ``time_days``.
    concept_ids : ancestor concept ids of the lab (expanded to descendants).
    unit_factors : {unit_concept_id: factor to the analysis unit}; other units are dropped.
    baseline_window_days, followup_days : the window [-baseline, +followup] days around t0.
    plausible : (low, high) range in the analysis unit; values outside are dropped.

    Returns
    -------
    DataFrame, one row per distinct (person, date, value) record, sorted by person and day:
    ``person_id``, ``treatment`` (arm label), ``day`` (days from t0, int), ``months``
    (max(day, 0) / 30), ``value`` (analysis unit). Records after the person's end of
    follow-up (``time_days``) are dropped; exact duplicate records count once.
    """
    need = ["person_id", "t0_date", "treatment", "time_days"]
    missing = [c for c in need if c not in cohort.columns]
    if missing:
        raise KeyError(f"load_trajectories: cohort lacks column(s) {missing}")
    if not unit_factors:
        raise ValueError("load_trajectories: unit_factors is empty; give {unit_concept_id: factor}")
    con = duckdb.connect()
    try:
        register_table(con, Path(omop_dir), "measurement")
        register_table(con, Path(omop_dir), "concept_ancestor")
        cohort_rel = cohort[need].assign(t0_date=pd.to_datetime(cohort["t0_date"]))
        con.register("cohort_in", cohort_rel)
        con.register("ancestors", pd.DataFrame({"concept_id": list(map(int, concept_ids))}))
        con.register(
            "units",
            pd.DataFrame(
                {"unit_concept_id": list(map(int, unit_factors)),
                 "factor": list(map(float, unit_factors.values()))}
            ),
        )
        sql = """
            WITH codes AS (
                SELECT concept_id FROM ancestors
                UNION SELECT ca.descendant_concept_id FROM concept_ancestor ca
                JOIN ancestors a ON ca.ancestor_concept_id = a.concept_id
            ),
            recs AS (
                SELECT DISTINCT m.person_id, CAST(m.measurement_date AS DATE) AS d,
                       m.value_as_number * u.factor AS value, m.unit_concept_id
                FROM measurement m
                JOIN codes c ON m.measurement_concept_id = c.concept_id
                JOIN units u ON m.unit_concept_id = u.unit_concept_id
                WHERE m.value_as_number IS NOT NULL
            )
            SELECT r.person_id, ch.treatment,
                   CAST(date_diff('day', CAST(ch.t0_date AS DATE), r.d) AS INTEGER) AS day,
                   r.value
            FROM recs r JOIN cohort_in ch ON r.person_id = ch.person_id
            WHERE date_diff('day', CAST(ch.t0_date AS DATE), r.d) BETWEEN ? AND ?
              AND date_diff('day', CAST(ch.t0_date AS DATE), r.d) <= ch.time_days
              AND r.value BETWEEN ? AND ?
            ORDER BY r.person_id, day, r.value
        """
        out = con.execute(
            sql, [-int(baseline_window_days), int(followup_days), *map(float, plausible)]
        ).df()
    finally:
        con.close()
    out["person_id"] = out["person_id"].astype("int64")
    out["treatment"] = out["treatment"].astype(str)
    out["months"] = out["day"].clip(lower=0) / DAYS_PER_MONTH
    return out[["person_id", "treatment", "day", "months", "value"]]


def sample_persons(traj: pd.DataFrame, max_persons: int | None, seed: int) -> pd.DataFrame:
    """Rows of at most ``max_persons`` randomly chosen persons (stratified by ``treatment``).

    Each group keeps the same share of its persons; ``None`` keeps everyone. Used to bound
    the MixedLM runtime, whose cost grows with the number of persons.
    """
    persons = traj.groupby("person_id")["treatment"].first()
    if max_persons is None or len(persons) <= max_persons:
        return traj
    rng = np.random.default_rng(seed)
    share = max_persons / len(persons)
    keep = []
    for arm in sorted(persons.unique()):
        ids = np.sort(persons.index[persons.to_numpy() == arm].to_numpy())
        keep.append(rng.choice(ids, size=int(round(share * ids.size)), replace=False))
    return traj[traj["person_id"].isin(np.concatenate(keep))].reset_index(drop=True)


def slope_mixedlm(traj: pd.DataFrame, arms: Sequence[str], baseline: pd.DataFrame | None = None):
    """The unfitted statsmodels MixedLM of :func:`fit_slope_model` (same arguments): log(value)
    on ``months``, ``arm_<a>``, ``months:arm_<a>`` and the centred ``z_<c>``, ``months:z_<c>``,
    grouped by ``person_id`` with a random intercept and slope in ``months``."""
    arms = list(arms)
    present = set(traj["treatment"].unique())
    if not present <= set(arms) or len(present) < 2 or arms[0] not in present:
        raise ValueError(f"fit_slope_model: need the reference {arms[0]!r} and another arm of "
                         f"{arms}; trajectories hold {sorted(present)}")
    if (traj["value"] <= 0).any():
        raise ValueError("fit_slope_model: lab values must be > 0 for the log scale")
    data = traj[["person_id", "months"]].copy()
    data["log_value"] = np.log(traj["value"].to_numpy(float))
    terms = []
    for a in arms[1:]:
        col = f"arm_{a}"
        data[col] = (traj["treatment"] == a).astype(float).to_numpy()
        terms += [col, f"months:{col}"]
    if baseline is not None:
        z = baseline.reindex(traj["person_id"].to_numpy())
        if z.isna().any().any():
            raise ValueError("fit_slope_model: baseline covariates must be complete for every person")
        for c in z.columns:
            data[f"z_{c}"] = (z[c] - baseline[c].mean()).to_numpy(float)
            terms += [f"z_{c}", f"months:z_{c}"]
    formula = "log_value ~ months" + "".join(f" + {t}" for t in terms)
    return smf.mixedlm(formula, data, groups=data["person_id"], re_formula="~months")


def fit_slope_model(
    traj: pd.DataFrame, arms: Sequence[str], baseline: pd.DataFrame | None = None, level: float = 0.95
):
    """Adjusted MixedLM of log(lab): slopes per arm and slope differences vs the reference.

    Parameters
    ----------
    traj : :func:`load_trajectories` frame (``person_id``, ``treatment``, ``months``,
        ``value`` > 0).
    arms : arm labels, the reference first (:func:`pmed.multiarm.arm_order`).
    baseline : optional, indexed by ``person_id``: complete numeric baseline covariates Z
        (centred here), entering as main effects and ``months:Z`` interactions.

    Returns
    -------
    (summary, result): ``summary`` has ``slope_<arm>`` (mean slope of log(lab) per 30 days at
    the covariate means) and ``slope_difference_<arm>`` (non-reference arms, vs the reference),
    each {"estimate", "ci_low", "ci_high"}, plus ``n_persons``, ``n_measurements``,
    ``converged``, ``scale`` ("log"), ``se`` ("robust (person-clustered)"); ``result`` is the
    statsmodels MixedLMResults (its own ``bse`` are the model-based SEs, not used).

    The CIs are Wald intervals of the person-clustered sandwich SEs (:func:`robust_cov`), not
    of the model-based SEs: the model has one random-slope variance for all arms, but slopes
    of log(lab) vary more in some arms than in others (e.g. a lab falling linearly towards low
    values), and then the model-based SE of each arm's slope is wrong (too small in the arms
    with more variable slopes, too large in the others). The sandwich only assumes persons
    independent (Liang & Zeger 1986). Arm-specific random-slope variances would fix only this
    one misspecification, at more covariance parameters for the slow optimiser.
    """
    arms = list(arms)
    model = slope_mixedlm(traj, arms, baseline)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # L-BFGS often stops early on these data (random-effect covariance at a bad
        # boundary); Powell is tried first and L-BFGS only if Powell does not converge.
        with threadpool_limits(limits=1):  # small dense algebra: threaded BLAS is slower here
            res = model.fit(reml=True, method=["powell", "lbfgs"])
            params, cov = res.fe_params, robust_cov(res)
    z = float(np.abs(np.sqrt(2) * erfinv(level)))

    def lin(weights: dict) -> dict:
        c = pd.Series(0.0, index=params.index)
        for k, v in weights.items():
            c[k] = v
        est = float(c @ params)
        se = float(np.sqrt(c @ cov @ c))
        return {"estimate": est, "ci_low": est - z * se, "ci_high": est + z * se}

    summary = {f"slope_{arms[0]}": lin({"months": 1})}
    for a in arms[1:]:
        summary[f"slope_{a}"] = lin({"months": 1, f"months:arm_{a}": 1})
        summary[f"slope_difference_{a}"] = lin({f"months:arm_{a}": 1})
    summary.update({"n_persons": int(traj["person_id"].nunique()), "n_measurements": int(len(traj)),
                    "converged": bool(res.converged), "scale": "log", "se": "robust (person-clustered)"})
    return summary, res


def robust_cov(result) -> pd.DataFrame:
    """Person-clustered (sandwich) covariance of a fitted MixedLM's fixed effects.

    ``result`` is statsmodels MixedLMResults; the sandwich uses its fixed effects, random-effect
    covariance ``cov_re`` and residual variance ``scale`` (:func:`cluster_sandwich`). Returns a
    DataFrame indexed and columned by the fixed-effect names.
    """
    m = result.model
    beta = result.fe_params.to_numpy()
    cov = cluster_sandwich(m.exog, m.exog_re, m.endog - m.exog @ beta, m.groups,
                           result.cov_re.to_numpy(), float(result.scale))
    names = result.fe_params.index
    return pd.DataFrame(cov, index=names, columns=names)


def cluster_sandwich(exog: np.ndarray, exog_re: np.ndarray, resid: np.ndarray, groups: np.ndarray,
                     cov_re: np.ndarray, scale: float) -> np.ndarray:
    """Cluster-robust covariance of the GLS fixed effects of a linear mixed model (Liang & Zeger
    1986): ``c A^-1 (sum_i u_i u_i') A^-1`` with ``A = sum_i X_i' V_i^-1 X_i``, the person scores
    ``u_i = X_i' V_i^-1 r_i`` and the working covariance ``V_i = Z_i G Z_i' + scale I``.

    Valid whatever the true covariance of a person's measurements (only independence between
    persons is assumed), so it stays right when ``G`` is misspecified, e.g. slope variances
    that differ by arm. ``c = g / (g - 1)`` for ``g`` persons (the CR1 factor; about 1 here).
    Vectorised over persons: ``V_i^-1 = (I - Z_i G H_i^-1 Z_i') / scale`` with the q x q
    ``H_i = scale I + Z_i' Z_i G`` (Woodbury; ``G`` may be singular), cost O(rows p q).

    Parameters
    ----------
    exog : (n, p) fixed-effects design X; exog_re : (n, q) random-effects design Z.
    resid : (n,) residuals y - X beta; groups : (n,) person labels (any order).
    cov_re : (q, q) random-effect covariance G; scale : residual variance (same units as G).

    Returns (p, p) array.
    """
    codes = pd.factorize(np.asarray(groups))[0]
    order = np.argsort(codes, kind="stable")
    X, Z, r = (np.asarray(a, float)[order] for a in (exog, exog_re, resid))
    c = codes[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    p, q = X.shape[1], Z.shape[1]
    Xr = np.column_stack([X, r])
    ZXr = np.add.reduceat(Z[:, :, None] * Xr[:, None, :], starts, axis=0)  # (g, q, p + 1): Z_i'[X_i r_i]
    ZZ = np.add.reduceat(Z[:, :, None] * Z[:, None, :], starts, axis=0)  # (g, q, q)
    H = scale * np.eye(q) + ZZ @ cov_re
    GHinv = cov_re @ np.linalg.solve(H, ZXr)  # (g, q, p + 1): G H_i^-1 Z_i'[X_i r_i]
    A = (X.T @ X - np.einsum("gqp,gqk->pk", ZXr[:, :, :p], GHinv[:, :, :p])) / scale
    u = (np.add.reduceat(X * r[:, None], starts, axis=0)
         - np.einsum("gqp,gq->gp", ZXr[:, :, :p], GHinv[:, :, p])) / scale  # (g, p) person scores
    a_inv = np.linalg.inv(A)
    g = len(starts)
    return g / (g - 1) * a_inv @ (u.T @ u) @ a_inv


def fitted_means(result, arms: Sequence[str], max_months: float, n_points: int = 25) -> pd.DataFrame:
    """Fitted geometric-mean lab curve per arm at the covariate means (exp of the fixed part).

    Returns DataFrame ``treatment``, ``months``, ``fitted`` (lab units).
    """
    p = result.fe_params
    grid = np.linspace(0, max_months, n_points)
    parts = []
    for a in arms:
        icpt = p["Intercept"] + p.get(f"arm_{a}", 0.0)
        slope = p["months"] + p.get(f"months:arm_{a}", 0.0)
        parts.append(pd.DataFrame({"treatment": a, "months": grid, "fitted": np.exp(icpt + slope * grid)}))
    return pd.concat(parts, ignore_index=True)


def trajectory_bands(traj: pd.DataFrame, min_cell_size: int, bin_months: float = 1.0) -> pd.DataFrame:
    """Median and interquartile range of the lab by arm and month bin (aggregates only).

    Each person contributes their last value within a bin (bins of ``bin_months`` from 0,
    month 0 = baseline); a bin with fewer than ``min_cell_size`` persons is dropped.

    Returns DataFrame ``treatment``, ``months`` (bin centre), ``n`` (persons), ``median``,
    ``q25``, ``q75``.
    """
    b = np.floor(traj["months"].to_numpy() / bin_months + 1e-9).astype(int)
    last = (traj.assign(bin=b).sort_values(["person_id", "day"])
            .groupby(["treatment", "bin", "person_id"], as_index=False)["value"].last())
    g = last.groupby(["treatment", "bin"])["value"]
    out = pd.DataFrame({"n": g.size(), "median": g.median(), "q25": g.quantile(0.25),
                        "q75": g.quantile(0.75)}).reset_index()
    out["months"] = np.where(out["bin"] == 0, 0.0, (out["bin"] + 0.5) * bin_months)
    out = out[out["n"] >= min_cell_size]
    return out[["treatment", "months", "n", "median", "q25", "q75"]].reset_index(drop=True)


def early_response(
    traj: pd.DataFrame, landmark_days: int, window_days: int, threshold_pct: float, direction: str
) -> pd.DataFrame:
    """Early-response status per person from the lab change between t0 and the landmark.

    Baseline: the last value with day <= 0. Landmark value: the last value with day in
    [landmark - window, landmark]. ``change_pct = 100 (landmark - baseline) / baseline``.
    Responder when ``change_pct <= -threshold_pct`` (``direction="decrease"``) or
    ``>= threshold_pct`` (``"increase"``). Persons lacking either value are left out.

    Returns DataFrame ``person_id``, ``treatment``, ``baseline``, ``landmark_value``,
    ``change_pct``, ``responder`` (0/1).
    """
    if direction not in ("decrease", "increase"):
        raise ValueError(f"early_response: direction must be 'decrease' or 'increase', got {direction!r}")
    base = traj[traj["day"] <= 0].groupby("person_id").last()
    lm_rows = traj[(traj["day"] >= landmark_days - window_days) & (traj["day"] <= landmark_days)]
    lm = lm_rows.groupby("person_id").last()
    both = base[["treatment", "value"]].rename(columns={"value": "baseline"}).join(
        lm[["value"]].rename(columns={"value": "landmark_value"}), how="inner"
    )
    both = both[both["baseline"] > 0]
    both["change_pct"] = 100 * (both["landmark_value"] - both["baseline"]) / both["baseline"]
    sign = -1 if direction == "decrease" else 1
    both["responder"] = (sign * both["change_pct"] >= threshold_pct).astype(int)
    return both.reset_index()[["person_id", "treatment", "baseline", "landmark_value",
                               "change_pct", "responder"]]


def landmark_analysis(
    cohort: pd.DataFrame, response: pd.DataFrame, landmark_days: int, adjust: Sequence[str] = ()
) -> tuple[dict, pd.DataFrame]:
    """Cox model of survival from the landmark by early-response status.

    Keeps persons with a response status who are alive and under follow-up at the landmark
    (``time_days > landmark_days``); time is reset to ``time_days - landmark_days``. The model
    adjusts for the arm (``arm_<label>`` 0/1 indicators of every non-reference arm present in
    the cohort) and the cohort columns in ``adjust``.

    Returns
    -------
    (summary, data): ``summary`` has ``hr_responder`` {"estimate", "ci_low", "ci_high"},
    ``n``, ``n_events``, ``n_responders``; ``data`` is the landmark data set (``person_id``,
    ``time_lm``, ``event``, ``responder``, the arm indicators, ``adjust``...).
    """
    arm_cols = [c for c in cohort.columns if c.startswith("arm_")]
    need = ["person_id", "time_days", "event", *arm_cols, *adjust]
    missing = [c for c in need if c not in cohort.columns]
    if missing:
        raise KeyError(f"landmark_analysis: cohort lacks column(s) {missing}")
    data = cohort[need].merge(response[["person_id", "responder"]], on="person_id")
    data = data[data["time_days"] > landmark_days].copy()
    data["time_lm"] = data["time_days"] - landmark_days
    cols = ["time_lm", "event", "responder", *arm_cols, *adjust]
    cph = CoxPHFitter().fit(data[cols].astype(float), duration_col="time_lm", event_col="event")
    s = cph.summary.loc["responder"]
    summary = {
        "hr_responder": {"estimate": float(np.exp(s["coef"])),
                         "ci_low": float(s["exp(coef) lower 95%"]),
                         "ci_high": float(s["exp(coef) upper 95%"])},
        "n": int(len(data)),
        "n_events": int(data["event"].sum()),
        "n_responders": int(data["responder"].sum()),
    }
    return summary, data.reset_index(drop=True)
