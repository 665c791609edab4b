"""Demo regimens, driver status, pneumonitis outcome and heterogeneity: data vs generating model.

The OMOP tables are re-derived with plain pandas by the rules of the cohort contract (arm =
drugs started within 21 days of the first one; driver = last EGFR/ALK result up to t0;
pneumonitis = first pneumonitis record of an inpatient visit after t0) and compared with the
latent table. Population properties of the model are checked on a large latent sample.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pmed import config
from pmed.demo import generate as gen
from pmed.demo import model
from pmed.demo import vocabulary as v

PARAMS = config.load_params()
SEED = PARAMS["common"]["seed"]
DEMO = PARAMS["demo"]
TINY = {**DEMO, "sizes": {"tiny": {"n_persons": 400, "n_imaged": 0, "followup_share": 0.0}}}
GRACE_DAYS = 21


def _dates(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(**{c: pd.to_datetime(df[c]) for c in df.columns if c.endswith("_date")})


@pytest.fixture(scope="module")
def ci(tmp_path_factory) -> tuple[dict[str, pd.DataFrame], dict, pd.DataFrame]:
    out = tmp_path_factory.mktemp("demo_regimens")
    gen.generate(out, "ci", SEED, {**DEMO, "sizes": {"ci": {**DEMO["sizes"]["ci"], "n_imaged": 0}}})
    tables = {t: _dates(pd.read_parquet(out / "omop" / f"{t}.parquet"))
              for t in ("drug_exposure", "measurement", "condition_occurrence", "visit_occurrence")}
    truth = json.loads((out / "truth" / "ground_truth.json").read_text())
    lat = gen.latent_chunk(SEED, DEMO, "ci").set_index("person_id").loc[truth["eligible_person_ids"]]
    return tables, truth, lat


def _t0_and_regimen(drug: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    io, chemo = set(v.CONCEPT_SETS["immunotherapy"]), {v.CISPLATIN.concept_id, v.CARBOPLATIN.concept_id}
    d = drug[drug["drug_concept_id"].isin(io | chemo)].copy()
    d["cls"] = np.where(d["drug_concept_id"].isin(io), "io", "chemo")
    t0 = d.groupby("person_id")["drug_exposure_start_date"].min()
    d = d.merge(t0.rename("t0"), left_on="person_id", right_index=True)
    first = d[(d["drug_exposure_start_date"] - d["t0"]).dt.days <= GRACE_DAYS]
    regimen = first.groupby("person_id")["cls"].agg(lambda x: "chemo_io" if set(x) == {"io", "chemo"} else x.iloc[0])
    return t0, regimen


def test_first_line_regimen_and_t0_in_the_data_are_the_latent_arm(ci):
    tables, truth, lat = ci
    t0, regimen = _t0_and_regimen(tables["drug_exposure"])
    assert (regimen.loc[lat.index] == lat["arm"]).all()
    epoch = (t0.loc[lat.index] - pd.Timestamp("1970-01-01")).dt.days
    assert (epoch.to_numpy() == lat["t0_day"].to_numpy()).all()
    assert (t0.loc[lat.index].dt.year.to_numpy() == lat["t0_year"].to_numpy()).all()
    # chemo persons with later (second-line) immunotherapy exist and must stay "chemo"
    drug = tables["drug_exposure"]
    later_io = drug[drug["drug_concept_id"].isin(v.CONCEPT_SETS["immunotherapy"])].groupby("person_id").size()
    assert lat.loc[lat.index.isin(later_io.index), "arm"].eq("chemo").sum() > 10
    assert set(truth["arms"]["n_eligible_by_arm"]) == set(model.ARMS)


def test_driver_status_is_the_last_test_result_up_to_t0(ci):
    tables, _, lat = ci
    t0, _ = _t0_and_regimen(tables["drug_exposure"])
    m = tables["measurement"].drop(columns="measurement_id").drop_duplicates()  # injected duplicates
    m = m[m["measurement_concept_id"].isin(v.CONCEPT_SETS["driver_test"]) & m["person_id"].isin(lat.index)].merge(
        t0.rename("t0"), left_on="person_id", right_index=True)
    assert (m["measurement_date"] <= m["t0"]).all()
    m = m.sort_values(["person_id", "measurement_date"])
    assert not m.duplicated(["person_id", "measurement_date"]).any()  # EGFR and ALK never the same day
    last = m.groupby("person_id")["value_as_concept_id"].last().map({v.VALUE_CONCEPTS["positive"]: 1,
                                                                    v.VALUE_CONCEPTS["negative"]: 0})
    status = last.reindex(lat.index)
    tested = lat["driver_positive_observed"]
    assert (status[tested] == lat.loc[tested, "driver_positive"]).all()
    assert status[~tested].isna().all() and 0.03 < (~tested).mean() < 0.2
    # sequential testing: ALK only after a negative EGFR
    egfr = m[m["measurement_concept_id"] == v.EGFR_TEST.concept_id].set_index("person_id")
    alk_persons = m.loc[m["measurement_concept_id"] == v.ALK_TEST.concept_id, "person_id"]
    assert (egfr.loc[alk_persons, "value_as_concept_id"] == v.VALUE_CONCEPTS["negative"]).all()
    assert some_before_diagnosis_after(lat, m)


def some_before_diagnosis_after(lat: pd.DataFrame, m: pd.DataFrame) -> bool:
    """Some driver results fall between diagnosis and t0 (lost by an index-anchored window)."""
    day = (m["measurement_date"] - pd.Timestamp("1970-01-01")).dt.days
    return bool((day.to_numpy() > lat.loc[m["person_id"], "index_day"].to_numpy()).any())


def test_pneumonitis_outcome_rule_recovers_the_latent_events_and_ignores_noise(ci):
    tables, _, lat = ci
    t0, _ = _t0_and_regimen(tables["drug_exposure"])
    c = tables["condition_occurrence"]
    c = c[c["condition_concept_id"].isin(v.CONCEPT_SETS["pneumonitis"]) & c["person_id"].isin(lat.index)]
    visit = tables["visit_occurrence"].set_index("visit_occurrence_id")["visit_concept_id"]
    c = c.assign(visit=visit.loc[c["visit_occurrence_id"]].to_numpy()).merge(
        t0.rename("t0"), left_on="person_id", right_index=True)
    after = c["condition_start_date"] > c["t0"]
    first = c[after & (c["visit"] == v.INPATIENT_VISIT.concept_id)].groupby("person_id")["condition_start_date"].min()
    events = lat.index[lat["pneumonitis_status"] == 1]
    assert set(first.index) == set(events) and len(events) > 20
    days = (first - t0.loc[first.index]).dt.days
    assert (days.to_numpy() == lat.loc[first.index, "pneumonitis_time_days"].to_numpy()).all()
    # noise: records after t0 outside inpatient visits, and inpatient records before t0
    assert (after & (c["visit"] != v.INPATIENT_VISIT.concept_id)).sum() > 20
    assert (~after & (c["visit"] == v.INPATIENT_VISIT.concept_id)).sum() > 3
    # status 2 (death first) and 0 (censored) agree with the death outcome
    s = lat["pneumonitis_status"]
    assert (lat.loc[s == 2, "event"] == 1).all() and (lat.loc[s == 0, "event"] == 0).all()
    assert (lat.loc[s != 1, "pneumonitis_time_days"] == lat.loc[s != 1, "time_days"]).all()


def test_ground_truth_policy_and_marginal_effects_are_consistent(ci):
    _, truth, lat = ci
    te, pol = truth["treatment_effect"], truth["policy"]
    person = pd.DataFrame.from_dict(te["person_survival_365d"], orient="index")
    assert sorted(map(int, person.index)) == truth["eligible_person_ids"]
    np.testing.assert_allclose(person.mean().to_dict()["io"], te["marginal"]["survival_365d"]["io"], atol=1e-5)
    oracle = person.max(axis=1).mean()
    assert oracle == pytest.approx(pol["value_365d"]["oracle"], abs=1e-5)
    assert pol["oracle_gain_over_best_single_arm"] == pytest.approx(
        oracle - max(pol["value_365d"][f"treat_all_{a}"] for a in model.ARMS), abs=1e-5)
    assert {"arm_io", "arm_chemo_io", "arm_io:pdl1_pct", "arm_io:driver_positive", "driver_positive"} <= set(
        truth["log_hr"])
    assert "treated" not in truth["log_hr"]
    pn = truth["competing_outcomes"]["pneumonitis"]
    cif = pd.DataFrame(pn["cif_all_treated_with_arm"])
    assert (cif["io"] > cif["chemo"]).all() and (cif["chemo_io"] > cif["chemo"]).all()
    assert (cif.loc[["30", "90", "180", "365", "730"]].diff().dropna() > 0).all().all()
    hr = te["marginal"]["hazard_ratio"]
    assert hr["chemo_io"]["estimate"] < 1 and set(hr) == {"io", "chemo_io"}
    assert len(lat) == truth["n_eligible"]


def test_heterogeneity_is_clinically_meaningful_in_the_population():
    """Large latent sample: no arm is best for everyone; the oracle beats the best single arm by
    >= 3 points of 365-day survival; driver-positive patients mostly do worse on io than chemo;
    driver-negative PD-L1 >= 50% patients do best on io."""
    lat = model.simulate_latent(40_000, 1, np.random.default_rng([SEED, 11]), DEMO["rates"])
    e = lat[lat["reason"] == "eligible"]
    tau = np.column_stack([model.arm_log_hr(e, a, model.LOG_HR) for a in model.ARMS])
    s = model.survival_at(365.0, e["lp_x"].to_numpy()[:, None] + tau)
    gain = s.max(axis=1).mean() - s.mean(axis=0).max()
    assert gain >= 0.03, gain
    best = np.bincount(s.argmax(axis=1), minlength=3) / len(s)
    assert (best > 0.05).all(), best
    drv = e["driver_positive"].to_numpy() == 1
    assert (tau[drv, 1] > 0).mean() > 0.85
    high = ~drv & (e["pdl1_pct"].to_numpy() >= 50)
    assert (s[high].argmax(axis=1) == model.ARMS.index("io")).all()
    assert (s.argmax(axis=1)[drv & (e["pdl1_pct"].to_numpy() < 76)] == 0).all()  # chemo alone


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_heterogeneity_switch(tmp_path):
    """Default output equals heterogeneity=True passed explicitly (bytes); off: constant arm
    effects, the oracle gains nothing, covariates and arms are unchanged."""
    on, explicit, off = tmp_path / "on", tmp_path / "explicit", tmp_path / "off"
    gen.generate(on, "tiny", SEED, TINY)
    gen.generate(explicit, "tiny", SEED, TINY, heterogeneity=True)
    assert _hashes(on) == _hashes(explicit)
    truth = gen.generate(off, "tiny", SEED, TINY, heterogeneity=False)
    assert truth["heterogeneity"] is False
    assert all(b == 0.0 for k, b in truth["log_hr"].items() if k.startswith("arm_") and ":" in k)
    assert truth["log_hr"]["arm_io"] == model.CONSTANT_ARM_LOG_HR["arm_io"]
    assert truth["policy"]["oracle_gain_over_best_single_arm"] == pytest.approx(0.0, abs=1e-12)
    a = gen.latent_chunk(SEED, TINY, "tiny")
    b = gen.latent_chunk(SEED, TINY, "tiny", heterogeneity=False)
    pd.testing.assert_frame_equal(a[["pdl1_pct", "driver_positive", "arm", "t0_day"]],
                                  b[["pdl1_pct", "driver_positive", "arm", "t0_day"]])
    assert not a["t_death_days"].equals(b["t_death_days"])
    with pytest.raises(TypeError, match="demo.heterogeneity"):
        gen.generate(tmp_path / "bad", "tiny", SEED, {**TINY, "heterogeneity": "yes"})


def test_pneumonitis_cif_without_death_is_one_minus_survival():
    """Hand check: with a negligible death hazard CIF(t) = 1 - exp(-lambda t^rho e^lp)."""
    t = np.array([30.0, 365.0])
    cif = model.pneumonitis_cif(t, lp_death=np.array([-60.0]), lp_pneu=np.array([1.0]))
    exact = 1 - np.exp(-model.PNEUMONITIS_SCALE * t**model.PNEUMONITIS_SHAPE * np.e)
    np.testing.assert_allclose(cif[0], exact, rtol=1e-9)


def test_pneumonitis_cif_matches_monte_carlo_of_competing_latent_times():
    """Numeric integration vs 200,000 simulated (pneumonitis, death) latent time pairs; within
    4 binomial SE at each time."""
    rng = np.random.default_rng([SEED, 12])
    n = 200_000
    lp_d, lp_p = rng.normal(-0.2, 0.6, n) + 1.0, rng.normal(0.0, 0.8, n) + 3.0
    td = model.weibull_time(rng.random(n), lp_d, rounded=False)
    tp = model.pneumonitis_time(rng.random(n), lp_p)
    times = np.array(model.CIF_TIMES_DAYS, dtype=float)
    mc = np.array([((tp <= t) & (tp < td)).mean() for t in times])
    exact = model.pneumonitis_cif(times, lp_d[:20_000], lp_p[:20_000]).mean(axis=0)
    full = np.concatenate([model.pneumonitis_cif(times, lp_d[i:i + 20_000], lp_p[i:i + 20_000])
                           for i in range(0, n, 20_000)]).mean(axis=0)
    se = np.sqrt(full * (1 - full) / n)
    assert (np.abs(mc - full) < 4 * se).all(), (mc, full)
    assert np.abs(exact - full).max() < 0.01


def test_arm_probabilities_are_the_multinomial_logit():
    """Hand check at the centre: P(arm) = exp(intercept_a) / (1 + sum exp(intercept_b))."""
    centre = {c: model.PROPENSITY_CENTRE.get(c, 0.0) for c in model.PROPENSITY["io"] if c != "intercept"}
    p = model.arm_probabilities(model.propensity_logits(pd.DataFrame([centre])))[0]
    e_io, e_cio = np.exp(model.PROPENSITY["io"]["intercept"]), np.exp(model.PROPENSITY["chemo_io"]["intercept"])
    np.testing.assert_allclose(p, np.array([1.0, e_io, e_cio]) / (1 + e_io + e_cio))
