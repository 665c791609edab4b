"""Treatment-response monitoring: repeated lab trajectories after the start of treatment.

Trajectories come from the OMOP ``measurement`` table (queried in DuckDB, never loaded
whole into pandas), joined to the analysis cohort's ``person_id`` / ``t0_date``. Time is
counted in months of 30 days from t0 (pre-treatment baseline values are placed at 0).

- :func:`fit_slope_model`: linear mixed model (statsmodels MixedLM)
  ``value ~ months * treated`` with a random intercept and slope per person; the
  ``months:treated`` coefficient is the difference in mean slope (units per 30 days),
  immunotherapy minus chemotherapy.
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
from statsmodels.tools.sm_exceptions import ConvergenceWarning

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
    cohort : one row per person with ``person_id``, ``t0_date``, ``treated``, ``time_days``.
    concept_ids : ancestor concept ids of the lab (expanded to descendants).
    unit_factors : {unit_concept_id: factor to the analysis unit}; other units are dropped.
    baseline_window_days, followup_days : the window [-baseline, +followup] days around t0.
    plausible : (low, high) range in the analysis unit; values outside are dropped.

    Returns
    -------
    DataFrame, one row per distinct (person, date, value) record, sorted by person and day:
    ``person_id``, ``treated``, ``day`` (days from t0, int), ``months``
    (max(day, 0) / 30), ``value`` (analysis unit). Records after the person's end of
    follow-up (``time_days``) are dropped; exact duplicate records count once.
    """
    need = ["person_id", "t0_date", "treated", "time_days"]
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
            SELECT r.person_id, ch.treated,
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
    out["treated"] = out["treated"].astype(int)
    out["months"] = out["day"].clip(lower=0) / DAYS_PER_MONTH
    return out[["person_id", "treated", "day", "months", "value"]]


def sample_persons(traj: pd.DataFrame, max_persons: int | None, seed: int) -> pd.DataFrame:
    """Rows of at most ``max_persons`` randomly chosen persons (stratified by ``treated``).

    Each group keeps the same share of its persons; ``None`` keeps everyone. Used to bound
    the MixedLM runtime, whose cost grows with the number of persons.
    """
    persons = traj.groupby("person_id")["treated"].first()
    if max_persons is None or len(persons) <= max_persons:
        return traj
    rng = np.random.default_rng(seed)
    share = max_persons / len(persons)
    keep = []
    for arm in (0, 1):
        ids = np.sort(persons.index[persons.to_numpy() == arm].to_numpy())
        keep.append(rng.choice(ids, size=int(round(share * ids.size)), replace=False))
    return traj[traj["person_id"].isin(np.concatenate(keep))].reset_index(drop=True)


def fit_slope_model(traj: pd.DataFrame, level: float = 0.95):
    """MixedLM ``value ~ months * treated``, random intercept + slope (months) per person.

    Parameters
    ----------
    traj : :func:`load_trajectories` frame (``person_id``, ``treated``, ``months``, ``value``).

    Returns
    -------
    (summary, result): ``summary`` is a dict with ``slope_difference`` (months:treated,
    units per 30 days), ``slope_chemotherapy``, ``slope_immunotherapy``, each as
    {"estimate", "ci_low", "ci_high"}, plus ``n_persons``, ``n_measurements``,
    ``converged``; ``result`` is the fitted statsmodels MixedLMResults.
    """
    if traj["treated"].nunique() != 2:
        raise ValueError("fit_slope_model: trajectories must contain both treatment groups")
    model = smf.mixedlm("value ~ months * treated", traj, groups=traj["person_id"],
                        re_formula="~months")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # L-BFGS often stops early on these data (random-effect covariance at a bad
        # boundary); Powell is tried first and L-BFGS only if Powell does not converge.
        res = model.fit(reml=True, method=["powell", "lbfgs"])
    ci = res.conf_int(alpha=1 - level)
    params = res.params
    cov = res.cov_params()

    def est(name):
        return {"estimate": float(params[name]), "ci_low": float(ci.loc[name, 0]),
                "ci_high": float(ci.loc[name, 1])}

    contrast = np.zeros(len(params))
    names = list(params.index)
    contrast[names.index("months")] = 1
    contrast[names.index("months:treated")] = 1
    slope1 = float(contrast @ params.to_numpy())
    se1 = float(np.sqrt(contrast @ cov.to_numpy() @ contrast))
    z = float(np.abs(ci.loc["months", 0] - params["months"]) / np.sqrt(cov.loc["months", "months"]))
    summary = {
        "slope_difference": est("months:treated"),
        "slope_chemotherapy": est("months"),
        "slope_immunotherapy": {"estimate": slope1, "ci_low": slope1 - z * se1,
                                "ci_high": slope1 + z * se1},
        "n_persons": int(traj["person_id"].nunique()),
        "n_measurements": int(len(traj)),
        "converged": bool(res.converged),
    }
    return summary, res


def spaghetti_data(traj: pd.DataFrame, result, n_per_group: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Anonymous subset of trajectories with fitted values, and fitted group means.

    Returns
    -------
    (lines, means): ``lines`` holds up to ``n_per_group`` persons per group, relabelled
    ``trajectory`` 1..k (no person ids), with ``treated``, ``months``, ``observed``,
    ``fitted`` (fixed + that person's random effects); ``means`` holds the fixed-effect
    mean line per group on a grid of months (``treated``, ``months``, ``fitted``).
    """
    rng = np.random.default_rng(seed)
    fitted_all = pd.Series(np.asarray(result.fittedvalues), index=traj.index)
    parts = []
    label = 0
    for arm in (0, 1):
        ids = np.sort(traj.loc[traj["treated"] == arm, "person_id"].unique())
        chosen = rng.choice(ids, size=min(n_per_group, ids.size), replace=False)
        for pid in chosen:
            label += 1
            sel = traj["person_id"] == pid
            parts.append(pd.DataFrame({
                "trajectory": label, "treated": arm,
                "months": traj.loc[sel, "months"].to_numpy(),
                "observed": traj.loc[sel, "value"].to_numpy(),
                "fitted": fitted_all[sel].to_numpy(),
            }))
    lines = pd.concat(parts, ignore_index=True)
    grid = np.linspace(0, traj["months"].max(), 25)
    p = result.fe_params
    means = pd.concat([
        pd.DataFrame({"treated": arm, "months": grid,
                      "fitted": p["Intercept"] + p["treated"] * arm
                      + (p["months"] + p["months:treated"] * arm) * grid})
        for arm in (0, 1)
    ], ignore_index=True)
    return lines, means


def early_response(
    traj: pd.DataFrame, landmark_days: int, window_days: int, threshold_pct: float, direction: str
) -> pd.DataFrame:
    """Early-response status per person from the lab change between t0 and the landmark.

    Baseline: the last value with day <= 0. Landmark value: the last value with day in
    [landmark - window, landmark]. ``change_pct = 100 (landmark - baseline) / baseline``.
    Responder when ``change_pct <= -threshold_pct`` (``direction="decrease"``) or
    ``>= threshold_pct`` (``"increase"``). Persons lacking either value are left out.

    Returns DataFrame ``person_id``, ``treated``, ``baseline``, ``landmark_value``,
    ``change_pct``, ``responder`` (0/1).
    """
    if direction not in ("decrease", "increase"):
        raise ValueError(f"early_response: direction must be 'decrease' or 'increase', got {direction!r}")
    base = traj[traj["day"] <= 0].groupby("person_id").last()
    lm_rows = traj[(traj["day"] >= landmark_days - window_days) & (traj["day"] <= landmark_days)]
    lm = lm_rows.groupby("person_id").last()
    both = base[["treated", "value"]].rename(columns={"value": "baseline"}).join(
        lm[["value"]].rename(columns={"value": "landmark_value"}), how="inner"
    )
    both = both[both["baseline"] > 0]
    both["change_pct"] = 100 * (both["landmark_value"] - both["baseline"]) / both["baseline"]
    sign = -1 if direction == "decrease" else 1
    both["responder"] = (sign * both["change_pct"] >= threshold_pct).astype(int)
    return both.reset_index()[["person_id", "treated", "baseline", "landmark_value",
                               "change_pct", "responder"]]


def landmark_analysis(
    cohort: pd.DataFrame, response: pd.DataFrame, landmark_days: int, adjust: Sequence[str] = ("treated",)
) -> tuple[dict, pd.DataFrame]:
    """Cox model of survival from the landmark by early-response status.

    Keeps persons with a response status who are alive and under follow-up at the landmark
    (``time_days > landmark_days``); time is reset to ``time_days - landmark_days``.

    Returns
    -------
    (summary, data): ``summary`` has ``hr_responder`` {"estimate", "ci_low", "ci_high"}
    (adjusted for ``adjust``), ``n``, ``n_events``, ``n_responders``; ``data`` is the
    landmark data set (``person_id``, ``time_lm``, ``event``, ``responder``, ``adjust``...).
    """
    need = ["person_id", "time_days", "event", *[a for a in adjust if a != "treated"]]
    missing = [c for c in need + ["treated"] if c not in cohort.columns]
    if missing:
        raise KeyError(f"landmark_analysis: cohort lacks column(s) {missing}")
    data = cohort[need].merge(response[["person_id", "treated", "responder"]], on="person_id")
    data = data[data["time_days"] > landmark_days].copy()
    data["time_lm"] = data["time_days"] - landmark_days
    cols = ["time_lm", "event", "responder", *adjust]
    cph = CoxPHFitter().fit(data[cols], duration_col="time_lm", event_col="event")
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
