"""The simulation study: every (scenario, replicate) task in worker processes, then the summary.

A task simulates its replicate (:func:`pmed.simulation.design.simulate_cohort`) and runs the
scenario's estimand groups (:mod:`pmed.simulation.estimands`); a group that raises is recorded
as a failure (error type and message, no data values) and left out of that estimand's
replicates. Tasks stream through :func:`pmed.parallel.iter_tasks` processes (one BLAS thread
each; no barrier between long and short tasks), progress is printed to stderr; results do not
depend on ``workers``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import pandas as pd

from pmed.parallel import iter_tasks
from pmed.simulation import (
    design,
    estimands,
    estimands_diagnostics,
    estimands_monitoring,
    estimands_survival,
    truth,
)
from pmed.simulation.design import Scenario
from pmed.simulation.performance import summarise

CALIBRATION_POPULATION = 20_000  # eligible persons of the population sample passed to the calibration truth
IMAGING_POPULATION = 10_000  # eligible persons of the population sample passed to the imaging delta-C truth


@dataclass
class Settings:
    """What to run: params.yaml ``simulation`` values, overridden by the command line."""

    seed: int
    replicates: int
    n_persons: int
    n_imaged: int
    truth_n_persons: int
    workers: int
    calibration_n_bootstrap: int
    iptw_n_bootstrap: int
    imaging_n_permutations: int
    scenarios: list[Scenario]
    max_minutes: float | None = None
    estimands: tuple[str, ...] = design.ESTIMANDS
    params: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_params(cls, params: dict, **override) -> Settings:
        """From the params.yaml document; ``override`` keys (not None) replace ``simulation`` values."""
        sim = dict(params["simulation"])
        sim.update({k: v for k, v in override.items() if v is not None})
        chosen = tuple(sim.get("estimands") or design.ESTIMANDS)
        bad = [e for e in chosen if e not in design.ESTIMANDS]
        if bad:
            raise ValueError(f"simulation estimands {bad} unknown; expected some of {list(design.ESTIMANDS)}")
        for key in ("replicates", "n_persons", "n_imaged", "truth_n_persons", "workers", "calibration_n_bootstrap",
                    "iptw_n_bootstrap", "imaging_n_permutations"):
            if int(sim[key]) != sim[key] or sim[key] < 1:
                raise ValueError(f"params.yaml simulation.{key}: expected an integer >= 1, got {sim[key]!r}")
        return cls(seed=int(sim["seed"]), replicates=int(sim["replicates"]), n_persons=int(sim["n_persons"]),
                   n_imaged=int(sim["n_imaged"]), truth_n_persons=int(sim["truth_n_persons"]),
                   workers=int(sim["workers"]), calibration_n_bootstrap=int(sim["calibration_n_bootstrap"]),
                   iptw_n_bootstrap=int(sim["iptw_n_bootstrap"]),
                   imaging_n_permutations=int(sim["imaging_n_permutations"]),
                   scenarios=design.parse_scenarios(sim["scenarios"]),
                   estimands=chosen, params=params)

    def groups(self, scenario: Scenario) -> list[str]:
        """The scenario's estimand groups that were chosen, in :data:`design.ESTIMANDS` order."""
        return [g for g in design.ESTIMANDS if g in scenario.estimands and g in self.estimands]


def population_truths(settings: Settings) -> dict[str, dict]:
    """Per scenario needing one: :func:`scenario_truth`, the scenarios in parallel processes."""
    needed = [sc for sc in settings.scenarios if _needs_population(settings, sc)]
    truths = iter_tasks(scenario_truth, [(settings, sc) for sc in needed],
                        n_jobs=max(1, min(settings.workers, len(needed))))
    return {sc.name: pop for sc, pop in zip(needed, truths, strict=True)}


def _needs_population(settings: Settings, sc: Scenario) -> bool:
    groups = set(settings.groups(sc))
    return bool({"iptw", "matched", "calibration", "subgroups", "temporal", "imaging", "km", "competing",
                 "monitoring"} & groups or ({"cox_mi", "ph_remedy"} & groups and sc.image_signal))


def scenario_truth(task: tuple) -> dict:
    """Population truths of one scenario: :func:`pmed.simulation.truth.population_truth` (same
    persons in every scenario), with the calibration population cut to the columns the models
    use, notebook 03's logistic log-OR truths (:func:`estimands.least_false_log_or`, all eligible
    persons), plus the km / competing and monitoring groups' own population values."""
    settings, sc = task
    o = settings.params["outcomes"]
    keep = [*o["covariates"], "true_risk", "lp", "time_days", "event", "t_death_days", "t0_year"]
    clinical = settings.params["imaging_analysis"]["clinical_terms"]
    keep_imaging = sorted({c for t in clinical for c in t.split(":")}
                          | {*estimands.PSEUDO_TRAITS, "time_days", "event", "t_death_days"})
    s = settings.params["survival"]
    cox_terms = [*s["covariates"], *s["interactions"]]
    groups = set(settings.groups(sc))
    cox_truth = "cox_mi" in groups and sc.image_signal  # EHR model misspecified: least-false truth
    out = {}
    if "monitoring" in groups:  # its own population (OMOP files of the generator): least-false values
        out["monitoring"] = estimands_monitoring.population_truth(settings.seed, sc, settings.params)
    if {"km", "competing"} & groups:  # KM medians, competing-risks truths: their own large sample
        out.update(estimands_survival.population_truths(settings.params, settings.seed, sc.heterogeneity,
                                                        sc.image_signal,
                                                        estimands_survival.TRUTH_SCALE * settings.truth_n_persons))
    if "ph_remedy" in groups and sc.image_signal:  # least-false remedy log-HRs (without: PH holds, conditional)
        out["ph_remedy"] = estimands_diagnostics.population_remedy_truth(settings.params, settings.seed, sc,
                                                                         settings.truth_n_persons)
    if not ({"iptw", "matched", "calibration", "subgroups", "temporal", "imaging"} & groups or cox_truth):
        return out
    pop = truth.population_truth(design.truth_rng(settings.seed), settings.params["demo"]["rates"],
                                 sc.heterogeneity, sc.image_signal, settings.truth_n_persons,
                                 float(settings.params["treatment"]["horizon_days"]),
                                 cox_terms=cox_terms if cox_truth else None)
    if "calibration" in groups:  # notebook 03's logistic log-ORs: least-false values on all eligible persons
        pop["logistic_log_or"] = estimands.least_false_log_or(pop["population"], list(o["covariates"]),
                                                              list(o["interactions"]), float(o["horizon_days"]))
    pop["imaging_population"] = pop["population"].loc[: IMAGING_POPULATION - 1, keep_imaging].astype(float)
    pop["population"] = pop["population"].loc[: CALIBRATION_POPULATION - 1, keep].astype(float)
    return {**out, **pop}


def run_replicate(task: tuple) -> dict:
    """One (scenario, replicate): rows of the replicate table, failures, CPU and wall seconds."""
    scenario, r, settings, groups, pop = task
    wall, cpu = time.perf_counter(), time.process_time()
    seed = design.replicate_seed(settings.seed, r)
    params = settings.params
    cohort, latent, *traj = design.simulate_cohort(seed, scenario, settings.n_persons, params,
                                                   with_trajectories="monitoring" in groups)
    rows, failures, best_arm = [], [], None
    outcomes_shared = {}  # imputed population and repeated CV of the outcomes groups, computed once
    group_cpu = {}  # CPU seconds per group (calibration carries the shared outcomes work)
    for g in groups:
        cpu_g = time.process_time()
        try:
            if g == "cox_mi":
                rows += estimands.run_cox_mi(cohort, seed, params, scenario.heterogeneity, pop)
            elif g == "iptw":
                got, best_arm = estimands.run_iptw(cohort, seed, params, pop, settings.iptw_n_bootstrap)
                rows += got
            elif g == "matched":
                rows += estimands.run_matched(cohort, latent, seed, params, scenario.heterogeneity)
            elif g == "policy":
                rows += estimands.run_policy(cohort, latent, seed, params, scenario.heterogeneity, best_arm)
            elif g in ("calibration", "subgroups", "temporal"):
                rows += estimands.run_outcomes_group(g, cohort, seed, params, pop, settings.calibration_n_bootstrap,
                                                     outcomes_shared)
            elif g == "imaging":
                rows += estimands.run_imaging(cohort, latent, seed, params, settings.n_imaged, scenario.image_signal,
                                              settings.imaging_n_permutations, pop)
            elif g == "km":
                rows += estimands_survival.run_km(cohort, pop)
            elif g == "competing":
                rows += estimands_survival.run_competing(cohort, params, pop)
            elif g == "monitoring":
                rows += estimands_monitoring.run_monitoring(cohort, traj[0], seed, params, pop["monitoring"])
            elif g == "ph_remedy":
                rows += estimands_diagnostics.run_ph_remedy(cohort, seed, params, scenario, (pop or {}).get("ph_remedy"))
            elif g == "icc":
                rows += estimands_diagnostics.run_icc(seed, params)
        except Exception as err:  # noqa: BLE001 - a failing method is a result of the study
            failures.append({"scenario": scenario.name, "replicate": r, "group": g,
                             "error": f"{type(err).__name__}: {str(err)[:300]}"})
        group_cpu[g] = time.process_time() - cpu_g
    for row in rows:
        row.update(scenario=scenario.name, replicate=r)
    return {"rows": rows, "failures": failures, "cpu_s": time.process_time() - cpu, "group_cpu_s": group_cpu,
            "wall_s": time.perf_counter() - wall, "n_cohort": len(cohort)}


def run(settings: Settings, log=sys.stderr) -> dict:
    """Run the study; with ``settings.max_minutes``, no new task starts after that many minutes
    (the summary then covers the replicates done: ``n_rep`` per estimand). Returns ``table``
    (replicate table), ``summary`` (performance measures), ``failures``, ``runtime`` (wall and CPU seconds, load average) and ``truths`` (scalars)."""
    start = time.perf_counter()
    print(f"simulation: population truths ({settings.truth_n_persons} persons per scenario) ...", file=log, flush=True)
    pops = population_truths(settings)
    tasks = []
    for r in range(settings.replicates):
        for sc in settings.scenarios:
            groups = settings.groups(sc)
            if groups:
                tasks.append((sc, r, settings, groups, pops.get(sc.name)))
    print(f"simulation: {len(tasks)} tasks ({settings.replicates} replicates x scenarios) on "
          f"{settings.workers} workers", file=log, flush=True)

    def within_budget():
        for task in tasks:  # drawn as workers free up: no new task after the time budget
            if settings.max_minutes is not None and time.perf_counter() - start > 60 * settings.max_minutes:
                print(f"simulation: time budget of {settings.max_minutes} min reached: no new tasks",
                      file=log, flush=True)
                return
            yield task

    results = []
    step = max(1, len(tasks) // 20)
    for res in iter_tasks(run_replicate, within_budget(), n_jobs=settings.workers):
        results.append(res)
        done = len(results)
        if done % step == 0 or done == len(tasks):
            elapsed = time.perf_counter() - start
            print(f"simulation: {done}/{len(tasks)} tasks, {elapsed:.0f} s elapsed, "
                  f"about {elapsed / done * (len(tasks) - done):.0f} s to go", file=log, flush=True)
    table = pd.DataFrame([row for res in results for row in res["rows"]])
    cols = ["scenario", "replicate", *estimands.ROW_FIELDS]
    table = table[cols] if len(table) else pd.DataFrame(columns=cols)
    failures = pd.DataFrame([f for res in results for f in res["failures"]],
                            columns=["scenario", "replicate", "group", "error"])
    runtime = {"wall_s": time.perf_counter() - start, "task_cpu_s": sum(r["cpu_s"] for r in results),
               "task_wall_s": sum(r["wall_s"] for r in results), "workers": settings.workers,
               "load_average_1_5_15": list(os.getloadavg()), "cpu_count": os.cpu_count(),
               "mean_cohort_size": sum(r["n_cohort"] for r in results) / max(len(results), 1),
               "tasks_done": len(results), "tasks_planned": len(tasks), "group_cpu_s": group_cpu_s(results)}
    truths = {name: {k: v for k, v in p.items() if not k.endswith("population")} for name, p in pops.items()}
    return {"table": table, "summary": summarise(table) if len(table) else pd.DataFrame(),
            "failures": failures, "runtime": runtime, "truths": truths}


def group_cpu_s(results: list[dict]) -> dict[str, float]:
    """CPU seconds per estimand group summed over the tasks (the rest of a task's CPU time
    is simulating its data set)."""
    out: dict[str, float] = {}
    for res in results:
        for g, sec in res["group_cpu_s"].items():
            out[g] = out.get(g, 0.0) + sec
    return {g: round(sec, 1) for g, sec in out.items()}
