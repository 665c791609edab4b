"""The target-trial protocol table: each component's specification next to its emulation.

Rows follow Hernán & Robins (Am J Epidemiol 2016) and the TARGET reporting guideline (2025):
eligibility, treatment strategies, assignment, time zero, outcomes, follow-up, causal
contrast. The specification is params ``cohort.protocol.<component>.specification``; the
emulation column is written from the computable rules of the same params (so it cannot
drift from what the queries do), followed by the protocol's own ``emulation`` note.
"""

from __future__ import annotations

import pandas as pd

from pmed.cohort.definition import PROTOCOL_COMPONENTS, CohortDefinition, Outcome

TITLES = {"eligibility": "Eligibility criteria", "treatment_strategies": "Treatment strategies",
          "assignment": "Assignment procedure", "time_zero": "Time zero",
          "outcomes": "Outcomes", "follow_up": "Follow-up", "causal_contrast": "Causal contrast"}


def _window(window: tuple[int | None, int | None], anchor: str) -> str:
    start = "any time" if window[0] is None else f"day {window[0]}"
    end = "unbounded" if window[1] is None else f"day {window[1]}"
    return f"{start} to {end} from {anchor}"


def _outcome_text(o: Outcome) -> str:
    if o.type == "death":
        return f"{o.name}: death from any cause (time_days, event)"
    what = f"first {o.table} record" + (f" of concept set '{o.concept_set}'" if o.concept_set else "")
    if o.visit_concept_ids:
        what += f" in a visit of concept {', '.join(map(str, o.visit_concept_ids))}"
    if o.value_range is not None:
        lo, hi = ("-inf" if v is None else f"{v:g}" for v in o.value_range)
        what += f" with value in [{lo}, {hi}]"
    competing = "death competing (status 2)" if o.competing else "death censors"
    return (f"{o.name}: {what} more than {o.blanking_days} day(s) after t0, {competing} "
            f"({o.name}_time_days, {o.name}_status)")


def emulation_rules(d: CohortDefinition) -> dict[str, str]:
    """Component -> the computable rules of ``d`` as one sentence each."""
    st = d.strategies
    age = f"age >= {d.min_age_years:g}" + ("" if d.max_age_years is None
                                           else f" and <= {d.max_age_years:g}")
    excl = ", ".join(d.exclusion_concept_sets) or "none"
    arms = "; ".join(f"{a}: all of {', '.join(arm.all_of)}"
                     + (f", none of {', '.join(arm.none_of)}" if arm.none_of else "")
                     for a, arm in st.arms.items())
    anchors = sorted({d.condition_anchor, *(c.anchor for c in d.numeric),
                      *(c.anchor for c in d.categorical)})
    return {
        "eligibility": (f"First '{d.target_concept_set}' diagnosis (index); >= "
                        f"{d.prior_observation_days} days of observation before index; {age} "
                        f"years at index; no {excl} record {_window(d.exclusion_window, 'index')};"
                        " no study drug before index; no impossible date; alive at t0."),
        "treatment_strategies": (f"Regimen = study-drug concept sets started within "
                                 f"{st.grace_days} days of t0. Arms - {arms}."),
        "assignment": (f"Observed regimen; reference arm '{st.reference}'; baseline covariates "
                       f"read in windows ending at or before {' / '.join(anchors)} "
                       "(see the column dictionary)."),
        "time_zero": (f"t0 = first start of a study drug, 0-{st.max_days_after_index} days after "
                      "index and inside observation."),
        "outcomes": "; ".join(_outcome_text(o) for o in d.outcomes) + ".",
        "follow_up": ("From t0 to the outcome, death, end of the observation period or "
                      f"{d.administrative_censor_date.isoformat()}, whichever comes first."),
        "causal_contrast": ("Each arm vs '" + st.reference + "': "
                            + ", ".join(f"arm_{a}" for a in st.non_reference) + "."),
    }


def protocol_table(d: CohortDefinition) -> pd.DataFrame:
    """One row per protocol component: component, target trial specification, emulation."""
    rules = emulation_rules(d)
    rows = []
    for comp in PROTOCOL_COMPONENTS:
        entry = d.protocol[comp]
        emulation = " ".join(t for t in (rules[comp], entry["emulation"]) if t)
        rows.append({"component": TITLES[comp],
                     "target trial specification": entry["specification"],
                     "emulation in this extract": emulation})
    return pd.DataFrame(rows)
