"""Methods of the simulation study: one replicate through the stages' own helpers.

Each ``run_<group>`` makes the calls of its notebook (same helpers, same params.yaml
settings, same seed offsets from the replicate's seed) and returns rows of the replicate
table (:data:`ROW_FIELDS`): estimate, model SE, 95% CI, truth and the test decision.

- ``cox_mi`` (02_survival): MI (PMM) Cox model, Rubin's rules, and the complete-case model of
  its sensitivity analysis; truth (both) = the generator's
  conditional log-HR without image signal; with it, the hazard also depends on tumour traits
  the EHR model cannot include, and the truth is the model's least-false log-HR
  (:func:`pmed.simulation.truth.least_false_log_hr`, attenuated towards 0). The bootstrap CI of
  the apparent Harrell's C; truth = the C of the fitted model in new people (optimism: see
  :func:`run_cox_mi`).
- ``iptw`` (04_treatment): MI IPTW marginal log-HR and 365-day survival difference per arm
  (Rubin CI), and the bootstrap percentile CI of the survival difference (replicate b on
  imputed set b mod m, as the stage).
- ``matched`` (causal.match_nearest, io vs chemo; no report prints it since the multi-arm
  treatment stage): pair-clustered Cox log-HR; truth = marginal log-HR in the population of
  the matched io patients (the caliper drops io patients without a close control, mostly
  high PD-L1 ones with the largest benefit: a different population from all io patients).
- ``policy`` (04_treatment): held-out DR value of the issued recommendations and its gain vs
  the best single arm (percentile CI); truth = the true mean S(365) of this policy on the
  replicate's persons; heterogeneity test (Holm) per contrast.
- ``calibration`` (03_outcomes): repeated-CV calibration slope and intercept per test fold,
  averaged over the R x k folds, and Harrell's C, Uno's C, the Brier score, IPA, O/E, the smoothed
  calibration errors ICI, E50, E90, sensitivity / PPV / net benefit at the high-risk threshold
  of the pooled out-of-fold risks, paired model differences (gbm - cox, logistic - cox), the Cox
  model's integrated Brier score (bootstrap CI over people,
  fold models fixed); truth = mean over the replicate's fold models of the same measure in the
  population sample given the cohort's missingness and imputed by PMM
  (:func:`population_discrimination`; slope / intercept against the true 365-day risk; ICI etc.
  of the pooled fold-model risks against E[true risk | p], :func:`true_calibration_errors`; IBS
  from the true survival curves, :func:`true_integrated_brier`). Also the log odds ratios of the
  full-data IPCW logistic model (one PMM imputation, robust HC0 Wald CI); truth = the least-false
  log-OR of that model on the population's TRUE covariates and uncensored status
  (:func:`least_false_log_or`).
- ``subgroups`` (03_outcomes): Harrell's C, calibration intercept and O/E of the Cox model's
  out-of-fold risks by sex, age band and arm (small groups suppressed and skipped); truth =
  :func:`subgroup_truth` of the pooled fold-model risks in the population's subgroup.
- ``temporal`` (03_outcomes): models fitted on the earlier t0 years, bootstrap CIs in the later
  ones; truth = these models' measures in the population's persons of the later years.
- ``imaging`` (06_imaging_analysis, feature level, see :func:`pseudo_radiomics`): delta C of
  the combined vs the clinical model (paired per-fold corrected-t CI; "reject" = CI above 0),
  Harrell's C and td-AUC per model (same intervals); truths :func:`true_fold_performance`, the
  fold models' mean in new people; the permutation LR test of the pre-validated signature
  (p <= alpha) and, for comparison, the superseded naive chi-square LR p-value of the same fit
  (p < 0.05).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from pmed import calibration, causal, hte, metrics, multiarm, policy, prediction, validation
from pmed import radiomics_model as rm
from pmed import survival as sv
from pmed.demo import model
from pmed.imputation import mice, nelson_aalen
from pmed.simulation.truth import (
    conditional_log_hr,
    least_false_log_hr,
    marginal_log_hr_of,
    true_survival_365,
)

ROW_FIELDS = ("group", "estimand", "estimate", "se", "ci_low", "ci_high", "true", "reject", "null_true", "ci_kind")
"""Replicate-table columns: ``se`` model SE (for percentile CIs: CI width / 3.92); ``true``
NaN when the estimand has no truth (tests, delta C); ``reject`` the test decision (CI
excludes 0, or the p-value rule of the test; NaN where no test is reported: calibration);
``null_true`` whether its null holds."""
Z95 = 1.959963984540054


def _row(group, estimand, estimate, ci_low, ci_high, true, se=None, reject=None, null_true=None,
         ci_kind="wald") -> dict:
    se = (ci_high - ci_low) / (2 * Z95) if se is None else se
    if reject is None:
        reject = bool(ci_low > 0 or ci_high < 0)
    elif reject is not np.nan:
        reject = bool(reject)
    if null_true is None:
        null_true = bool(true == 0) if np.isfinite(true) else False
    return {"group": group, "estimand": estimand, "estimate": float(estimate), "se": float(se),
            "ci_low": float(ci_low), "ci_high": float(ci_high), "true": float(true), "reject": reject,
            "null_true": bool(null_true), "ci_kind": ci_kind}


def labels_of(params: dict) -> list[str]:
    """Arm labels, reference first (as notebook 04)."""
    strat = params["cohort"]["treatment_strategies"]
    return multiarm.arm_order(list(strat["arms"]), strat["reference"])


def run_cox_mi(cohort: pd.DataFrame, seed: int, params: dict, heterogeneity: bool, pop: dict | None) -> list[dict]:
    """Notebook 02: PMM MI (event + Nelson-Aalen as auxiliaries), pooled Cox, Rubin's rules; the
    complete-case Cox model of its sensitivity analysis (terms kept by :func:`pmed.survival.estimable_terms`
    with ``common.min_cell_size``, Wald CI); the bootstrap CI of the apparent Harrell's C of the
    pooled model (linear predictor on the first imputed set, ``survival.n_bootstrap`` resamples).

    Truths: log-HRs ``pop["cox_log_hr"]`` (least-false) when given, else the conditional log-HRs,
    for the MI and the complete-case model alike: the generator's missingness is MCAR (each
    record missing with its own probability, independent of everything, ``model.simulate_latent``),
    so the complete cases are a random subsample with the same conditional / least-false log-HRs.
    When the estimable-terms rule leaves a term out (at n_persons 1,500: ``arm_io:driver_positive``
    in most replicates, too few complete-case io driver-positive persons), the complete-case
    model is a smaller one; with ``pop["population"]`` its truth is then that model's own
    least-false log-HRs (:func:`pmed.simulation.truth.least_false_log_hr` of ``cc_terms`` on the
    population sample): e.g. the driver_positive and arm_chemo_io:driver_positive log-HRs absorb
    part of the omitted io x driver interaction (-0.10 and 0.40 instead of -0.28 and 0.57).
    Apparent C (with ``pop["population"]``): :func:`apparent_c_truth`, the C of the fitted linear
    predictor in new people; the apparent C is optimistic by design (the model is fitted to the
    same people), so its CI is expected to sit above that truth a little."""
    s = params["survival"]
    covariates = list(s["covariates"])
    terms = covariates + list(s["interactions"])
    base = cohort.assign(cumhaz=nelson_aalen(cohort["time_days"], cohort["event"]),
                         event_aux=cohort["event"].astype(float))
    imputed = mice(base, covariates, m=s["n_imputations"], seed=seed + 201, max_iter=s["mice_max_iter"],
                   auxiliary=["event_aux", "cumhaz"])
    imputed = [sv.add_interactions(d, s["interactions"]) for d in imputed]
    pooled = sv.fit_cox_mi(imputed, "time_days", "event", terms).set_index("term")
    truth = pop["cox_log_hr"] if pop and pop.get("cox_log_hr") else conditional_log_hr(terms, heterogeneity)
    rows = [_row("cox_mi", f"log-HR {t}", pooled.loc[t, "estimate"], pooled.loc[t, "ci_low"],
                 pooled.loc[t, "ci_high"], truth[t], se=pooled.loc[t, "se"], ci_kind="Rubin")
            for t in terms]
    cc_data = sv.add_interactions(cohort, s["interactions"])
    cc_terms = sv.estimable_terms(cc_data, terms, params["common"]["min_cell_size"])
    cc = sv.cox_table(sv.fit_cox(cc_data, "time_days", "event", cc_terms)).set_index("term")
    has_population = bool(pop) and pop.get("population") is not None
    cc_truth = (least_false_log_hr(pop["population"], cc_terms) if has_population and len(cc_terms) < len(terms)
                else truth)  # a term left out: a smaller model, its own least-false log-HRs
    rows += [_row("cox_mi", f"log-HR {t} (complete cases)", cc.loc[t, "log_hr"], cc.loc[t, "ci_low"],
                  cc.loc[t, "ci_high"], cc_truth[t], se=cc.loc[t, "se"]) for t in cc_terms]
    if has_population:
        time_, event = cohort["time_days"].to_numpy(float), cohort["event"].to_numpy(int)
        beta = pooled.loc[terms, "estimate"].to_numpy(float)
        lp = imputed[0][terms].to_numpy(float) @ beta
        reps = metrics.bootstrap(lambda i: {"harrell_c": metrics.harrell_c(time_[i], event[i], lp[i])},
                                 len(cohort), s["n_bootstrap"], seed + 202)
        c = metrics.ci_table({"harrell_c": metrics.harrell_c(time_, event, lp)}, reps)["harrell_c"]
        true_c = apparent_c_truth(cohort, pop["population"], covariates, s["interactions"], terms, beta, seed,
                                  s["mice_max_iter"])
        rows.append(_row("cox_mi", "apparent Harrell C (MI Cox)", c["estimate"], c["ci_low"], c["ci_high"], true_c,
                         reject=np.nan, null_true=False, ci_kind="percentile bootstrap"))
    return rows


APPARENT_C_PERSONS = 10_000  # population persons of the apparent-C truth (its PMM imputation: ~0.15 CPU-s)


def apparent_c_truth(cohort: pd.DataFrame, people: pd.DataFrame, covariates: list[str], interactions: list[str],
                     terms: list[str], beta: np.ndarray, seed: int, max_iter: int) -> float:
    """Harrell's C of the linear predictor ``beta`` (over ``terms``) in new people: ``people``
    (population rows, the generator's censoring) given the cohort's missing predictors and
    PMM-imputed (:func:`impute_like_cohort`, without outcome auxiliaries: a new patient's outcome
    is unknown); only the first :data:`APPARENT_C_PERSONS` rows (cost)."""
    people = people.iloc[:APPARENT_C_PERSONS].reset_index(drop=True)
    x = sv.add_interactions(impute_like_cohort(cohort, people, covariates, np.random.default_rng([seed, 203]),
                                               seed + 203, max_iter), interactions)
    return metrics.harrell_c(people["time_days"].to_numpy(float), people["event"].to_numpy(int),
                             x[terms].to_numpy(float) @ beta)


def run_iptw(cohort: pd.DataFrame, seed: int, params: dict, pop: dict, n_boot: int) -> tuple[list[dict], str]:
    """Notebook 04: MI IPTW log-HR and survival difference per arm, bootstrap CI of the difference
    (``n_boot`` replicates: params ``simulation.iptw_n_bootstrap``, fewer than the stage's
    ``treatment.n_bootstrap`` for cost; a percentile CI from fewer replicates is narrower on
    average, so its coverage here is a lower bound for the stage's).

    Returns (rows, best arm by the IPTW survival difference: the policy's average-effect arm)."""
    tr = params["treatment"]
    labels = labels_of(params)
    arm = multiarm.arm_codes(cohort["treatment"], labels, labels[0])
    time_, event = cohort["time_days"].to_numpy(float), cohort["event"].to_numpy(int)
    horizon = float(tr["horizon_days"])
    mi = multiarm.mi_iptw(cohort, list(tr["covariates"]), arm, labels, horizon, m=tr["n_imputations"],
                          seed=seed + 401, max_iter=tr["mice_max_iter"],
                          truncate_quantile=tr["weight_truncation_quantile"])
    boot = multiarm.bootstrap_differences(mi["completed_sets"], time_, event, arm, labels, horizon, n_boot,
                                          seed + 402, truncate_quantile=tr["weight_truncation_quantile"])
    hr = mi["log_hr"].set_index("term")
    rd = mi["survival_difference"].set_index("term")
    rows = []
    for i, a in enumerate(labels[1:]):
        rows.append(_row("iptw", f"log-HR {a}", hr.loc[a, "estimate"], hr.loc[a, "ci_low"], hr.loc[a, "ci_high"],
                         pop["marginal_log_hr"][a], se=hr.loc[a, "se"], ci_kind="Rubin"))
        rows.append(_row("iptw", f"S(365) difference {a}", rd.loc[a, "estimate"], rd.loc[a, "ci_low"],
                         rd.loc[a, "ci_high"], pop["survival_difference"][a], se=rd.loc[a, "se"], ci_kind="Rubin"))
        rows.append(_row("iptw", f"S(365) difference {a}, bootstrap CI", rd.loc[a, "estimate"],
                         float(boot["ci_low"].iloc[i]), float(boot["ci_high"].iloc[i]), pop["survival_difference"][a],
                         ci_kind="percentile bootstrap"))
    best = labels[0] if rd["estimate"].max() <= 0 else str(rd["estimate"].idxmax())
    return rows, best


def run_matched(cohort: pd.DataFrame, latent: pd.DataFrame, seed: int, params: dict,
                heterogeneity: bool) -> list[dict]:
    """causal.match_nearest (1:1, caliper 0.2 SD of the logit PS) io vs chemo; pair-clustered Cox.
    Truth: :func:`marginal_log_hr_of` the matched io persons (``latent`` in cohort row order)."""
    keep = cohort["treatment"].isin(["chemo", "io"]).to_numpy()
    pair = cohort[keep].reset_index(drop=True)
    treated = (pair["treatment"] == "io").to_numpy(int)
    X = causal.design_matrix(pair, list(params["treatment"]["covariates"]))
    ps = causal.fit_propensity(X, treated)
    pairs = causal.match_nearest(causal.logit(ps), treated, 0.2, seed + 401)
    fit = causal.weighted_cox(pair.assign(treated=treated), "time_days", "event", ["treated"],
                              weights=causal.matching_weights(pairs, len(pair)),
                              cluster=causal.pair_ids(pairs, len(pair))).loc["treated"]
    lo, hi = np.log(fit["ci_low"]), np.log(fit["ci_high"])
    matched_io = latent.iloc[np.flatnonzero(keep)[pairs[:, 0]]]
    true = marginal_log_hr_of(matched_io, "io", heterogeneity, np.random.default_rng([seed, 7]))
    return [_row("matched", "log-HR io (matched)", fit["coef"], lo, hi, true, se=fit["se"])]


def run_policy(cohort: pd.DataFrame, latent: pd.DataFrame, seed: int, params: dict, heterogeneity: bool,
               average_arm: str | None) -> list[dict]:
    """Notebook 04's recommendation: repeats, heterogeneity test, issued recommendations, value."""
    tr, rec = params["treatment"], params["treatment"]["recommend"]
    labels = labels_of(params)
    arm = multiarm.arm_codes(cohort["treatment"], labels, labels[0])
    horizon = float(tr["horizon_days"])
    mods = list(rec["effect_modifiers"])
    X = causal.design_matrix(cohort, list(tr["covariates"])).to_numpy(float)
    res = policy.run_repeats(
        X, cohort[mods].astype(float), arm, cohort["time_days"].to_numpy(float), cohort["event"].to_numpy(int),
        horizon, n_repeats=rec["n_repeats"], n_folds=rec["n_folds"], seed=seed + 403,
        min_leaf=max(1, int(rec["min_leaf_share"] * (len(cohort) // 2))), n_cuts=rec["n_cuts"],
        censoring=rec["censoring"], ps_clip=rec["ps_clip"], cox_alpha=rec["cox_ridge"])
    het = policy.heterogeneity_test(res["p_splits"], labels, rec["alpha"])
    personalise = bool(het["reject"].any())
    if average_arm is None:  # no IPTW in this scenario: the DR scores' best arm (as tests/test_recommend_e2e.py)
        average_arm = labels[int(res["gamma"].mean((0, 1)).argmax())]
    recs = policy.recommendation_table(cohort["person_id"], res, labels, personalise, float(het["p_holm"].min()),
                                       average_arm=average_arm)
    R = res["gamma"].shape[0]
    values = policy.policy_value(res["gamma"], policy.issued_actions(recs["recommendation"], labels, R),
                                 np.full((R, len(cohort)), labels.index(average_arm)), labels, rec["n_bootstrap"],
                                 seed + 404).set_index("policy")
    s_true = true_survival_365(latent, heterogeneity, horizon)[:, [model.ARMS.index(a) for a in labels]]
    agree = hte.truth_agreement(recs["recommendation"], s_true, labels, fallback=average_arm)
    rows = [
        _row("policy", "value of issued recommendations", *values.loc["policy", ["estimate", "ci_low", "ci_high"]],
             agree["true_value"], ci_kind="percentile bootstrap"),
        _row("policy", "gain vs best single arm", *values.loc["gain vs best single arm",
                                                              ["estimate", "ci_low", "ci_high"]],
             agree["true_value"] - agree["best_single_arm_value"], ci_kind="percentile bootstrap"),
    ]
    for _, h in het.iterrows():
        rows.append(_row("policy", f"heterogeneity test {h['contrast']} (Holm p < {rec['alpha']})", h["p_holm"],
                         np.nan, np.nan, np.nan, se=np.nan, reject=bool(h["reject"]), null_true=not heterogeneity,
                         ci_kind="test"))
    return rows


def _outcomes_settings(params: dict) -> tuple[dict, float, list[float], prediction.ModelSettings]:
    """Notebook 03's params: (outcomes section, horizon, IBS time grid, model settings without the
    permutation importance, which is not an estimand and would cost ~8 CPU-s per replicate)."""
    o = params["outcomes"]
    horizon = float(o["horizon_days"])
    times = [horizon * (i + 1) / o["brier_grid_points"] for i in range(o["brier_grid_points"])]
    return o, horizon, times, prediction.ModelSettings.from_params({**o, "permutation_repeats": 0})


@dataclass
class OutcomesPopulation:
    """New people for the outcomes-stage truths: ``people`` population rows (``true_risk``, ``lp``
    (true log hazard), ``time_days``, ``event``, ``t_death_days``, ``t0_year``, true predictors), ``popx`` their
    predictors given the missingness of random cohort persons, PMM-imputed, with interactions."""

    people: pd.DataFrame
    popx: pd.DataFrame


@dataclass
class OutcomesCV:
    """Notebook 03's repeated CV of one replicate with its fold models' risks in new people.

    ``fold_risk[r][k]``: {model: (N,) risk by the horizon of the N population people from the
    model fitted without fold k of repeat r}; ``pooled``: {model: (R, N)}, each person's risk
    from the fold model of a random fold per repeat (equal shares), the population analogue of
    the pooled out-of-fold risks that the stage's ICI, subgroup and O/E estimates use;
    ``fold_ibs``: :func:`true_integrated_brier` of each Cox fold model's survival curves in the
    N people (R x k values)."""

    rcv: validation.RepeatedCV
    fold_risk: list[list[dict[str, np.ndarray]]]
    pooled: dict[str, np.ndarray]
    fold_ibs: list[float]


def outcomes_population(cohort: pd.DataFrame, seed: int, params: dict, pop: dict) -> OutcomesPopulation:
    """``pop["population"]`` given the missing predictors of the replicate's cohort (each person
    the missingness pattern of a random cohort person; the generator's missingness is MCAR) and
    imputed by one PMM imputation (:func:`pmed.imputation.mice`, predictors only), as the
    stage's test folds are."""
    o, _, _, settings = _outcomes_settings(params)
    features = list(settings.features)
    people = pop["population"].reset_index(drop=True)
    imputed = impute_like_cohort(cohort, people, features, np.random.default_rng([seed, 305]), seed + 306,
                                 o["mice_max_iter"])
    return OutcomesPopulation(people, sv.add_interactions(imputed, settings.interactions))


def impute_like_cohort(cohort: pd.DataFrame, people: pd.DataFrame, features: list[str], rng: np.random.Generator,
                       seed: int, max_iter: int) -> pd.DataFrame:
    """``people[features]`` (population rows, true values) with the missingness pattern of a
    random ``cohort`` person each (``rng``), imputed by one PMM imputation (:func:`pmed.imputation.mice`,
    ``seed``, predictors only). Rows in ``people`` order."""
    pattern = cohort[features].isna().to_numpy()[rng.integers(0, len(cohort), size=len(people))]
    return mice(people[features].mask(pattern), features, m=1, seed=seed, max_iter=max_iter)[0]


def outcomes_cv(cohort: pd.DataFrame, seed: int, params: dict, population: OutcomesPopulation) -> OutcomesCV:
    """Notebook 03's :func:`pmed.validation.repeated_cv` (same seeds, fold models kept) and the
    fold models' risks in ``population``."""
    o, horizon, times, settings = _outcomes_settings(params)
    time_, event = cohort["time_days"].to_numpy(float), cohort["event"].to_numpy(int)
    endpoint = metrics.horizon_outcome(time_, event, horizon)
    rcv = validation.repeated_cv(cohort, "time_days", "event", endpoint["y"].to_numpy(), endpoint["ipcw"].to_numpy(),
                                 times, settings, n_folds=o["cv_folds"], n_repeats=o["cv_repeats"],
                                 seeds={"impute": seed + 301, "cv": seed + 302, "gb": seed + 303},
                                 mice_max_iter=o["mice_max_iter"], n_jobs=1, keep_models=True)
    true_surv = true_survival_at(population.people["lp"].to_numpy(float), times)
    fold_risk, fold_ibs = [], []
    for repeat in rcv.models:
        fold_risk.append([])
        for m in repeat:
            risk, surv = prediction.predict_models(m, population.popx, times)
            fold_risk[-1].append(risk)
            fold_ibs.append(true_integrated_brier(true_surv, surv, times))
    n = len(population.people)
    fold_of = np.random.default_rng([seed, 307]).integers(0, o["cv_folds"], size=(len(fold_risk), n))
    pooled = {name: np.stack([np.stack([f[name] for f in repeat])[fold_of[r], np.arange(n)]
                              for r, repeat in enumerate(fold_risk)]) for name in prediction.MODELS}
    return OutcomesCV(rcv, fold_risk, pooled, fold_ibs)


def least_false_log_or(people: pd.DataFrame, features: list[str], interactions: list[str],
                       horizon: float) -> dict[str, float]:
    """Log odds ratios of death by ``horizon`` that notebook 03's logistic model (main effects
    ``features`` + product terms ``interactions``) converges to: its fit (unweighted, no
    censoring) to the population rows ``people`` with the TRUE covariate values and the true
    status 1[``t_death_days`` <= horizon]. {term: log-OR} for features then interactions.

    The target is the full-data model on true covariates, not the model on covariates imputed
    as the stage imputes them (predictors only, no outcome): that imputation attenuates the
    log-ORs of the imputed columns, a bias of the method, not a different scientific quantity.
    The model is misspecified (the generator's risk is a Weibull PH model with tumour traits),
    so these are least-false values, not the generator's coefficients."""
    x = sv.add_interactions(people, interactions)[[*features, *interactions]].astype(float)
    died = (people["t_death_days"].to_numpy(float) <= horizon).astype(float)
    fit = prediction.fit_weighted_logistic(x, died, np.ones(died.size))
    return {t: float(fit.params[t]) for t in x.columns}


def true_survival_at(lp: np.ndarray, times) -> np.ndarray:
    """(N, k) true P(T > t) at each of ``times`` (days) of people with true log hazard ``lp``
    (shape (N,), the generator's Weibull PH model). Death days are whole days rounded up
    (:func:`pmed.demo.model.weibull_time`), so T > t iff the continuous time exceeds floor(t)."""
    return np.column_stack([model.survival_at(float(np.floor(t)), np.asarray(lp, dtype=float)) for t in times])


def true_integrated_brier(true_surv: np.ndarray, surv: np.ndarray, times) -> float:
    """What the stage's integrated Brier score (:func:`pmed.metrics.integrated_brier_score`, IPCW)
    of predicted survival ``surv`` estimates in people whose true survival is ``true_surv``
    (both (N, k) at the k ``times``): the uncensored Brier score at t, mean of
    S (1 - s)^2 + (1 - S) s^2 (S true, s predicted: the expectation of (1[T > t] - s)^2),
    integrated by the trapezoid rule over ``times`` and divided by their range, as the estimator."""
    S, s = np.asarray(true_surv, dtype=float), np.asarray(surv, dtype=float)
    times = np.asarray(times, dtype=float)
    if S.shape != s.shape or S.ndim != 2 or S.shape[1] != times.size or times.size < 2:
        raise ValueError(f"true_integrated_brier: need (N, k) curves at k >= 2 times, got {S.shape}, {s.shape}, "
                         f"{times.size} times")
    brier = np.mean(S * (1 - s) ** 2 + (1 - S) * s**2, axis=0)
    return float(np.trapezoid(brier, times) / (times[-1] - times[0]))


def run_calibration(cohort: pd.DataFrame, seed: int, params: dict, population: OutcomesPopulation, cv: OutcomesCV,
                    n_boot: int) -> list[dict]:
    """Notebook 03: repeated k-fold CV (PMM imputation redrawn per repeat); calibration slope and
    intercept per test fold, averaged over the R x k folds (:func:`pmed.validation.fold_calibration`),
    Harrell C, Uno C, Brier and the smoothed-calibration errors ICI, E50, E90 of the pooled
    out-of-fold risks of each repeat, averaged over the repeats; percentile bootstrap CIs over
    people with the fold models fixed (``n_boot`` resamples: the simulation's own count, params
    ``simulation.calibration_n_bootstrap``).

    Truth (the stage's estimand, data-adaptive), in new people (:func:`outcomes_population`):
    slope / intercept / C / Brier: the mean over the replicate's R x k fold models of the same
    measure (:func:`pmed.calibration.calibration_slope_intercept` with the true 365-day risk as
    fractional outcome; :func:`population_discrimination`); ICI / E50 / E90: the mean over the
    repeats of :func:`true_calibration_errors` of the pooled fold-model risks (``cv.pooled``).
    The ICI estimate is a mean absolute error of a smoothed curve: its sampling noise adds to it
    (finite-sample upward bias, larger when the model is well calibrated).

    Also the rest of the stage's CI table (:data:`POOLED_STATS`): IPA (truth 1 - Brier /
    :func:`null_brier` per fold model), O/E (mean true risk / mean risk), sensitivity, PPV and net
    benefit at ``outcomes.high_risk_threshold`` (:func:`true_threshold_metrics`; left out for a
    model whose small counts make the stage hide them, ``validation.release_threshold_metrics``,
    and PPV when no one is flagged),
    each of the pooled fold-model risks averaged over the repeats; and the paired differences of
    :data:`PAIRS` (``validation.DIFF_METRICS``: Harrell C, Uno C, Brier, IPA, ICI) from the same
    resamples, truth = difference of the two models' truths ("reject" = CI excludes 0).
    """
    o, horizon, times, _ = _outcomes_settings(params)
    rcv, people = cv.rcv, population.people
    time_, event = cohort["time_days"].to_numpy(float), cohort["event"].to_numpy(int)
    threshold = float(o["high_risk_threshold"])
    cis = validation.bootstrap_performance(time_, event, rcv.risk, horizon, n_boot, seed + 304,
                                           survival={"cox": rcv.cox_survival}, times=times, pairs=PAIRS,
                                           max_rows=o["bootstrap_max_rows"], n_knots=o["calibration_knots"],
                                           threshold=threshold, n_jobs=1, fold=rcv.fold)
    y = metrics.horizon_outcome(time_, event, horizon)["y"].to_numpy()
    cis, _ = validation.release_threshold_metrics(cis, y, rcv.risk, threshold, params["common"]["min_cell_size"])
    true_risk = people["true_risk"].to_numpy()
    brier_null = null_brier(true_risk)
    per_model = {name: [] for name in prediction.MODELS}
    for pred in (f for repeat in cv.fold_risk for f in repeat):
        for name, p in pred.items():
            si = calibration.calibration_slope_intercept(true_risk, np.clip(p, 1e-9, 1 - 1e-9))
            disc = population_discrimination(people, p, horizon)
            per_model[name].append({"calibration_slope": si["slope"], "calibration_intercept": si["intercept"],
                                    "ipa": 1 - disc["brier"] / brier_null, **disc})
    rows, truths = [], {}
    for name, fits in per_model.items():
        truth = {stat: float(np.mean([f[stat] for f in fits])) for stat in (*STATS, "ipa")}
        pooled = [{**true_calibration_errors(true_risk, p), **true_threshold_metrics(true_risk, p, threshold),
                   "oe_ratio": float(true_risk.mean() / p.mean())} for p in cv.pooled[name]]
        truth.update({stat: float(np.mean([e[stat] for e in pooled])) for stat in (*ERROR_STATS, *POOLED_STATS)})
        truths[name] = truth
        for stat, label in {**STATS, "ipa": "IPA (365 days)", **ERROR_STATS, **POOLED_STATS}.items():
            ci = cis[f"{name}.{stat}"]
            if ci.get("suppressed") or not np.isfinite(ci["estimate"]):  # hidden by the stage, or PPV with
                continue  # no one flagged (NaN)
            rows.append(_row("calibration", f"{label} {name}", ci["estimate"], ci["ci_low"], ci["ci_high"],
                             truth[stat], reject=np.nan, null_true=False, ci_kind="percentile bootstrap"))
    ibs = cis["cox.ibs"]
    rows.append(_row("calibration", "integrated Brier score cox", ibs["estimate"], ibs["ci_low"], ibs["ci_high"],
                     float(np.mean(cv.fold_ibs)), reject=np.nan, null_true=False, ci_kind="percentile bootstrap"))
    for a, b in PAIRS:
        for stat in validation.DIFF_METRICS:
            ci = cis[f"{a}-{b}.{stat}"]
            rows.append(_row("calibration", f"{DIFF_LABELS[stat]} {a} - {b}", ci["estimate"], ci["ci_low"],
                             ci["ci_high"], truths[a][stat] - truths[b][stat], null_true=False,
                             ci_kind="percentile bootstrap"))
    return rows


PAIRS = (("gbm", "cox"), ("logistic", "cox"))
"""Notebook 03's paired model differences (``PAIRS``: boosting and logistic vs the Cox model)."""
STATS = {"calibration_slope": "calibration slope", "calibration_intercept": "calibration intercept",
         "harrell_c": "Harrell C", "uno_c": "Uno C (365 days)", "brier": "Brier score (365 days)"}
"""Outcomes-stage metrics of the ``calibration`` group: key of its bootstrap table -> row label."""
ERROR_STATS = {"ici": "ICI (365 days)", "e50": "E50 (365 days)", "e90": "E90 (365 days)"}
"""Smoothed-calibration errors (Austin & Steyerberg 2019) of the ``calibration`` group."""
POOLED_STATS = {"oe_ratio": "O/E", "sensitivity": "sensitivity at threshold", "ppv": "PPV at threshold",
                "net_benefit": "net benefit at threshold"}
"""Further metrics of notebook 03's CI table (``validation.ci_table_wide``) in the ``calibration``
group, their truths from the pooled fold-model risks (``OutcomesCV.pooled``); the threshold
metrics at ``outcomes.high_risk_threshold`` (the stage hides them when a count is small; the
simulation keeps them). IPA ("IPA (365 days)") is the CI table's other metric, its truth per
fold model (a linear function of the Brier score)."""
DIFF_LABELS = {"harrell_c": "Harrell C", "uno_c": "Uno C (365 days)", "brier": "Brier score (365 days)",
               "ipa": "IPA (365 days)", "ici": "ICI (365 days)"}
"""Row labels of the paired differences (:data:`pmed.validation.DIFF_METRICS`)."""
TRUTH_KNOTS = 5  # knots of the spline of E[true risk - p | p] in the population (the stage: outcomes.calibration_knots)


def true_calibration_errors(true_risk: np.ndarray, risk: np.ndarray, n_knots: int = TRUTH_KNOTS) -> dict[str, float]:
    """ICI, E50, E90 (and Emax) of predicted risks ``risk`` whose true risks are ``true_risk``
    (shape (N,) each, N large: a population sample): |p - E[r | p]| with E[r | p] = p + the
    least-squares fit of r - p on a restricted cubic spline (:func:`pmed.validation.rcs_basis`)
    of cloglog(p) with ``n_knots`` knots, the stage's scale of p.

    What the stage's smoothed observed risk (a Cox model of the observed follow-up on a 3-knot
    spline) estimates when the true risk is known: no censoring model is needed, and with
    N = 20,000 a 5-knot spline's variance is negligible, so the finer smoother is used (less
    smoothing bias). Fitting r - p rather than r makes perfectly calibrated risks (r = p) give
    exactly 0."""
    r, p = np.asarray(true_risk, dtype=float), np.asarray(risk, dtype=float)
    x = np.log(-np.log1p(-np.clip(p, 1e-10, 1 - 1e-10)))
    X = np.column_stack([np.ones(p.size), validation.rcs_basis(x, validation.rcs_knots(x, n_knots))])
    coef = np.linalg.lstsq(X, r - p, rcond=None)[0]
    return validation.calibration_errors(p + X @ coef, p)


def null_brier(true_risk: np.ndarray) -> float:
    """Brier score at the horizon of the null model (everyone given the overall risk pbar = mean
    true risk) in people with true risks r: mean of r (1 - pbar)^2 + (1 - r) pbar^2 = pbar (1 - pbar),
    the denominator of IPA = 1 - Brier / null Brier (:func:`pmed.validation.performance`)."""
    pbar = float(np.mean(true_risk))
    return pbar * (1 - pbar)


def true_threshold_metrics(true_risk: np.ndarray, risk: np.ndarray, threshold: float) -> dict[str, float]:
    """What the stage's sensitivity, PPV and net benefit of "risk >= ``threshold``" estimate (IPCW
    counts of deaths by the horizon) in people with true risks r, shape (N,) each: with
    f = 1[risk >= threshold], sensitivity = sum r f / sum r, PPV = sum r f / sum f (NaN when
    no one is flagged), net benefit = mean(r f) - mean((1 - r) f) t / (1 - t)
    (:func:`pmed.calibration.net_benefit` with r for y)."""
    r = np.asarray(true_risk, dtype=float)
    f = np.asarray(risk, dtype=float) >= threshold
    tp = float(np.sum(r * f))
    return {"sensitivity": tp / float(r.sum()), "ppv": tp / f.sum() if f.any() else float("nan"),
            "net_benefit": (tp - float(np.sum((1 - r) * f)) * threshold / (1 - threshold)) / r.size}


def outcome_subgroups(sex_female, age_years, arm, age_edges) -> dict[str, np.ndarray]:
    """Notebook 03's subgroups: sex (1 = female, else male), age band
    (:func:`pmed.validation.age_bands` of ``outcomes.subgroup_age_edges``), arm label."""
    return {"sex": np.where(np.asarray(sex_female) == 1, "female", "male"),
            "age band (years)": validation.age_bands(age_years, age_edges),
            "arm": np.asarray(arm, dtype=object).astype(str)}


SUBGROUP_STATS = {"harrell_c": "Harrell C", "calibration_intercept": "calibration intercept", "oe_ratio": "O/E"}
"""Subgroup metrics notebook 03 prints (Cox model) -> row label."""


def subgroup_truth(people: pd.DataFrame, risk: np.ndarray) -> dict[str, float]:
    """What :func:`pmed.validation.subgroup_performance` estimates for risks ``risk`` of the
    population rows ``people`` (one subgroup): Harrell's C on the observed times (the
    generator's censoring), the calibration intercept against the true risk
    (:func:`pmed.calibration.calibration_slope_intercept`) and O/E = mean true risk / mean
    predicted risk."""
    r = people["true_risk"].to_numpy(float)
    return {"harrell_c": metrics.harrell_c(people["time_days"].to_numpy(float), people["event"].to_numpy(int), risk),
            "calibration_intercept": calibration.calibration_slope_intercept(
                r, np.clip(risk, 1e-9, 1 - 1e-9))["intercept"],
            "oe_ratio": float(r.mean() / np.mean(risk))}


def arm_labels(frame: pd.DataFrame) -> np.ndarray:
    """Arm label of each row from the ``arm_<label>`` indicators (reference arm when all are 0)."""
    out = np.full(len(frame), model.REFERENCE_ARM, dtype=object)
    for arm, col in model.ARM_COLUMN.items():
        out[frame[col].to_numpy() == 1] = arm
    return out


def run_subgroups(cohort: pd.DataFrame, seed: int, params: dict, population: OutcomesPopulation, cv: OutcomesCV,
                  n_boot: int) -> list[dict]:
    """Notebook 03's :func:`pmed.validation.subgroup_performance` of the Cox model's out-of-fold
    risks (sex, age band, arm; groups with a small count suppressed and skipped, as the stage;
    ``n_boot`` resamples). Truth: mean over the repeats of :func:`subgroup_truth` of the pooled
    fold-model risks (``cv.pooled``) in the population's persons of the same subgroup."""
    o, horizon, _, _ = _outcomes_settings(params)
    edges = o["subgroup_age_edges"]
    groups = outcome_subgroups(cohort["sex_female"], cohort["age_years"], cohort["treatment"], edges)
    sub = validation.subgroup_performance(cohort["time_days"].to_numpy(float), cohort["event"].to_numpy(int),
                                          cv.rcv.risk["cox"], groups, horizon, n_boot, seed + 305,
                                          params["common"]["min_cell_size"], max_rows=o["bootstrap_max_rows"])
    people = population.people
    pop_groups = outcome_subgroups(people["sex_female"], people["age_years"], arm_labels(people), edges)
    rows = []
    for g in sub[~sub["suppressed"]].itertuples():
        members = pop_groups[g.variable] == g.group
        truths = [subgroup_truth(people[members], p[members]) for p in cv.pooled["cox"]]
        for stat, label in SUBGROUP_STATS.items():
            rows.append(_row("subgroups", f"{label} cox, {g.variable} {g.group}", getattr(g, stat),
                             getattr(g, f"{stat}_ci_low"), getattr(g, f"{stat}_ci_high"),
                             float(np.mean([t[stat] for t in truths])), reject=np.nan, null_true=False,
                             ci_kind="percentile bootstrap"))
    return rows


TEMPORAL_STATS = {**STATS, "oe_ratio": "O/E", "ici": "ICI (365 days)"}
"""Metrics of the ``temporal`` group (notebook 03's temporal-validation table) -> row label."""


def first_imputation(cohort: pd.DataFrame, seed: int, params: dict) -> pd.DataFrame:
    """Notebook 03's ``data0``: the cohort with its predictors imputed once by PMM as the first CV
    repeat (predictors only, seed + 301), interaction columns added."""
    o, _, _, settings = _outcomes_settings(params)
    return sv.add_interactions(mice(cohort, list(settings.features), m=1, seed=seed + 301,
                                    max_iter=o["mice_max_iter"])[0], settings.interactions)


def run_temporal(cohort: pd.DataFrame, seed: int, params: dict, population: OutcomesPopulation,
                 n_boot: int, data0: pd.DataFrame) -> list[dict]:
    """Notebook 03's temporal validation: the three models fitted on the persons with t0 year <=
    ``outcomes.temporal_train_until_year`` (predictors imputed once, as the stage's first
    repeat, ``data0`` of :func:`first_imputation`), :func:`pmed.validation.bootstrap_performance` of their risks in the later persons
    (``n_boot`` resamples; paired C differences vs Cox).

    Truth: the same measures of these fitted models in the population's persons with a later t0
    year (the generator's hazard has no calendar trend; case mix (arm uptake) and follow-up do
    change with the year): slope / intercept against the true risk, C and Brier by
    :func:`population_discrimination`, O/E = mean true risk / mean risk, ICI by
    :func:`true_calibration_errors`."""
    o, horizon, times, settings = _outcomes_settings(params)
    split = o["temporal_train_until_year"]
    time_, event = cohort["time_days"].to_numpy(float), cohort["event"].to_numpy(int)
    dev, val = validation.temporal_split(cohort["t0_year"], split, params["common"]["min_cell_size"])
    end_dev = metrics.horizon_outcome(time_[dev], event[dev], horizon)
    fitted = prediction.fit_models(data0.iloc[dev], "time_days", "event", end_dev["y"], end_dev["ipcw"], settings,
                                   seed + 303)
    risk_val, surv_val = prediction.predict_models(fitted, data0.iloc[val], times)
    pairs = [("gbm", "cox"), ("logistic", "cox")]
    cis = validation.bootstrap_performance(time_[val], event[val], risk_val, horizon, n_boot, seed + 306,
                                           survival={"cox": surv_val[None]}, times=times, pairs=pairs,
                                           max_rows=o["bootstrap_max_rows"], n_knots=o["calibration_knots"], n_jobs=1)
    later = (population.people["t0_year"] > split).to_numpy()
    people = population.people[later]
    r = people["true_risk"].to_numpy()
    pred, _ = prediction.predict_models(fitted, population.popx[later], times)
    truth = {}
    for name, p in pred.items():
        si = calibration.calibration_slope_intercept(r, np.clip(p, 1e-9, 1 - 1e-9))
        truth[name] = {"calibration_slope": si["slope"], "calibration_intercept": si["intercept"],
                       "oe_ratio": float(r.mean() / p.mean()), "ici": true_calibration_errors(r, p)["ici"],
                       **population_discrimination(people, p, horizon)}
    later_years = f"(t0 year > {split})"
    rows = [_row("temporal", f"{label} {name} {later_years}", cis[f"{name}.{stat}"]["estimate"], cis[f"{name}.{stat}"]["ci_low"],
                 cis[f"{name}.{stat}"]["ci_high"], truth[name][stat], reject=np.nan, null_true=False,
                 ci_kind="percentile bootstrap")
            for name in prediction.MODELS for stat, label in TEMPORAL_STATS.items()]
    for a, b in pairs:
        ci = cis[f"{a}-{b}.harrell_c"]
        true = truth[a]["harrell_c"] - truth[b]["harrell_c"]
        rows.append(_row("temporal", f"Harrell C {a} - {b} {later_years}", ci["estimate"], ci["ci_low"], ci["ci_high"], true,
                         null_true=False, ci_kind="percentile bootstrap"))
    return rows


def run_outcomes_group(group: str, cohort: pd.DataFrame, seed: int, params: dict, pop: dict, n_boot: int,
                       shared: dict) -> list[dict]:
    """Run ``calibration`` (``n_boot`` bootstrap resamples), ``subgroups`` or ``temporal`` (half
    as many: their percentile CIs cost about 2 CPU-s per 200 resamples each); ``shared`` (one
    dict per replicate) keeps the imputed population and the repeated CV for the replicate's
    next outcomes group, so each is computed once."""
    if "population" not in shared:
        shared["population"] = outcomes_population(cohort, seed, params, pop)
    if group in ("temporal", "calibration") and "data0" not in shared:
        shared["data0"] = first_imputation(cohort, seed, params)
    split_boot = max(1, n_boot // 2)
    if group == "temporal":
        return run_temporal(cohort, seed, params, shared["population"], split_boot, shared["data0"])
    if "cv" not in shared:
        shared["cv"] = outcomes_cv(cohort, seed, params, shared["population"])
    if group == "subgroups":
        return run_subgroups(cohort, seed, params, shared["population"], shared["cv"], split_boot)
    return (run_calibration(cohort, seed, params, shared["population"], shared["cv"], n_boot)
            + run_logistic_or(cohort, params, shared["data0"], pop["logistic_log_or"]))


def run_logistic_or(cohort: pd.DataFrame, params: dict, data0: pd.DataFrame, truth: dict[str, float]) -> list[dict]:
    """Notebook 03's odds-ratio table: the IPCW-weighted logistic model of death by the horizon
    fitted to everyone with known status on ``data0`` (:func:`first_imputation`), robust (HC0)
    Wald CIs (:func:`pmed.prediction.fit_weighted_logistic`, ``odds_ratio_table``); one row per
    term on the log-OR scale. Truth: ``truth`` = :func:`least_false_log_or` of the population
    (true covariates, uncensored status; computed once per scenario)."""
    _, horizon, _, settings = _outcomes_settings(params)
    end = metrics.horizon_outcome(cohort["time_days"].to_numpy(float), cohort["event"].to_numpy(int), horizon)
    known = end["known"].to_numpy()
    fit = prediction.fit_weighted_logistic(data0.loc[known, settings.terms], end["y"].to_numpy()[known],
                                           end["ipcw"].to_numpy()[known], cov_type="HC0")
    ci = fit.conf_int()
    return [_row("calibration", f"log-OR {t} (logistic)", fit.params[t], ci.loc[t, 0], ci.loc[t, 1], truth[t],
                 se=fit.bse[t], ci_kind="Wald (HC0)") for t in settings.terms]


def population_discrimination(people: pd.DataFrame, risk: np.ndarray, horizon: float) -> dict[str, float]:
    """What the outcomes stage's Harrell C, Uno C and Brier score of ``risk`` (risk of death by
    ``horizon``) estimate, in the population rows ``people``: Harrell's C on the observed
    times (``time_days``, ``event``: the generator's censoring, which Harrell's C depends on);
    Uno's C as the concordance of uncensored death times (``t_death_days``) among pairs whose
    earlier death is by the horizon; the Brier score at the horizon from the true risk ``r``,
    mean of r (1 - p)^2 + (1 - r) p^2 (its IPCW estimate's uncensored target)."""
    t_death = people["t_death_days"].to_numpy(float)
    r = people["true_risk"].to_numpy(float)
    died = (t_death <= horizon).astype(int)
    return {"harrell_c": metrics.harrell_c(people["time_days"].to_numpy(float), people["event"].to_numpy(int), risk),
            "uno_c": metrics.harrell_c(np.minimum(t_death, horizon + 1.0), died, risk),
            "brier": float(np.mean(r * (1 - risk) ** 2 + (1 - r) * risk**2))}


PSEUDO_FEATURES = {  # name -> (trait, transform, noise SD on the transformed scale)
    "original_shape_MeshVolume": ("log_tumour_volume_ml", "exp", 0.10),
    "original_shape_Maximum3DDiameter": ("log_tumour_volume_ml", "cbrt", 0.08),
    "original_glcm_JointEntropy": ("heterogeneity", "linear", 0.05),
    "original_firstorder_Variance": ("heterogeneity", "linear", 0.10),
    "original_shape_Sphericity": ("irregularity", "neg", 0.05),
}
N_NOISE_FEATURES = 10  # pure-noise features original_glrlm_Noise<j>
PSEUDO_TRAITS = sorted({trait for trait, _, _ in PSEUDO_FEATURES.values()})


def pseudo_radiomics(latent: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Feature-level imaging: radiomics-named features from the persons' true tumour traits.

    Volume (log-normal noise, two correlated shape features), heterogeneity (two texture
    features), irregularity (sphericity; no effect on hazard) measured with the noise of
    :data:`PSEUDO_FEATURES`, plus :data:`N_NOISE_FEATURES` pure-noise features. Stands in for
    rendering CTs and running pyradiomics (not validated by this route).
    """
    n = len(latent)
    out = {}
    for name, (trait, kind, sd) in PSEUDO_FEATURES.items():
        x = latent[trait].to_numpy(float)
        if kind == "exp":
            out[name] = np.exp(x + rng.normal(0, sd, n))
        elif kind == "cbrt":
            out[name] = np.exp(x / 3 + rng.normal(0, sd, n))
        elif kind == "neg":
            out[name] = 1 - 0.5 * x + rng.normal(0, sd, n)
        else:
            out[name] = x + rng.normal(0, sd, n)
    for j in range(N_NOISE_FEATURES):
        out[f"original_glrlm_Noise{j}"] = rng.normal(0, 1, n)
    return pd.DataFrame(out, index=latent.index)


def true_fold_performance(preds: dict, people: pd.DataFrame, sample: pd.DataFrame, clinical: list[str],
                          rng: np.random.Generator, horizon: float) -> dict[str, dict[str, float]]:
    """What the stage's per-fold C, td-AUC and delta C estimate: the fold models' mean in new people.

    ``preds``: ``rm.cross_validated_predictions`` with ``keep_models``; ``people``: latent
    population rows (clinical columns, tumour traits, ``time_days``, ``event``: the generator's
    censoring, ``t_death_days``), given :func:`pseudo_radiomics` features and, per person, the
    missing clinical values of a random person of ``sample`` (the analysed persons), as the test
    folds have. Per fold model: Harrell's C of its linear predictor on the observed times; the
    cumulative/dynamic AUC at ``horizon`` on the uncensored death times (cases: death by the
    horizon, controls: alive after it; ties 1/2); C(model) - C(clinical) (paired, same model
    fits). Returns {"c_index" | "td_auc" | "delta_c": {model: mean over the fold models}}
    ("delta_c" for every model but ``clinical``)."""
    base = sorted({c for t in clinical for c in t.split(":")})
    pattern = sample[base].isna().to_numpy()[rng.integers(0, len(sample), size=len(people))]
    frame = sv.add_interactions(people[base].mask(pattern).reset_index(drop=True), [t for t in clinical if ":" in t])
    frame = pd.concat([frame, pseudo_radiomics(people, rng).reset_index(drop=True)], axis=1)
    time_, event = people["time_days"].to_numpy(float), people["event"].to_numpy(int)
    case = people["t_death_days"].to_numpy(float) <= horizon
    c_index, auc = {}, {}
    for name, p in preds.items():
        lps = [m.predict(frame) for m in p["models"]]
        c_index[name] = np.array([metrics.harrell_c(time_, event, lp) for lp in lps])
        auc[name] = np.array([_auc(lp[case], lp[~case]) for lp in lps])
    return {"c_index": {k: float(v.mean()) for k, v in c_index.items()},
            "td_auc": {k: float(v.mean()) for k, v in auc.items()},
            "delta_c": {k: float(np.mean(v - c_index["clinical"])) for k, v in c_index.items() if k != "clinical"}}


def _auc(cases: np.ndarray, controls: np.ndarray) -> float:
    """P(score of a case > score of a control), ties 1/2 (Mann-Whitney, by midranks)."""
    ranks = stats.rankdata(np.concatenate([cases, controls]))
    n1, n0 = cases.size, controls.size
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def run_imaging(cohort: pd.DataFrame, latent: pd.DataFrame, seed: int, params: dict, n_imaged: int,
                image_signal: bool, n_permutations: int, pop: dict) -> list[dict]:
    """Notebook 06 (``rm.added_value``) on ``n_imaged`` random cohort persons with
    :func:`pseudo_radiomics` features; ``n_permutations`` of the LR test (the simulation's own
    count); C, td-AUC and delta-C truths :func:`true_fold_performance` on ``pop["imaging_population"]``."""
    s = params["imaging_analysis"]
    rng = np.random.default_rng([seed, 6])
    pick = np.sort(rng.choice(len(cohort), size=min(n_imaged, len(cohort)), replace=False))
    clinical = list(s["clinical_terms"])
    feats = pseudo_radiomics(latent.iloc[pick], rng)
    data = sv.add_interactions(cohort.iloc[pick].reset_index(drop=True), [t for t in clinical if ":" in t])
    data = pd.concat([data, feats.reset_index(drop=True)], axis=1)
    time_, event = data["time_days"].to_numpy(float), data["event"].to_numpy(int)
    templates = rm.model_templates(clinical, rm.radiomic_columns(data), [], s)
    res = rm.added_value(data, time_, event, templates, {**s, "n_permutations": n_permutations}, seed=seed + 600,
                         n_jobs=1, keep_models=True)
    d, lr = res["comparison"]["delta_c"]["combined"], res["lr_test"]
    null = not image_signal
    true = true_fold_performance(res["predictions"], pop["imaging_population"], data, clinical,
                                 np.random.default_rng([seed, 8]), float(s["horizon_days"]))
    per_model = [_row("imaging", f"{label} {name}", ci["estimate"], ci["ci_low"], ci["ci_high"], true[kind][name],
                      se=ci["se"], reject=np.nan, null_true=False, ci_kind="CV-fold corrected t")
                 for kind, label in (("c_index", "Harrell C"), ("td_auc", "td-AUC (365 days)"))
                 for name, ci in res["comparison"][kind].items()]
    return [
        _row("imaging", "delta C combined vs clinical (CI above 0)", d["estimate"], d["ci_low"], d["ci_high"],
             true["delta_c"]["combined"], se=d["se"], reject=bool(d["ci_low"] > 0), null_true=null,
             ci_kind="CV-fold corrected t"),
        _row("imaging", f"permutation LR test of the signature (p <= {s['alpha']})", lr["p"], np.nan, np.nan,
             np.nan, se=np.nan, reject=bool(lr["p"] <= s["alpha"]), null_true=null, ci_kind="test"),
        _row("imaging", "naive chi-square LR test (p < 0.05; superseded)", lr["p_chi2"], np.nan, np.nan, np.nan,
             se=np.nan, reject=bool(lr["p_chi2"] < 0.05), null_true=null, ci_kind="test"),
        *per_model,
    ]
