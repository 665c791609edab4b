"""Recovery of the generating model over replicate data sets (no single chosen draw).

Each replicate re-simulates the latent person table of the CI size (1,500 persons) with its
own random stream ``default_rng([seed, REPLICATE_STREAM, r])`` (seed from params.yaml), fits
the correctly specified models and checks properties a correct generator + estimator meets
with high probability: per-coefficient 95% CI coverage over the replicates (binomial lower
bound), pooled coverage near 95%, and no bias beyond Monte-Carlo error. The bounds are set so
that a correct model fails them with probability below about 1% (stated per test). A heavier
version at the default size is marked slow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from lifelines import CoxPHFitter
from scipy import stats

from pmed import config
from pmed.demo import model

PARAMS = config.load_params()
SEED = PARAMS["common"]["seed"]
DEMO = PARAMS["demo"]
REPLICATE_STREAM = 7  # keeps replicate streams apart from the generator's chunk streams [seed, k]
N_CI, R_CI = int(DEMO["sizes"]["ci"]["n_persons"]), 30


def _replicate(r: int, n: int) -> pd.DataFrame:
    """Eligible latent rows of replicate ``r`` with the interaction columns of the true model."""
    lat = model.simulate_latent(n, 1, np.random.default_rng([SEED, REPLICATE_STREAM, r]), DEMO["rates"])
    e = lat[lat["reason"] == "eligible"].copy()
    for term in [*model.LOG_HR, *model.PNEUMONITIS_LOG_HR]:
        if ":" in term:
            e[term] = model.term_value(e, term)
    e["pneumonitis_event"] = (e["pneumonitis_status"] == 1).astype(int)
    e["arm_code"] = e["arm"].map({a: i for i, a in enumerate(model.ARMS)})
    return e


def _fits(e: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Estimate, CI per coefficient of the three correctly specified models, with the truth."""
    out = {}
    death = [*model.LOG_HR, *model.TRAIT_LOG_HR]
    fit = CoxPHFitter().fit(e[[*death, "time_days", "event"]], "time_days", "event")
    truth = {**model.LOG_HR, **model.TRAIT_LOG_HR}
    out["death_cox"] = pd.DataFrame({"est": fit.params_, "lo": fit.confidence_intervals_.iloc[:, 0],
                                     "hi": fit.confidence_intervals_.iloc[:, 1], "true": pd.Series(truth)})
    pn = list(model.PNEUMONITIS_LOG_HR)
    fit = CoxPHFitter().fit(e[[*pn, "pneumonitis_time_days", "pneumonitis_event"]], "pneumonitis_time_days",
                            "pneumonitis_event")
    out["pneumonitis_cause_specific_cox"] = pd.DataFrame(
        {"est": fit.params_, "lo": fit.confidence_intervals_.iloc[:, 0], "hi": fit.confidence_intervals_.iloc[:, 1],
         "true": pd.Series(model.PNEUMONITIS_LOG_HR)})
    cols = [c for c in model.PROPENSITY["io"] if c != "intercept"]
    x = e[cols].astype(float) - pd.Series({c: model.PROPENSITY_CENTRE.get(c, 0.0) for c in cols})
    mn = sm.MNLogit(e["arm_code"], sm.add_constant(x)).fit(disp=0)
    ci = mn.conf_int()
    rows = []
    for j, arm in enumerate(model.ARMS[1:]):
        for c in ["const", *cols]:
            true = model.PROPENSITY[arm]["intercept" if c == "const" else c]
            lo, hi = ci.loc[(str(j + 1), c)]
            rows.append({"term": f"{arm}:{c}", "est": mn.params.loc[c, j], "lo": lo, "hi": hi, "true": true})
    out["propensity_mnlogit"] = pd.DataFrame(rows).set_index("term")
    return out


def _stack(n: int, reps: int) -> dict[str, pd.DataFrame]:
    runs = [_fits(_replicate(r, n)) for r in range(reps)]
    return {k: pd.concat([run[k].assign(rep=i) for i, run in enumerate(runs)]) for k in runs[0]}


def _check_coverage(res: pd.DataFrame, reps: int) -> None:
    """Per term: coverage count >= the 1e-4 binomial quantile at 95%; pooled coverage within
    +-4 binomial SE of 0.95; |mean error| <= 4 Monte-Carlo SE."""
    res = res.assign(cover=(res["lo"] <= res["true"]) & (res["true"] <= res["hi"]), err=res["est"] - res["true"])
    by = res.groupby(level=0)
    floor = stats.binom.ppf(1e-4, reps, 0.95)
    low = by["cover"].sum()
    assert (low >= floor).all(), low[low < floor].to_dict()
    pooled = res["cover"].mean()
    se = np.sqrt(0.95 * 0.05 / len(res))
    assert abs(pooled - 0.95) <= 4 * se, pooled
    z = by["err"].mean() / (by["err"].std() / np.sqrt(reps))
    assert (z.abs() <= 4).all(), z[z.abs() > 4].to_dict()


@pytest.fixture(scope="module")
def ci_replicates() -> dict[str, pd.DataFrame]:
    return _stack(N_CI, R_CI)


@pytest.mark.parametrize("family", ["death_cox", "pneumonitis_cause_specific_cox", "propensity_mnlogit"])
def test_true_models_are_recovered_over_replicates(ci_replicates, family):
    """30 replicates at the CI size; every coefficient of the death Cox model (incl. arm x PD-L1
    and arm x driver interactions, traits), the pneumonitis cause-specific Cox model and the
    multinomial arm-assignment model."""
    _check_coverage(ci_replicates[family], R_CI)


def test_crude_arm_effects_are_confounded():
    """Crude Cox log-HR of io vs chemo lies well below the true marginal one (selection of
    high-PD-L1, driver-negative patients for io); large sample, so sampling error is small."""
    e = _replicate(0, 40_000)
    pair = e[e["arm"].isin(["chemo", "io"])]
    crude = CoxPHFitter().fit(pair[["arm_io", "time_days", "event"]], "time_days", "event").params_["arm_io"]
    tau = model.arm_log_hr(pair, "io", model.LOG_HR)
    u, lp_x = pair["u_death"].to_numpy(), pair["lp_x"].to_numpy()
    t0, t1 = model.weibull_time(u, lp_x), model.weibull_time(u, lp_x + tau)
    pooled = pd.DataFrame({"time": np.concatenate([t0, t1]), "event": 1, "arm": np.repeat([0, 1], len(u))})
    marginal = CoxPHFitter().fit(pooled, "time", "event").params_["arm"]
    assert crude < marginal - 0.1, (crude, marginal)


@pytest.mark.slow
def test_true_models_are_recovered_over_replicates_default_size():
    """As the CI test with 40 replicates of the default size (5,000 persons); about 1 minute."""
    n, reps = int(DEMO["sizes"]["default"]["n_persons"]), 40
    for res in _stack(n, reps).values():
        _check_coverage(res, reps)
