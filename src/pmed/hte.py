"""Recommendations compared with the demo generator's truth.

- :func:`true_survival_matrix`, :func:`truth_agreement`, :func:`harmed_subgroup_recovered`:
  recommendations compared with the demo generator's per-person truth (``ground_truth.json``
  ``treatment_effect.person_survival_365d``: person id -> arm -> true S(365 d)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


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
