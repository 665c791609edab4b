"""Recovery of the generating model from the default-size demo data (known answers).

The latent table of the default size is re-simulated exactly as the generator made it
(``pmed.demo.generate.latent_chunk``); fits must cover every true coefficient with their
95% confidence intervals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from lifelines import CoxPHFitter

from pmed import config
from pmed.demo import generate as gen
from pmed.demo import model

PARAMS = config.load_params()
SEED = PARAMS["common"]["seed"]
DEMO = PARAMS["demo"]


@pytest.fixture(scope="module")
def eligible() -> pd.DataFrame:
    lat = gen.latent_chunk(SEED, DEMO, "default")
    assert DEMO["sizes"]["default"]["n_persons"] <= DEMO["chunk_size"], "default size must be one chunk"
    e = lat[lat["reason"] == "eligible"].copy()
    e["treated:pdl1_pct"] = e["treated"] * e["pdl1_pct"]
    return e


def _outside_ci(fit_params: pd.Series, ci: pd.DataFrame, truth: dict) -> list[str]:
    return [c for c, t in truth.items() if not ci.loc[c].iloc[0] <= t <= ci.loc[c].iloc[1]]


def test_cox_of_the_true_form_covers_every_true_log_hr(eligible):
    truth = {**model.LOG_HR, **model.TRAIT_LOG_HR}
    fit = CoxPHFitter().fit(eligible[[*truth, "time_days", "event"]], "time_days", "event")
    assert _outside_ci(fit.params_, fit.confidence_intervals_, truth) == []


def test_ehr_only_cox_still_covers_every_true_log_hr(eligible):
    """The survival stage omits the latent tumour traits; the demo keeps their effect moderate."""
    truth = dict(model.LOG_HR)
    fit = CoxPHFitter().fit(eligible[[*truth, "time_days", "event"]], "time_days", "event")
    assert _outside_ci(fit.params_, fit.confidence_intervals_, truth) == []
    assert eligible["event"].mean() > 0.5


def test_logistic_treatment_model_covers_every_true_coefficient(eligible):
    cols = [c for c in model.PROPENSITY if c != "intercept"]
    fit = sm.Logit(eligible["treated"], sm.add_constant(eligible[cols])).fit(disp=0)
    truth = dict(model.PROPENSITY)
    truth["const"] = truth.pop("intercept") - sum(
        model.PROPENSITY[c] * m for c, m in model.PROPENSITY_CENTRE.items())
    assert _outside_ci(fit.params, fit.conf_int(), truth) == []


def test_crude_treatment_effect_is_confounded(eligible):
    """Crude Cox HR of immunotherapy is far from the adjusted one (confounding by PD-L1, ECOG...)."""
    crude = CoxPHFitter().fit(eligible[["treated", "time_days", "event"]], "time_days", "event")
    adjusted = CoxPHFitter().fit(eligible[[*model.LOG_HR, "time_days", "event"]], "time_days", "event")
    avg_conditional = adjusted.params_["treated"] + adjusted.params_["treated:pdl1_pct"] * eligible["pdl1_pct"].mean()
    assert crude.params_["treated"] < avg_conditional - 0.1
    assert np.exp(crude.params_["treated"]) < 0.8
