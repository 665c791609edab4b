"""Evaluation of heterogeneous effects and recommendations: Qini/calibration, demo truth.

- :func:`qini_curve` / :func:`qini_coefficient` / :func:`benefit_calibration`: held-out checks
  of a benefit score against doubly robust contrasts ``psi`` (e.g. ``Gamma_a - Gamma_0`` of
  :mod:`pmed.policy`, survival probability at the horizon).
- :func:`true_survival_matrix`, :func:`truth_agreement`, :func:`harmed_subgroup_recovered`:
  recommendations compared with the demo generator's per-person truth (``ground_truth.json``
  ``treatment_effect.person_survival_365d``: person id -> arm -> true S(365 d)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pmed.causal import Z95


def _cumulative_gain(score, psi, name: str) -> tuple[np.ndarray, float]:
    """``(cum, mean(psi))``: cum[k] = (1/n) sum of psi over the k highest scores, cum[0] = 0.

    Ties keep input order; ``cum`` has n + 1 entries.
    """
    score = np.asarray(score, dtype=float)
    psi = np.asarray(psi, dtype=float)
    if score.shape != psi.shape:
        raise ValueError(f"{name}: score {score.shape} and psi {psi.shape} differ in shape")
    order = np.argsort(-score, kind="stable")
    return np.r_[0.0, np.cumsum(psi[order])] / psi.size, float(psi.mean())


def qini_curve(score: np.ndarray, psi: np.ndarray, n_points: int = 101) -> pd.DataFrame:
    """Qini curve: cumulative DR gain when treating the top fraction ranked by ``score``.

    ``gain(q) = (1/n) sum_{i in top ceil(q n)} psi_i`` (persons sorted by decreasing score,
    ties kept in input order) and ``random(q) = q mean(psi)``. With randomised treatment,
    no censoring and outcome models set to 0, ``psi = A Y / e - (1 - A) Y / (1 - e)`` and
    the curve is Radcliffe's Qini curve (scaled by 1/n) in expectation.

    Returns DataFrame ``fraction``, ``gain``, ``random`` with ``n_points`` rows.
    """
    cum, mean_psi = _cumulative_gain(score, psi, "qini_curve")
    n = cum.size - 1
    fraction = np.linspace(0, 1, n_points)
    k = np.ceil(fraction * n - 1e-9).astype(int)
    return pd.DataFrame({"fraction": fraction, "gain": cum[k], "random": fraction * mean_psi})


def qini_coefficient(score: np.ndarray, psi: np.ndarray) -> float:
    """Area between the Qini curve and the random-targeting line, over all n cut-offs.

    ``Q = (1/n) sum_{k=1..n} [gain(k/n) - (k/n) mean(psi)]`` (units of ``psi``: survival
    probability). Positive when high scores pick persons with larger benefit.
    """
    cum, mean_psi = _cumulative_gain(score, psi, "qini_coefficient")
    n = cum.size - 1
    random = np.arange(1, n + 1) / n * mean_psi
    return float(np.mean(cum[1:] - random))


def benefit_calibration(
    cate: np.ndarray, psi: np.ndarray, n_groups: int = 4
) -> pd.DataFrame:
    """Predicted vs DR-estimated observed benefit by quantile group of predicted benefit.

    Returns DataFrame: ``group`` (1 = lowest predicted), ``n``, ``predicted`` (mean cate),
    ``observed`` (mean psi), ``ci_low``, ``ci_high`` (normal 95% CI of the mean psi).
    """
    cate = np.asarray(cate, dtype=float)
    psi = np.asarray(psi, dtype=float)
    groups = pd.qcut(pd.Series(cate).rank(method="first"), n_groups, labels=False) + 1
    rows = []
    for g in range(1, n_groups + 1):
        sel = (groups == g).to_numpy()
        m = psi[sel].mean()
        se = psi[sel].std(ddof=1) / np.sqrt(sel.sum())
        rows.append((g, int(sel.sum()), cate[sel].mean(), m, m - Z95 * se, m + Z95 * se))
    return pd.DataFrame(rows, columns=["group", "n", "predicted", "observed", "ci_low", "ci_high"])


def true_survival_matrix(person_id, person_survival: dict, labels: Sequence[str]) -> np.ndarray:
    """(n, k) true S_a(h) of each person (rows as ``person_id``), arms in ``labels`` order.

    ``person_survival``: str(person_id) -> {arm label: true survival} (demo ground truth).
    A person or arm absent from the truth is an error naming the first missing key.
    """
    rows = []
    for p in np.asarray(person_id, dtype="int64"):
        d = person_survival.get(str(p))
        if d is None or any(a not in d for a in labels):
            raise KeyError(f"true_survival_matrix: ground truth lacks person {p} or an arm of {list(labels)}")
        rows.append([float(d[a]) for a in labels])
    return np.array(rows, dtype=float).reshape(-1, len(labels))


def truth_agreement(recommendation: Sequence, true_surv: np.ndarray, labels: Sequence[str],
                    fallback: str) -> dict:
    """Recommendations vs the oracle (true best arm per person) of the generating model.

    Parameters
    ----------
    recommendation : (n,) arm labels, missing (None/NA) = no recommendation.
    true_surv : (n, k) :func:`true_survival_matrix`; labels : arm labels of its columns.
    fallback : arm given to persons without a recommendation when valuing the policy.

    Returns
    -------
    dict: ``oracle_agreement`` (share of ALL persons whose recommendation is the true best
    arm; none counts as disagreement), ``oracle_agreement_recommended`` (among persons with a
    recommendation), ``share_no_recommendation``, ``true_value`` (mean true S(h) of the
    recommended arms, fallback for none), ``oracle_value``, ``best_single_arm_value``,
    ``true_regret`` (oracle - true value).
    """
    rec = pd.Series(recommendation, dtype="string")
    labels = list(labels)
    unknown = sorted(set(rec.dropna()) - set(labels))
    if unknown:
        raise ValueError(f"truth_agreement: recommendations {unknown} are not arms {labels}")
    code = rec.map({a: i for i, a in enumerate(labels)}).fillna(-1).to_numpy(int)
    best = true_surv.argmax(1)
    given = np.where(code >= 0, code, labels.index(fallback))
    has = code >= 0
    value = float(true_surv[np.arange(len(code)), given].mean())
    oracle = float(true_surv.max(1).mean())
    return {
        "oracle_agreement": float(np.mean(code == best)),
        "oracle_agreement_recommended": float(np.mean(code[has] == best[has])) if has.any() else float("nan"),
        "share_no_recommendation": float(np.mean(~has)),
        "true_value": value,
        "oracle_value": oracle,
        "best_single_arm_value": float(true_surv.mean(0).max()),
        "true_regret": oracle - value,
    }


def harmed_subgroup_recovered(recommendation: Sequence, driver_positive: Sequence, harmful_arm: str = "io") -> dict:
    """Share of driver-positive persons NOT recommended ``harmful_arm`` (the harmed subgroup).

    Returns ``{"n": driver-positive persons, "share_not_harmful": share not recommended the
    harmful arm (no recommendation counts as not recommended), "share_not_harmful_recommended":
    the same among those with a recommendation}``; driver status missing = not counted.
    """
    rec = pd.Series(recommendation, dtype="string").reset_index(drop=True)
    pos = pd.Series(driver_positive).reset_index(drop=True).astype("Float64").eq(1).fillna(False).to_numpy(bool)
    r = rec[pos]
    has = r.notna()
    return {
        "n": int(pos.sum()),
        "share_not_harmful": float((r != harmful_arm).fillna(True).mean()) if pos.any() else float("nan"),
        "share_not_harmful_recommended": float((r[has] != harmful_arm).mean()) if has.any() else float("nan"),
    }
