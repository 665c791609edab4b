"""Data-generating mechanisms of the simulation study: scenarios, seeds, replicate data sets.

Replicate ``r`` (0-based) of every scenario draws from ``SeedSequence(seed).spawn(R)[r]``
(``seed`` = params.yaml ``simulation.seed``), i.e. ``SeedSequence(seed, spawn_key=(r,))``:
its data do not depend on R, and the scenarios share the replicate's random numbers (the
generator's switches change death times only), so scenario contrasts are paired. A replicate
data set is the demo generator's OMOP extract (EHR only, no CT rendered) written to a
temporary folder and run through the cohort stage's extraction (:func:`simulate_cohort`).
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pmed import longitudinal as lg
from pmed.cohort import extract_cohort, parse_definition
from pmed.demo.generate import generate, latent_chunk

SIZE_NAME = "simulation"  # demo size entry added (in a copy of the demo params) for a replicate
TRUTH_KEY = 1_000_000  # spawn key of the population-truth stream (never a replicate index)
ESTIMANDS = ("cox_mi", "iptw", "matched", "policy", "calibration", "subgroups", "temporal", "imaging", "km",
             "competing", "monitoring", "ph_remedy", "icc")
"""Estimand groups: main Cox log-HRs (MI), IPTW marginal HR and 365-day survival difference
per arm, matched HR (io vs chemo), policy value of the recommendations (+ heterogeneity test),
outcomes-stage calibration, C, Brier, ICI/E50/E90, its subgroup performance (sex, age band,
arm) and temporal validation (later t0 years), imaging delta C / C / td-AUC per model / LR test
(feature level), KM median OS per arm, competing risks (cause-specific and Fine-Gray log-HRs,
CIF per arm), lab-trajectory slopes and the early-response landmark HR (monitoring), the PH-remedy
Cox model's early/late log-HRs and the PH rule's flags (ph_remedy), ICC CIs of feature stability (icc)."""


@dataclass(frozen=True)
class Scenario:
    """One data-generating mechanism: the generator's switches and the estimands studied."""

    name: str
    heterogeneity: bool
    image_signal: bool
    estimands: tuple[str, ...]


def parse_scenarios(spec: dict) -> list[Scenario]:
    """Scenarios from params.yaml ``simulation.scenarios`` (name -> heterogeneity, image_signal,
    estimands), with a clear error naming the key for a bad entry."""
    out = []
    if not isinstance(spec, dict) or not spec:
        raise ValueError("params.yaml simulation.scenarios: expected a non-empty mapping name -> settings")
    for name, s in spec.items():
        where = f"params.yaml simulation.scenarios.{name}"
        for key in ("heterogeneity", "image_signal"):
            if not isinstance(s.get(key), bool):
                raise ValueError(f"{where}.{key}: expected true or false, got {s.get(key)!r}")
        est = s.get("estimands")
        if not isinstance(est, list) or not est or any(e not in ESTIMANDS for e in est):
            raise ValueError(f"{where}.estimands: expected a non-empty list of {list(ESTIMANDS)}, got {est!r}")
        out.append(Scenario(str(name), s["heterogeneity"], s["image_signal"], tuple(est)))
    return out


def replicate_seed(master: int, r: int) -> int:
    """Integer seed of replicate ``r``: 31 bits of ``SeedSequence(master).spawn(R)[r]`` (any
    R > r), used as the generator's seed and as the replicate's ``common.seed``. Below 2**31,
    so the stages' seed offsets stay valid scikit-learn ``random_state`` values (< 2**32)."""
    state = np.random.SeedSequence(master, spawn_key=(r,)).generate_state(1, dtype=np.uint32)
    return int(state[0]) >> 1


def truth_rng(master: int) -> np.random.Generator:
    """Random generator of the large population-truth samples (its own spawn key)."""
    return np.random.default_rng(np.random.SeedSequence(master, spawn_key=(TRUTH_KEY,)))


def demo_params_for(demo: dict, n_persons: int) -> dict:
    """A copy of params.yaml ``demo`` with the EHR-only size :data:`SIZE_NAME` of ``n_persons``."""
    out = copy.deepcopy(demo)
    out["sizes"][SIZE_NAME] = {"n_persons": int(n_persons), "n_imaged": 0, "followup_share": 0.0}
    return out


def simulate_cohort(seed: int, scenario: Scenario, n_persons: int, params: dict,
                    with_trajectories: bool = False) -> tuple[pd.DataFrame, ...]:
    """One replicate: the cohort stage's table from the generator's OMOP files, and the latent rows.

    The demo generator writes the OMOP tables of ``n_persons`` persons (seed ``seed``, the
    scenario's switches, no CT) to a temporary folder; :func:`pmed.cohort.extract_cohort`
    builds the analysis cohort from them with params.yaml ``cohort`` (as notebook 01 does).

    Returns (cohort, latent): cohort one row per eligible person (the cohort contract);
    latent the generator's latent rows of the same persons (true covariates, tumour traits,
    ``lp_x``), indexed by ``person_id``, in cohort row order. With ``with_trajectories``:
    (cohort, latent, trajectories), the monitored lab's values loaded from the OMOP files as
    notebook 04 does (:func:`pmed.longitudinal.load_trajectories`, params.yaml
    ``treatment.monitoring``).
    """
    demo = demo_params_for(params["demo"], n_persons)
    with tempfile.TemporaryDirectory(prefix="pmed-sim-") as tmp:
        generate(Path(tmp), SIZE_NAME, seed, demo, image_signal=scenario.image_signal,
                 heterogeneity=scenario.heterogeneity)
        result = extract_cohort(Path(tmp) / "omop", parse_definition(params["cohort"]), threads=1,
                                check_quality=False)
        cohort = result.cohort.reset_index(drop=True)
        if with_trajectories:
            mon = params["treatment"]["monitoring"]
            traj = lg.load_trajectories(Path(tmp) / "omop", cohort, mon["concept_ids"],
                                        {int(k): float(v) for k, v in mon["units"].items()},
                                        mon["baseline_window_days"], mon["followup_days"], tuple(mon["plausible"]))
    lat = latent_chunk(seed, demo, SIZE_NAME, image_signal=scenario.image_signal,
                       heterogeneity=scenario.heterogeneity).set_index("person_id")
    missing = set(cohort["person_id"]) - set(lat.index)
    if missing:
        raise RuntimeError(f"simulate_cohort: {len(missing)} cohort persons are not in the latent table")
    latent = lat.loc[cohort["person_id"].to_numpy()]
    return (cohort, latent, traj) if with_trajectories else (cohort, latent)
